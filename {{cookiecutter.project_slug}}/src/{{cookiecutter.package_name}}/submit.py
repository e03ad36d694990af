"""Submission files: built from an experiment's test predictions in the competition's format, validated against
sample_submission.csv before they are written, scored locally against a solution file, and sent to Kaggle.

The formats and the columns each one holds are in submission_format.py; thresholds tuned on OOF in thresholds.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from . import kaggle_api, metrics
from .artefacts import atomic_write_csv, read_json
from .config import Config, metric_name
from .ensemble import read_pred_csv
from .errors import UserError
from .labels import binary_positive, data_path, derive_classes, encode_targets, read_table, read_train
from .submission_format import cell_text, format_values, resolve_format


def submissions_dir(cfg: Config) -> Path:
    """`submissions/` beside the outputs folder (the project root for the default output_dir=outputs)."""
    return Path(cfg.output_dir).parent / "submissions"


def make_submission(
    cfg: Config,
    exp: str,
    name: str | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """outputs/<exp>/test_pred.csv -> submissions/<name or exp>.csv in the sample submission's format."""
    run_dir, id_col = Path(cfg.output_dir) / exp, cfg.data.id_col
    if not (run_dir / "classes.json").is_file():
        raise UserError(f"{run_dir / 'classes.json'} not found: train and predict experiment {exp!r} first")
    info = read_json(run_dir / "classes.json")
    classes, positive = list(info["classes"]), info.get("positive")
    test = read_pred_csv(run_dir / "test_pred.csv", id_col, classes)
    sample_path = data_path(cfg, cfg.data.sample_submission)
    sample = read_table(sample_path, id_col)
    train = read_train(cfg)
    fmt = resolve_format(cfg, sample, classes)
    pred, value_cols = test[classes].to_numpy(np.float64), list(sample.columns[1:])
    if fmt == "probs" and len(value_cols) > 1 and sorted(value_cols) != sorted(classes):
        raise UserError(f"{sample_path}: columns {value_cols} are not the prediction columns {classes}")
    values, allowed = format_values(cfg, exp, fmt, pred, value_cols, classes, positive, train, log)
    values.insert(0, id_col, test[id_col].to_numpy())
    if set(values[id_col]) == set(sample[id_col]):  # else the validator names the missing / extra ids
        values = values.set_index(id_col).loc[sample[id_col]].reset_index()
    path = Path(out_dir) if out_dir is not None else submissions_dir(cfg)
    path = path / f"{name or exp}.csv"
    validate_submission(values, sample, id_col, kind=fmt, labels=allowed, where=str(path))
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
        return pd.to_numeric(sub[cols[0]], errors="raise").to_numpy(np.float64)
    if len(cols) > 1:
        if sorted(map(str, cols)) != sorted(classes):
            raise UserError(f"submission columns {cols} are not the prediction columns {classes}")
        return sub[classes].to_numpy(np.float64)
    cells = sub[cols[0]].map(lambda v: "" if pd.isna(v) else cell_text(v))
    if cfg.task == "binary":
        if set(cells) <= set(label_values):
            return (cells == positive).to_numpy(np.float64)
        return pd.to_numeric(sub[cols[0]], errors="raise").to_numpy(np.float64)
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
    sub = read_table(Path(submission_path), id_col)
    sol = read_table(Path(solution_path), id_col, cfg.target_cols)
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


def default_message(cfg: Config, exp: str) -> str:
    cv_path = Path(cfg.output_dir) / exp / "cv.json"
    if not cv_path.is_file():
        return exp
    cv = read_json(cv_path)
    return f"{exp} CV {cv.get('metric', metric_name(cfg))}={cv['cv']:.5f}"


def submit(
    cfg: Config,
    path: str | Path,
    message: str | None = None,
    dry_run: bool = False,
    competition: str | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Check the file against the sample submission, then send it to Kaggle with the CV in the message.

    `competition` defaults to the config's `competition` key."""
    path = Path(path)
    id_col = cfg.data.id_col
    sub = read_table(path, id_col)
    sample = read_table(data_path(cfg, cfg.data.sample_submission), id_col)
    validate_submission(sub, sample, id_col, where=str(path))
    message = message if message is not None else default_message(cfg, path.stem)
    competition = competition or getattr(cfg, "competition", "")
    if dry_run:
        log(f"dry run: would submit {path} to {competition or '(no competition set)'} with message {message!r}")
        return message
    if not competition:
        raise UserError("no competition id to submit to: set the config key 'competition' (the Kaggle slug)")
    answer = kaggle_api.submit(competition, path, message)
    log(f"submitted {path} to {competition}: {message}" + (f" ({answer})" if answer else ""))
    return message
