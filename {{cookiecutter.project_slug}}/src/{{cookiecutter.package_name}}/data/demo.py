"""A real, small competition in Kaggle layout, made from scikit-learn's digits (no network needed).

    data/demo/train.csv              id,label
    data/demo/test.csv               id
    data/demo/sample_submission.csv  id,label (placeholder values, the format Kaggle would ship)
    data/demo/solution.csv           id,label (held-back test labels, so the demo can be scored locally)
    data/demo/train/<id>.png, data/demo/test/<id>.png

The label depends on the task, so every task type has a demo: the digit (multiclass), digit >= 5 (binary),
tags such as "even round" (multilabel), the digit's value as a number (regression).

task=segmentation is a competition of its own (`write_segmentation_demo`): 64 px canvases with 1-3 enlarged digits
on a textured background, a mask per digit group, in Kaggle's long RLE layout (Severstal's):

    train.csv                        id,ClassId,EncodedPixels (a row per image and class; empty: no mask)
    test.csv                         id
    sample_submission.csv            id,ClassId,EncodedPixels (every test image x class, empty masks)
    solution.csv                     id,ClassId,EncodedPixels (the test masks)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..core.errors import UserError
from ..core.runs import atomic_write_csv
from ..core.tasks import TASKS
from .masks import rle_encode

ROUND_DIGITS = {0, 6, 8, 9}


def digit_tags(d: int) -> str:
    tags = ["even" if d % 2 == 0 else "odd"]
    if d >= 5:
        tags.append("big")
    if d in ROUND_DIGITS:
        tags.append("round")
    return " ".join(tags)


def make_label(digits: np.ndarray, task: str) -> list:
    if task == "multiclass":
        return [int(d) for d in digits]
    if task == "binary":
        return [int(d >= 5) for d in digits]
    if task == "multilabel":
        return [digit_tags(int(d)) for d in digits]
    if task == "regression":
        return [float(d) for d in digits]
    raise UserError(f"demo task {task!r} unknown; choose one of: {', '.join(TASKS)}")


def _to_png(pixels: np.ndarray, size: int, rgb: bool, path: Path) -> None:
    img = Image.fromarray((pixels.reshape(8, 8) * (255 / 16)).round().astype(np.uint8), mode="L")
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    if rgb:
        img = img.convert("RGB")
    img.save(path)


def write_demo(
    out_dir: str | Path, task: str = "multiclass", size: int | None = None, rgb: bool = False, seed: int = 0
) -> Path:
    """Write the demo competition into `out_dir` (deterministic for a given seed). `size`: the image side, by default
    32 (digits) or 64 (segmentation canvases)."""
    if task == "segmentation":
        return write_segmentation_demo(out_dir, size=size or SEG_SIZE, rgb=rgb, seed=seed)
    size = size or 32
    out_dir = Path(out_dir)
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, random_state=seed, stratify=digits.target)
    labels = make_label(digits.target, task)
    ids = [f"img_{i:05d}" for i in idx]
    for split, rows in (("train", train_idx), ("test", test_idx)):
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in rows:
            _to_png(digits.data[i], size, rgb, folder / f"{ids[i]}.png")
    test_ids = [ids[i] for i in test_idx]
    placeholder = {"multiclass": 0, "binary": 0.5, "multilabel": "even", "regression": 0.0}[task]
    atomic_write_csv(
        out_dir / "train.csv",
        pd.DataFrame({"id": [ids[i] for i in train_idx], "label": [labels[i] for i in train_idx]}),
    )
    atomic_write_csv(out_dir / "test.csv", pd.DataFrame({"id": test_ids}))
    atomic_write_csv(out_dir / "sample_submission.csv", pd.DataFrame({"id": test_ids, "label": placeholder}))
    atomic_write_csv(out_dir / "solution.csv", pd.DataFrame({"id": test_ids, "label": [labels[i] for i in test_idx]}))
    return out_dir


# --- segmentation -----------------------------------------------------------------------------------------------------

SEG_SIZE = 64
SEG_TRAIN, SEG_TEST = 600, 200
# Class of each digit's pixels: three groups of similar size whose shapes differ (round 0-3 ... straight 7-9), so a
# small U-Net tells them apart from a digit's shape, not from its brightness (every digit is drawn alike).
SEG_GROUPS = {"1": (0, 1, 2, 3), "2": (4, 5, 6), "3": (7, 8, 9)}
SEG_CLASS_COL, SEG_RLE_COL = "ClassId", "EncodedPixels"
MASK_LEVEL = 128  # a digit pixel at least this bright (of 255, after enlarging) belongs to the mask


def _seg_class(digit: int) -> str:
    return next(c for c, ds in SEG_GROUPS.items() if digit in ds)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A mild texture: smooth blobs (random 6x6 values enlarged) plus pixel noise, kept below MASK_LEVEL - 40 so the
    digits (>= MASK_LEVEL on their mask) stand out but not by a fixed value."""
    blobs = Image.fromarray(rng.uniform(0, 255, (6, 6)).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    img = 15 + np.asarray(blobs, np.float32) * (45 / 255) + rng.normal(0, 6, (size, size))
    return np.clip(img, 0, MASK_LEVEL - 40).astype(np.uint8)


def _seg_image(
    rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, size: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One canvas (uint8, H x W) and its mask per class: 1-3 digits, each enlarged to a random 30-45% of the canvas
    and pasted where it overlaps no other (a digit that finds no free place in 20 tries is left out)."""
    img = _background(rng, size)
    masks = {c: np.zeros((size, size), np.uint8) for c in SEG_GROUPS}
    taken = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 4)):
        k = rng.integers(len(labels))
        side = max(6, int(size * rng.uniform(0.30, 0.45)))
        glyph = Image.fromarray((digits[k].reshape(8, 8) * (255 / 16)).astype(np.uint8))
        glyph = np.asarray(glyph.resize((side, side), Image.Resampling.BICUBIC))
        for _try in range(20):
            y, x = rng.integers(0, size - side + 1, 2)
            if not taken[y : y + side, x : x + side].any():
                break
        else:
            continue
        taken[y : y + side, x : x + side] = True
        canvas = img[y : y + side, x : x + side]
        np.maximum(canvas, glyph, out=canvas)  # the digit drawn over the texture: its mask pixels stay >= MASK_LEVEL
        masks[_seg_class(int(labels[k]))][y : y + side, x : x + side] |= (glyph >= MASK_LEVEL).astype(np.uint8)
    return img, masks


def write_segmentation_demo(out_dir: str | Path, size: int = SEG_SIZE, rgb: bool = False, seed: int = 0) -> Path:
    """The segmentation demo (see the module's docstring); deterministic for a given seed."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    tables = {}
    for split, n, first in (("train", SEG_TRAIN, 0), ("test", SEG_TEST, SEG_TRAIN)):
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for j in range(first, first + n):
            image_id = f"seg_{j:05d}"
            img, masks = _seg_image(rng, digits.data, digits.target, size)
            pil = Image.fromarray(img, mode="L")
            (pil.convert("RGB") if rgb else pil).save(folder / f"{image_id}.png")
            rows += [(image_id, c, rle_encode(m)) for c, m in masks.items()]  # Kaggle's order F
        tables[split] = pd.DataFrame(rows, columns=["id", SEG_CLASS_COL, SEG_RLE_COL])
    test_ids = tables["test"]["id"].drop_duplicates()
    atomic_write_csv(out_dir / "train.csv", tables["train"])
    atomic_write_csv(out_dir / "test.csv", pd.DataFrame({"id": test_ids}))
    atomic_write_csv(out_dir / "sample_submission.csv", tables["test"].assign(**{SEG_RLE_COL: ""}))
    atomic_write_csv(out_dir / "solution.csv", tables["test"])
    return out_dir
