"""Images on disk -> tensors: path resolution, the up-front decode check, decoding (grayscale or RGB), the Dataset,
the loaders."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from tqdm.auto import tqdm

from ..core.errors import UserError
from ..core.runs import atomic_write_json
from .samplers import ShuffleSampler

if TYPE_CHECKING:
    from .cache import ImageCache

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


def read_image(path: Path, in_chans: int, min_side: int | None = None) -> np.ndarray:
    """HWC uint8 with `in_chans` channels (1 or 3), whatever the file holds (L, RGB, RGBA, palette, 16-bit, float).

    16-bit images are scaled by the fixed 255/65535 (32-bit integer images are read as 16-bit: values clipped to
    0..65535), float images as 0..1; values outside the range are clipped.
    `min_side`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, several times faster) as long
    as its shorter side stays >= min_side; other formats decode at full size."""
    with Image.open(path) as im:
        if min_side and im.format == "JPEG":
            w, h = im.size
            scale = min_side / min(w, h)
            im.draft(im.mode, (math.ceil(w * scale), math.ceil(h * scale)))  # the smallest DCT scale >= this size
        if im.mode in SCALE_TO_8BIT:
            arr = np.asarray(im, dtype=np.float64) * SCALE_TO_8BIT[im.mode]
            im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        mode = "L" if in_chans == 1 else "RGB"
        arr = np.array(im if im.mode == mode else im.convert(mode))  # a writable copy (convert would copy twice)
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
    """Yields {"image": HWC uint8 tensor, "target": task target, "index": row} (+ any `extras` arrays by name).
    HWC as the transforms leave it: the batch is laid out NCHW on the device (DeviceLoader), not here, image by
    image (a copy in every worker, 8% of an image's decoding and resizing at 224 px).

    Images come from `cache` (data.cache: decoded once, data/cache.py) or are decoded from the file each time.
    Augmentations are seeded per sample from (seed, fold, epoch, part, row) once `set_epoch` has run, so that a
    row is augmented alike whichever worker loads it: results do not depend on data.num_workers, and a resumed run
    repeats the interrupted one. The key lives in shared memory, so persistent workers see each new epoch."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: np.ndarray | None,
        transform: Callable | None,
        in_chans: int = 3,
        cache: ImageCache | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        if in_chans not in (1, 3):
            raise UserError(f"model.in_chans={in_chans}: images are read as 1 (grayscale) or 3 (RGB) channels")
        self.paths, self.targets, self.transform, self.in_chans = list(paths), targets, transform, in_chans
        self.cache, self.extras = cache, extras or {}
        self.augment_key = torch.full((4,), -1, dtype=torch.int64).share_memory_()  # seed, fold, epoch, part

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        return self.cache.read(self.paths[i]) if self.cache is not None else read_image(self.paths[i], self.in_chans)

    def _seed_transform(self, i: int) -> None:
        key = self.augment_key.tolist()
        if key[0] >= 0 and hasattr(self.transform, "set_random_state"):
            rng = np.random.default_rng([*key, i])  # albumentations draws from one numpy and one python stream
            self.transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))

    def __getitem__(self, i: int) -> dict:
        image = self.read(i)
        if self.transform is not None:
            self._seed_transform(i)
            image = self.transform(image=image)["image"]
        image = image[..., None] if image.ndim == 2 else image
        item = {"image": torch.from_numpy(np.ascontiguousarray(image)), "index": i}
        if self.targets is not None:
            item["target"] = torch.as_tensor(self.targets[i])
        for name, values in self.extras.items():
            item[name] = torch.as_tensor(values[i])
        return item


def set_epoch(dataset: Dataset, seed: int, fold: int, epoch: int) -> None:
    """Seed the augmentations of `dataset` for (seed, fold, epoch); each part of a ConcatDataset gets its own
    stream (its position), so that row i of the labelled part and row i of the pseudo part differ."""
    for part, ds in enumerate(getattr(dataset, "datasets", [dataset])):
        if isinstance(ds, ImageDataset):
            ds.augment_key.copy_(torch.tensor([seed, fold, epoch, part]))


def one_opencv_thread() -> None:
    """OpenCV (albumentations' engine) on one thread in this process and in the loader workers it forks: the workers
    already run in parallel, and OpenCV's default of one thread per core in every worker oversubscribed the cores
    (a loader at 2,292 images/s, 3,101 with one). It must be set here, before the workers fork: cv2.setNumThreads
    in a forked worker hangs for ever once this process has started OpenCV's thread pool (its condition variables
    are copied with waiters that do not exist in the child). Torch sets one thread in each worker itself."""
    cv2.setNumThreads(1)


def worker_init(worker_id: int) -> None:
    """numpy and random are seeded from torch's per-worker seed for any code that draws from them; the
    augmentations do not (they are seeded per sample, ImageDataset)."""
    info = get_worker_info()
    seed = info.seed % 2**32 if info else worker_id
    np.random.seed(seed)
    random.seed(seed)


class DeviceLoader:
    """A DataLoader's batches on `device`: tensors copied from pinned memory without blocking the host, the uint8
    NHWC images laid out NCHW there (channels_last when asked: NHWC is that layout already, so no copy at all) and
    normalised to float32 by `normalize` (augment.Normalize, which keeps the layout).
    Iterate it like the DataLoader; `set_epoch` reaches its sampler."""

    def __init__(self, loader: DataLoader, device: torch.device, normalize: Callable, channels_last: bool = False):
        self.loader, self.device, self.normalize, self.channels_last = loader, device, normalize, channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Epoch `epoch`'s order, from the sampler's (seed, epoch) only. A loader whose order cannot take an epoch
        (an evaluation loader) is an error here: its epochs would be drawn from a stream a resume cannot rejoin."""
        takers = [s for s in (self.loader.sampler, self.loader.batch_sampler) if hasattr(s, "set_epoch")]
        if not takers:
            raise TypeError(f"this loader's {type(self.loader.sampler).__name__} has no set_epoch(epoch)")
        for sampler in takers:
            sampler.set_epoch(epoch)

    def to_device(self, batch: dict) -> dict:
        out = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        image = out["image"].permute(0, 3, 1, 2)  # NHWC -> NCHW: a view with channels_last strides
        out["image"] = self.normalize(image if self.channels_last else image.contiguous())
        return out

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield self.to_device(batch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int,
    device: torch.device,
    normalize: Callable,
    *,
    channels_last: bool = False,
    sampler: Sampler | None = None,
    batch_sampler: Sampler | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> DeviceLoader:
    """Training loaders shuffle (unless a sampler decides) and drop the last partial batch (mixup needs even
    batches, BatchNorm dislikes a batch of one); evaluation loaders keep order and every row.
    A `batch_sampler` (pseudo-labelling's labelled:pseudo mix) composes whole batches itself.

    Shuffling depends on (seed, epoch) only (ShuffleSampler), and the loader draws its workers' seeds from its own
    `generator`, never from torch's global one: the global stream (dropout, drop-path) and the batches are then the
    same whatever the number of workers. Workers persist across epochs and prefetch (the default 2 batches each);
    pinned memory on CUDA, for the non-blocking copies of DeviceLoader."""
    one_opencv_thread()
    if train and sampler is None and batch_sampler is None:
        sampler = ShuffleSampler(len(dataset), seed)
    common = {
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": worker_init,
        "generator": generator or torch.Generator().manual_seed(seed),
        "persistent_workers": num_workers > 0,
    }
    if batch_sampler is not None:
        loader = DataLoader(dataset, batch_sampler=batch_sampler, **common)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, **common)
    return DeviceLoader(loader, device, normalize, channels_last)
