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
    atomic_savefig,
    atomic_write_csv,
    atomic_write_json,
    read_derived,
    read_json,
    remove_stale_tmp,
)
from .core.tracking import Tracker
from .data.problem import load_problem
from .engine.inference import (
    folds_source,
)
from .engine.lr import recorded_lr
from .engine.scoring import (
    apply_cuts,
    ordinal,
    score_oof,
    target_levels,
    tune_cuts,
)
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


def summarize(cfg: Config, allow_partial: bool = False, log: Callable[[str], None] = print) -> dict:
    """The finished folds' OOF rows -> oof.csv, cv.json, the table and the figures. `complete` in cv.json means
    every fold of folds.csv is finished, each under the same config; `folds_missing` lists those that are not
    finished, `folds_differ` those trained under another config than the first; `partial` records that the
    experiment was used anyway (`allow_partial`: predict --allow-partial averaged the finished folds only)."""
    run = cfg.run
    problem = load_problem(cfg)  # checks folds.csv, and that it holds folds.n_folds folds
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
    frames = [pd.read_csv(run.fold(k).oof, dtype={cfg.data.id_col: str}) for k in folds]
    oof = pd.concat(frames, ignore_index=True)
    per_fold, cv, y_true, pred = score_oof(cfg, oof)
    name = metric_name(cfg)
    result = {
        "exp": cfg.exp,
        "task": cfg.task,
        "metric": name,
        "higher_is_better": metrics.get_metric(name).higher_is_better,
        "cv": cv,
        "folds": per_fold,
        "complete": not missing and not differ,
        "folds_missing": missing,
        "folds_differ": differ,
        "partial": bool(missing) and allow_partial,
        "folds_hash": problem.folds_hash,
        "pred_cols": problem.classes,
        "lr": recorded_lr(cfg),  # optim.lr, resolved when it is auto
        "lr_auto": cfg.optim.lr == "auto",
    }
    # OOF with TTA counts only if made with the configured (or, tta.views: auto, the chosen) views from these very
    # checkpoints.
    auto = list(cfg.tta.views) == [tta.AUTO]
    choice = read_choice(cfg) if auto else None
    views = choice["views"] if choice else (None if auto else list(cfg.tta.views))
    tta_oof = None if views is None else read_derived(run.oof_tta, folds_source(with_views(cfg, views), folds),
                                                      cfg.data.id_col)  # fmt: skip
    if tta_oof is not None:
        result["cv_tta"] = score_oof(cfg, tta_oof)[1]
        result["tta_views"] = views
    if choice:
        result["tta_auto"] = {k: choice[k] for k in ("candidates", "views", "identity", "chosen", "steps")}
    averaging = weight_averaging(cfg, folds)
    if averaging:
        result["weight_averaging"] = averaging
    if ordinal(cfg):  # the cuts the submission will apply (the same function on the same OOF)
        levels = target_levels(cfg, problem.y)
        cuts = tune_cuts(y_true, pred, levels, name)
        result["ordinal"] = {"levels": levels.tolist(), "cuts": cuts.tolist()}
        result["cv_ordinal"] = metrics.score(name, y_true, apply_cuts(pred, levels, cuts), cfg.task)
    atomic_write_csv(run.oof, oof)
    atomic_write_json(run.cv, result)
    print(format_table(result))
    _figures(cfg, result, y_true, pred, problem.classes)
    return result


def config_differences(cfg: Config, folds: list[int]) -> dict[str, list[str]]:
    """Fold -> the training keys ('key first -> this') its recorded config differs in from the first fold's."""
    recorded = [cfg.run.trained_config(k) for k in folds]
    if not recorded[0].is_file():
        return {}
    out = {str(k): training_changes(recorded[0], p) for k, p in zip(folds, recorded, strict=True) if p.is_file()}
    return {k: changes for k, changes in out.items() if changes}


def warn_if_tta_hurts(result: dict, views: list[str]) -> None:
    """TTA is chosen on OOF, never on test: say so when the views predicted with score worse there than one view."""
    sign = 1 if result["higher_is_better"] else -1
    if "cv_tta" in result and sign * result["cv_tta"] < sign * result["cv"]:
        print(f"warning: TTA {views} scores worse on OOF ({result['cv_tta']:.5f}) than one view "
              f"({result['cv']:.5f}); try other tta.views, or tta.views=[identity]")  # fmt: skip


def weight_averaging(cfg: Config, folds: list[int]) -> dict | None:
    """train.swa / train.avg_best_k: the OOF score of the best epoch's weights ("best") and of each average, over
    every finished fold (a variant some fold lacks, e.g. SWA cut short by early stopping, gets per-fold scores
    only), each fold's scores, and which one each fold's best.pt holds."""
    run = cfg.run
    infos = {k: read_json(run.fold(k).averaging) for k in folds if run.fold(k).averaging.is_file()}
    if not infos:
        return None
    out: dict = {}
    for name in dict.fromkeys(n for info in infos.values() for n in info["scores"]):
        paths = [run.fold(k).variant_oof(name) for k in folds]
        if all(p.is_file() for p in paths):
            out[name] = score_oof(cfg, pd.concat([pd.read_csv(p, dtype={cfg.data.id_col: str}) for p in paths]))[1]
    out["folds"] = {str(k): info["scores"] for k, info in infos.items()}
    out["picked"] = {str(k): info["picked"] for k, info in infos.items()}
    return out


def format_table(result: dict) -> str:
    lines = [f"{result['exp']}: {result['metric']} per fold"]
    lines += [f"  fold {k:>2}  {v:.5f}" for k, v in result["folds"].items()]
    note = "  (not every fold trained)" if result.get("folds_missing") else "  (folds trained under other configs)"
    lines.append(f"  OOF CV   {result['cv']:.5f}" + ("" if result["complete"] else note))
    if "cv_tta" in result:
        lines.append(f"  OOF CV with TTA {result['tta_views']}: {result['cv_tta']:.5f}")
    if "weight_averaging" in result:
        shown = " | ".join(
            f"{k} {v:.5f}" for k, v in result["weight_averaging"].items() if k not in ("folds", "picked")
        )
        picked = sorted(set(result["weight_averaging"]["picked"].values()))
        lines.append(f"  weight averaging, OOF: {shown} (best.pt holds: {', '.join(picked)})")
    if "tta_auto" in result:
        auto = result["tta_auto"]
        lines.append(
            f"  TTA views chosen on OOF: {auto['views']} {auto['chosen']:.5f} (identity {auto['identity']:.5f})"
        )
    if "cv_ordinal" in result:
        cuts = ", ".join(f"{c:.3f}" for c in result["ordinal"]["cuts"])
        lines.append(f"  OOF CV rounded to {len(result['ordinal']['levels'])} levels at cuts tuned on OOF "
                     f"({cuts}): {result['cv_ordinal']:.5f}")  # fmt: skip
    if result.get("lr") is not None:
        lines.append(f"  optim.lr {result['lr']:.3g}" + (" (auto: LR finder)" if result["lr_auto"] else ""))
    return "\n".join(lines)


def _figures(cfg: Config, result: dict, y_true: np.ndarray, pred: np.ndarray, classes: list[str]) -> None:
    run, histories = cfg.run, {}
    for k in result["folds"]:
        path = run.fold(int(k)).history
        if path.exists():
            histories[k] = read_json(path)
    made = {
        "learning_curves": learning_curves(histories, result["metric"], run.figure("learning_curves")),
        "fold_scores": fold_scores(result["folds"], result["cv"], result["metric"], run.figure("fold_scores")),
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
    tracker.summary({"cv": result["cv"], **{f"fold{k}": v for k, v in result["folds"].items()}})
    tracker.finish()
