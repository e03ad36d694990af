"""The cross-validation summary: fold OOF files -> oof.csv, cv.json, a printed table and PNG figures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics, plots
from .artefacts import atomic_write_csv, atomic_write_json, fold_dir, read_json
from .config import Config, metric_name
from .errors import UserError
from .fold_data import load_problem
from .tracking import Tracker


def score_oof(cfg: Config, oof: pd.DataFrame) -> tuple[dict[str, float], float, np.ndarray, np.ndarray]:
    """Per-fold scores, the overall OOF score, and the aligned (truth, prediction) arrays."""
    problem = load_problem(cfg)
    position = {i: n for n, i in enumerate(problem.ids)}
    rows = np.array([position[i] for i in oof[cfg.data.id_col]])
    y_true, pred = problem.y[rows], oof[problem.classes].to_numpy()
    if cfg.task in ("binary", "regression"):
        pred = pred[:, 0]
    name = metric_name(cfg)
    per_fold = {}
    for k in sorted(oof["fold"].unique()):
        m = (oof["fold"] == k).to_numpy()
        per_fold[str(int(k))] = metrics.score(name, y_true[m], pred[m], cfg.task)
    return per_fold, metrics.score(name, y_true, pred, cfg.task), y_true, pred


def summarize(cfg: Config) -> dict:
    files = sorted(cfg.run_dir.glob("fold*/oof.csv"))
    if not files:
        raise UserError(f"{cfg.run_dir}: no fold*/oof.csv yet; train a fold first")
    oof = pd.concat([pd.read_csv(f, dtype={cfg.data.id_col: str}) for f in files], ignore_index=True)
    per_fold, cv, y_true, pred = score_oof(cfg, oof)
    name = metric_name(cfg)
    problem = load_problem(cfg)
    result = {
        "exp": cfg.exp,
        "task": cfg.task,
        "metric": name,
        "higher_is_better": metrics.get_metric(name).higher_is_better,
        "cv": cv,
        "folds": per_fold,
        "complete": len(per_fold) == cfg.folds.n_folds,
        "folds_hash": problem.folds_hash,
        "pred_cols": problem.classes,
    }
    tta_path = cfg.run_dir / "oof_tta.csv"
    if tta_path.exists():
        tta_oof = pd.read_csv(tta_path, dtype={cfg.data.id_col: str})
        result["cv_tta"] = score_oof(cfg, tta_oof)[1]
        result["tta_views"] = list(cfg.tta.views)
    atomic_write_csv(cfg.run_dir / "oof.csv", oof)
    atomic_write_json(cfg.run_dir / "cv.json", result)
    print(format_table(result))
    _figures(cfg, result, y_true, pred, problem.classes)
    return result


def format_table(result: dict) -> str:
    lines = [f"{result['exp']}: {result['metric']} per fold"]
    lines += [f"  fold {k:>2}  {v:.5f}" for k, v in result["folds"].items()]
    lines.append(f"  OOF CV   {result['cv']:.5f}" + ("" if result["complete"] else "  (not every fold trained)"))
    if "cv_tta" in result:
        lines.append(f"  OOF CV with TTA {result['tta_views']}: {result['cv_tta']:.5f}")
    return "\n".join(lines)


def _figures(cfg: Config, result: dict, y_true: np.ndarray, pred: np.ndarray, classes: list[str]) -> None:
    histories = {}
    for k in result["folds"]:
        path = fold_dir(cfg.run_dir, int(k)) / "history.json"
        if path.exists():
            histories[k] = read_json(path)
    made = {
        "learning_curves": plots.learning_curves(histories, result["metric"], cfg.run_dir / "learning_curves.png"),
        "fold_scores": plots.fold_scores(
            result["folds"], result["cv"], result["metric"], cfg.run_dir / "fold_scores.png"
        ),
    }
    if cfg.task == "multiclass":
        made["confusion_matrix"] = plots.confusion_matrix(
            y_true.astype(int), pred.argmax(1), classes, cfg.run_dir / "confusion_matrix.png"
        )
    tracker = Tracker(cfg, "cv", "cv")
    for key, path in made.items():
        tracker.image(key, path)
    if cfg.task == "multiclass":
        tracker.confusion(y_true.astype(int).tolist(), pred.argmax(1).tolist(), classes)
    tracker.summary({"cv": result["cv"], **{f"fold{k}": v for k, v in result["folds"].items()}})
    tracker.finish()
