"""Per-image statistics for the data checks: size, channels, file size, brightness and sharpness, with the image's
perceptual hash, from one decode of each file (the project's own decode path: data/decode.read_image).

These are what adversarial validation tells train from test with, and what the drift report compares per split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..core.errors import UserError
from .decode import read_image
from .hashing import pack

# The statistics, in the order of the table's columns. Brightness is the luma (ITU-R 601) on 0..255; sharpness is
# the mean absolute Laplacian of the luma (blurred or upscaled images score low).
FEATURES = ("height", "width", "aspect", "channels", "file_kb", "brightness_mean", "brightness_std", "brightness_p05",
            "brightness_p50", "brightness_p95", "sharpness")  # fmt: skip
RGB_FEATURES = ("red_mean", "green_mean", "blue_mean")


def describe(path: Path, in_chans: int, hash_bits: Callable[[np.ndarray], np.ndarray]) -> tuple[dict, np.ndarray]:
    """(statistics, 64 hash bits) of the image file `path`, decoded with `in_chans` channels as training reads it;
    `channels` is what the file holds (its bands: 1 gray, 3 RGB, 4 RGBA...)."""
    with Image.open(path) as im:
        bands = len(im.getbands())
    image = read_image(path, in_chans)
    gray = (
        image[..., 0].astype(np.float32)
        if in_chans == 1
        else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    )
    p05, p50, p95 = np.percentile(gray, [5, 50, 95])
    h, w = gray.shape
    stats = {
        "height": h,
        "width": w,
        "aspect": w / h,
        "channels": bands,
        "file_kb": os.path.getsize(path) / 1024,
        "brightness_mean": float(gray.mean()),
        "brightness_std": float(gray.std()),
        "brightness_p05": float(p05),
        "brightness_p50": float(p50),
        "brightness_p95": float(p95),
        "sharpness": float(np.abs(cv2.Laplacian(gray, cv2.CV_32F)).mean()),
    }
    if in_chans == 3:
        stats |= dict(zip(RGB_FEATURES, image.reshape(-1, 3).mean(0).tolist(), strict=True))
    return stats, hash_bits(image)


def describe_all(
    paths: Sequence[Path], in_chans: int, hash_bits: Callable[[np.ndarray], np.ndarray], key: str, desc: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """(statistics table, packed hashes (N,) uint64) of every image, in parallel threads with a progress bar. An
    image that cannot be decoded stops here with one line naming the first few (`key`: the config key of the
    folder)."""

    def one(p: Path) -> tuple[dict, np.ndarray] | str:
        try:
            return describe(p, in_chans, hash_bits)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for truncated or corrupt files
            return f"{p.name}: {type(e).__name__}"

    workers = min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL and OpenCV release the GIL while they decode
        results = list(tqdm(pool.map(one, paths, chunksize=32), total=len(paths), desc=desc, disable=None))
    bad = [r for r in results if isinstance(r, str)]
    if bad:
        raise UserError(f"{paths[0].parent}: {len(bad)} of {len(paths)} images cannot be read (config key "
                        f"data.{key}), first: {'; '.join(bad[:3])}")  # fmt: skip
    stats = pd.DataFrame([r[0] for r in results])
    hashes = pack(np.stack([r[1] for r in results])) if results else np.zeros(0, np.uint64)
    return stats, hashes
