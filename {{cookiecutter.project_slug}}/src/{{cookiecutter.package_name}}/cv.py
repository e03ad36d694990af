"""The cross-validation summary: the finished folds' OOF files -> oof.csv, cv.json, a printed table, and the PNG
figures a person would rather look at than a table (learning curves, fold scores, confusion matrix), also logged
to wandb.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from .config import Config, metric_name, training_changes
from .core.errors import UserError
from .core.runs import (
    STALE_TMP_AGE,
    CVSummary,
    atomic_savefig,
    atomic_write_csv,
    read_derived,
    read_id_csv,
    read_json,
    read_masks,
    read_source,
    remove_stale_tmp,
    write_masks,
)
from .core.tasks import PIXEL_TASKS
from .core.tracking import Tracker, score_summary
from .data.problem import Problem, load_problem
from .engine.codec import record_decisions
from .engine.inference import as_decided, folds_source, predicted_as, runtime_name
from .engine.init_from import chain_summary
from .engine.lr import recorded_lr
from .engine.scoring import score_oof
from .engine.views import read_choice, with_views
from .modeling import metrics, tta

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def learning_curves(histories: dict[str, list[dict]], metric: str, path: Path) -> Path:
    """One line per fold: train loss, valid loss, and the metric, against epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for fold, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        axes[0].plot(epochs, [r["train_loss"] for r in rows], label=f"fold {fold}")
        axes[1].plot(epochs, [r["valid_loss"] for r in rows], label=f"fold {fold}")
        axes[2].plot(epochs, [r["score"] for r in rows], label=f"fold {fold}")
    for ax, title in zip(axes, ("train loss", "valid loss", metric), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, path)


def fold_scores(scores: dict[str, float], cv: float, metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 * len(scores) + 2, 3.5))
    ax.bar(list(scores), list(scores.values()), color="tab:blue")
    ax.axhline(cv, color="tab:red", linestyle="--", label=f"OOF CV {cv:.4f}")
    lo, hi = min(*scores.values(), cv), max(*scores.values(), cv)
    pad = max(hi - lo, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_title(f"{metric} per fold")
    ax.legend()
    return _save(fig, path)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path) -> Path:
    n = len(classes)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(0.5 * n + 3, 0.5 * n + 2.5))
    ax.imshow(cm, cmap="Blues")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("OOF confusion matrix")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        return atomic_savefig(path, fig)
    finally:
        plt.close(fig)


def summarize(
    cfg: Config, allow_partial: bool = False, log: Callable[[str], None] = print, problem: Problem | None = None
) -> CVSummary:
    """The finished folds' OOF rows -> oof.csv, cv.json, the table and the figures. `complete` in cv.json means
    every fold of folds.csv is finished, each under the same config; `folds_missing` lists those that are not
    finished, `folds_differ` those trained under another config than the first; `partial` records that the
    experiment was used anyway (`allow_partial`: predict --allow-partial averaged the finished folds only).
    `problem`: the command's data.problem.load_problem(cfg), read here when not given."""
    run = cfg.run
    problem = problem or load_problem(cfg)  # checks folds.csv, and that it holds folds.n_folds folds
    missing = run.missing_folds(cfg.folds.n_folds)
    folds = [k for k in range(cfg.folds.n_folds) if k not in missing]
    if not folds:
        raise UserError(f"{run.path}: no finished fold (fold<k>/oof.csv) yet; train a fold first")
    remove_stale_tmp(run.path, STALE_TMP_AGE)  # what a killed summary left
    if missing:
        log(f"{cfg.exp}: fold(s) {missing} of {cfg.folds.n_folds} not finished; the CV covers fold(s) {folds} only")
    differ = config_differences(cfg, folds)
    if differ:
        log(f"{cfg.exp}: fold(s) {[int(k) for k in differ]} were trained under another config than fold {folds[0]} "
            f"({'; '.join(next(iter(differ.values())))}): the CV mixes two trainings and is not complete; retrain "
            "every fold under one config (train --force)")  # fmt: skip
    frames = [read_id_csv(run.fold(k).oof, cfg.data.id_col) for k in folds]
    oof = pd.concat(frames, ignore_index=True)
    maps = None  # segmentation: the probability maps beside each fold's table
    if cfg.task in PIXEL_TASKS:
        maps = np.concatenate([read_masks(run.fold(k).oof, f[cfg.data.id_col].tolist())
                               for k, f in zip(folds, frames, strict=True)])  # fmt: skip
    per_fold, cv, y_true, pred = score_oof(cfg, problem, oof, maps)
    name = metric_name(cfg)
    result = CVSummary(
        exp=cfg.exp,
        task=cfg.task,
        metric=name,
        higher_is_better=metrics.get_metric(name).higher_is_better,
        cv=cv,
        folds=per_fold,
        complete=not missing and not differ,
        folds_missing=missing,
        partial=bool(missing) and allow_partial,
        folds_hash=problem.folds_hash,
        pred_cols=problem.classes,
        lr=recorded_lr(cfg),  # optim.lr, resolved when it is auto
        lr_auto=cfg.optim.lr == "auto",
        folds_differ=differ,
        init_from=chain_summary(cfg, folds),  # model.init_from: what each fold started from
    )
    # The OOF rows predicted as test_pred.csv was (views, merge, runtime, from these very checkpoints), if predict
    # made it; else, before predict, the configured (or, tta.views: auto, the chosen) views.
    way = current_prediction(cfg, folds)
    auto = list(cfg.tta.views) == [tta.AUTO]
    choice = read_choice(cfg) if auto else None
    if way is not None:
        views, source = way["views"], read_source(run.test_pred)
    else:
        views = choice.views if choice else (None if auto else list(cfg.tta.views))
        source = None if views is None else folds_source(with_views(cfg, views), folds)
    as_predicted = None if source is None else read_derived(run.oof_tta, source, cfg.data.id_col)
    as_maps = None
    if as_predicted is not None and maps is not None:
        as_maps = read_masks(run.oof_tta, as_predicted[cfg.data.id_col].tolist())
    if as_predicted is not None:
        result.cv_tta = score_oof(cfg, problem, as_predicted, as_maps)[1]
        result.tta_views = views
        result.runtime = way["runtime"] if way else runtime_name(cfg)
    if choice:
        result.tta_auto = choice.summary()
    result.weight_averaging = weight_averaging(cfg, problem, folds)
    result.cv_frozen_features, result.folds_frozen_features = frozen_features(cfg, problem, folds)
    # The decisions a submission applies, tuned on the OOF predicted as the test set is (the plain OOF when that is
    # one view in torch), and the CV of exactly what the submission holds.
    plain = way is None or (way["views"] == ["identity"] and way["runtime"] == "torch")
    plain_oof = (oof, maps, run.oof.name)
    tuned = plain_oof if as_predicted is None or plain else (as_predicted, as_maps, run.oof_tta.name)
    if way is not None and not plain and as_predicted is None:
        log(f"{cfg.exp}: no OOF predicted as test_pred.csv (predict --no-oof-tta): decisions tuned on {run.oof.name}")
    _, _, y_sub, pred_sub = score_oof(cfg, problem, tuned[0], tuned[1])
    d = record_decisions(cfg, run, problem.classes, y_sub, pred_sub, problem.y, tuned[2], way, folds)
    if d is not None:
        result.cv_submission = d.cv
        if d.ordinal is not None:
            result.ordinal, result.cv_ordinal = d.ordinal, d.cv
    if maps is not None:
        write_masks(run.oof, oof[cfg.data.id_col].tolist(), maps)
    atomic_write_csv(run.oof, oof)
    run.write_cv(result)
    print(format_table(result))
    _figures(cfg, result, y_true, pred, problem.classes)
    return result


def current_prediction(cfg: Config, folds: list[int]) -> dict | None:
    """How test_pred.csv was predicted ({views, merge, runtime}), if it was predicted from the current checkpoints
    of exactly `folds`; None when there is none, or it is stale (a fold retrained since)."""
    source = read_source(cfg.run.test_pred)
    way = None if source is None else predicted_as(source)
    if way is None:
        return None
    now = folds_source(as_decided(cfg, way["views"], way["merge"], way["runtime"]), folds)
    return way if now == source else None


def config_differences(cfg: Config, folds: list[int]) -> dict[str, list[str]]:
    """Fold -> the training keys ('key first -> this') its recorded config differs in from the first fold's."""
    recorded = [cfg.run.trained_config(k) for k in folds]
    if not recorded[0].is_file():
        return {}
    out = {str(k): training_changes(recorded[0], p) for k, p in zip(folds, recorded, strict=True) if p.is_file()}
    return {k: changes for k, changes in out.items() if changes}


def warn_if_tta_hurts(result: CVSummary, views: list[str]) -> None:
    """TTA is chosen on OOF, never on test: say so when the views predicted with score worse there than one view."""
    if result.cv_tta is not None and metrics.get_metric(result.metric).better(result.cv, result.cv_tta):
        print(f"warning: TTA {views} scores worse on OOF ({result.cv_tta:.5f}) than one view "
              f"({result.cv:.5f}); try other tta.views, or tta.views=[identity]")  # fmt: skip


def weight_averaging(cfg: Config, problem: Problem, folds: list[int]) -> dict | None:
    """train.swa / train.avg_best_k / cosine_restarts' snapshots: the OOF score of the best epoch's weights ("best")
    and of each average, over every finished fold (a variant some fold lacks, e.g. SWA cut short by early stopping,
    gets per-fold scores only), each fold's scores, and which one each fold's best.pt holds."""
    run = cfg.run
    infos = {k: read_json(run.fold(k).averaging) for k in folds if run.fold(k).averaging.is_file()}
    if not infos:
        return None
    out: dict = {}
    for name in dict.fromkeys(n for info in infos.values() for n in info["scores"]):
        paths = [run.fold(k).variant_oof(name) for k in folds]
        if all(p.is_file() for p in paths):
            tables = [read_id_csv(p, cfg.data.id_col) for p in paths]
            maps = None
            if cfg.task in PIXEL_TASKS:
                pairs = zip(paths, tables, strict=True)
                maps = np.concatenate([read_masks(p, t[cfg.data.id_col].tolist()) for p, t in pairs])
            out[name] = score_oof(cfg, problem, pd.concat(tables), maps)[1]
    out["folds"] = {str(k): info["scores"] for k, info in infos.items()}
    out["picked"] = {str(k): info["picked"] for k, info in infos.items()}
    return out


def frozen_features(cfg: Config, problem: Problem, folds: list[int]) -> tuple[float | None, dict[str, float] | None]:
    """train.frozen_features: the linear probe's OOF score over every finished fold (None unless each has its
    oof_frozen_features.csv), and each fold's score (None when no fold has one)."""
    paths = {k: cfg.run.fold(k).frozen_oof for k in folds}
    tables = {k: read_id_csv(p, cfg.data.id_col) for k, p in paths.items() if p.is_file()}
    if not tables:
        return None, None
    per_fold, cv, _, _ = score_oof(cfg, problem, pd.concat(tables.values(), ignore_index=True))
    return (cv if len(tables) == len(folds) else None), per_fold


def format_table(result: CVSummary) -> str:
    lines = [f"{result.exp}: {result.metric} per fold"]
    lines += [f"  fold {k:>2}  {v:.5f}" for k, v in result.folds.items()]
    note = "  (not every fold trained)" if result.folds_missing else "  (folds trained under other configs)"
    lines.append(f"  OOF CV   {result.cv:.5f}" + ("" if result.complete else note))
    if result.cv_tta is not None:
        lines.append(
            f"  OOF CV as predicted (TTA {result.tta_views}, {result.runtime or 'torch'}): {result.cv_tta:.5f}"
        )
    if result.weight_averaging is not None:
        averaging = result.weight_averaging
        shown = " | ".join(f"{k} {v:.5f}" for k, v in averaging.items() if k not in ("folds", "picked"))
        picked = sorted(set(averaging["picked"].values()))
        lines.append(f"  weight averaging, OOF: {shown} (best.pt holds: {', '.join(picked)})")
    if result.folds_frozen_features is not None:
        shown = " | ".join(f"fold {k} {v:.5f}" for k, v in result.folds_frozen_features.items())
        overall = "" if result.cv_frozen_features is None else f"OOF CV {result.cv_frozen_features:.5f} ("
        lines.append(f"  linear probe on frozen features: {overall}{shown}{')' if overall else ''}")
    if result.tta_auto is not None:
        auto = result.tta_auto
        lines.append(
            f"  TTA views chosen on OOF: {auto['views']} {auto['chosen']:.5f} (identity {auto['identity']:.5f})"
        )
    if result.cv_ordinal is not None:
        cuts = ", ".join(f"{c:.3f}" for c in result.ordinal["cuts"])
        lines.append(f"  OOF CV rounded to {len(result.ordinal['levels'])} levels at cuts tuned on OOF "
                     f"({cuts}): {result.cv_ordinal:.5f}")  # fmt: skip
    if result.cv_submission is not None:
        applied = "post-processing" if result.task in PIXEL_TASKS else "thresholds, cuts, clipping"
        lines.append(f"  OOF CV of the submission ({applied} applied): {result.cv_submission:.5f}")
    if result.lr is not None:
        lines.append(f"  optim.lr {result.lr:.3g}" + (" (auto: LR finder)" if result.lr_auto else ""))
    return "\n".join(lines)


def _figures(cfg: Config, result: CVSummary, y_true: np.ndarray, pred: np.ndarray, classes: list[str]) -> None:
    run, histories = cfg.run, {}
    for k in result.folds:
        path = run.fold(int(k)).history
        if path.exists():
            histories[k] = read_json(path)
    made = {
        "learning_curves": learning_curves(histories, result.metric, run.figure("learning_curves")),
        "fold_scores": fold_scores(result.folds, result.cv, result.metric, run.figure("fold_scores")),
    }
    if cfg.task == "multiclass":
        made["confusion_matrix"] = confusion_matrix(
            y_true.astype(int), pred.argmax(1), classes, run.figure("confusion_matrix")
        )
    tracker = Tracker(cfg, "cv", "cv", resume=True)  # one cv run per experiment, updated by each cv/predict
    for key, path in made.items():
        tracker.image(key, path)
    if cfg.task == "multiclass":
        tracker.confusion(y_true.astype(int).tolist(), pred.argmax(1).tolist(), classes)
    tracker.summary(score_summary(result.to_dict()))  # every CV variant in cv.json, and each fold's score
    tracker.finish()
