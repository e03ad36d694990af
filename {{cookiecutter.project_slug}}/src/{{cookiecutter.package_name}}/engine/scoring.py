"""Scoring out-of-fold predictions, and the decisions tuned on them: per-fold and overall scores, binary and
per-label thresholds, ordinal cuts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from ..config import Config, metric_name
from ..core.errors import UserError
from ..core.tasks import SINGLE_OUTPUT_TASKS
from ..data.problem import (
    load_problem,
)
from ..modeling import metrics


def score_oof(cfg: Config, oof: pd.DataFrame) -> tuple[dict[str, float], float, np.ndarray, np.ndarray]:
    """Per-fold scores, the overall OOF score, and the aligned (truth, prediction) arrays."""
    problem = load_problem(cfg)
    position = {i: n for n, i in enumerate(problem.ids)}
    rows = np.array([position[i] for i in oof[cfg.data.id_col]])
    y_true, pred = problem.y[rows], oof[problem.classes].to_numpy()
    if cfg.task in SINGLE_OUTPUT_TASKS:
        pred = pred[:, 0]
    name = metric_name(cfg)
    per_fold = {}
    for k in sorted(oof["fold"].unique()):
        m = (oof["fold"] == k).to_numpy()
        per_fold[str(int(k))] = metrics.score(name, y_true[m], pred[m], cfg.task)
    return per_fold, metrics.score(name, y_true, pred, cfg.task), y_true, pred


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


def ordinal(cfg: Config) -> bool:
    """Whether regression predictions are rounded to the target's levels with cuts tuned on OOF (submit.ordinal;
    unset: on for metric qwk, which scores whole grades)."""
    if cfg.task != "regression":
        return False
    return cfg.submit.ordinal if cfg.submit.ordinal is not None else metric_name(cfg) == "qwk"


MAX_LEVELS = 100  # more distinct target values than this is a continuous target, not grades


def target_levels(cfg: Config, target: np.ndarray) -> np.ndarray:
    """The grades an ordinal prediction is rounded to: the distinct target values of the training rows (whole
    numbers for qwk, which scores rounded values)."""
    values = np.asarray(target, dtype=np.float64)
    levels = np.unique(np.rint(values) if metric_name(cfg) == "qwk" else values)
    if len(levels) > MAX_LEVELS:
        raise UserError(
            f"{cfg.data.train_csv}: column '{cfg.target_cols[0]}' has {len(levels)} distinct values: submit.ordinal "
            f"rounds to the target's values, which needs grades (at most {MAX_LEVELS}); set submit.ordinal=false"
        )
    return levels


def apply_cuts(p: np.ndarray, levels: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Values -> levels: below cuts[0] the first level, between cuts[i-1] and cuts[i] level i, ..."""
    return levels[np.digitize(p, np.sort(cuts))]


def tune_cuts(y: np.ndarray, p: np.ndarray, levels: np.ndarray, metric: str) -> np.ndarray:
    """The cuts between consecutive `levels` that score best on OOF (y, p) with `metric`: Nelder-Mead from the
    midpoints (plain rounding), kept only if it beats them (the APTOS trick, for any regression metric)."""
    if len(levels) < 2:
        return np.zeros(0)
    m = metrics.get_metric(metric)

    def gain(t: np.ndarray) -> float:
        return m.gain(metrics.score(metric, y, apply_cuts(p, levels, t), "regression"))

    start = (levels[1:] + levels[:-1]) / 2
    res = minimize(lambda t: -gain(t), start, method="Nelder-Mead", options={"maxiter": 400, "xatol": 1e-3})
    return np.sort(res.x) if gain(res.x) > gain(start) else start
