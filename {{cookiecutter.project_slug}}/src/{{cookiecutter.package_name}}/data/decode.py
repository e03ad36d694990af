"""Image files: their paths from ids, decoding (8/16-bit, grayscale or RGB, shrunk on decode where that is
lossless), a checked pass over an image set, and OpenCV's threads in loader workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import get_worker_info
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
    missing = [str(p) for p in paths if not p.is_file()]  # the full path tried: an id may hold folders
    if missing:
        raise UserError(
            f"{folder}: {len(missing)} of {len(paths)} images not found, first: {missing[:3]} "
            f"(check data.{key} and data.image_ext={ext!r})"
        )
    return paths


# Fixed scales to 8 bits: every image of a kind is scaled alike, so brightness differences between images are kept
# (stretching each image to its own min..max would erase them). 16-bit: 0..65535 -> 0..255; float images: 0..1.
SCALE_TO_8BIT = {"I;16": 255 / 65535, "I;16L": 255 / 65535, "I;16B": 255 / 65535, "I": 255 / 65535, "F": 255.0}


def read_image(path: Path | BinaryIO, in_chans: int, min_side: int | None = None) -> np.ndarray:
    """HWC uint8 with `in_chans` channels (1 or 3), whatever the file holds (L, RGB, RGBA, palette, 16-bit, float).
    `path`: a file, or an open binary stream (decode_bytes: an uploaded image, decoded exactly as its file would be).

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


def decode_bytes(data: bytes, in_chans: int) -> np.ndarray:
    """An image file's bytes (e.g. an upload to `serve`) -> what read_image gives for that file: HWC uint8."""
    return read_image(io.BytesIO(data), in_chans)


def image_shapes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """(height, width) of each image, from its header (nothing decoded): what a run-length encoding is laid on."""
    shapes = []
    for p in paths:
        with Image.open(p) as im:
            shapes.append((im.height, im.width))
    return shapes


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
