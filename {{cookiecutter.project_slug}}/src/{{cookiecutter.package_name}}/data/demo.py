"""A real, small competition in Kaggle layout, made from scikit-learn's digits (no network needed).

    data/demo/train.csv              id,label
    data/demo/test.csv               id
    data/demo/sample_submission.csv  id,label (placeholder values, the format Kaggle would ship)
    data/demo/solution.csv           id,label (held-back test labels, so the demo can be scored locally)
    data/demo/train/<id>.png, data/demo/test/<id>.png

The label depends on the task, so every task type has a demo: the digit (multiclass), digit >= 5 (binary),
tags such as "even round" (multilabel), the digit's value as a number (regression).
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


def write_demo(out_dir: str | Path, task: str = "multiclass", size: int = 32, rgb: bool = False, seed: int = 0) -> Path:
    """Write the demo competition into `out_dir` (deterministic for a given seed)."""
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
