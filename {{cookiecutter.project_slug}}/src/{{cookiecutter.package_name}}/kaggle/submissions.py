"""What is sent to Kaggle, and the record of it: a submission file checked as it will be sent, the default message
(the experiment and the OOF CV of exactly what the file holds, from its decisions.json), and submissions/log.csv,
one row per submission, which `lb` joins to Kaggle's scores."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..config import Config, metric_name
from ..core.runs import Run, append_csv_row, checksum, submission_log_path, submissions_dir
from ..core.tasks import PIXEL_TASKS
from ..data.tables import data_path, derive_classes, read_table, read_train
from ..engine import masks_codec
from ..engine.codec import allowed_labels, existing, resolve_format, validate_submission


def check_submission_file(cfg: Config, path: str | Path) -> pd.DataFrame:
    """A submission file as it will be sent: same columns, ids and order as the sample submission, no NaN, and values
    of the competition's format (labels among the training labels, probabilities in [0, 1], finite numbers)."""
    if cfg.task in PIXEL_TASKS:  # run-length encoded masks: every cell and encoding checked
        return masks_codec.read_submission(cfg, path).table
    sub = read_table(existing(path, "submission file"), cfg.data.id_col)
    sample = read_table(data_path(cfg, cfg.data.sample_submission), cfg.data.id_col, encoding=cfg.data.encoding)
    train = read_train(cfg)
    fmt = resolve_format(cfg, sample, derive_classes(cfg, train))
    validate_submission(sub, sample, cfg.data.id_col, kind=fmt, labels=allowed_labels(cfg, train, fmt), where=str(path))
    return sub


def _decided(cfg: Config, exp: str):
    run = Run.named(cfg.output_dir, exp, full_ok=True)
    return run.read_decisions() if run.decisions.is_file() else None


def default_message(cfg: Config, exp: str) -> str:
    """`<exp> CV <metric>=<cv>`: the OOF CV of what a submission made from `exp` holds (thresholds, cuts applied)."""
    d = _decided(cfg, exp)
    return exp if d is None else f"{exp} CV {d.metric}={d.cv:.5f}"


def _append_log(cfg: Config, exp: str, file: str, size: int | str, sha256: str, message: str, competition: str) -> dict:
    """One row of submissions/log.csv: time in UTC, the file sent (its size and sha256 when it is local), the
    experiment it was made from and the OOF CV of that submission (its decisions'), so `lb` can put the public
    scores beside the CVs later."""
    d = _decided(cfg, exp)
    row = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file": file,
        "bytes": size,
        "sha256": sha256,
        "experiment": exp,
        "cv": "" if d is None else d.cv,
        "cv_from": "" if d is None else d.cv_from,
        "metric": metric_name(cfg) if d is None else d.metric,
        "competition": competition,
        "message": message,
    }
    append_csv_row(submission_log_path(submissions_dir(cfg.output_dir)), row)
    return row


def log_code_submission(cfg: Config, kernel: str, version: int | None, exp: str, message: str,
                        competition: str) -> dict:  # fmt: skip
    """The log's row for a code competition's submission: the kernel run's submission.csv, made on Kaggle (no local
    file to hash), with the experiment's CV."""
    return _append_log(cfg, exp, f"submission.csv (kernel {kernel} v{version})", "", "", message, competition)


def log_submission(cfg: Config, path: str | Path, message: str, competition: str) -> dict:
    """The log's row for a submission file sent from here (the experiment it was made from: its name)."""
    path = Path(path)
    return _append_log(cfg, path.stem, path.name, path.stat().st_size, checksum(path), message, competition)
