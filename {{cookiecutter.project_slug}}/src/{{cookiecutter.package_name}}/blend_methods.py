"""Blend methods: how member predictions (M, N, C) become weights (M,) summing to 1, in a registry.

mean and rank give equal weights (rank on per-column ranks), weighted takes the user's, hill_climb (Caruana's
ensemble selection) and optimize (Nelder-Mead on the simplex) tune them on the OOF rows against an `Objective`.
Add a method: write a fit function `(preds, objective, user weights) -> weights` and
`BLEND_METHODS.add(name, BlendMethod(fit))`; tests/test_ensemble.py runs every registered method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from . import metrics
from .errors import UserError
from .registry import Registry

# Metrics that depend only on the order of each prediction column, where averaging ranks is legitimate.
RANK_METRICS = frozenset({"roc_auc"})
# Metrics that move smoothly (or piecewise linearly) with the weights; the others count thresholded labels.
SCORE_METRICS = frozenset({"roc_auc", "log_loss", "rmse", "mae"})
HILL_CLIMB_MAX_ITER = 100


@dataclass
class Objective:
    """The metric on some OOF rows, as a `gain` that is larger when better whatever the metric's direction."""

    metric: str
    task: str
    y: np.ndarray
    higher: bool

    def score(self, pred: np.ndarray) -> float:
        return metrics.score(self.metric, self.y, _task_format(pred, self.task), self.task)

    def gain(self, pred: np.ndarray) -> float:
        s = self.score(pred)
        return -np.inf if np.isnan(s) else (s if self.higher else -s)

    def subset(self, rows: np.ndarray) -> Objective:
        return Objective(self.metric, self.task, self.y[rows], self.higher)


FitFn = Callable[[np.ndarray, Objective, "list[float] | None"], np.ndarray]


@dataclass(frozen=True)
class BlendMethod:
    fit: FitFn  # (member predictions (M, N, C), objective, user weights) -> weights (M,) summing to 1
    tuned: bool = False  # weights are fit on the OOF rows: report a nested estimate too
    rank: bool = False  # blend per-column ranks instead of the values


BLEND_METHODS: Registry[BlendMethod] = Registry("blend method")


def list_blend_methods() -> list[str]:
    return BLEND_METHODS.names()


def _task_format(pred: np.ndarray, task: str) -> np.ndarray:
    return pred[:, 0] if task in ("binary", "regression") else pred


def combine(preds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted arithmetic mean over members: (M, N, C) x (M,) -> (N, C)."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), preds, axes=1)


def to_ranks(preds: np.ndarray) -> np.ndarray:
    """Each member's each column -> its ranks scaled to (0, 1] (ties share the average rank)."""
    return rankdata(preds, axis=1) / preds.shape[1]


def _equal(preds: np.ndarray, obj: Objective, weights: list[float] | None) -> np.ndarray:
    return np.full(len(preds), 1.0 / len(preds))


def _weighted(preds: np.ndarray, obj: Objective, weights: list[float] | None) -> np.ndarray:
    if weights is None or len(weights) != len(preds):
        raise UserError(f"method=weighted needs one weight per experiment ({len(preds)}), got {weights}")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise UserError(f"blend weights must be >= 0 with a positive sum, got {weights}")
    return w / w.sum()


def _hill_climb(preds: np.ndarray, obj: Objective, weights: list[float] | None) -> np.ndarray:
    """Caruana et al. (2004) ensemble selection with replacement, starting from the best single model:
    add the member that improves the blend most, stop when none does. Weights = selection counts / total."""
    gains = [obj.gain(p) for p in preds]
    counts = np.zeros(len(preds))
    best = int(np.argmax(gains))
    counts[best], total, current = 1, preds[best].astype(np.float64), gains[best]
    for _ in range(HILL_CLIMB_MAX_ITER):
        n = counts.sum()
        trial = [obj.gain((total + p) / (n + 1)) for p in preds]
        pick = int(np.argmax(trial))
        if not trial[pick] > current + 1e-12:
            break
        counts[pick], total, current = counts[pick] + 1, total + preds[pick], trial[pick]
    return counts / counts.sum()


def _surrogate(obj: Objective) -> Callable[[np.ndarray], float]:
    """A smooth loss for label metrics (accuracy, F1, QWK, MAP@k are step functions of the weights, where a
    simplex search stalls on the first plateau): cross-entropy for classification, squared error for regression."""
    y, eps = obj.y, 1e-7
    if obj.task == "multiclass":
        return lambda p: float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))
    if obj.task == "regression":
        return lambda p: float(np.mean((p[:, 0] - y) ** 2))
    t = y.reshape(len(y), -1)
    return lambda p: float(-np.mean(t * np.log(np.clip(p, eps, 1)) + (1 - t) * np.log(np.clip(1 - p, eps, 1))))


def _softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(theta - theta.max())
    return e / e.sum()


def _optimize(preds: np.ndarray, obj: Objective, weights: list[float] | None) -> np.ndarray:
    """scipy Nelder-Mead over softmax-parametrised weights (always on the simplex; member 0's logit fixed at 0).
    Nelder-Mead needs no gradient, so AUC, MAE and RMSE are optimised as they are; label metrics through the
    smooth surrogate of `_surrogate`. Starts from equal weights."""
    if len(preds) == 1:
        return np.ones(1)
    loss = (lambda p: -obj.gain(p)) if obj.metric in SCORE_METRICS else _surrogate(obj)
    result = minimize(
        lambda th: loss(combine(preds, _softmax(np.r_[0.0, th]))),
        np.zeros(len(preds) - 1),
        method="Nelder-Mead",
        options={"xatol": 1e-4, "fatol": 1e-9, "maxiter": 200 * len(preds)},
    )
    return _softmax(np.r_[0.0, result.x])


BLEND_METHODS.add("mean", BlendMethod(_equal))
BLEND_METHODS.add("weighted", BlendMethod(_weighted))
BLEND_METHODS.add("rank", BlendMethod(_equal, rank=True))
BLEND_METHODS.add("hill_climb", BlendMethod(_hill_climb, tuned=True))
BLEND_METHODS.add("optimize", BlendMethod(_optimize, tuned=True))
