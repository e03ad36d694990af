"""Error analysis in numbers: each OOF row's loss under the task's own loss, and how well the predicted
probabilities are calibrated (reliability bins, expected and maximum calibration error).

Inputs in the task formats of modeling/metrics.py: multiclass y (N,) class ids, pred (N, C) probabilities; binary y
(N,) 0/1, pred (N,) or (N, 1) P(positive); multilabel y (N, L) 0/1, pred (N, L) probabilities; regression y (N,),
pred (N,) or (N, 1) values.

Calibration uses `n_bins` equal-width bins of the confidence over [0, 1] (the last bin holds 1.0):
ECE = sum over bins of (rows in the bin / all rows) * |accuracy in the bin - mean confidence in the bin|, MCE the
largest of those gaps over the non-empty bins. Per class it is one-vs-rest (confidence P(class), a hit when the row
is of that class); top-label takes the most probable class (binary: the more probable side) and counts a hit when
it is the true one; a multilabel run pools every (row, label) pair instead ("all labels").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import LOG_LOSS_EPS

N_BINS = 15
ABS_ERROR_METRICS = ("mae",)  # regression metrics whose per-row loss is the absolute error (else: squared)
TOP_LABEL = "top-label"
ALL_LABELS = "all labels"


def loss_name(task: str, metric: str) -> str:
    """What `row_losses` computes for `task` (and the regression `metric`)."""
    if task == "multiclass":
        return "cross-entropy"
    if task in ("binary", "multilabel"):
        return "binary cross-entropy" + (" (summed over labels)" if task == "multilabel" else "")
    if task == "regression":
        return "absolute error" if metric in ABS_ERROR_METRICS else "squared error"
    raise ValueError(f"no per-row loss for task {task!r}")


def row_losses(task: str, y: np.ndarray, pred: np.ndarray, metric: str = "") -> np.ndarray:
    """(N,) loss of each row, probabilities clipped to [eps, 1 - eps] as Kaggle's log loss clips them."""
    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y)
    if task == "multiclass":
        p = np.clip(pred[np.arange(len(y)), y.astype(np.int64)], LOG_LOSS_EPS, 1.0)
        return -np.log(p)
    if task in ("binary", "multilabel"):
        p = np.clip(pred.reshape(len(y), -1), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        t = y.reshape(len(y), -1).astype(np.float64)
        return -(t * np.log(p) + (1 - t) * np.log1p(-p)).sum(axis=1)
    if task == "regression":
        err = pred.reshape(len(y), -1)[:, 0] - y.astype(np.float64)
        return np.abs(err) if metric in ABS_ERROR_METRICS else err**2
    raise ValueError(f"no per-row loss for task {task!r}")


@dataclass(frozen=True)
class Reliability:
    """One reliability diagram: per equal-width confidence bin its row count, mean confidence and accuracy (None
    where empty), and the ECE and MCE over them."""

    name: str
    n_bins: int
    counts: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]
    ece: float
    mce: float

    @property
    def n(self) -> int:
        return int(sum(self.counts))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("n_bins", "counts", "confidence", "accuracy", "ece", "mce")}


def bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """The equal-width bin of each confidence in [0, 1]: [i/n, (i+1)/n), the last one closed at 1."""
    return np.clip(np.floor(np.asarray(conf, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability(conf: np.ndarray, hit: np.ndarray, n_bins: int = N_BINS, name: str = "") -> Reliability:
    """Bins of `conf` (the predicted probability of an event) against `hit` (whether it happened)."""
    conf, hit = np.asarray(conf, dtype=np.float64).ravel(), np.asarray(hit, dtype=np.float64).ravel()
    if len(conf) == 0:
        raise ValueError("reliability of no rows")
    b = bin_index(conf, n_bins)
    counts = np.bincount(b, minlength=n_bins)
    sum_conf = np.bincount(b, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(b, weights=hit, minlength=n_bins)
    full = counts > 0
    mean_conf = np.divide(sum_conf, counts, out=np.zeros(n_bins), where=full)
    acc = np.divide(sum_hit, counts, out=np.zeros(n_bins), where=full)
    gaps = np.abs(acc - mean_conf)
    ece = float((counts / len(conf) * gaps).sum())
    mce = float(gaps[full].max())
    return Reliability(
        name=name,
        n_bins=n_bins,
        counts=[int(c) for c in counts],
        confidence=[float(c) if f else None for c, f in zip(mean_conf, full, strict=True)],
        accuracy=[float(a) if f else None for a, f in zip(acc, full, strict=True)],
        ece=ece,
        mce=mce,
    )


def calibration(task: str, y: np.ndarray, pred: np.ndarray, classes: list[str], n_bins: int = N_BINS,
                ) -> list[Reliability]:  # fmt: skip
    """One diagram per class (one-vs-rest), then the overall one: top-label (multiclass, binary) or every (row,
    label) pair pooled (multilabel). Regression predicts no probabilities: none."""
    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y)
    if task == "multiclass":
        y = y.astype(np.int64)
        per_class = [reliability(pred[:, c], y == c, n_bins, name) for c, name in enumerate(classes)]
        top = pred.argmax(1)
        return [*per_class, reliability(pred.max(1), top == y, n_bins, TOP_LABEL)]
    if task == "binary":
        p, t = pred.reshape(len(y), -1)[:, 0], y.reshape(-1).astype(np.int64)
        side = (p >= 0.5).astype(np.int64)
        return [reliability(p, t == 1, n_bins, classes[0]),
                reliability(np.maximum(p, 1 - p), side == t, n_bins, TOP_LABEL)]  # fmt: skip
    if task == "multilabel":
        t = y.reshape(pred.shape).astype(np.int64)
        per_label = [reliability(pred[:, j], t[:, j] == 1, n_bins, name) for j, name in enumerate(classes)]
        return [*per_label, reliability(pred, t == 1, n_bins, ALL_LABELS)]
    return []
