"""Images on disk -> tensors: path resolution, the up-front decode check, decoding (grayscale or RGB), the Dataset,
the loaders."""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from tqdm.auto import tqdm

from ..core.errors import UserError
from ..core.runs import atomic_write_json

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def image_path(folder: Path, image_id: str, ext: str) -> Path:
    """`ext` is appended unless the id already ends with an image extension ('a.jpg' stays 'a.jpg')."""
    if Path(image_id).suffix.lower() in IMAGE_EXTS:
        return folder / image_id
    return folder / f"{image_id}{ext}"


def image_paths(folder: Path, ids: Sequence[str], ext: str, key: str) -> list[Path]:
    """Paths for `ids`; fail once, listing how many are missing and the first few, before any training starts."""
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found (config key data.{key})")
    paths = [image_path(folder, i, ext) for i in ids]
    missing = [str(p.name) for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"{folder}: {len(missing)} of {len(paths)} images not found, first: {missing[:3]} "
            f"(check data.{key} and data.image_ext={ext!r})"
        )
    return paths


# Fixed scales to 8 bits: every image of a kind is scaled alike, so brightness differences between images are kept
# (stretching each image to its own min..max would erase them). 16-bit: 0..65535 -> 0..255; float images: 0..1.
SCALE_TO_8BIT = {"I;16": 255 / 65535, "I;16L": 255 / 65535, "I;16B": 255 / 65535, "I": 255 / 65535, "F": 255.0}


def read_image(path: Path, in_chans: int) -> np.ndarray:
    """HWC uint8 with `in_chans` channels (1 or 3), whatever the file holds (L, RGB, RGBA, palette, 16-bit, float).

    16-bit images are scaled by the fixed 255/65535 (32-bit integer images are read as 16-bit: values clipped to
    0..65535), float images as 0..1; values outside the range are clipped."""
    with Image.open(path) as im:
        if im.mode in SCALE_TO_8BIT:
            arr = np.asarray(im, dtype=np.float64) * SCALE_TO_8BIT[im.mode]
            im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        arr = np.array(im.convert("L" if in_chans == 1 else "RGB"))  # a writable copy
    return arr[..., None] if arr.ndim == 2 else arr


def _decode_problem(path: Path, size: int) -> str | None:
    """Why `path` cannot be used (a short reason), or None when it opens and decodes completely."""
    if size == 0:
        return "empty file (0 bytes)"
    try:
        read_image(path, 3)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for truncated or corrupt files
        text = (str(e).splitlines() or [""])[0].replace(str(path), path.name)[:120]
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    return None


def check_images(paths: Sequence[Path], key: str, cache: Path | None = None, workers: int | None = None) -> None:
    """Open and fully decode every image (in parallel threads, with a progress bar) before any training starts; a
    truncated, empty or corrupt file stops here with one line instead of as a traceback in the middle of an epoch.

    Images that decoded are remembered in `cache` (a JSON file per folder, see core.runs.image_check_cache) by
    name, size and modification time, so a later run only re-checks files that are new or changed. `key` is the
    config key of the folder (for the message)."""
    if not paths:
        return
    stats = [os.stat(p) for p in paths]
    known: dict[str, list[int]] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text()).get("ok", {})
        except (OSError, ValueError):  # an unreadable cache only costs a re-check
            known = {}
    todo = [i for i, (p, st) in enumerate(zip(paths, stats, strict=True))
            if known.get(p.name) != [st.st_size, st.st_mtime_ns]]  # fmt: skip
    bad: list[tuple[Path, str]] = []
    if todo:
        workers = workers or min(16, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while it decodes
            found = pool.map(lambda i: _decode_problem(paths[i], stats[i].st_size), todo, chunksize=64)
            for i, problem in zip(todo, tqdm(found, total=len(todo), desc="check images", disable=None), strict=True):
                if problem is None:
                    known[paths[i].name] = [stats[i].st_size, stats[i].st_mtime_ns]
                else:
                    bad.append((paths[i], problem))
        if cache is not None:
            with contextlib.suppress(OSError):  # a read-only output folder: check again next time
                atomic_write_json(cache, {"ok": known})
    if bad:
        first = "; ".join(f"{p.name}: {why}" for p, why in bad[:3])
        raise UserError(
            f"{paths[0].parent}: {len(bad)} of {len(paths)} images cannot be read (config key data.{key}), "
            f"first: {first}; replace or remove these files (and their rows in the table)"
        )


class ImageDataset(Dataset):
    """Yields {"image": CHW float tensor, "target": task target, "index": row} (+ any `extras` arrays by name)."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: np.ndarray | None,
        transform: Callable | None,
        in_chans: int = 3,
        cache: bool = False,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        if in_chans not in (1, 3):
            raise UserError(f"model.in_chans={in_chans}: images are read as 1 (grayscale) or 3 (RGB) channels")
        self.paths, self.targets, self.transform, self.in_chans = list(paths), targets, transform, in_chans
        self.extras = extras or {}
        self.images: list[np.ndarray] | None = None
        if cache:
            self.images = [
                read_image(p, in_chans) for p in tqdm(self.paths, desc="cache images", leave=False, disable=None)
            ]

    def __len__(self) -> int:
        return len(self.paths)

    def reseed(self, seed: int) -> None:
        """albumentations draws from its own generator: seed it so runs (and resumed runs) repeat exactly."""
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i] if self.images is not None else read_image(self.paths[i], self.in_chans)
        x = self.transform(image=image)["image"] if self.transform else torch.from_numpy(image).permute(2, 0, 1)
        item = {"image": x, "index": i}
        if self.targets is not None:
            item["target"] = torch.as_tensor(self.targets[i])
        for name, values in self.extras.items():
            item[name] = torch.as_tensor(values[i])
        return item


def reseed(dataset: Dataset, seed: int) -> None:
    """Reseed the augmentations of `dataset` (or of each part of a ConcatDataset)."""
    for ds in getattr(dataset, "datasets", [dataset]):
        if hasattr(ds, "reseed"):
            ds.reseed(seed)


def _worker_init(worker_id: int) -> None:
    """Each worker reseeds numpy, random and the augmentations from torch's per-worker seed."""
    info = get_worker_info()
    seed = info.seed % 2**32 if info else worker_id
    np.random.seed(seed)
    random.seed(seed)
    if info is not None:
        reseed(info.dataset, seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
    batch_sampler: Sampler | None = None,
) -> DataLoader:
    """Training loaders shuffle (unless a sampler decides) and drop the last partial batch (mixup needs even
    batches, BatchNorm dislikes a batch of one); evaluation loaders keep order and every row.
    A `batch_sampler` (pseudo-labelling's labelled:pseudo mix) composes whole batches itself."""
    if batch_sampler is not None:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_worker_init,
            generator=generator,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init,
        generator=generator,
        persistent_workers=False,
    )
