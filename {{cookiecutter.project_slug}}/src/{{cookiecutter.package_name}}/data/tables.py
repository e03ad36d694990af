"""Reading the competition's tables and turning its target column(s) into arrays, for every task type.

Class names and their order are derived here, once, from the training table; every prediction file uses
them as column names (`derive_classes`; recorded in the run's classes.json and cv.json `pred_cols`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.tasks import PIXEL_TASKS, SIGMOID_TASKS, SINGLE_OUTPUT_TASKS

if TYPE_CHECKING:
    from ..core.schema import Config


def data_path(cfg: Config, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else Path(cfg.data.dir) / p


# What pandas (and most tools that write CSVs) mean by a missing value. Read as text, a label column keeps them as
# written; as a label they are refused, never made a class of their own. An id may be any text (`NA` included).
MISSING_TEXT = frozenset(
    {"", "nan", "NaN", "NAN", "-nan", "-NaN", "NA", "N/A", "n/a", "#N/A", "#N/A N/A", "#NA", "<NA>", "NULL", "null",
     "None", "-1.#IND", "1.#IND", "-1.#QNAN", "1.#QNAN"}
)  # fmt: skip


def read_csv_text(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """A CSV with every cell as the text written: `01` stays `01`, `NA` stays `NA`; only an empty cell is missing
    (NaN). A missing, empty (0 bytes) or undecodable file is a one-line error."""
    if not path.is_file():
        raise UserError(f"{path}: file not found (check data.dir and the data.* file keys)")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes); expected a CSV with a header row")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding=encoding)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not {encoding} text (it holds the byte 0x{e.object[e.start]:02x}); set data.encoding to the "
            "file's encoding (e.g. data.encoding=cp1252 or latin-1)"
        ) from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: no header row; expected a CSV with a header row") from None


def read_long_table(
    path: Path, id_col: str, encoding: str = "utf-8", required: list[str] | tuple[str, ...] = ()
) -> pd.DataFrame:
    """Read a CSV as text (see read_csv_text) whose ids may repeat (a run-length table: one row per image and class);
    a missing column, a table without rows or an empty id is a one-line error."""
    df = read_csv_text(path, encoding)
    missing = [c for c in (id_col, *required) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: column(s) {missing} not found; columns are {list(df.columns)}")
    if df.empty:
        raise UserError(f"{path}: no rows, only the header {list(df.columns)}")
    empty = df.index[df[id_col].isna()]
    if len(empty):
        raise UserError(f"{path}: column '{id_col}' has {len(empty)} empty ids, at {_rows(empty)}")
    return df


def read_table(
    path: Path, id_col: str, required: list[str] | tuple[str, ...] = (), encoding: str = "utf-8"
) -> pd.DataFrame:
    """read_long_table, one row per id: a duplicate id is a one-line error too."""
    df = read_long_table(path, id_col, encoding, required)
    dup = df[id_col][df[id_col].duplicated()]
    if len(dup):
        raise UserError(f"{path}: {len(dup)} duplicate ids in column '{id_col}', first: {list(dup[:3])}")
    return df


def _rows(index: pd.Index, first: int = 5) -> str:
    """Table rows as a user counts them in an editor (the header is line 1): 'rows 2, 5, 9, ...'."""
    rows = [str(i + 2) for i in index[:first]]
    return ("row " if len(index) == 1 else "rows ") + ", ".join(rows) + (", ..." if len(index) > first else "")


def _values(values: pd.Series, first: int = 5) -> str:
    return ", ".join(repr("" if pd.isna(v) else v) for v in values[:first])


def check_labels(path: Path, col: str, labels: pd.Series, task: str, sep: str = " ") -> None:
    """A label column of a classification target holds each class in one spelling, written in full: no empty or
    missing-value text (`NaN`, `NA`, ...), no leading/trailing spaces (`3 ` would be a class besides `3`; for
    multilabel tags, around each tag), and at least two classes (multiclass, binary)."""
    where = f"{path}: column '{col}'"
    missing = labels.isna() | labels.isin(MISSING_TEXT)
    if missing.any():
        bad = labels.index[missing]
        raise UserError(
            f"{where} has {len(bad)} empty/NaN labels: {_values(labels[bad])} at {_rows(bad)}; "
            "every row needs its label (drop the unlabelled rows)"
        )
    spaced = labels != labels.str.strip()
    if spaced.any():
        bad = labels.index[spaced]
        raise UserError(
            f"{where} has {len(bad)} labels with leading/trailing spaces: {_values(labels[bad])} at {_rows(bad)}; "
            "each class must have one spelling"
        )
    if task == "multilabel":
        if sep.strip():  # tags split on a separator keep the spaces around them: 'cat, dog' -> 'cat', ' dog'
            spaced = labels.map(lambda cell: any(t != t.strip() for t in _split_tags(cell, sep)))
            if spaced.any():
                bad = labels.index[spaced]
                raise UserError(
                    f"{where} has {len(bad)} cells with spaces around a tag: {_values(labels[bad])} at {_rows(bad)}; "
                    f"tags are split on data.label_sep={sep!r}: remove the spaces or set data.label_sep"
                )
        return
    classes = labels.unique()
    if len(classes) < 2:
        raise UserError(
            f"{where} holds one class only ({classes[0]!r}); task={task} needs at least 2 (is this the target column?)"
        )


def read_train(cfg: Config) -> pd.DataFrame:
    """The training table, one row per image, its targets checked. Segmentation: one row per image in first-seen
    order (a run-length table has a row per image and class; the masks are read by data/masks.py)."""
    path = data_path(cfg, cfg.data.train_csv)
    if cfg.task in PIXEL_TASKS:
        df = read_long_table(path, cfg.data.id_col, cfg.data.encoding)
        return df.drop_duplicates(cfg.data.id_col).reset_index(drop=True)
    df = read_table(path, cfg.data.id_col, cfg.target_cols, cfg.data.encoding)
    for col in cfg.target_cols:
        if cfg.task in ("multiclass", "binary") or (cfg.task == "multilabel" and not _is_multi_hot(cfg)):
            check_labels(path, col, df[col], cfg.task, cfg.data.label_sep)
            continue
        bad = df.index[df[col].isna()]
        if len(bad):
            raise UserError(f"{path}: column '{col}' has {len(bad)} empty/NaN labels, at {_rows(bad)}")
        if cfg.task == "regression":  # inf, nan or text would turn every loss into inf/NaN
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
            bad = df.index[~np.isfinite(values)]
            if len(bad):
                value = str(df[col][bad[0]])
                raise UserError(
                    f"{path}: column '{col}' row {bad[0] + 2} holds {value!r}; task=regression needs finite numbers "
                    f"({len(bad)} such rows)"
                )
    return df


def _sort_classes(values: list) -> list[str]:
    """Numeric labels sort as numbers (2 before 10), the rest as strings; each keeps its text ('01' stays '01')."""
    try:
        return [str(v) for v in sorted(values, key=lambda v: (float(v), str(v)))]
    except (TypeError, ValueError):
        return sorted(str(v) for v in values)


def _as_label_str(series: pd.Series) -> pd.Series:
    """Labels as the text the tables hold (read_table reads text, kept verbatim); a number from a table built in
    code is written as its integer where it is one (1.0 -> '1')."""

    def norm(v: object) -> str:
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    return series.map(norm)


def _is_multi_hot(cfg: Config) -> bool:
    return cfg.task == "multilabel" and not isinstance(cfg.data.target_col, str)


def derive_classes(cfg: Config, df: pd.DataFrame) -> list[str]:
    """Prediction column names, in order: classes (multiclass), labels (multilabel), the target (binary, regression)."""
    col = cfg.target_cols[0]
    if cfg.task in SINGLE_OUTPUT_TASKS:
        return [col]
    if _is_multi_hot(cfg):
        return list(cfg.target_cols)
    if cfg.task == "multilabel":
        tags = {t for cell in df[col].astype(str) for t in _split_tags(cell, cfg.data.label_sep)}
        return _sort_classes(list(tags))
    return _sort_classes(list(_as_label_str(df[col]).unique()))


def _split_tags(cell: str, sep: str) -> list[str]:
    return [t for t in (cell.split(sep) if sep.strip() else cell.split()) if t]


def binary_positive(cfg: Config, df: pd.DataFrame) -> str:
    """The positive class of a binary target: the larger of its two values (1, True, 'yes' after sorting)."""
    col = cfg.target_cols[0]
    values = _sort_classes(list(_as_label_str(df[col]).unique()))
    if len(values) > 2:
        raise UserError(
            f"{cfg.data.train_csv}: column '{col}' has {len(values)} distinct values {values[:5]}...; task=binary "
            "expects 2"
        )
    return values[-1]


def encode_targets(cfg: Config, df: pd.DataFrame, classes: list[str], positive: str | None = None) -> np.ndarray:
    """The task's target array for the rows of `df` (formats: see README, 'Task formats')."""
    col = cfg.target_cols[0]
    where = f"{cfg.data.train_csv}: column '{col}'"
    if cfg.task == "multiclass":
        index = {c: i for i, c in enumerate(classes)}
        labels = _as_label_str(df[col])
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise UserError(f"{where} has labels {unknown[:5]} not among the classes {classes[:10]}")
        return labels.map(index).to_numpy(np.int64)
    if cfg.task == "binary":
        positive = positive if positive is not None else binary_positive(cfg, df)
        return (_as_label_str(df[col]) == positive).to_numpy(np.float32)
    if cfg.task == "regression":
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            raise UserError(f"{where} has non-numeric values, first: {df[col][values.isna()].iloc[0]!r}")
        return values.to_numpy(np.float32)
    if _is_multi_hot(cfg):
        block = df[list(classes)].apply(pd.to_numeric, errors="coerce")
        if not block.isin([0, 1]).all().all():
            raise UserError(f"{cfg.data.train_csv}: columns {list(classes)} must hold only 0/1 for task=multilabel")
        return block.to_numpy(np.float32)
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(df), len(classes)), np.float32)
    for r, cell in enumerate(df[col].astype(str)):
        for tag in _split_tags(cell, cfg.data.label_sep):
            if tag not in index:
                raise UserError(f"{where} row {r + 2} has tag {tag!r} not among the labels {classes[:10]}")
            y[r, index[tag]] = 1.0
    return y


def class_counts(y: np.ndarray, task: str, n_classes: int) -> np.ndarray | None:
    """How often each class occurs in targets `y` (soft targets count fractionally): multiclass (C,) rows per
    class; binary and multilabel (2, L) negatives then positives per output (L = 1 for binary); regression None.
    The loss's `class_weight: balanced` and the balancing samplers both count with this."""
    y = np.asarray(y, dtype=np.float64)
    if task == "multiclass":
        return y.sum(0) if y.ndim == 2 else np.bincount(y.astype(np.int64), minlength=n_classes).astype(np.float64)
    if task in SIGMOID_TASKS:
        y = y.reshape(len(y), -1)
        return np.stack([len(y) - y.sum(0), y.sum(0)])
    return None


def stratify_labels(cfg: Config, y: np.ndarray) -> np.ndarray:
    """What the balancing samplers balance, per row: the class id (multiclass/binary), the 0/1 tags (multilabel)."""
    if cfg.task == "multiclass":
        return y.astype(np.int64)
    if cfg.task in SIGMOID_TASKS:
        return (y > 0.5).astype(np.int64)
    raise UserError("train.sampler balances classes; task=regression has none (use train.sampler=none)")
