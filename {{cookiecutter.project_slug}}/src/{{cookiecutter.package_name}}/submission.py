"""The `make-submission` and `score` commands: an experiment's test predictions -> a submission file in the
competition's format, with the run's recorded decisions (decisions.json: thresholds, cuts, clipping, tuned on OOF
by `cv` or `ensemble`) applied as written, validated against sample_submission.csv before it is written; and a
submission file scored locally against a solution file.

The formats and validation are the submission codec (engine/codec.py); what is sent to Kaggle and logged is
kaggle/submissions.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .config import Config, metric_name
from .core.errors import UserError
from .core.runs import (
    STALE_TMP_AGE,
    Decisions,
    Run,
    atomic_write_csv,
    read_masks,
    read_pred_csv,
    read_source,
    remove_stale_tmp,
    submission_path,
    submissions_dir,
)
from .core.tasks import PIXEL_TASKS
from .data.problem import sizes_of_test_images
from .data.tables import (
    binary_positive,
    data_path,
    derive_classes,
    encode_targets,
    read_long_table,
    read_table,
    read_train,
)
from .engine import masks_codec
from .engine.codec import (
    allowed_labels,
    cell_text,
    existing,
    format_values,
    parse_submission,
    resolve_format,
    validate_submission,
)
from .engine.inference import predicted_as
from .modeling import metrics


def check_predicted_as_decided(run: Run, decisions: Decisions) -> None:
    """test_pred.csv was predicted as the decisions say (views, merge, runtime): else the thresholds and the CV
    belong to other predictions."""
    if decisions.members is not None or decisions.views is None:
        if decisions.views is None and decisions.members is None:
            raise UserError(f"{run.decisions}: made before `predict`; run `predict` for {run.name!r} (it records how "
                            "test_pred.csv was predicted and tunes the decisions on the matching OOF)")  # fmt: skip
        return
    source = read_source(run.test_pred)
    way = None if source is None else predicted_as(source)
    decided = {"views": decisions.views, "merge": decisions.merge, "runtime": decisions.runtime}
    if way != decided:
        raise UserError(f"{run.test_pred} was predicted with {way} but {run.decisions} was decided for {decided}; "
                        f"run `predict` for {run.name!r} again")  # fmt: skip


def make_submission(
    cfg: Config,
    exp: str,
    name: str | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """outputs/<exp>/test_pred.csv -> submissions/<name or exp>.csv in the sample submission's format, with the
    run's decisions applied."""
    run, id_col = Run.named(cfg.output_dir, exp, full_ok=True), cfg.data.id_col
    info = run.read_classes()
    classes, positive = list(info.classes), info.positive
    test = read_pred_csv(run.test_pred, id_col, classes)
    decisions = run.read_decisions()
    check_predicted_as_decided(run, decisions)
    path = submission_path(out_dir if out_dir is not None else submissions_dir(cfg.output_dir), name or exp)
    if cfg.task in PIXEL_TASKS:
        return _masks_submission(cfg, run, decisions, test[id_col].tolist(), classes, path, log)
    sample_path = data_path(cfg, cfg.data.sample_submission)
    sample = read_table(sample_path, id_col, encoding=cfg.data.encoding)
    train = read_train(cfg)
    fmt = decisions.format
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
    values = format_values(cfg, decisions, pred, value_cols, classes, positive, train)
    values.insert(0, id_col, test[id_col].to_numpy())
    if set(values[id_col]) == set(sample[id_col]):  # else the validator names the missing / extra ids
        values = values.set_index(id_col).loc[sample[id_col]].reset_index()
    validate_submission(values, sample, id_col, kind=fmt, labels=allowed, where=str(path))
    remove_stale_tmp(path.parent, STALE_TMP_AGE)  # what a killed make-submission left
    atomic_write_csv(path, values)
    applied = describe(decisions, classes)
    log(f"{path}: {len(values)} rows, format {fmt}{'; ' + applied if applied else ''}; OOF CV of this submission "
        f"{decisions.metric}={decisions.cv:.5f}")  # fmt: skip
    return path


def _masks_submission(cfg: Config, run: Run, decisions: Decisions, ids: list[str], classes: list[str], path: Path,
                      log: Callable[[str], None]) -> Path:  # fmt: skip
    """Segmentation: test_pred.csv's maps -> run-length encoded masks at each test image's size, post-processed as
    decisions.json says, in the sample submission's layout, validated (cells and encodings) before writing."""
    if decisions.postprocess is None:
        raise UserError(f"{run.decisions}: no post-processing recorded (made before segmentation support?); run `cv`")
    maps = read_masks(run.test_pred, ids)
    sample_path = existing(data_path(cfg, cfg.data.sample_submission), "sample submission")
    sample = read_long_table(sample_path, cfg.data.id_col, cfg.data.encoding)
    shapes = sizes_of_test_images(cfg, ids)
    sub = masks_codec.encode_submission(cfg, ids, maps, shapes, decisions.postprocess, sample, classes, str(path))
    masks_codec.validate_submission(cfg, sub, sample, classes, dict(zip(ids, shapes, strict=True)), str(path))
    remove_stale_tmp(path.parent, STALE_TMP_AGE)
    atomic_write_csv(path, sub)
    log(f"{path}: {len(sub)} rows, run-length encoded masks ({describe(decisions, classes)}); OOF CV of this "
        f"submission {decisions.metric}={decisions.cv:.5f}")  # fmt: skip
    return path


def describe(d: Decisions, classes: list[str]) -> str:
    """The decisions a submission applied, in words."""
    if d.threshold is not None:
        return f"binary threshold {d.threshold:.4f}"
    if d.thresholds is not None:
        return "label thresholds " + ", ".join(f"{c}={t:.3f}" for c, t in zip(classes, d.thresholds, strict=True))
    if d.ordinal is not None:
        return "ordinal cuts " + ", ".join(f"{c:.3f}" for c in d.ordinal["cuts"])
    if d.postprocess is not None:
        return "post-processing " + ", ".join(
            f"{c}: p>={pc['threshold']:.2f} area>={pc['min_area']:g} empty<{pc['empty_below']:.2f}"
            for c, pc in zip(classes, d.postprocess["classes"], strict=True)
        )
    return ""


def score_submission(cfg: Config, submission_file: str | Path, solution_path: str | Path) -> float:
    """The config's metric of a submission file against a solution file (id + target, as in train.csv)."""
    if cfg.task in PIXEL_TASKS:
        return _score_masks(cfg, submission_file, solution_path)
    id_col = cfg.data.id_col
    sub = read_table(existing(submission_file, "submission file"), id_col)
    sol = read_table(existing(solution_path, "solution file (--solution)"), id_col, cfg.target_cols, cfg.data.encoding)
    if set(sub[id_col]) != set(sol[id_col]):
        diff = sorted(set(sub[id_col]) ^ set(sol[id_col]))
        raise UserError(
            f"{submission_file} and {solution_path} have different ids ({len(diff)} differ, e.g. {diff[:3]})"
        )
    sol = sol.set_index(id_col).loc[sub[id_col]].reset_index()
    train = read_train(cfg)
    classes = derive_classes(cfg, train)
    positive = binary_positive(cfg, train) if cfg.task == "binary" else None
    y = encode_targets(cfg, sol, classes, positive)
    label_values = {cell_text(v) for v in train[cfg.target_cols[0]].unique()}
    sample = read_table(data_path(cfg, cfg.data.sample_submission), id_col, encoding=cfg.data.encoding)
    pred = parse_submission(cfg, sub, classes, positive, label_values, resolve_format(cfg, sample, classes))
    return metrics.score(metric_name(cfg), y, pred, cfg.task)


def _score_masks(cfg: Config, submission_file: str | Path, solution_path: str | Path) -> float:
    """Segmentation: both files decoded at each test image's size (the solution laid out as the sample submission
    is), scored image by image: images of one size at a time, weighted by their count (exact for the per-image
    metrics dice and iou; miou pools each size's pixels)."""
    sub = masks_codec.read_submission(cfg, submission_file)
    sol = masks_codec.read_submission(cfg, solution_path, "solution file (--solution)")
    total, name, sizes = 0.0, metric_name(cfg), [m.shape[1:] for m in sub.masks]
    for size in dict.fromkeys(sizes):
        rows = [n for n, s in enumerate(sizes) if s == size]
        y = np.stack([sol.masks[n] for n in rows])
        p = np.stack([sub.masks[n] for n in rows]).astype(np.float32)
        total += metrics.score(name, y, p, cfg.task) * len(rows)
    return total / len(sub.ids)


def submitted_cv(cfg: Config, exp: str) -> float | None:
    """The OOF CV of a submission made from experiment `exp` (its decisions.json), if there is one."""
    run = Run.named(cfg.output_dir, exp, full_ok=True)
    return run.read_decisions().cv if run.decisions.is_file() else None


def score_line(cfg: Config, file: str | Path, solution: str | Path | None = None) -> str:
    """The `score` command's line: the file's score against the solution (data.dir/solution.csv, which the demo
    ships), beside the OOF CV of that submission (the experiment it was made from: the file's name)."""
    solution = solution or data_path(cfg, "solution.csv")
    line = f"{file}: {metric_name(cfg)} = {score_submission(cfg, file, solution):.5f}"
    cv = submitted_cv(cfg, Path(file).stem)
    if cv is not None:
        line += f"  |  OOF CV {cv:.5f}"
    return line
