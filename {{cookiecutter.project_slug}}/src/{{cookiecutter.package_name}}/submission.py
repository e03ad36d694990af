"""Submission files: built from an experiment's test predictions in the competition's format, validated against
sample_submission.csv before they are written, scored locally against a solution file, and sent to Kaggle.

The formats and the columns each one holds are in submission_format.py; thresholds tuned on OOF in thresholds.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config, metric_name
from .core.errors import UserError
from .core.runs import (
    STALE_TMP_AGE,
    Run,
    append_csv_row,
    atomic_write_csv,
    checksum,
    read_json,
    read_pred_csv,
    remove_stale_tmp,
    submission_log_path,
    submission_path,
)
from .data.problem import oof_truth
from .data.tables import binary_positive, data_path, derive_classes, encode_targets, read_table, read_train
from .engine.scoring import (
    apply_cuts,
    ordinal,
    target_levels,
    tune_binary_threshold,
    tune_cuts,
    tune_f1_thresholds,
)
from .modeling import metrics


def oof_predictions(cfg: Config, exp: str) -> tuple[np.ndarray, np.ndarray]:
    """The experiment's OOF targets and predictions (N, C), aligned by id."""
    run = Run.named(cfg.output_dir, exp)
    classes = run.read_classes()
    oof = read_pred_csv(run.oof, cfg.data.id_col, list(classes["classes"]))
    ids = oof[cfg.data.id_col].tolist()
    y, _, _ = oof_truth(cfg, ids, classes, trained_on=run.read_cv().get("folds_hash"), where=str(run.oof))
    return y, oof[list(classes["classes"])].to_numpy(np.float64)


def binary_threshold(cfg: Config, exp: str, log: Callable[[str], None]) -> float:
    """submit.threshold, or tuned on OOF when submit.tune_thresholds is on and the metric counts labels."""
    t = cfg.submit.threshold
    if cfg.submit.tune_thresholds and metric_name(cfg) in metrics.label_metrics():
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
    """Ordinal regression: the cuts between `levels` (the sorted target values) tuned on the experiment's OOF for
    the metric; the same as cv.json records (the same function on the same OOF)."""
    y, oof = oof_predictions(cfg, exp)
    cuts = tune_cuts(y, oof[:, 0], levels, metric_name(cfg))
    log(f"ordinal cuts tuned on OOF for {metric_name(cfg)}: " + ", ".join(f"{c:.3f}" for c in cuts))
    return cuts


FORMAT_TASKS = {
    "label": ("multiclass", "binary"),
    "probs": ("multiclass", "binary", "multilabel"),
    "tags": ("multilabel",),
    "value": ("regression",),
}


def cell_text(v: object) -> str:
    """A cell as the text of a label or id: 3.0 -> '3' (pandas reads an int column with gaps as floats)."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _is_numeric(values: pd.Series) -> bool:
    return bool(pd.to_numeric(values, errors="coerce").notna().all())


def resolve_format(cfg: Config, sample: pd.DataFrame, classes: list[str]) -> str:
    fmt, task, value_cols = cfg.submit.format, cfg.task, list(sample.columns[1:])
    if fmt != "auto":
        if task not in FORMAT_TASKS[fmt]:
            raise UserError(f"submit.format={fmt} does not fit task={task}; it takes {', '.join(FORMAT_TASKS[fmt])}")
        return fmt
    if task == "regression":
        return "value"
    if len(value_cols) > 1:
        return "probs"
    if task == "multiclass":
        return "label"
    if task == "multilabel":
        return "probs" if value_cols == classes else "tags"
    label_metric = metric_name(cfg) in metrics.label_metrics()
    return "label" if label_metric or not _is_numeric(sample[value_cols[0]]) else "probs"


def _cast_like(labels: np.ndarray, train_col: pd.Series) -> np.ndarray:
    """Class names (strings) back to the training labels' type: ints stay ints, floats floats."""
    if pd.api.types.is_bool_dtype(train_col):
        return labels == "True"
    if pd.api.types.is_integer_dtype(train_col):
        return labels.astype(np.int64)
    if pd.api.types.is_float_dtype(train_col):
        return labels.astype(np.float64)
    return labels


def _label_values(cfg, exp, pred, classes, positive, train, log) -> np.ndarray:
    col = train[cfg.target_cols[0]]
    if cfg.task == "multiclass":
        metric = metric_name(cfg)
        k = int(metric.rsplit("_", 1)[1]) if metric.startswith("map_at_") else 1
        if k > 1:  # MAP@k: the k most probable classes, best first
            top = np.argsort(-pred, axis=1, kind="stable")[:, :k]
            return np.array([" ".join(classes[i] for i in row) for row in top])
        return _cast_like(np.array(classes)[pred.argmax(1)], col)
    negative = next(cell_text(v) for v in col.unique() if cell_text(v) != positive)
    t = binary_threshold(cfg, exp, log)
    return _cast_like(np.where(pred[:, 0] >= t, positive, negative), col)


def _tag_values(cfg: Config, pred: np.ndarray, classes: list[str], thresholds: np.ndarray) -> np.ndarray:
    chosen = pred >= thresholds[None, :]
    chosen[np.arange(len(pred)), pred.argmax(1)] |= ~chosen.any(1)  # never an empty row: the most probable label
    sep = cfg.data.label_sep if cfg.data.label_sep.strip() else " "
    return np.array([sep.join(c for c, on in zip(classes, row, strict=True) if on) for row in chosen])


def _regression_values(cfg: Config, exp: str, pred: np.ndarray, train: pd.DataFrame, log) -> np.ndarray:
    target = pd.to_numeric(train[cfg.target_cols[0]], errors="coerce").to_numpy(np.float64)
    values = pred[:, 0]
    if cfg.submit.clip:
        values = np.clip(values, np.nanmin(target), np.nanmax(target))
    if ordinal(cfg):
        levels = target_levels(cfg, target)
        out = apply_cuts(values, levels, rounding_cuts(cfg, exp, levels, log))
        return out.astype(np.int64) if np.all(levels == np.rint(levels)) else out
    return values


def format_values(
    cfg: Config,
    exp: str,
    fmt: str,
    pred: np.ndarray,
    value_cols: list[str],
    classes: list[str],
    positive: str | None,
    train: pd.DataFrame,
    log: Callable[[str], None],
) -> pd.DataFrame:
    """The submission's value columns (no id column) in format `fmt`.
    Multi-column probs need `value_cols` to be the prediction columns `classes` in some order."""
    if fmt == "probs" and len(value_cols) > 1:
        cols = pd.DataFrame(pred, columns=classes)[value_cols]
        if (
            cfg.task == "multilabel" and metric_name(cfg) in metrics.label_metrics()
        ):  # a label metric scores 0/1 columns
            thresholds = pd.Series(label_thresholds(cfg, exp, classes, log), index=classes)[value_cols]
            cols = (cols >= thresholds.to_numpy()[None, :]).astype(np.int64)
        return cols
    if fmt == "probs":
        return pd.DataFrame({value_cols[0]: pred[:, 0]})
    if fmt == "label":
        return pd.DataFrame({value_cols[0]: _label_values(cfg, exp, pred, classes, positive, train, log)})
    if fmt == "tags":
        tags = _tag_values(cfg, pred, classes, label_thresholds(cfg, exp, classes, log))
        return pd.DataFrame({value_cols[0]: tags})
    return pd.DataFrame({value_cols[0]: _regression_values(cfg, exp, pred, train, log)})


def submissions_dir(cfg: Config) -> Path:
    """`submissions/` beside the outputs folder (the project root for the default output_dir=outputs)."""
    return Path(cfg.output_dir).parent / "submissions"


def check_submission_file(cfg: Config, path: str | Path) -> pd.DataFrame:
    """A submission file as it will be sent: same columns, ids and order as the sample submission, no NaN, and values
    of the competition's format (labels among the training labels, probabilities in [0, 1], finite numbers)."""
    sub = read_table(existing(path, "submission file"), cfg.data.id_col)
    sample = read_table(data_path(cfg, cfg.data.sample_submission), cfg.data.id_col)
    train = read_train(cfg)
    fmt = resolve_format(cfg, sample, derive_classes(cfg, train))
    validate_submission(sub, sample, cfg.data.id_col, kind=fmt, labels=allowed_labels(cfg, train, fmt), where=str(path))
    return sub


def existing(path: str | Path, what: str) -> Path:
    """`path`, which must be a file (a missing one is named as what it was meant to be)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: {what} not found")
    return Path(path)


def _numbers(values: pd.Series, where: str) -> np.ndarray:
    num = pd.to_numeric(values, errors="coerce")
    if num.isna().any():
        raise UserError(f"{where} must hold numbers; found {values[num.isna()].iloc[:3].tolist()}")
    return num.to_numpy(np.float64)


def allowed_labels(cfg: Config, train: pd.DataFrame, fmt: str) -> list[str]:
    """What a label or tags cell may hold: the competition's labels as the training table has them (not an
    experiment's classes.json, which may come from an older table)."""
    if fmt == "label" and cfg.task == "binary":
        return sorted({cell_text(v) for v in train[cfg.target_cols[0]].unique()})
    return derive_classes(cfg, train)


def make_submission(
    cfg: Config,
    exp: str,
    name: str | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """outputs/<exp>/test_pred.csv -> submissions/<name or exp>.csv in the sample submission's format."""
    run, id_col = Run.named(cfg.output_dir, exp), cfg.data.id_col
    info = run.read_classes()
    classes, positive = list(info["classes"]), info.get("positive")
    test = read_pred_csv(run.test_pred, id_col, classes)
    sample_path = data_path(cfg, cfg.data.sample_submission)
    sample = read_table(sample_path, id_col)
    train = read_train(cfg)
    fmt = resolve_format(cfg, sample, classes)
    allowed = allowed_labels(cfg, train, fmt)
    foreign = [c for c in classes if c not in allowed] if fmt in ("label", "tags") and cfg.task != "binary" else []
    if foreign:
        raise UserError(
            f"{run.classes}: classes {foreign[:5]} are not among the labels of {cfg.data.train_csv} {allowed[:10]}; "
            f"a submission could hold them: retrain {exp} on the current table"
        )
    pred, value_cols = test[classes].to_numpy(np.float64), list(sample.columns[1:])
    if fmt == "probs" and len(value_cols) > 1 and sorted(value_cols) != sorted(classes):
        raise UserError(f"{sample_path}: columns {value_cols} are not the prediction columns {classes}")
    values = format_values(cfg, exp, fmt, pred, value_cols, classes, positive, train, log)
    values.insert(0, id_col, test[id_col].to_numpy())
    if set(values[id_col]) == set(sample[id_col]):  # else the validator names the missing / extra ids
        values = values.set_index(id_col).loc[sample[id_col]].reset_index()
    path = submission_path(out_dir if out_dir is not None else submissions_dir(cfg), name or exp)
    validate_submission(values, sample, id_col, kind=fmt, labels=allowed, where=str(path))
    remove_stale_tmp(path.parent, STALE_TMP_AGE)  # what a killed make-submission left
    atomic_write_csv(path, values)
    log(f"{path}: {len(values)} rows, format {fmt}")
    return path


def validate_submission(
    df: pd.DataFrame,
    sample: pd.DataFrame,
    id_col: str,
    kind: str | None = None,
    labels: list[str] | None = None,
    where: str = "submission",
) -> None:
    """Same columns in the same order as the sample, the same ids in the same order, no NaN, values in range
    (kind probs: numbers in [0, 1]; value: finite numbers; label/tags: among `labels`)."""
    if list(df.columns) != list(sample.columns):
        extra = [c for c in df.columns if c not in sample.columns]
        missing = [c for c in sample.columns if c not in df.columns]
        raise UserError(
            f"{where}: columns {list(df.columns)} != the sample's {list(sample.columns)} "
            f"(extra {extra}, missing {missing}; the order must match too)"
        )
    got, want = df[id_col].map(cell_text).tolist(), sample[id_col].map(cell_text).tolist()
    if got != want:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or extra or len(got) != len(want):
            raise UserError(
                f"{where}: column '{id_col}' has {len(got)} ids, the sample {len(want)}; missing {missing[:3]} "
                f"({len(missing)}), not in the sample {extra[:3]} ({len(extra)})"
            )
        row = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        raise UserError(
            f"{where}: ids are not in the sample's order: row {row + 2} is {got[row]!r}, expected {want[row]!r}"
        )
    for col in df.columns[1:]:
        bad = df.index[df[col].isna()]
        if len(bad):
            raise UserError(f"{where}: column '{col}' has {len(bad)} NaN/empty values, first at row {bad[0] + 2}")
        _check_values(df[col], kind, labels, f"{where}: column '{col}'")


def _check_values(col: pd.Series, kind: str | None, labels: list[str] | None, where: str) -> None:
    if kind in ("probs", "value"):
        num = pd.to_numeric(col, errors="coerce")
        if num.isna().any() or not np.isfinite(num).all():
            raise UserError(f"{where} must hold finite numbers; found {col[num.isna()].iloc[:3].tolist()}")
        if kind == "probs" and ((num < 0) | (num > 1)).any():
            raise UserError(f"{where} must hold probabilities in [0, 1]; found {num.min()}..{num.max()}")
    elif kind in ("label", "tags") and labels is not None:
        known = set(map(str, labels))
        unknown = sorted({t for v in col for t in cell_text(v).split() if t not in known})
        if unknown:
            raise UserError(f"{where} has values {unknown[:5]} that are not among the labels {sorted(known)[:10]}")


def parse_submission(
    cfg: Config,
    sub: pd.DataFrame,
    classes: list[str],
    positive: str | None = None,
    label_values: set[str] = frozenset(),
) -> np.ndarray:
    """A submission back in the task's prediction format (labels -> one-hot probabilities, tags -> 0/1, ...).

    Binary: a column holding only training label values (`label_values`, as strings) is labels, compared with
    `positive`; anything else is read as the probability of the positive class."""
    cols = list(sub.columns[1:])
    where = f"submission column '{cols[0]}'"
    if cfg.task == "regression":
        return _numbers(sub[cols[0]], where)
    if len(cols) > 1:
        if sorted(map(str, cols)) != sorted(classes):
            raise UserError(f"submission columns {cols} are not the prediction columns {classes}")
        return np.stack([_numbers(sub[c], f"submission column '{c}'") for c in classes], axis=1)
    cells = sub[cols[0]].map(lambda v: "" if pd.isna(v) else cell_text(v))
    if cfg.task == "binary":
        if set(cells) <= set(label_values):
            return (cells == positive).to_numpy(np.float64)
        return _numbers(sub[cols[0]], where)
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(sub), len(classes)))
    for r, cell in enumerate(cells):
        tokens = cell.split() if cfg.task == "multiclass" else [t for t in cell.split(cfg.data.label_sep) if t]
        for rank, tok in enumerate(tokens):
            if tok not in index:
                raise UserError(f"{where} row {r + 2}: {tok!r} is not among the labels {classes[:10]}")
            # multiclass: one label -> one-hot; MAP@k's ranked labels -> decreasing scores
            out[r, index[tok]] = 1.0 if cfg.task == "multilabel" else 1.0 / (rank + 1)
    if cfg.task == "multiclass":
        out /= np.maximum(out.sum(1, keepdims=True), 1e-12)
    return out


def score_submission(cfg: Config, submission_path: str | Path, solution_path: str | Path) -> float:
    """The config's metric of a submission file against a solution file (id + target, as in train.csv)."""
    id_col = cfg.data.id_col
    sub = read_table(existing(submission_path, "submission file"), id_col)
    sol = read_table(existing(solution_path, "solution file (--solution)"), id_col, cfg.target_cols)
    if set(sub[id_col]) != set(sol[id_col]):
        diff = sorted(set(sub[id_col]) ^ set(sol[id_col]))
        raise UserError(
            f"{submission_path} and {solution_path} have different ids ({len(diff)} differ, e.g. {diff[:3]})"
        )
    sol = sol.set_index(id_col).loc[sub[id_col]].reset_index()
    train = read_train(cfg)
    classes = derive_classes(cfg, train)
    positive = binary_positive(cfg, train) if cfg.task == "binary" else None
    y = encode_targets(cfg, sol, classes, positive)
    label_values = {cell_text(v) for v in train[cfg.target_cols[0]].unique()}
    pred = parse_submission(cfg, sub, classes, positive, label_values)
    return metrics.score(metric_name(cfg), y, pred, cfg.task)


def cv_of(cfg: Config, exp: str) -> dict | None:
    """cv.json of the experiment a submission file was made from (its file name), if there is one."""
    run = Run.named(cfg.output_dir, exp)
    return read_json(run.cv) if run.cv.is_file() else None


def default_message(cfg: Config, exp: str) -> str:
    cv = cv_of(cfg, exp)
    return exp if cv is None else f"{exp} CV {cv.get('metric', metric_name(cfg))}={cv['cv']:.5f}"


def log_submission(cfg: Config, path: str | Path, message: str, competition: str) -> dict:
    """Append what was just sent to submissions/log.csv (time in UTC, the file's size and sha256, the experiment it
    was made from and its CV), so `lb` can put the public scores beside the CVs later."""
    path = Path(path)
    cv = cv_of(cfg, path.stem) or {}
    row = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": checksum(path),
        "experiment": path.stem,
        "cv": cv.get("cv", ""),
        "cv_tta": cv.get("cv_tta", ""),  # test_pred.csv is made with the TTA views: this CV is that of the file
        "metric": cv.get("metric", metric_name(cfg)),
        "competition": competition,
        "message": message,
    }
    append_csv_row(submission_log_path(submissions_dir(cfg)), row)
    return row


def score_line(cfg: Config, file: str | Path, solution: str | Path | None = None) -> str:
    """The `score` command's line: the file's score against the solution (data.dir/solution.csv, which the demo
    ships), beside the OOF CV of the experiment it was made from."""
    solution = solution or data_path(cfg, "solution.csv")
    line = f"{file}: {metric_name(cfg)} = {score_submission(cfg, file, solution):.5f}"
    cv = cv_of(cfg, Path(file).stem)
    if cv is not None:
        line += f"  |  OOF CV {cv['cv']:.5f}" + (f" (with TTA {cv['cv_tta']:.5f})" if "cv_tta" in cv else "")
    return line
