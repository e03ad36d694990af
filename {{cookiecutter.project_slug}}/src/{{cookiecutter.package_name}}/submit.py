"""Submission files: built from an experiment's test predictions in the competition's format, validated against
sample_submission.csv before they are written, scored locally against a solution file, and sent to Kaggle.

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
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from . import kaggle_api, metrics
from .artefacts import atomic_write_csv, read_json
from .config import Config, metric_name
from .ensemble import SCORE_METRICS, load_members, oof_truth, read_pred_csv
from .errors import UserError
from .labels import binary_positive, data_path, derive_classes, encode_targets, read_table, read_train

FORMAT_TASKS = {
    "label": ("multiclass", "binary"),
    "probs": ("multiclass", "binary", "multilabel"),
    "tags": ("multilabel",),
    "value": ("regression",),
}


def submissions_dir(cfg: Config) -> Path:
    """`submissions/` beside the outputs folder (the project root for the default output_dir=outputs)."""
    return Path(cfg.output_dir).parent / "submissions"


def _norm(v: object) -> str:
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


def tune_f1_thresholds(y: np.ndarray, p: np.ndarray, default: float) -> np.ndarray:
    """Per column of (N, L) probabilities, the threshold among the default and 99 quantiles maximising F1."""
    out = np.full(p.shape[1], default)
    for j in range(p.shape[1]):
        cand = np.unique(np.r_[default, np.quantile(p[:, j], np.linspace(0.01, 0.99, 99))])
        pred, truth = p[:, j, None] >= cand[None, :], y[:, j, None] > 0.5
        tp, fp, fn = (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)
        f1 = np.divide(2.0 * tp, 2.0 * tp + fp + fn, out=np.zeros(len(cand)), where=(2 * tp + fp + fn) > 0)
        out[j] = cand[int(np.argmax(f1))]
    return out


def tune_binary_threshold(y: np.ndarray, p: np.ndarray, metric: str, default: float) -> float:
    cand = np.unique(np.r_[default, np.quantile(p, np.linspace(0.01, 0.99, 99))])
    scores = [metrics.score(metric, y, (p >= t).astype(np.float64), "binary") for t in cand]
    return float(cand[int(np.nanargmax(scores))])


def tune_rounding(y: np.ndarray, p: np.ndarray, values: np.ndarray) -> np.ndarray:
    """QWK: thresholds between the sorted target values, from the midpoints, tuned by Nelder-Mead on OOF."""

    def qwk(t: np.ndarray) -> float:
        s = metrics.score("qwk", y, values[np.digitize(p, np.sort(t))], "regression")
        return -1.0 if np.isnan(s) else s

    start = (values[1:] + values[:-1]) / 2
    res = minimize(lambda t: -qwk(t), start, method="Nelder-Mead", options={"maxiter": 400, "xatol": 1e-3})
    return np.sort(res.x) if qwk(res.x) >= qwk(start) else start


def _oof(cfg: Config, exp: str) -> tuple[np.ndarray, np.ndarray]:
    members = load_members(cfg, [exp])
    y, _, _ = oof_truth(cfg, members)
    return y, members.oof[0]


def _label_values(cfg, exp, pred, classes, positive, train, log) -> tuple[np.ndarray, list[str]]:
    col = train[cfg.target_cols[0]]
    if cfg.task == "multiclass":
        metric = metric_name(cfg)
        k = int(metric.rsplit("_", 1)[1]) if metric.startswith("map_at_") else 1
        if k > 1:  # MAP@k: the k most probable classes, best first
            top = np.argsort(-pred, axis=1, kind="stable")[:, :k]
            return np.array([" ".join(classes[i] for i in row) for row in top]), classes
        return _cast_like(np.array(classes)[pred.argmax(1)], col), classes
    negative = next(_norm(v) for v in col.unique() if _norm(v) != positive)
    t = cfg.submit.threshold
    if cfg.submit.tune_thresholds and metric_name(cfg) not in SCORE_METRICS:
        y, oof = _oof(cfg, exp)
        t = tune_binary_threshold(y, oof[:, 0], metric_name(cfg), t)
        log(f"binary threshold tuned on OOF for {metric_name(cfg)}: {t:.4f}")
    return _cast_like(np.where(pred[:, 0] >= t, positive, negative), col), [negative, str(positive)]


def _label_thresholds(cfg: Config, exp: str, classes: list[str], log: Callable[[str], None]) -> np.ndarray:
    """Multilabel: per-label thresholds maximising each label's F1 on OOF, or submit.threshold for all."""
    if not cfg.submit.tune_thresholds:
        return np.full(len(classes), cfg.submit.threshold)
    y, oof = _oof(cfg, exp)
    thresholds = tune_f1_thresholds(y, oof, cfg.submit.threshold)
    log(
        "per-label thresholds tuned on OOF F1: "
        + ", ".join(f"{c}={t:.3f}" for c, t in zip(classes, thresholds, strict=True))
    )
    return thresholds


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
        y, oof = _oof(cfg, exp)
        cuts = tune_rounding(y, oof[:, 0], levels)
        log("QWK rounding thresholds tuned on OOF: " + ", ".join(f"{c:.3f}" for c in cuts))
        return levels[np.digitize(values, cuts)].astype(np.int64)
    return values


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
    allowed = classes
    if fmt == "probs" and len(value_cols) > 1:
        if sorted(value_cols) != sorted(classes):
            raise UserError(f"{sample_path}: columns {value_cols} are not the prediction columns {classes}")
        cols = pd.DataFrame(pred, columns=classes)[value_cols]
        if cfg.task == "multilabel" and metric_name(cfg) not in SCORE_METRICS:  # a label metric scores 0/1 columns
            thresholds = pd.Series(_label_thresholds(cfg, exp, classes, log), index=classes)[value_cols]
            cols = (cols >= thresholds.to_numpy()[None, :]).astype(np.int64)
        values = cols
    elif fmt == "probs":
        values = pd.DataFrame({value_cols[0]: pred[:, 0]})
    elif fmt == "label":
        labels, allowed = _label_values(cfg, exp, pred, classes, positive, train, log)
        values = pd.DataFrame({value_cols[0]: labels})
    elif fmt == "tags":
        tags = _tag_values(cfg, pred, classes, _label_thresholds(cfg, exp, classes, log))
        values = pd.DataFrame({value_cols[0]: tags})
    else:
        values = pd.DataFrame({value_cols[0]: _regression_values(cfg, exp, pred, train, log)})
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
    got, want = df[id_col].map(_norm).tolist(), sample[id_col].map(_norm).tolist()
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
        unknown = sorted({t for v in col for t in _norm(v).split() if t not in known})
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
    cells = sub[cols[0]].map(lambda v: "" if pd.isna(v) else _norm(v))
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
    label_values = {_norm(v) for v in train[cfg.target_cols[0]].unique()}
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
