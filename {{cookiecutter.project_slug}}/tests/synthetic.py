"""Small competitions in the shape of each task, made from scikit-learn's digits and written in Kaggle layout
(train.csv + an image folder), read by the pipeline through the documented `data.*` keys only; and the bar they
set: a scikit-learn logistic regression on the raw pixels, scored on the same validation rows with the same metric.

    multiclass  the digit (10 classes), 16x16 PNGs
    binary      "is it an 8 or a 9", positives subsampled to ~15% of the rows, 16x16 PNGs, ROC AUC
    multilabel  one or two digits side by side on a non-square 16x32 (HxW) JPEG canvas; tags = which digits,
                space-separated in one column; F1 micro
    regression  an ordinal grade 0-4 (the digit // 2: two looks per grade) predicted as a number, scored with QWK
    segmentation  1-3 digits pasted on a textured 64x64 canvas, a mask per digit group (0-3, 4-6, 7-9) in Kaggle's
                run-length encoding, one row per image and class; the baseline is a logistic regression per pixel
                (its value and its 3x3 neighbours' at the training size), Dice per image and class

tests/test_learns.py trains each with the exp001 defaults and asserts the baseline is beaten: the guard that a
change of a default breaks no task. benchmarks/defaults.py (at the template's root) measures the same shapes
against a hand-tuned learning rate.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from {{ cookiecutter.package_name }}.config import Config, metric_name
from {{ cookiecutter.package_name }}.data import demo
from {{ cookiecutter.package_name }}.data.decode import read_image
from {{ cookiecutter.package_name }}.data.problem import Problem, load_problem
from {{ cookiecutter.package_name }}.modeling import metrics

SHAPES = ("multiclass", "binary", "multilabel", "regression", "segmentation")
LABEL_SHAPES = SHAPES[:4]  # one target per image: what a classifier head starts at the prior of (tests/test_heads.py)
METRIC = {"multiclass": "accuracy", "binary": "roc_auc", "multilabel": "f1_micro", "regression": "qwk",
          "segmentation": "dice"}  # fmt: skip
SIDE = 16  # each digit is drawn at 16x16 (scikit-learn's are 8x8)


def _glyph(pixels: np.ndarray) -> Image.Image:
    img = Image.fromarray((pixels.reshape(8, 8) * (255 / 16)).round().astype(np.uint8), mode="L")
    return img.resize((SIDE, SIDE), Image.Resampling.BICUBIC)


def _rows(task: str, rng: np.random.Generator) -> tuple[list[Image.Image], list]:
    """The images and the label of each (the target column's cells)."""
    d = load_digits()
    if task in ("multiclass", "regression"):
        keep = np.concatenate([rng.permutation(np.flatnonzero(d.target == c))[:100] for c in range(10)])
        grade = 1 if task == "multiclass" else 2
        return [_glyph(d.data[i]) for i in keep], [int(d.target[i]) // grade for i in keep]
    if task == "binary":
        pos = rng.permutation(np.flatnonzero(np.isin(d.target, (8, 9))))
        neg = np.flatnonzero(~np.isin(d.target, (8, 9)))
        keep = np.concatenate([pos[: round(len(neg) * 0.15 / 0.85)], neg])  # positives: 15% of the rows
        return [_glyph(d.data[i]) for i in keep], [int(d.target[i] in (8, 9)) for i in keep]
    if task == "multilabel":  # every source digit used once: no digit is in a training and a validation canvas
        order = rng.permutation(len(d.target))
        images, tags, i = [], [], 0
        while i < len(order):
            n = 2 if rng.random() < 0.5 and i + 1 < len(order) else 1
            canvas = Image.new("L", (2 * SIDE, SIDE))
            slots = [0, 1] if n == 2 else [int(rng.integers(2))]  # a lone digit goes left or right
            for slot, j in zip(slots, order[i : i + n], strict=True):
                canvas.paste(_glyph(d.data[j]), (slot * SIDE, 0))
            images.append(canvas)
            tags.append(" ".join(str(t) for t in sorted({int(d.target[j]) for j in order[i : i + n]})))
            i += n
        return images, tags
    raise ValueError(f"unknown shape {task!r}; shapes: {SHAPES}")


def write_competition(root: Path, task: str, seed: int = 0) -> str:
    """The competition of `task`'s shape under `root` (train.csv, test.csv, sample_submission.csv, train/, test/);
    returns the YAML of the config keys that describe it (task, metric, data.*)."""
    if task == "segmentation":  # the demo's generator, another seed: other canvases than the demo's
        demo.write_segmentation_demo(root, seed=seed + 1)
        return (
            f"task: {task}\nmetric: {METRIC[task]}\n"
            f"data:\n  dir: {root}\n  class_col: ClassId\n  rle_col: EncodedPixels\n  image_ext: .png\n"
        )
    rng = np.random.default_rng(seed)
    images, labels = _rows(task, rng)
    order = rng.permutation(len(images))  # rows come grouped by label: the test rows must be a random share
    images, labels = [images[i] for i in order], [labels[i] for i in order]
    ext = ".jpg" if task == "multilabel" else ".png"
    ids = [f"s{i:05d}" for i in range(len(images))]
    n_test = len(ids) // 10
    for split, part in (("test", slice(0, n_test)), ("train", slice(n_test, None))):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in zip(ids[part], images[part], strict=True):
            img.save(folder / f"{i}{ext}", **({"quality": 95} if ext == ".jpg" else {}))
    col = "tags" if task == "multilabel" else "grade" if task == "regression" else "target"
    pd.DataFrame({"image_id": ids[n_test:], col: labels[n_test:]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"image_id": ids[:n_test]}).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"image_id": ids[:n_test], col: labels[:n_test]}).to_csv(root / "sample_submission.csv", index=False)
    return (
        f"task: {task}\nmetric: {METRIC[task]}\n"
        f"data:\n  dir: {root}\n  id_col: image_id\n  target_col: {col}\n  image_ext: {ext}\n"
    )


def _pixels(paths: list[Path]) -> np.ndarray:
    return np.stack([read_image(p, 1).reshape(-1) for p in paths]).astype(np.float64) / 255.0


def pixel_baseline(cfg: Config, fold: int) -> float:
    """Logistic regression on the raw pixels, trained on fold `fold`'s training rows and scored on its validation
    rows with the config's metric (one-vs-rest for multilabel; ordinal grades as classes)."""
    problem = load_problem(cfg)
    tr, va = problem.rows(fold, valid=False), problem.rows(fold, valid=True)
    if cfg.task == "segmentation":
        return _pixel_masks_baseline(cfg, problem, tr, va)
    x = _pixels(problem.paths)
    y = problem.y
    lr = LogisticRegression(max_iter=2000)
    if cfg.task == "multilabel":
        pred = OneVsRestClassifier(lr).fit(x[tr], y[tr]).predict_proba(x[va])
    elif cfg.task == "regression":
        pred = lr.fit(x[tr], np.rint(y[tr]).astype(int)).predict(x[va]).astype(np.float64)
    elif cfg.task == "binary":
        pred = lr.fit(x[tr], y[tr]).predict_proba(x[va])[:, 1]
    else:
        pred = lr.fit(x[tr], y[tr]).predict_proba(x[va])
    return metrics.score(metric_name(cfg), y[va], pred, cfg.task)


def _neighbourhoods(paths: list[Path], size: int) -> np.ndarray:
    """Each pixel's value and its 3x3 neighbours' at the training size: (images * size * size, 9)."""
    images = np.stack([cv2.resize(read_image(p, 1)[..., 0], (size, size), interpolation=cv2.INTER_AREA)
                       for p in paths]).astype(np.float32) / 255.0  # fmt: skip
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    shifts = [padded[:, dy : dy + size, dx : dx + size] for dy in range(3) for dx in range(3)]
    return np.stack(shifts, axis=-1).reshape(-1, 9)


def _pixel_masks_baseline(cfg: Config, problem: Problem, tr: np.ndarray, va: np.ndarray) -> float:
    """A logistic regression per class on each pixel's 3x3 neighbourhood (a quarter of the training pixels, drawn
    at random), scored on the validation masks at the training size as the model's OOF maps are."""
    size = cfg.augment.image_size
    x_tr = _neighbourhoods([problem.paths[i] for i in tr], size)
    x_va = _neighbourhoods([problem.paths[i] for i in va], size)
    y_tr, y_va = problem.truth(tr, size), problem.truth(va, size)
    pick = np.random.default_rng(0).permutation(len(x_tr))[: len(x_tr) // 4]
    maps = np.zeros(y_va.shape, np.float32)
    for c in range(y_tr.shape[1]):
        target = y_tr[:, c].reshape(-1)[pick]
        lr = LogisticRegression(max_iter=500).fit(x_tr[pick], target)
        maps[:, c] = lr.predict_proba(x_va)[:, 1].reshape(len(va), size, size)
    return metrics.score(metric_name(cfg), y_va, maps, cfg.task)
