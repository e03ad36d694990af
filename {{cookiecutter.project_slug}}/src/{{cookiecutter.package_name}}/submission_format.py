"""The value columns of a submission, from an experiment's test predictions, in the competition's format.

Formats (submit.format; 'auto' picks from the sample submission, the task and the metric):
  label  one column: the class (multiclass argmax, cast like the training labels; MAP@k: the top k, space-separated),
         or for binary the positive/negative class at a threshold
  probs  one column per class/label named as in the sample (binary: one column, P(positive class))
  tags   multilabel, one column: the labels whose probability reaches their threshold, never empty
  value  regression: the value, clipped to the training range; for metric qwk rounded at thresholds tuned on OOF
Binary 'auto': label when the sample's values are not numbers (e.g. yes/no) or the metric counts labels (accuracy,
F1, ...); otherwise probs. The sample's placeholder numbers decide nothing: Kaggle ships 0 for AUC contests too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .blend_methods import SCORE_METRICS
from .config import Config, metric_name
from .errors import UserError
from .thresholds import binary_threshold, label_thresholds, rounding_cuts

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
    label_metric = metric_name(cfg) not in SCORE_METRICS
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


def _label_values(cfg, exp, pred, classes, positive, train, log) -> tuple[np.ndarray, list[str]]:
    col = train[cfg.target_cols[0]]
    if cfg.task == "multiclass":
        metric = metric_name(cfg)
        k = int(metric.rsplit("_", 1)[1]) if metric.startswith("map_at_") else 1
        if k > 1:  # MAP@k: the k most probable classes, best first
            top = np.argsort(-pred, axis=1, kind="stable")[:, :k]
            return np.array([" ".join(classes[i] for i in row) for row in top]), classes
        return _cast_like(np.array(classes)[pred.argmax(1)], col), classes
    negative = next(cell_text(v) for v in col.unique() if cell_text(v) != positive)
    t = binary_threshold(cfg, exp, log)
    return _cast_like(np.where(pred[:, 0] >= t, positive, negative), col), [negative, str(positive)]


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
    if metric_name(cfg) == "qwk":
        levels = np.unique(np.rint(target))
        cuts = rounding_cuts(cfg, exp, levels, log)
        return levels[np.digitize(values, cuts)].astype(np.int64)
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
) -> tuple[pd.DataFrame, list[str]]:
    """The submission's value columns (no id column) in format `fmt`, and the labels a label/tags cell may hold.
    Multi-column probs need `value_cols` to be the prediction columns `classes` in some order."""
    if fmt == "probs" and len(value_cols) > 1:
        cols = pd.DataFrame(pred, columns=classes)[value_cols]
        if cfg.task == "multilabel" and metric_name(cfg) not in SCORE_METRICS:  # a label metric scores 0/1 columns
            thresholds = pd.Series(label_thresholds(cfg, exp, classes, log), index=classes)[value_cols]
            cols = (cols >= thresholds.to_numpy()[None, :]).astype(np.int64)
        return cols, classes
    if fmt == "probs":
        return pd.DataFrame({value_cols[0]: pred[:, 0]}), classes
    if fmt == "label":
        labels, allowed = _label_values(cfg, exp, pred, classes, positive, train, log)
        return pd.DataFrame({value_cols[0]: labels}), allowed
    if fmt == "tags":
        tags = _tag_values(cfg, pred, classes, label_thresholds(cfg, exp, classes, log))
        return pd.DataFrame({value_cols[0]: tags}), classes
    return pd.DataFrame({value_cols[0]: _regression_values(cfg, exp, pred, train, log)}), classes
