"""Competition metrics in one registry; tests/test_metrics.py checks each against scikit-learn.

Inputs use the package's task formats (probabilities, not logits):
multiclass y_true (N,) class ids, y_pred (N, C) probabilities; binary y_true (N,) 0/1, y_pred (N,) P(positive);
multilabel y_true (N, L) 0/1, y_pred (N, L) probabilities; regression y_true (N,), y_pred (N,) values;
segmentation y_true (N, C, H, W) 0/1 masks (uint8), y_pred (N, C, H, W) probabilities (a post-processed mask is scored
by passing it as 0./1. floats: the threshold keeps it as it is).
Label metrics turn probabilities into labels with `to_labels` (argmax, or >= threshold).

The metrics are written in numpy rather than as sklearn calls so that they also take rank-averaged ensemble
scores (sklearn's multiclass AUC demands rows summing to 1) and validation folds where a class is missing
(sklearn raises; here that class is left out of the macro average).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ..core.errors import UserError
from ..core.registry import Registry
from ..core.tasks import CLASSIFICATION_TASKS, PIXEL_TASKS, SIGMOID_TASKS, SINGLE_OUTPUT_TASKS, TASKS

DEFAULT_THRESHOLD = 0.5
LOG_LOSS_EPS = 1e-15  # Kaggle clips probabilities to [eps, 1 - eps] before the log
# Segmentation metrics count pixels in chunks of images of about this many values, so that scoring a whole OOF set
# at full size never holds more than a few boolean copies of one chunk (the inputs themselves are not copied).
MASK_CHUNK_VALUES = 1 << 24

MetricFn = Callable[[np.ndarray, np.ndarray, str], float]


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function and the metadata it was registered with."""

    name: str
    fn: MetricFn  # fn(y_true, y_pred, task) on validated numpy arrays
    higher_is_better: bool
    tasks: tuple[str, ...]  # the task types it is defined for
    labels: bool = False  # counts thresholded labels (accuracy, F1, QWK...): a step function of the predictions
    rank_only: bool = False  # reads nothing but the order of each prediction column (AUC): rank blends keep it

    # The metric's direction lives here and only here: every stage that compares or maximises scores (best epoch,
    # TTA views, ordinal cuts, blend weights, ranks, warnings) goes through `gain` / `better`.
    def gain(self, score: float) -> float:
        """`score` as a value that is larger when better, whatever the direction; NaN (a diverged model) -> -inf."""
        score = float(score)
        if math.isnan(score):
            return -math.inf
        return score if self.higher_is_better else -score

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` is strictly better than score `b`; a NaN is never better (and any number beats it)."""
        return self.gain(a) > self.gain(b)

    @property
    def direction(self) -> str:
        """'higher is better' or 'lower is better', for messages and tables."""
        return "higher is better" if self.higher_is_better else "lower is better"


METRICS: Registry[MetricFn] = Registry("metric")


def get_metric(name: str) -> Metric:
    return Metric(name, METRICS.get(name), **METRICS.meta(name))


def list_metrics(task: str | None = None) -> list[str]:
    """All metric names, or those defined for `task`."""
    if task is None:
        return METRICS.names()
    _check_task(task)
    return METRICS.names(lambda meta: task in meta["tasks"])


def label_metrics() -> frozenset[str]:
    """Metrics of thresholded labels: blends tune them through a smooth surrogate, submissions hold labels."""
    return frozenset(METRICS.names(lambda meta: meta.get("labels", False)))


def rank_metrics() -> frozenset[str]:
    """Metrics that read only each column's order, where averaging ranks is legitimate."""
    return frozenset(METRICS.names(lambda meta: meta.get("rank_only", False)))


def score(name: str, y_true: Any, y_pred: Any, task: str) -> float:
    """The metric's value; NaN when a prediction is not finite (a diverged model never counts as 'best')."""
    metric = get_metric(name)
    _check_task(task)
    if task not in metric.tasks:
        raise UserError(
            f"metric {name!r} is not defined for task {task!r} (it takes: {', '.join(metric.tasks)}); "
            f"metrics for {task}: {', '.join(list_metrics(task))}"
        )
    yt, yp = _check_inputs(name, y_true, y_pred, task)
    if not np.isfinite(yp).all():
        return float("nan")
    return float(metric.fn(yt, yp, task))


def to_labels(y_pred: Any, task: str, threshold: float | Any = DEFAULT_THRESHOLD) -> np.ndarray:
    """Predictions -> int labels: argmax (multiclass), >= threshold (binary, multilabel; per-label thresholds
    may be an (L,) array), nearest integer (regression, for ordinal targets as QWK needs); segmentation: uint8
    masks, p >= threshold (per-class thresholds may be a (C,) array)."""
    p = _to_numpy(y_pred)
    if task in PIXEL_TASKS:
        t = np.asarray(threshold)
        return (p >= (t.reshape(-1, 1, 1) if t.ndim == 1 else t)).astype(np.uint8)
    if task == "multiclass":
        if p.ndim != 2:
            raise UserError(f"multiclass predictions must be (N, C) probabilities, got shape {p.shape}")
        return p.argmax(axis=1)
    if task in SIGMOID_TASKS:
        return (p >= np.asarray(threshold)).astype(np.int64)
    if task == "regression":
        return np.rint(p).astype(np.int64)
    _check_task(task)
    raise AssertionError(task)  # unreachable: every task is handled above


# --- input checks ---------------------------------------------------------------------------------------------------


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: numpy() refuses grads, GPU memory and bfloat16
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        return x.numpy()
    return np.asarray(x)


_SHAPES = {  # task -> (y_true ndim, y_pred ndim, how to say it)
    "multiclass": (1, 2, "y_true (N,) class ids and y_pred (N, C) probabilities"),
    "binary": (1, 1, "y_true (N,) 0/1 and y_pred (N,) probabilities"),
    "multilabel": (2, 2, "y_true (N, L) 0/1 and y_pred (N, L) probabilities"),
    "regression": (1, 1, "y_true (N,) and y_pred (N,) values"),
    "segmentation": (4, 4, "y_true (N, C, H, W) 0/1 masks and y_pred (N, C, H, W) probabilities of the same shape"),
}


def _check_inputs(name: str, y_true: Any, y_pred: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    if task in PIXEL_TASKS:
        return _check_masks(name, y_true, y_pred, task)
    yt, yp = _to_numpy(y_true), _to_numpy(y_pred).astype(np.float64)
    if task in SINGLE_OUTPUT_TASKS:  # the model's (N, 1) output column is fine too
        yt = yt.reshape(-1) if yt.ndim == 2 and yt.shape[1] == 1 else yt
        yp = yp.reshape(-1) if yp.ndim == 2 and yp.shape[1] == 1 else yp
    nd_true, nd_pred, expected = _SHAPES[task]
    shapes_ok = yt.ndim == nd_true and yp.ndim == nd_pred and len(yt) == len(yp) > 0
    if not shapes_ok or (task == "multilabel" and yt.shape != yp.shape):
        raise UserError(f"metric {name!r} ({task}) expects {expected}; got shapes {yt.shape} and {yp.shape}")
    if task == "regression":
        return yt.astype(np.float64), yp
    if not np.isin(yt, np.arange(yp.shape[1] if task == "multiclass" else 2)).all():
        allowed = f"class ids 0..{yp.shape[1] - 1}" if task == "multiclass" else "0/1 values"
        raise UserError(f"metric {name!r} ({task}): y_true must hold {allowed}; found {np.unique(yt)[:10]}")
    return yt.astype(np.int64), yp


def _check_masks(name: str, y_true: Any, y_pred: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Masks are neither copied nor cast (an OOF set at full size is large): the metrics threshold them in chunks."""
    yt, yp = _to_numpy(y_true), _to_numpy(y_pred)
    if yt.ndim != 4 or yt.shape != yp.shape or len(yt) == 0:
        raise UserError(f"metric {name!r} ({task}) expects {_SHAPES[task][2]}; got shapes {yt.shape} and {yp.shape}")
    if not all(((c == 0) | (c == 1)).all() for c in _chunks(yt)):
        raise UserError(f"metric {name!r} ({task}): y_true must hold 0/1 masks; found {np.unique(yt)[:10]}")
    return yt, yp


# --- label metrics ---------------------------------------------------------------------------------------------------


@METRICS.register("accuracy", higher_is_better=True, tasks=CLASSIFICATION_TASKS, labels=True)
def _accuracy(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    hit = to_labels(y_pred, task) == y_true
    return float(hit.all(axis=1).mean() if task == "multilabel" else hit.mean())  # multilabel: exact match


@METRICS.register("balanced_accuracy", higher_is_better=True, tasks=("multiclass", "binary"), labels=True)
def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    labels = to_labels(y_pred, task)
    return float(np.mean([np.mean(labels[y_true == c] == c) for c in np.unique(y_true)]))  # mean recall


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    den = 2.0 * tp + fp + fn
    return np.divide(2.0 * tp, den, out=np.zeros_like(den), where=den > 0)  # 0/0 (no positives at all) -> 0


def _confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn) per label (multilabel) or per class seen in y_true or the predictions (as sklearn)."""
    labels = to_labels(y_pred, task)
    if task == "multilabel":
        t, p = y_true.astype(bool), labels.astype(bool)
    else:
        classes = np.union1d(y_true, labels)
        t, p = y_true[:, None] == classes, labels[:, None] == classes
    return (t & p).sum(0).astype(float), (~t & p).sum(0).astype(float), (t & ~p).sum(0).astype(float)


@METRICS.register("f1_macro", higher_is_better=True, tasks=CLASSIFICATION_TASKS, labels=True)
def _f1_macro(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    return float(_f1(*_confusion_counts(y_true, y_pred, task)).mean())


@METRICS.register(
    "f1_micro", higher_is_better=True, tasks=("multiclass", "multilabel"), labels=True
)  # binary micro-F1 is just accuracy
def _f1_micro(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    tp, fp, fn = (c.sum(keepdims=True) for c in _confusion_counts(y_true, y_pred, task))
    return float(_f1(tp, fp, fn)[0])


@METRICS.register(
    "f1", higher_is_better=True, tasks=("binary",), labels=True
)  # F1 of the positive class, the usual "F1" of binary competitions
def _f1_binary(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    t, p = y_true == 1, to_labels(y_pred, task) == 1
    tp, fp, fn = (np.array([np.sum(m, dtype=float)]) for m in (t & p, ~t & p, t & ~p))
    return float(_f1(tp, fp, fn)[0])


def _qwk(a: np.ndarray, b: np.ndarray) -> float:
    """Quadratic weighted kappa of two integer ratings, in closed form: with weights (i - j)^2,
    sum(W * O) = sum_n (a_n - b_n)^2 and sum(W * E) = (1/N) sum_n sum_m (a_n - b_m)^2. This equals Kaggle's
    definition over the rating range min..max (and sklearn's with labels=range(min, max + 1)), without building
    a confusion matrix whose size depends on how far off a bad prediction is."""
    shift = a.mean()  # kappa is shift-invariant; centring keeps the sums small
    a, b = a - shift, b - shift
    observed = np.sum((a - b) ** 2)
    expected = np.sum(a**2) + np.sum(b**2) - 2.0 * a.sum() * b.sum() / len(a)
    return float(1.0 - observed / expected) if expected > 0 else float("nan")  # nan: both constant and equal


@METRICS.register("qwk", higher_is_better=True, tasks=("multiclass", "regression"), labels=True)
def _qwk_metric(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    truth = np.rint(y_true) if task == "regression" else y_true
    return _qwk(truth.astype(np.float64), to_labels(y_pred, task).astype(np.float64))


# --- score metrics ---------------------------------------------------------------------------------------------------


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); nan if y holds one class only."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((rankdata(s)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@METRICS.register("roc_auc", higher_is_better=True, tasks=CLASSIFICATION_TASKS, rank_only=True)
def _roc_auc(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    if task == "binary":
        return _binary_auc(y_true, y_pred)
    onehot = np.eye(y_pred.shape[1], dtype=np.int64)[y_true] if task == "multiclass" else y_true
    aucs = [_binary_auc(onehot[:, j], y_pred[:, j]) for j in range(y_pred.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]  # one-vs-rest macro over the classes / labels that have an AUC
    return float(np.mean(aucs)) if aucs else float("nan")


@METRICS.register("log_loss", higher_is_better=False, tasks=CLASSIFICATION_TASKS)
def _log_loss(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    p = np.clip(y_pred, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    if task == "multiclass":
        p = p / p.sum(axis=1, keepdims=True)  # Kaggle renormalises rows after clipping
        return float(-np.mean(np.log(p[np.arange(len(p)), y_true])))
    return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))  # multilabel: mean over labels too


@METRICS.register("rmse", higher_is_better=False, tasks=("regression",))
def _rmse(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


@METRICS.register("mae", higher_is_better=False, tasks=("regression",))
def _mae(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    return float(np.mean(np.abs(y_true - y_pred)))


def _map_at_k(y_true: np.ndarray, y_pred: np.ndarray, task: str, k: int) -> float:
    """Kaggle's MAP@k with one true label per row: 1/rank of the true class if it is in the top k, else 0.
    Equal probabilities rank the lower class id first (stable sort), so the score is deterministic."""
    top = np.argsort(-y_pred, axis=1, kind="stable")[:, :k]
    hit = top == y_true[:, None]
    return float((hit / np.arange(1, top.shape[1] + 1)).sum(axis=1).mean())


for _k in (3, 5):
    METRICS.register(
        f"map_at_{_k}", functools.partial(_map_at_k, k=_k), higher_is_better=True, tasks=("multiclass",), labels=True
    )


# --- segmentation metrics --------------------------------------------------------------------------------------------


def _chunks(a: np.ndarray) -> list[np.ndarray]:
    """`a` split along N into views of about MASK_CHUNK_VALUES values each."""
    step = max(1, MASK_CHUNK_VALUES // max(1, a[:1].size))
    return [a[i : i + step] for i in range(0, len(a), step)]


def mask_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, predicted pixels, true pixels) per image and class, (N, C) int64 each, with y_pred thresholded
    at DEFAULT_THRESHOLD. Every segmentation metric is a function of these three counts."""
    inter, pred, true = [], [], []
    for t, p in zip(_chunks(y_true), _chunks(y_pred), strict=True):
        t, p = t.astype(bool), p >= DEFAULT_THRESHOLD
        inter.append(np.count_nonzero(t & p, axis=(2, 3)))
        pred.append(np.count_nonzero(p, axis=(2, 3)))
        true.append(np.count_nonzero(t, axis=(2, 3)))
    return tuple(np.concatenate(c).astype(np.int64) for c in (inter, pred, true))  # type: ignore[return-value]


def _ratio_or_one(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 1 where den == 0: an empty prediction of an empty mask is exactly right (Kaggle's rule)."""
    num, den = num.astype(np.float64), den.astype(np.float64)
    return np.divide(num, den, out=np.ones_like(den), where=den > 0)


@METRICS.register("dice", higher_is_better=True, tasks=PIXEL_TASKS, labels=True)
def _dice(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    """Kaggle's mean Dice: 2|A&B| / (|A| + |B|) per image and class (1 when both are empty), averaged over all the
    image x class pairs. Empty masks weigh as much as large ones, so a false positive on an empty image costs a
    whole pair: what min_area and empty_below in post-processing are for."""
    inter, pred, true = mask_counts(y_true, y_pred)
    return float(_ratio_or_one(2 * inter, pred + true).mean())


@METRICS.register("iou", higher_is_better=True, tasks=PIXEL_TASKS, labels=True)
def _iou(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    """Mean IoU (Jaccard) per image and class, |A&B| / |A|B| (1 when both are empty), as `dice` averages."""
    inter, pred, true = mask_counts(y_true, y_pred)
    return float(_ratio_or_one(inter, pred + true - inter).mean())


@METRICS.register("miou", higher_is_better=True, tasks=PIXEL_TASKS, labels=True)
def _miou(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    """Dataset-level mean IoU (semantic-segmentation benchmarks): per class, intersection and union summed over every
    image, then the mean over classes. A class absent from both truth and prediction has no IoU and is left out;
    with none present at all, nothing was wrong: 1."""
    inter, pred, true = mask_counts(y_true, y_pred)
    i, u = inter.sum(0), (pred + true - inter).sum(0)
    present = u > 0
    return float((i[present] / u[present]).mean()) if present.any() else 1.0
