"""Blend experiments on their out-of-fold predictions: mean, weighted, rank, hill climbing, optimised weights.

Members are aligned by id and must share the folds (same folds_hash) and prediction columns. The blend is a
weighted arithmetic mean of the members' predictions (probability rows of multiclass members stay normalised).
Its output folder has the files of an experiment (oof.csv, test_pred.csv, cv.json, classes.json) plus
weights.json, so an ensemble can be blended again, pseudo-labelled from, or submitted. This module loads and checks
the members, writes the output and scores the nested estimate; the methods themselves are in blend_methods.py.

Weights tuned on the OOF rows (hill_climb, optimize) flatter the OOF score they were tuned on; cv.json then also
holds `cv_nested`: the weights tuned on k-1 folds and scored on the held-out fold, averaged over folds.

method=rank averages each column's ranks (scaled to (0, 1], test ranked within the test set): the output holds
ranks, not probabilities, so it is allowed only for metrics that read nothing but each column's order (AUC).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .artefacts import atomic_write_csv, atomic_write_json, read_json
from .blend_methods import BLEND_METHODS, RANK_METRICS, BlendMethod, Objective, combine, to_ranks
from .blend_methods import list_blend_methods as list_blend_methods  # re-exported: ensemble.list_blend_methods()
from .config import Config, metric_name
from .errors import UserError
from .folds import read_folds
from .labels import encode_targets, read_train


@dataclass
class Members:
    """The experiments' predictions aligned by id: oof (M, N, C) on the OOF ids, test (M, T, C) or None."""

    names: list[str]
    cv: list[dict]
    classes: dict
    ids: list[str]
    oof: np.ndarray
    test_ids: list[str] | None
    test: np.ndarray | None


def read_pred_csv(path: Path, id_col: str, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} not found: train (oof.csv) and predict (test_pred.csv) the experiment first")
    df = pd.read_csv(path, dtype={id_col: str})
    missing = [c for c in (id_col, *columns) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: column(s) {missing} not found; columns are {list(df.columns)}")
    if df[columns].isna().any().any():
        raise UserError(f"{path}: NaN predictions in {df[columns].columns[df[columns].isna().any()].tolist()}")
    return df


def _check_same(names: list[str], infos: list[dict], key: str, what: str) -> None:
    for name, info in zip(names[1:], infos[1:], strict=True):
        if info.get(key) != infos[0].get(key):
            raise UserError(
                f"experiments {names[0]!r} and {name!r} have different {what} "
                f"({infos[0].get(key)} vs {info.get(key)}); only experiments sharing them can be blended"
            )


def load_members(cfg: Config, exps: list[str]) -> Members:
    id_col = cfg.data.id_col
    dirs = [Path(cfg.output_dir) / e for e in exps]
    for d in dirs:
        if not (d / "cv.json").is_file():
            raise UserError(f"{d / 'cv.json'} not found: train experiment {d.name!r} first")
    cvs = [read_json(d / "cv.json") for d in dirs]
    _check_same(exps, cvs, "folds_hash", "folds (folds_hash)")
    _check_same(exps, cvs, "pred_cols", "prediction columns (pred_cols)")
    if cvs[0].get("task") != cfg.task:
        raise UserError(f"experiment {exps[0]!r} is task={cvs[0].get('task')}, the config says task={cfg.task}")
    cols = list(cvs[0]["pred_cols"])
    oofs = [read_pred_csv(d / "oof.csv", id_col, ["fold", *cols]) for d in dirs]
    ids = oofs[0][id_col].tolist()
    for name, df in zip(exps, oofs, strict=True):
        if set(df[id_col]) != set(ids):
            raise UserError(f"{name}/oof.csv and {exps[0]}/oof.csv cover different ids: train the same folds first")
    oof = np.stack([df.set_index(id_col).loc[ids, cols].to_numpy(np.float64) for df in oofs])
    have_test = [(d / "test_pred.csv").is_file() for d in dirs]
    test_ids, test = None, None
    if any(have_test):
        tests = [read_pred_csv(d / "test_pred.csv", id_col, cols) for d in dirs]  # all or none
        test_ids = tests[0][id_col].tolist()
        for name, df in zip(exps, tests, strict=True):
            if set(df[id_col]) != set(test_ids):
                raise UserError(f"{name}/test_pred.csv and {exps[0]}/test_pred.csv cover different test ids")
        test = np.stack([df.set_index(id_col).loc[test_ids, cols].to_numpy(np.float64) for df in tests])
    classes = read_json(dirs[0] / "classes.json")
    return Members(exps, cvs, classes, ids, oof, test_ids, test)


def oof_truth(cfg: Config, members: Members) -> tuple[np.ndarray, np.ndarray, str]:
    """Targets and folds (from data/folds.csv) of the OOF ids; and the folds hash, which must be the members'."""
    train = read_train(cfg)
    folds, folds_hash = read_folds(cfg, train)
    if members.cv[0].get("folds_hash") != folds_hash:
        raise UserError(
            f"experiment {members.names[0]!r} was trained on folds hash {members.cv[0].get('folds_hash')} but "
            f"{cfg.folds.path} has hash {folds_hash}: retrain it on the current folds"
        )
    id_col = cfg.data.id_col
    unknown = set(members.ids) - set(train[id_col])
    if unknown:
        raise UserError(f"{members.names[0]}/oof.csv has ids not in {cfg.data.train_csv}, e.g. {sorted(unknown)[:3]}")
    rows = train.set_index(id_col).loc[members.ids].reset_index()
    y = encode_targets(cfg, rows, list(members.classes["classes"]), members.classes.get("positive"))
    fold = folds.set_index(id_col).loc[members.ids, "fold"].to_numpy(np.int64)
    return y, fold, folds_hash


def _nested(method: BlendMethod, preds: np.ndarray, obj: Objective, fold: np.ndarray, weights) -> dict[str, float]:
    """Tune on every fold but k, score fold k: an honest estimate of a tuned blend."""
    scores = {}
    for k in np.unique(fold):
        train, valid = fold != k, fold == k
        w = method.fit(preds[:, train], obj.subset(train), weights)
        scores[str(int(k))] = obj.subset(valid).score(combine(preds[:, valid], w))
    return scores


def blend(
    cfg: Config,
    exps: list[str],
    method: str,
    name: str,
    weights: list[float] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Blend `exps` with `method` into outputs/<name>/ and return its cv.json."""
    blender = BLEND_METHODS.get(method)
    metric = metric_name(cfg)
    _check_request(cfg, exps, blender, method, metric, name, weights)
    members = load_members(cfg, exps)
    y, fold, folds_hash = oof_truth(cfg, members)
    obj = Objective(metric, cfg.task, y, metrics.get_metric(metric).higher_is_better)
    preds = to_ranks(members.oof) if blender.rank else members.oof
    member_cv = {e: obj.score(p) for e, p in zip(exps, preds, strict=True)}
    w = blender.fit(preds, obj, weights)
    oof = combine(preds, w)
    folds = {str(int(k)): obj.subset(fold == k).score(oof[fold == k]) for k in np.unique(fold)}
    result = {
        "exp": name,
        "task": cfg.task,
        "metric": metric,
        "higher_is_better": obj.higher,
        "cv": obj.score(oof),
        "folds": folds,
        "complete": all(cv.get("complete", True) for cv in members.cv),
        "folds_hash": folds_hash,
        "pred_cols": list(members.classes["classes"]),
        "members": list(exps),
        "method": method,
        "weights": [float(v) for v in w],
        "member_cv": member_cv,
    }
    if blender.tuned and len(np.unique(fold)) > 1:  # one trained fold leaves nothing to tune on
        nested = _nested(blender, preds, obj, fold, weights)
        result["folds_nested"] = nested
        result["cv_nested"] = float(np.mean(list(nested.values())))
    _write(cfg, name, members, fold, oof, w, blender, result)
    for e, s in member_cv.items():
        log(f"  {e:<24} {metric} {s:.5f}")
    nested_text = f"  (nested, tuned on other folds: {result['cv_nested']:.5f})" if "cv_nested" in result else ""
    shown = ", ".join(f"{e}={v:.4f}" for e, v in zip(exps, w, strict=True))
    log(f"{name} = {method}({shown}): {metric} {result['cv']:.5f}{nested_text}")
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
    if blender.rank and metric not in RANK_METRICS:
        raise UserError(
            f"method=rank averages ranks, which keeps the meaning of rank metrics only "
            f"({', '.join(sorted(RANK_METRICS))}); the metric is {metric}: use mean, weighted, hill_climb or optimize"
        )
    out = Path(cfg.output_dir) / name
    if name in exps or (out.exists() and not (out / "weights.json").is_file()):
        raise UserError(f"{out} is an experiment, not an ensemble: choose another ensemble name")


def _write(cfg: Config, name: str, members: Members, fold, oof, w, blender: BlendMethod, result: dict) -> None:
    out, id_col, cols = Path(cfg.output_dir) / name, cfg.data.id_col, result["pred_cols"]
    frame = pd.DataFrame(oof, columns=cols)
    frame.insert(0, "fold", fold)
    frame.insert(0, id_col, members.ids)
    atomic_write_csv(out / "oof.csv", frame)
    if members.test is not None:
        test = combine(to_ranks(members.test) if blender.rank else members.test, w)
        frame = pd.DataFrame(test, columns=cols)
        frame.insert(0, id_col, members.test_ids)
        atomic_write_csv(out / "test_pred.csv", frame)
    else:
        (out / "test_pred.csv").unlink(missing_ok=True)  # a stale one would not match these weights
    info = {
        "method": result["method"],
        "members": result["members"],
        "weights": result["weights"],
        "rank": blender.rank,
    }
    atomic_write_json(out / "weights.json", info)
    atomic_write_json(out / "classes.json", members.classes)
    atomic_write_json(out / "cv.json", result)
