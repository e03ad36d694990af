"""Blend experiments on their out-of-fold predictions: mean, weighted, rank, hill climbing, optimised weights,
stacking (a scikit-learn meta-model) and majority vote.

Members are aligned by id and must share the folds (same folds_hash) and prediction columns. Most methods blend by a
weighted arithmetic mean of the members' predictions (probability rows of multiclass members stay normalised);
stacking and vote combine them otherwise (`Blend.model`). The output folder has the files of an experiment (oof.csv,
test_pred.csv, cv.json, classes.json) plus weights.json (method, members, weights or the meta-model's parameters),
so an ensemble can be blended again, pseudo-labelled from (weighted means only), or submitted.

Weights tuned on the OOF rows (hill_climb, optimize) flatter the OOF score they were tuned on; cv.json then also
holds `cv_nested`: the weights tuned on k-1 folds and scored on the held-out fold, averaged over folds.

method=stacking fits a meta-model on the members' OOF predictions (logistic regression on log-probabilities or
log-odds for classification, ridge regression on the values for regression). Its OOF predictions come fold by fold
from a meta-model fitted on the other folds' rows only, so its `cv` is honest as it stands (`cv_in_sample`, the
meta-model scored on the rows it was fitted on, shows how much an in-sample fit would flatter it); the test rows get
the meta-model fitted on every OOF row.

method=vote: each member votes for its label (argmax; >= 0.5 for binary and multilabel), the share of votes is the
prediction, ties broken by the mean probability (the soft vote, which is what method=mean is).

method=rank averages each column's ranks (scaled to (0, 1], test ranked within the test set): the output holds
ranks, not probabilities, so it is allowed only for metrics that read nothing but each column's order (AUC).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression, Ridge

from .config import Config, load, metric_name
from .core.errors import UserError
from .core.registry import Registry
from .core.runs import (
    STALE_TMP_AGE,
    BlendWeights,
    BudgetChoice,
    Classes,
    CVSummary,
    Run,
    SeedBag,
    read_masks,
    read_pred_csv,
    remove_stale_tmp,
)
from .core.tasks import CLASSIFICATION_TASKS, PIXEL_TASKS, SINGLE_OUTPUT_TASKS, TASKS
from .core.tracking import Tracker, score_summary
from .data.folds import expected_folds
from .data.problem import oof_truth, save_predictions, test_dataset
from .engine import budget
from .engine.codec import record_decisions
from .engine.inference import as_decided, fold_models, fold_predictors, predict_loader
from .modeling import metrics

HILL_CLIMB_MAX_ITER = 100
STACK_C = 1.0  # inverse L2 strength of the logistic meta-model (scikit-learn's default)
STACK_ALPHA = 1.0  # L2 strength of the ridge meta-model (regression)
STACK_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the log


@dataclass
class Objective:
    """The metric on some OOF rows, as a `gain` that is larger when better whatever the metric's direction."""

    metric: str
    task: str
    y: np.ndarray

    def score(self, pred: np.ndarray) -> float:
        return metrics.score(self.metric, self.y, _task_format(pred, self.task), self.task)

    def gain(self, pred: np.ndarray) -> float:
        return metrics.get_metric(self.metric).gain(self.score(pred))

    def subset(self, rows: np.ndarray) -> Objective:
        return Objective(self.metric, self.task, self.y[rows])


@dataclass(frozen=True)
class Blend:
    """What a blend method learnt on some OOF rows, enough to blend any rows the same way (weights.json records
    it): member weights summing to 1 (a weighted mean), or the JSON parameters of another combination (`model`,
    with its "kind": stacking, vote)."""

    weights: np.ndarray | None = None
    model: dict | None = None

    def apply(self, preds: np.ndarray) -> np.ndarray:
        """(M, N, C) member predictions -> (N, C)."""
        if self.model is None:
            return combine(preds, self.weights)
        return COMBINERS[self.model["kind"]](self.model, preds)


FitFn = Callable[[np.ndarray, Objective, "list[float] | None"], "np.ndarray | Blend"]


@dataclass(frozen=True)
class BlendMethod:
    fit_fn: FitFn  # (member predictions (M, N, C), objective, user weights) -> weights (M,) summing to 1, or a Blend
    tuned: bool = False  # weights are fit on the OOF rows: report a nested estimate too
    rank: bool = False  # blend per-column ranks instead of the values
    foldwise: bool = False  # fitted on the OOF rows: its OOF predictions come from fits on the other folds
    tasks: tuple[str, ...] = TASKS

    def fit(self, preds: np.ndarray, obj: Objective, weights: list[float] | None) -> Blend:
        out = self.fit_fn(preds, obj, weights)
        return out if isinstance(out, Blend) else Blend(weights=np.asarray(out, dtype=np.float64))


BLEND_METHODS: Registry[FitFn] = Registry("blend method")


def get_blend_method(name: str) -> BlendMethod:
    return BlendMethod(BLEND_METHODS.get(name), **BLEND_METHODS.meta(name))


def list_blend_methods() -> list[str]:
    return BLEND_METHODS.names()


def _task_format(pred: np.ndarray, task: str) -> np.ndarray:
    return pred[:, 0] if task in SINGLE_OUTPUT_TASKS else pred


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
    loss = (lambda p: -obj.gain(p)) if obj.metric not in metrics.label_metrics() else _surrogate(obj)
    result = minimize(
        lambda th: loss(combine(preds, _softmax(np.r_[0.0, th]))),
        np.zeros(len(preds) - 1),
        method="Nelder-Mead",
        options={"xatol": 1e-4, "fatol": 1e-9, "maxiter": 200 * len(preds)},
    )
    return _softmax(np.r_[0.0, result.x])


# ----------------------------------------------------------------------------------------------- stacking


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, STACK_EPS, 1 - STACK_EPS)
    return np.log(p) - np.log1p(-p)


def _stack_inputs(preds: np.ndarray, task: str) -> list[np.ndarray]:
    """The meta-model's features, one (N, F) matrix per fitted head: multiclass one head on every member's
    log-probabilities (M * C features); binary and multilabel one head per column on the members' log-odds of it
    (M features); regression one head on the members' values."""
    m, n, c = preds.shape
    if task == "multiclass":
        return [np.log(np.clip(preds, STACK_EPS, 1.0)).transpose(1, 0, 2).reshape(n, m * c)]
    if task == "regression":
        return [preds[:, :, 0].T]
    return [_logit(preds[:, :, j]).T for j in range(c)]


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> dict:
    """A multinomial logistic regression as plain numbers: logits = x @ coef.T + intercept over `classes` (the
    labels present in `y`; a fold without some class predicts it with probability 0)."""
    classes = np.unique(y)
    if len(classes) == 1:  # nothing to separate: that label, always
        coef, intercept = np.zeros((1, x.shape[1])), np.zeros(1)
    else:
        # Fitted on standardised features (lbfgs converges in a few dozen steps instead of thousands on raw
        # log-probabilities), then the scaling is folded back into the coefficients.
        mean, scale = x.mean(0), x.std(0) + 1e-12
        model = LogisticRegression(C=STACK_C, max_iter=1000).fit((x - mean) / scale, y)
        coef = model.coef_ / scale
        intercept = model.intercept_ - coef @ mean
        if len(classes) == 2:  # scikit-learn keeps one row for two classes: the logit of the second
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    return {"classes": classes.astype(int).tolist(), "coef": coef.tolist(), "intercept": np.asarray(intercept).tolist()}


def _logistic_probs(head: dict, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities of a `_fit_logistic` head; classes it never saw get 0."""
    logits = np.full((len(x), n_classes), -np.inf)
    logits[:, head["classes"]] = x @ np.asarray(head["coef"]).T + np.asarray(head["intercept"])
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _stacking(preds: np.ndarray, obj: Objective, weights: list[float] | None) -> Blend:
    inputs, y = _stack_inputs(preds, obj.task), obj.y
    if obj.task == "regression":
        ridge = Ridge(alpha=STACK_ALPHA).fit(inputs[0], y)
        heads = [{"coef": ridge.coef_.tolist(), "intercept": float(ridge.intercept_)}]
    elif obj.task == "multiclass":
        heads = [_fit_logistic(inputs[0], y)]
    else:
        labels = y.reshape(len(y), -1).astype(int)
        heads = [_fit_logistic(x, labels[:, j]) for j, x in enumerate(inputs)]
    return Blend(model={"kind": "stacking", "task": obj.task, "heads": heads})


def _stacked(model: dict, preds: np.ndarray) -> np.ndarray:
    task, heads = model["task"], model["heads"]
    inputs = _stack_inputs(preds, task)
    if task == "regression":
        return (inputs[0] @ np.asarray(heads[0]["coef"]) + heads[0]["intercept"])[:, None]
    if task == "multiclass":
        return _logistic_probs(heads[0], inputs[0], preds.shape[2])
    return np.stack([_logistic_probs(h, x, 2)[:, 1] for h, x in zip(heads, inputs, strict=True)], axis=1)


# ----------------------------------------------------------------------------------------------- vote


def _vote(preds: np.ndarray, obj: Objective, weights: list[float] | None) -> Blend:
    return Blend(model={"kind": "vote", "task": obj.task})


def _voted(model: dict, preds: np.ndarray) -> np.ndarray:
    """(votes + mean probability) / (M + 1): the share of votes, rows summing to 1 (multiclass), where the soft vote
    (< 1) only breaks ties between labels with as many votes."""
    labels = np.eye(preds.shape[2])[preds.argmax(2)] if model["task"] == "multiclass" else preds >= 0.5
    return (labels.sum(0) + preds.mean(0)) / (len(preds) + 1)


COMBINERS: dict[str, Callable[[dict, np.ndarray], np.ndarray]] = {"stacking": _stacked, "vote": _voted}

BLEND_METHODS.register("mean", _equal)
BLEND_METHODS.register("weighted", _weighted)
# Segmentation maps blend by a weighted mean (mean, weighted, hill_climb); ranks, fitted weights and meta-models of
# per-pixel columns are not defined for them.
TABLE_TASKS = tuple(t for t in TASKS if t not in PIXEL_TASKS)
BLEND_METHODS.register("rank", _equal, rank=True, tasks=TABLE_TASKS)
BLEND_METHODS.register("hill_climb", _hill_climb, tuned=True)
BLEND_METHODS.register("optimize", _optimize, tuned=True, tasks=TABLE_TASKS)
BLEND_METHODS.register("stacking", _stacking, foldwise=True, tasks=TABLE_TASKS)
BLEND_METHODS.register("vote", _vote, tasks=CLASSIFICATION_TASKS)


def apply_saved(info: BlendWeights, preds: np.ndarray) -> np.ndarray:
    """Blend (M, N, C) member predictions as weights.json (`info`) records (the offline notebook recomputes an
    uploaded ensemble with it)."""
    weights = None if info.weights is None else np.asarray(info.weights, dtype=np.float64)
    return Blend(weights, info.model).apply(to_ranks(preds) if info.rank else preds)


@dataclass
class Members:
    """The experiments' predictions aligned by id: oof (M, N, C) on the OOF ids, test (M, T, C) or None."""

    names: list[str]
    cv: list[CVSummary]
    classes: Classes
    ids: list[str]
    oof: np.ndarray
    test_ids: list[str] | None
    test: np.ndarray | None
    folds_missing: list[int]  # folds some member has not finished (blended anyway: --allow-partial)


def _check_same(names: list[str], infos: list[CVSummary], key: str, what: str) -> None:
    for name, info in zip(names[1:], infos[1:], strict=True):
        if getattr(info, key) != getattr(infos[0], key):
            raise UserError(
                f"experiments {names[0]!r} and {name!r} have different {what} "
                f"({getattr(infos[0], key)} vs {getattr(info, key)}); only experiments sharing them can be blended"
            )


def _missing_folds(run: Run, n_folds: int, allow_partial: bool, log: Callable[[str], None]) -> list[int]:
    """A member's unfinished folds: an experiment's from its fold folders (it stops here unless `allow_partial`),
    an ensemble's (or a run copied without its folds) from its cv.json."""
    if run.is_experiment():
        finished = run.usable_folds(n_folds, allow_partial, "ensemble", log)
        return [k for k in range(n_folds) if k not in finished]
    missing = [int(k) for k in run.read_cv().folds_missing]
    if missing and not allow_partial:
        raise UserError(f"{run.name}: blends fold(s) {missing} unfinished; finish them, blend again, or pass "
                        "--allow-partial")  # fmt: skip
    return missing


def load_members(
    cfg: Config, exps: list[str], allow_partial: bool = False, log: Callable[[str], None] = print
) -> Members:
    """The members' OOF (and test) predictions aligned by id. Every member must have finished every fold, unless
    `allow_partial`: then the rows of the folds every member finished are blended."""
    id_col = cfg.data.id_col
    runs = [Run.named(cfg.output_dir, e, full_ok=True) for e in exps]
    cvs = [run.read_cv() for run in runs]
    _check_same(exps, cvs, "folds_hash", "folds (folds_hash)")
    _check_same(exps, cvs, "pred_cols", "prediction columns (pred_cols)")
    if cvs[0].task != cfg.task:
        raise UserError(f"experiment {exps[0]!r} is task={cvs[0].task}, the config says task={cfg.task}")
    n_folds = expected_folds(cfg)
    missing = sorted({k for run in runs for k in _missing_folds(run, n_folds, allow_partial, log)})
    cols = list(cvs[0].pred_cols)
    oofs = [read_pred_csv(run.oof_as_predicted()[0], id_col, ["fold", *cols]) for run in runs]
    if missing:  # only the folds every member finished
        oofs = [df[~df["fold"].isin(missing)] for df in oofs]
        log(f"blending the rows of fold(s) {sorted(set(range(n_folds)) - set(missing))} only (--allow-partial)")
    ids = oofs[0][id_col].tolist()
    for name, df in zip(exps, oofs, strict=True):
        if set(df[id_col]) != set(ids):
            raise UserError(f"{name}/oof.csv and {exps[0]}/oof.csv cover different ids: train the same folds first")
    maps = cfg.task in PIXEL_TASKS  # segmentation blends the probability maps beside the tables
    paths = [run.oof_as_predicted()[0] for run in runs]
    if maps:
        oof = np.stack([_maps_in_order(p, df, ids, id_col) for p, df in zip(paths, oofs, strict=True)])
    else:
        oof = np.stack([df.set_index(id_col).loc[ids, cols].to_numpy(np.float64) for df in oofs])
    have_test = [run.test_pred.is_file() for run in runs]
    test_ids, test = None, None
    if any(have_test):
        tests = [read_pred_csv(run.test_pred, id_col, cols) for run in runs]  # all or none
        test_ids = tests[0][id_col].tolist()
        for name, df in zip(exps, tests, strict=True):
            if set(df[id_col]) != set(test_ids):
                raise UserError(f"{name}/test_pred.csv and {exps[0]}/test_pred.csv cover different test ids")
        if maps:
            pairs = zip(runs, tests, strict=True)
            test = np.stack([_maps_in_order(r.test_pred, df, test_ids, id_col) for r, df in pairs])
        else:
            test = np.stack([df.set_index(id_col).loc[test_ids, cols].to_numpy(np.float64) for df in tests])
    classes = runs[0].read_classes()
    return Members(exps, cvs, classes, ids, oof, test_ids, test, missing)


def _maps_in_order(table: Path, df: pd.DataFrame, ids: list[str], id_col: str) -> np.ndarray:
    """The maps beside a member's prediction table, as probabilities (float32: a blend holds every member's maps),
    in the order of `ids`."""
    position = {i: n for n, i in enumerate(df[id_col])}
    maps = read_masks(table, df[id_col].tolist())
    return maps[[position[i] for i in ids]].astype(np.float32) / 255


def out_of_fold(method: BlendMethod, preds: np.ndarray, obj: Objective, fold: np.ndarray, weights) -> np.ndarray:
    """Each fold's rows blended by a fit on the other folds' rows only: no row's own target shapes its blend."""
    out = np.zeros(preds.shape[1:])
    for k in np.unique(fold):
        train, valid = fold != k, fold == k
        out[valid] = method.fit(preds[:, train], obj.subset(train), weights).apply(preds[:, valid])
    return out


def fold_scores(obj: Objective, pred: np.ndarray, fold: np.ndarray) -> dict[str, float]:
    return {str(int(k)): obj.subset(fold == k).score(pred[fold == k]) for k in np.unique(fold)}


def blend(
    cfg: Config,
    exps: list[str],
    method: str,
    name: str,
    weights: list[float] | None = None,
    log: Callable[[str], None] = print,
    allow_partial: bool = False,
) -> CVSummary:
    """Blend `exps` with `method` into outputs/<name>/ and return its cv.json. Members with unfinished folds stop
    the blend unless `allow_partial` (then the folds every member finished are blended, and cv.json says so)."""
    blender = get_blend_method(method)
    metric = metric_name(cfg)
    _check_request(cfg, exps, blender, method, metric, name, weights)
    remove_stale_tmp(Run.named(cfg.output_dir, name).path, STALE_TMP_AGE)  # what a killed blend left
    members = load_members(cfg, exps, allow_partial, log)
    Run.named(cfg.output_dir, name).budget.unlink(missing_ok=True)  # a budget choice of an earlier blend
    return blend_members(cfg, members, method, name, weights, log)


def blend_members(cfg: Config, members: Members, method: str, name: str, weights: list[float] | None = None,
                  log: Callable[[str], None] = print) -> CVSummary:  # fmt: skip
    """`blend` of members already loaded (ensemble --budget: each with the views chosen for it)."""
    blender, metric, exps = get_blend_method(method), metric_name(cfg), members.names
    y, fold, folds_hash = oof_truth(cfg, members.ids, members.classes, trained_on=members.cv[0].folds_hash,
                                    where=f"{members.names[0]}/oof.csv", size=members.oof.shape[-1])  # fmt: skip
    obj = Objective(metric, cfg.task, y)
    preds = to_ranks(members.oof) if blender.rank else members.oof
    member_cv = {e: obj.score(p) for e, p in zip(exps, preds, strict=True)}
    fitted = blender.fit(preds, obj, weights)  # on every OOF row: what the test rows are blended with
    if blender.foldwise:
        if len(np.unique(fold)) < 2:
            raise UserError(f"method={method} is fitted on other folds' OOF rows: train at least two folds first")
        oof = out_of_fold(blender, preds, obj, fold, weights)
    else:
        oof = fitted.apply(preds)
    folds = fold_scores(obj, oof, fold)
    result = CVSummary(
        exp=name,
        task=cfg.task,
        metric=metric,
        higher_is_better=metrics.get_metric(metric).higher_is_better,
        cv=obj.score(oof),
        folds=folds,
        complete=not members.folds_missing,
        folds_missing=members.folds_missing,
        partial=bool(members.folds_missing),
        folds_hash=folds_hash,
        pred_cols=list(members.classes.classes),
        members=list(exps),
        method=method,
        weights=None if fitted.weights is None else [float(v) for v in fitted.weights],
        member_cv=member_cv,
    )
    if blender.foldwise:  # cv is already out of fold; the in-sample score shows what an in-sample fit would claim
        result.cv_in_sample = obj.score(fitted.apply(preds))
    if blender.tuned and len(np.unique(fold)) > 1:  # one trained fold leaves nothing to tune on
        nested = fold_scores(obj, out_of_fold(blender, preds, obj, fold, weights), fold)
        result.folds_nested = nested
        result.cv_nested = float(np.mean(list(nested.values())))
    _write(cfg, name, members, fold, oof, fitted, blender, result)
    # The blend's own decisions (thresholds, cuts) tuned on its blended OOF, and the CV of its submission.
    out = Run.named(cfg.output_dir, name)
    d = record_decisions(cfg, out, result.pred_cols, y, oof, y, out.oof.name, members=exps)
    if d is not None:
        result.cv_submission = d.cv
        out.write_cv(result)
    _track(cfg, name, result.to_dict())
    for e, s in member_cv.items():
        log(f"  {e:<24} {metric} {s:.5f}")
    if result.cv_nested is not None:
        note = f"  (nested, tuned on other folds: {result.cv_nested:.5f})"
    elif result.cv_in_sample is not None:
        note = f"  (fold by fold; fitted and scored on the same rows it would claim {result.cv_in_sample:.5f})"
    else:
        note = ""
    shown = ", ".join(exps if fitted.weights is None else
                      (f"{e}={v:.4f}" for e, v in zip(exps, fitted.weights, strict=True)))  # fmt: skip
    log(f"{name} = {method}({shown}): {metric} {result.cv:.5f}{note}")
    return result


def _check_request(cfg: Config, exps: list[str], blender: BlendMethod, method: str, metric: str, name: str, weights):
    if not exps:
        raise UserError("ensemble needs at least one experiment name")
    if not name or Path(name).name != name or name.startswith("."):
        raise UserError(f"ensemble name {name!r} must be a plain folder name (it becomes {cfg.output_dir}/<name>)")
    if len(set(exps)) != len(exps):
        raise UserError(f"experiments listed twice: {sorted({e for e in exps if exps.count(e) > 1})}")
    if weights is not None and method != "weighted":
        raise UserError(f"weights are only used by method=weighted, not method={method}")
    if cfg.task not in blender.tasks:
        fitting = [m for m in list_blend_methods() if cfg.task in get_blend_method(m).tasks]
        raise UserError(f"method={method} takes task {', '.join(blender.tasks)}, not {cfg.task}: use one of "
                        f"{', '.join(fitting)}")  # fmt: skip
    if blender.rank and metric not in metrics.rank_metrics():
        raise UserError(
            f"method=rank averages ranks, which keeps the meaning of rank metrics only "
            f"({', '.join(sorted(metrics.rank_metrics()))}); the metric is {metric}: "
            "use mean, weighted, hill_climb or optimize"
        )
    out = Run.named(cfg.output_dir, name)
    if name in exps or (out.path.exists() and not out.is_ensemble()):
        raise UserError(f"{out} is an experiment, not an ensemble: choose another ensemble name")


def _track(cfg: Config, name: str, result: dict) -> None:
    """A wandb run per blend, job_type ensemble, in the ensemble's own group and folder (an ensemble is a run folder
    like an experiment's): every CV of cv.json, each member's CV and weight, the method."""
    tracker = Tracker(dataclasses.replace(cfg, exp=name), "ensemble", "ensemble")
    weights = dict(zip(result["members"], result["weights"] or [], strict=False))  # none: stacking, vote
    tracker.summary(score_summary(result) | {f"member_cv/{e}": v for e, v in result["member_cv"].items()}
                    | {f"weight/{e}": w for e, w in weights.items()} | {"method": result["method"]})  # fmt: skip
    tracker.finish()


def _write(cfg: Config, name: str, members: Members, fold, oof, fitted: Blend, blender: BlendMethod,
           result: CVSummary) -> None:  # fmt: skip
    out, id_col, cols = Run.named(cfg.output_dir, name), cfg.data.id_col, result.pred_cols
    out.path.mkdir(parents=True, exist_ok=True)
    save_predictions(out.oof, members.ids, oof, cols, id_col, fold)  # segmentation: the maps beside
    if members.test is not None:
        test = fitted.apply(to_ranks(members.test) if blender.rank else members.test)
        save_predictions(out.test_pred, list(members.test_ids or []), test, cols, id_col)
    else:
        out.test_pred.unlink(missing_ok=True)  # a stale one would not match these weights
    # weights None when the blend is no weighted mean: then `model` says what it is
    out.write_weights(BlendWeights(result.method, result.members, result.weights, blender.rank, fitted.model))
    out.write_classes(members.classes)
    out.write_cv(result)


def check_bag_folder(cfg: Config) -> Run:
    """outputs/<exp>/ of a seed bag (config key `seeds`): new, or a bag already; a one-seed run there is refused."""
    out = Run.named(cfg.output_dir, cfg.exp)
    if out.path.exists() and not out.is_ensemble():
        raise UserError(f"{out.path} holds a one-seed training of {cfg.exp!r}, where seeds: {list(cfg.seeds or [])} "
                        "puts the bag of its members: move that folder away, or give the bagged config another "
                        "name")  # fmt: skip
    return out


def bag_seeds(cfg: Config, members: list[str], seeds: list[int], allow_partial: bool = False,
              log: Callable[[str], None] = print) -> CVSummary:  # fmt: skip
    """A seed bag (config key `seeds`): outputs/<exp>/ = the mean of its members' predictions (each member the
    experiment under one seed, predicted with its own decisions), and cv.json's `seed_bag`: each seed's CV on the rows
    blended, their mean and spread, the bag's CV. Every later stage takes the bag as the mean ensemble it is."""
    out = check_bag_folder(cfg)
    result = blend(cfg, members, "mean", cfg.exp, log=log, allow_partial=allow_partial)
    per_seed = [float(result.member_cv[m]) for m in members]  # type: ignore[index]
    result.seed_bag = SeedBag(
        seeds=list(seeds),
        members=list(members),
        cv={str(s): v for s, v in zip(seeds, per_seed, strict=True)},
        mean=float(np.mean(per_seed)),
        std=float(np.std(per_seed, ddof=1)),
        bag=float(result.cv),
    )
    out.write_cv(result)
    log(format_seed_bag(result))
    return result


def format_seed_bag(result: CVSummary) -> str:
    """The bag's lines: each seed's CV, their mean +- std, and the bag's CV with its gain over the mean seed."""
    bag = result.seed_bag
    assert bag is not None
    gain = metrics.get_metric(result.metric).gain
    seeds = " | ".join(f"seed {s} {v:.5f}" for s, v in bag.cv.items())
    better = gain(bag.bag) - gain(bag.mean)  # > 0: the bag beats its average seed, whatever the metric's direction
    return (f"{result.exp}: seed bag of {len(bag.seeds)} ({result.metric}): {seeds}\n"
            f"{result.exp}: seeds {bag.mean:.5f} +- {bag.std:.5f} (mean +- std over seeds) -> bag {bag.bag:.5f} "
            f"({better:+.5f} over the mean seed)")  # fmt: skip


# ----------------------------------------------------------------------------------------------- --budget


def budget_blend(cfg: Config, exps: list[str], method: str, name: str, budget_min: float, n_test: int,
                 weights: list[float] | None = None, log: Callable[[str], None] = print,
                 allow_partial: bool = False) -> CVSummary:  # fmt: skip
    """`ensemble --budget MIN --n-test N`: the members, and per member its views (its own, or identity alone: the
    training's OOF), whose mean scores best on OOF while their projected time (estimate.json) for N test images fits
    MIN minutes (engine/budget.py); then those members blended with `method`. A member taken with other views than
    its own is predicted again with them, so the blend's test predictions are made as it was chosen. budget.json and
    weights.json (views) record the choice."""
    if not budget_min > 0:
        raise UserError(f"--budget {budget_min}: expected the time limit in minutes, > 0")
    if n_test < 1:
        raise UserError(f"--n-test {n_test}: expected the number of test images, >= 1")
    metric = metric_name(cfg)
    _check_request(cfg, exps, get_blend_method(method), method, metric, name, weights)
    runs = [Run.named(cfg.output_dir, e) for e in exps]
    for e, run in zip(exps, runs, strict=True):
        if not run.estimate.is_file():
            raise UserError(f"{e}: no timing record ({run.estimate}); time it first: make estimate EXP={e} "
                            f"N={n_test} (predict -c configs/{e}.yaml --estimate {n_test})")  # fmt: skip
    remove_stale_tmp(Run.named(cfg.output_dir, name).path, STALE_TMP_AGE)
    members = load_members(cfg, exps, allow_partial, log)
    y = oof_truth(cfg, members.ids, members.classes, trained_on=members.cv[0].folds_hash,
                  where=f"{exps[0]}/oof.csv", size=members.oof.shape[-1])[0]  # fmt: skip
    obj = Objective(metric, cfg.task, y)
    options = {e: _options(cfg, run, members, i, n_test) for i, (e, run) in enumerate(zip(exps, runs, strict=True))}
    picked, _ = budget.choose(options, obj.gain, 60 * budget_min)
    index = {e: i for i, e in enumerate(exps)}
    test = None
    if members.test is not None:
        test = np.stack([members.test[index[o.member]] if o.decided else
                         _predict_test_views(cfg, o.member, list(o.views), members.test_ids or [], log)
                         for o in picked])  # fmt: skip
    chosen = Members(
        names=[o.member for o in picked],
        cv=[members.cv[index[o.member]] for o in picked],
        classes=members.classes,
        ids=members.ids,
        oof=np.stack([o.oof for o in picked]),
        test_ids=members.test_ids,
        test=test,
        folds_missing=members.folds_missing,
    )
    views = {o.member: list(o.views) for o in picked}
    seconds = sum(o.seconds for o in picked)
    for e, opts in options.items():
        for o in opts:
            mark = "<- chosen" if any(p is o for p in picked) else ""
            log(f"  {e:<24} views {list(o.views)}: {obj.score(o.oof):.5f} in {o.seconds / 60:.2f} min {mark}")
    log(f"within {budget_min:g} min for {n_test} test images: {', '.join(f'{m} {v}' for m, v in views.items())} "
        f"({seconds / 60:.2f} min), mean of them {metric} {obj.score(chosen.oof.mean(0)):.5f}")  # fmt: skip
    result = blend_members(cfg, chosen, method, name, weights, log)
    out = Run.named(cfg.output_dir, name)
    out.write_weights(dataclasses.replace(out.read_weights(), views=views))
    candidates = {e: [{"views": list(o.views), "seconds": o.seconds, "cv": obj.score(o.oof)} for o in opts]
                  for e, opts in options.items()}  # fmt: skip
    out.write_budget(BudgetChoice(budget_min=float(budget_min), n_test=int(n_test), metric=metric,
                                  candidates=candidates, chosen=views, seconds=seconds,
                                  cv=obj.score(chosen.oof.mean(0))))  # fmt: skip
    return result


def _options(cfg: Config, run: Run, members: Members, i: int, n_test: int) -> list[budget.Option]:
    """A member's choices: its own views (as predicted: test_pred.csv), and identity alone when it predicts with
    more views in torch (training's oof.csv holds that view's OOF predictions)."""
    est = run.read_estimate()
    own = list(run.read_decisions().views or est.views) if run.decisions.is_file() else list(est.views)
    if sorted(own) != sorted(est.views):
        raise UserError(f"{run.estimate} timed views {est.views}, {run.name} predicts with {own}: time it again "
                        f"(make estimate EXP={run.name} N={n_test})")  # fmt: skip
    opts = [budget.Option(run.name, tuple(own), est.seconds(n_test), members.oof[i], decided=True)]
    plain = own != ["identity"] and "identity" in est.view_ms_per_image and est.runtime == "torch"
    if plain and run.is_experiment() and cfg.task not in PIXEL_TASKS and run.oof.is_file():
        cols = list(members.classes.classes)
        df = read_pred_csv(run.oof, cfg.data.id_col, cols).set_index(cfg.data.id_col)
        if set(members.ids) <= set(df.index):
            oof = df.loc[members.ids, cols].to_numpy(np.float64)
            opts.append(budget.Option(run.name, ("identity",), est.seconds(n_test, ["identity"]), oof, decided=False))
    return opts


def _predict_test_views(cfg: Config, exp: str, views: list[str], test_ids: list[str],
                        log: Callable[[str], None]) -> np.ndarray:  # fmt: skip
    """`exp`'s fold models' test predictions with `views` (averaged over its folds), in the order of `test_ids`."""
    mcfg = load(Run.named(cfg.output_dir, exp).config)
    data = dataclasses.replace(mcfg.data, num_workers=cfg.data.num_workers)
    mcfg = dataclasses.replace(mcfg, exp=exp, output_dir=cfg.output_dir, device=cfg.device, threads=cfg.threads,
                               data=data)  # fmt: skip
    decided = mcfg.run.read_decisions()  # its merge and runtime, as the notebook will predict it
    mcfg = as_decided(mcfg, views, decided.merge or mcfg.tta.merge, decided.runtime or "torch")
    folds = fold_models(mcfg)
    load_fold, feed = fold_predictors(mcfg, len(mcfg.run.read_classes().classes))
    ids, dataset = test_dataset(mcfg)
    loader = feed(dataset)
    log(f"  {exp}: predicting the test set again with views {views} (its own are others)")
    pred = sum(predict_loader(load_fold(k), loader, mcfg.task, views=views, merge=mcfg.tta.merge,
                              desc=f"{exp} fold {k}") for k in folds) / len(folds)  # fmt: skip
    position = {t: n for n, t in enumerate(ids)}
    return np.asarray(pred)[[position[t] for t in test_ids]]
