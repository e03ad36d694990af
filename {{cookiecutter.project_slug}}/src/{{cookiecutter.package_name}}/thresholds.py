"""Thresholds tuned on an experiment's out-of-fold predictions, for submissions that hold labels, not scores.

Binary labels: the threshold on P(positive) that maximises the metric; multilabel: per-label thresholds that maximise
each label's F1; a regression scored by QWK: the cuts between the target levels that maximise QWK. Candidates are
submit.threshold and 99 quantiles of the OOF predictions, so a threshold is always one the OOF rows can tell apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize

from . import metrics
from .blend_methods import SCORE_METRICS
from .config import Config, metric_name
from .ensemble import load_members, oof_truth


def tune_f1_thresholds(y: np.ndarray, p: np.ndarray, default: float) -> np.ndarray:
    """Per column of (N, L) probabilities, the threshold among the default and 99 quantiles maximising F1."""
    out = np.full(p.shape[1], default)
    for j in range(p.shape[1]):
        cand = np.unique(np.r_[default, np.quantile(p[:, j], np.linspace(0.01, 0.99, 99))])
        pred, truth = p[:, j, None] >= cand[None, :], y[:, j, None] > 0.5
        tp, fp, fn = (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)
        f1 = np.divide(2.0 * tp, 2.0 * tp + fp + fn, out=np.zeros(len(cand)), where=(2 * tp + fp + fn) > 0)
        out[j] = cand[int(np.argmax(f1))]
    return out


def tune_binary_threshold(y: np.ndarray, p: np.ndarray, metric: str, default: float) -> float:
    cand = np.unique(np.r_[default, np.quantile(p, np.linspace(0.01, 0.99, 99))])
    scores = [metrics.score(metric, y, (p >= t).astype(np.float64), "binary") for t in cand]
    return float(cand[int(np.nanargmax(scores))])


def tune_rounding(y: np.ndarray, p: np.ndarray, values: np.ndarray) -> np.ndarray:
    """QWK: thresholds between the sorted target values, from the midpoints, tuned by Nelder-Mead on OOF."""

    def qwk(t: np.ndarray) -> float:
        s = metrics.score("qwk", y, values[np.digitize(p, np.sort(t))], "regression")
        return -1.0 if np.isnan(s) else s

    start = (values[1:] + values[:-1]) / 2
    res = minimize(lambda t: -qwk(t), start, method="Nelder-Mead", options={"maxiter": 400, "xatol": 1e-3})
    return np.sort(res.x) if qwk(res.x) >= qwk(start) else start


def oof_predictions(cfg: Config, exp: str) -> tuple[np.ndarray, np.ndarray]:
    """The experiment's OOF targets and predictions (N, C), aligned by id."""
    members = load_members(cfg, [exp])
    y, _, _ = oof_truth(cfg, members)
    return y, members.oof[0]


def binary_threshold(cfg: Config, exp: str, log: Callable[[str], None]) -> float:
    """submit.threshold, or tuned on OOF when submit.tune_thresholds is on and the metric counts labels."""
    t = cfg.submit.threshold
    if cfg.submit.tune_thresholds and metric_name(cfg) not in SCORE_METRICS:
        y, oof = oof_predictions(cfg, exp)
        t = tune_binary_threshold(y, oof[:, 0], metric_name(cfg), t)
        log(f"binary threshold tuned on OOF for {metric_name(cfg)}: {t:.4f}")
    return t


def label_thresholds(cfg: Config, exp: str, classes: list[str], log: Callable[[str], None]) -> np.ndarray:
    """Multilabel: per-label thresholds maximising each label's F1 on OOF, or submit.threshold for all."""
    if not cfg.submit.tune_thresholds:
        return np.full(len(classes), cfg.submit.threshold)
    y, oof = oof_predictions(cfg, exp)
    thresholds = tune_f1_thresholds(y, oof, cfg.submit.threshold)
    log(
        "per-label thresholds tuned on OOF F1: "
        + ", ".join(f"{c}={t:.3f}" for c, t in zip(classes, thresholds, strict=True))
    )
    return thresholds


def rounding_cuts(cfg: Config, exp: str, levels: np.ndarray, log: Callable[[str], None]) -> np.ndarray:
    """QWK regression: the cuts between `levels` (the sorted target values) tuned on OOF."""
    y, oof = oof_predictions(cfg, exp)
    cuts = tune_rounding(y, oof[:, 0], levels)
    log("QWK rounding thresholds tuned on OOF: " + ", ".join(f"{c:.3f}" for c in cuts))
    return cuts
