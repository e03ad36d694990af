"""The submission codec: a competition's submission formats (label, probs, tags, value) and which one a sample
submission asks for, prediction tables -> submission values with the run's decisions applied as recorded, a
submission file validated against the sample, and read back into the task's prediction format (to score it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config, metric_name
from ..core.errors import UserError
from ..core.runs import Decisions, Run
from ..core.tasks import CLASSIFICATION_TASKS, PIXEL_TASKS
from ..data.tables import data_path, derive_classes, read_table
from ..modeling import metrics
from .inference import as_decided, model_digests
from .scoring import as_submitted, decide, top_k

FORMAT_TASKS = {
    "label": ("multiclass", "binary"),
    "probs": CLASSIFICATION_TASKS,
    "tags": ("multilabel",),
    "value": ("regression",),
}


def cell_text(v: object) -> str:
    """A cell as the text of a label or id. Tables are read as text, kept as written ('01' stays '01'); a float of a
    table built in code is written as its integer where it is one (3.0 -> '3')."""
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


def _label_values(cfg: Config, d: Decisions, pred: np.ndarray, classes: list[str], positive: str | None,
                  train: pd.DataFrame) -> np.ndarray:  # fmt: skip
    """Labels as the training table writes them, byte for byte (the class names are its text)."""
    col = train[cfg.target_cols[0]]
    if cfg.task == "multiclass":
        k = top_k(d.metric)
        if k > 1:  # MAP@k: the k most probable classes, best first
            top = np.argsort(-pred, axis=1, kind="stable")[:, :k]
            return np.array([" ".join(classes[i] for i in row) for row in top])
        return np.array(classes, dtype=object)[pred.argmax(1)]
    negative = next(cell_text(v) for v in col.unique() if cell_text(v) != positive)
    return np.where(as_submitted(cfg.task, d, pred)[:, 0] > 0.5, positive, negative).astype(object)


def _tag_values(cfg: Config, d: Decisions, pred: np.ndarray, classes: list[str]) -> np.ndarray:
    chosen = as_submitted(cfg.task, d, pred) > 0.5
    sep = cfg.data.label_sep if cfg.data.label_sep.strip() else " "
    return np.array([sep.join(c for c, on in zip(classes, row, strict=True) if on) for row in chosen])


def format_values(cfg: Config, d: Decisions, pred: np.ndarray, value_cols: list[str], classes: list[str],
                  positive: str | None, train: pd.DataFrame) -> pd.DataFrame:  # fmt: skip
    """The submission's value columns (no id column) in the format the decisions were made for (`d.format`), with
    the decisions applied as recorded (thresholds, cuts, clipping). Multi-column probs need `value_cols` to be the
    prediction columns `classes` in some order."""
    fmt = d.format
    if fmt == "probs" and len(value_cols) > 1:
        out = as_submitted(cfg.task, d, pred)  # 0/1 columns where thresholds were decided (a label metric)
        cols = pd.DataFrame(out, columns=classes)[value_cols]
        return cols.astype(np.int64) if d.thresholds is not None else cols
    if fmt == "probs":
        return pd.DataFrame({value_cols[0]: pred[:, 0]})
    if fmt == "label":
        return pd.DataFrame({value_cols[0]: _label_values(cfg, d, pred, classes, positive, train)})
    if fmt == "tags":
        return pd.DataFrame({value_cols[0]: _tag_values(cfg, d, pred, classes)})
    values = as_submitted(cfg.task, d, pred)
    if d.ordinal is not None and np.all(np.equal(d.ordinal["levels"], np.rint(d.ordinal["levels"]))):
        values = values.astype(np.int64)  # whole grades are written as integers
    return pd.DataFrame({value_cols[0]: values})


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
    fmt: str | None = None,
) -> np.ndarray:
    """A submission back in the task's prediction format (labels -> one-hot probabilities, tags -> 0/1, ...).

    Binary: a column holding only training label values (`label_values`, as strings) is labels, compared with
    `positive`; anything else is read as the probability of the positive class, unless the competition's format
    `fmt` is label (then '1' where the labels are '01' is not a label, nor a probability)."""
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
        if fmt == "label":
            unknown = sorted(set(cells) - set(label_values))
            raise UserError(f"{where} has values {unknown[:5]} that are not among the labels {sorted(label_values)}")
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


def record_decisions(cfg: Config, run: Run, classes: list[str], y: np.ndarray, pred: np.ndarray, target: np.ndarray,
                     cv_from: str, way: dict | None = None, folds: list[int] | None = None,
                     members: list[str] | None = None) -> Decisions | None:  # fmt: skip
    """decisions.json: what a submission of `run` applies (engine/scoring.decide on the OOF `y`, `pred` from
    `cv_from`), with how test_pred.csv was predicted (`way`, None before predict; a blend: its `members`). None,
    and nothing written, when the competition's sample submission is not there to say the format."""
    sample_path = data_path(cfg, cfg.data.sample_submission)
    if not sample_path.is_file():
        print(f"note: {sample_path} not found: no submission decisions for {run.name}")
        return None
    if cfg.task in PIXEL_TASKS:
        fmt = "rle"  # run-length encoded masks, laid out as the sample submission is (submission.py)
    else:
        fmt = resolve_format(cfg, read_table(sample_path, cfg.data.id_col, encoding=cfg.data.encoding), classes)
    predicted = {}
    if way is not None:
        models = model_digests(as_decided(cfg, way["views"], way["merge"], way["runtime"]), folds) if folds else None
        predicted = {**way, "models": models}
    d = decide(cfg, fmt, y, pred, target, cv_from, **predicted, members=members)
    run.write_decisions(d)
    return d
