"""Scoring out-of-fold predictions, and the decisions tuned on them: per-fold and overall scores, the binary
threshold and per-label thresholds, ordinal cuts, clipping, and the CV of exactly what a submission holds.

`decide` is the one place these decisions are made (on the OOF predicted as the test set is); `as_submitted` is the
one place they are applied, to OOF (the CV) and test predictions (the submission) alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from ..config import Config, metric_name
from ..core.errors import UserError
from ..core.runs import Decisions
from ..core.tasks import PIXEL_TASKS, SINGLE_OUTPUT_TASKS
from ..data.problem import Problem
from ..modeling import metrics
from . import postprocess


def score_oof(
    cfg: Config, problem: Problem, oof: pd.DataFrame, maps: np.ndarray | None = None
) -> tuple[dict[str, float], float, np.ndarray, np.ndarray]:
    """Per-fold scores, the overall OOF score, and the aligned (truth, prediction) arrays; the truth is `problem`'s
    (data.problem.load_problem, read once by the command). Segmentation: `maps` are the OOF rows' probability maps
    (uint8, core.runs.read_masks), scored against the masks at their size."""
    position = {i: n for n, i in enumerate(problem.ids)}
    rows = np.array([position[i] for i in oof[cfg.data.id_col]])
    if cfg.task in PIXEL_TASKS:
        if maps is None:
            raise TypeError("score_oof: a segmentation OOF table is scored with its maps")
        y_true, pred = problem.truth(rows, maps.shape[-1]), maps.astype(np.float32) / 255
    else:
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
    """The threshold among the default and 99 quantiles of `p` whose labels score best with `metric` (in its
    direction; the first of equals)."""
    m = metrics.get_metric(metric)
    cand = np.unique(np.r_[default, np.quantile(p, np.linspace(0.01, 0.99, 99))])
    gains = [m.gain(metrics.score(metric, y, (p >= t).astype(np.float64), "binary")) for t in cand]
    return float(cand[int(np.argmax(gains))])


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


def top_k(metric: str) -> int:
    """How many ranked labels a multiclass submission holds: k for map_at_k, else 1."""
    return int(metric.rsplit("_", 1)[1]) if metric.startswith("map_at_") else 1


def as_submitted(task: str, d: Decisions, pred: np.ndarray) -> np.ndarray:
    """Predictions (N, C) as a submission made with decisions `d` holds them, in the task's prediction format:
    thresholded labels as 0/1 (a multilabel tags row is never empty: its most probable label), regression values
    clipped and rounded to the ordinal levels; anything else unchanged. Binary and regression return (N,)."""
    pred = np.asarray(pred, dtype=np.float64)
    if task == "binary":
        p = pred[:, 0] if pred.ndim == 2 else pred
        return (p >= d.threshold).astype(np.float64)[:, None] if d.threshold is not None else p[:, None]
    if task == "multilabel" and d.thresholds is not None:
        chosen = pred >= np.asarray(d.thresholds)[None, :]
        if d.format == "tags":
            chosen[np.arange(len(pred)), pred.argmax(1)] |= ~chosen.any(1)
        return chosen.astype(np.float64)
    if task == "regression":
        values = pred[:, 0] if pred.ndim == 2 else pred
        if d.clip is not None:
            values = np.clip(values, *d.clip)
        if d.ordinal is not None:
            values = apply_cuts(values, np.asarray(d.ordinal["levels"]), np.asarray(d.ordinal["cuts"]))
        return values
    return pred


def decide(cfg: Config, fmt: str, y: np.ndarray, pred: np.ndarray, target: np.ndarray, cv_from: str,
           **predicted: object) -> Decisions:  # fmt: skip
    """The decisions a submission in format `fmt` applies, tuned on OOF (`y`, `pred` (N, C) as predicted for the
    test set, read from `cv_from`), and the CV of the result. `target`: the training table's target (regression:
    its range and levels). `predicted`: views, merge, runtime, models, members, recorded as they are."""
    name = metric_name(cfg)
    metric = metrics.get_metric(name)
    label_metric = name in metrics.label_metrics()
    d = Decisions(metric=name, higher_is_better=metric.higher_is_better, cv=float("nan"), cv_from=cv_from, format=fmt,
                  **predicted)  # fmt: skip
    if cfg.task in PIXEL_TASKS:  # thresholds, smallest component, empty masks: per class, tuned on the OOF maps
        exclusive = cfg.data.mask_mode == "multiclass"
        if cfg.submit.tune_postprocess:
            pp = postprocess.tune(pred, y, name, exclusive)[0]
        else:
            pp = postprocess.default(len(pred[0]), exclusive)
        masks = postprocess.apply(pred, pp).astype(np.float32)
        return dataclasses.replace(d, postprocess=pp, cv=float(metrics.score(name, y, masks, cfg.task)))
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    if cfg.task == "binary" and fmt == "label":
        t = cfg.submit.threshold
        if cfg.submit.tune_thresholds and label_metric:
            t = tune_binary_threshold(y, pred[:, 0], name, t)
        d = dataclasses.replace(d, threshold=float(t))
    elif cfg.task == "multilabel" and (fmt == "tags" or (fmt == "probs" and label_metric)):
        if cfg.submit.tune_thresholds:
            thresholds = tune_f1_thresholds(y, pred, cfg.submit.threshold)
        else:
            thresholds = np.full(pred.shape[1], cfg.submit.threshold)
        d = dataclasses.replace(d, thresholds=[float(t) for t in thresholds])
    elif cfg.task == "regression":
        values = np.asarray(target, dtype=np.float64)
        clip = [float(np.nanmin(values)), float(np.nanmax(values))] if cfg.submit.clip else None
        d = dataclasses.replace(d, clip=clip)
        if ordinal(cfg):
            levels = target_levels(cfg, values)
            cuts = tune_cuts(y, as_submitted(cfg.task, d, pred), levels, name)
            d = dataclasses.replace(d, ordinal={"levels": levels.tolist(), "cuts": [float(c) for c in cuts]})
    submitted = as_submitted(cfg.task, d, pred)
    if cfg.task in SINGLE_OUTPUT_TASKS:
        submitted = submitted.reshape(len(submitted), -1)[:, 0]
    return dataclasses.replace(d, cv=float(metrics.score(name, y, submitted, cfg.task)))
