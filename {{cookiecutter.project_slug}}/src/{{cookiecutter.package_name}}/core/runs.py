"""The run-folder contract: every artefact's name and path, how it is written, and how it is read back.

No other module spells an artefact's file name: they ask a `Run` (an experiment or ensemble folder) or its
`FoldFiles` for the path. Nor does any build or parse an artefact's content: each has one typed record here, written
by one writer and read by one reader (tests/test_run_folder.py reads the package's source to hold this):

    fold<k>/best.pt     Checkpoint       FoldFiles.write_best / read_best (write_checkpoint / read_checkpoint for
                                         the averaged weights and best_epoch.pt, the same record)
    classes.json        Classes          Run.write_classes / read_classes
    cv.json             CVSummary        Run.write_cv / read_cv (a seed bag's `seed_bag`: SeedBag)
    fold<k>/normalization.json  FoldNormalization  FoldFiles.write_normalization / read_normalization
    weights.json        BlendWeights     Run.write_weights / read_weights
    export/export.json  ExportManifest   Run.write_export / read_export
    lineage.json        Lineage          Run.write_lineage / read_lineage
    tta_auto.json       TTAChoice        Run.write_tta_choice / read_tta_choice
    full/full.json      FullFit          Run.write_full / read_full
    fold<k>/init_from.json  InitFrom     FoldFiles.write_init_from / read_init_from
    calibration.json    ErrorReport      Run.write_error_report / read_error_report

    outputs/<exp>/                      Run
        config.yaml                     the resolved config the run was trained with
        classes.json                    prediction columns in order, the task, the binary positive class
        oof.csv                         id, fold, one column per prediction column (every finished fold)
        oof_tta.csv (+ .source.json)    OOF re-predicted with the TTA views; recomputed when the views or a
                                        checkpoint change
        tta_auto.json                   tta.views: auto: the views chosen on OOF, the scores, the checkpoints' sha256
        cv.json                         per-fold and overall score, folds hash, prediction columns
        decisions.json                  what every later stage applies (Decisions): the TTA views, merge and runtime
                                        test_pred.csv was predicted with, thresholds, ordinal cuts, and the CV of
                                        exactly what a submission holds
        test_pred.csv (+ .source.json)  fold-averaged, TTA-merged test predictions
        weights.json                    ensembles only: method, members, weights
                                        (a seed bag, config key `seeds`, is the mean ensemble of its members,
                                        outputs/<exp>-seed<s>/: seed_member; cv.json's seed_bag the per-seed CVs)
        lineage.json                    students only: teachers, settings, per-fold provenance
        git.json                        the git commit (and whether the tree was dirty) each fold was trained at
        lr_find.json                    the LR finder's sweep and suggestion, with what it depends on (optim.lr: auto
                                        reuses it while that holds)
        lr_find.png, learning_curves.png, fold_scores.png, confusion_matrix.png
        aug_preview.png                 training images x draws of the augmentation preset (aug-preview)
        errors_top.png, errors_top.csv  `errors`: the OOF rows of largest loss (image, true, predicted, confidence)
        reliability.png                 `errors`: reliability diagrams, a panel per class and the top-label one
        calibration.json                `errors`: ECE and MCE per class and overall, the OOF file read (ErrorReport)
        teacher/                        cached teacher outputs (students)
        export/                         `export`: deployable forms of each fold's best.pt
            export.json                 per fold and variant: OOF score, parity with torch, file size, CPU img/s,
                                        the file's sha256 (and the checkpoint's it was exported from)
            fold<k>/model.onnx model_int8.onnx model_dynamic_int8.onnx model_qat_int8.onnx model.ts pruned.pt
        full/                           FoldFiles (`train --full`): best.pt (the last epoch's weights), last.pt,
                                        history.json, config.yaml (epochs and LR from the CV run), train.lock,
                                        test_pred.csv (+ .source.json: the decisions' views); full.json (FullFit,
                                        written last: the fit is finished), what `<exp>@full` submits and blends
        fold<k>/                        FoldFiles
            best.pt  last.pt            weights to predict with; everything to resume exactly
            swa.pt avg_best_k.pt        train.swa / train.avg_best_k / cosine_restarts' snapshots: the averaged
            snapshot.pt                 weights (BatchNorm recomputed)
            oof_<variant>.csv           their OOF rows, and the best epoch's (oof_best.csv), to compare in cv.json
            oof_frozen_features.csv     train.frozen_features: the OOF rows of a linear head fitted on the frozen
                                        backbone's pooled features (cv.json: cv_frozen_features)
            averaging.json              each variant's make-up and score, and which one best.pt holds
            best_epoch.pt               the best epoch's weights when train.pick_averaged put an average in best.pt
            config.yaml                 the config this fold was trained under (cv.json is complete when they agree)
            init_from.json              model.init_from: the experiment and fold-k best.pt (sha256) the fold
                                        started from, and the chain of experiments behind those weights (InitFrom)
            normalization.json          augment.mean/std: fold: the fold's training images' per-channel mean and std
                                        (FoldNormalization), computed once, read by every stage that normalises
            history.json oof.csv        per-epoch metrics; the fold's OOF rows (written last: fold finished)
            train.lock                  held by the process training the fold (FoldLock)
            wandb_run_id.txt            the fold's wandb run, continued when the fold resumes (core/tracking.py)
            test_pred.csv (+ .source.json)   this fold's model on the test set (pseudo-labelling needs it)
            pseudo_labels.csv           students only
    <folds.path> (data/folds.csv) + folds.json (its hash)
    <output_dir>/.cache/image_check/<folder>-<hash>.json   images already checked to decode (size, mtime)
    <output_dir>/data_check/            DataCheckFiles (`check-data`, before any model): data_check.json (DataCheck),
                                        duplicates.csv, groups.csv (folds.groups_file), image_stats.csv, drift.csv,
                                        duplicates.png, test_like.png, drift.png
    submissions/<name>.csv
    submissions/log.csv                 one row per `submit`: time, file, its size and sha256, experiment, CV, message
    submissions/cv_vs_lb.png, .csv      `lb`: the log joined to Kaggle's submission history, CV against public score

Every file is written atomically (a temporary file beside it, then `os.replace`), with the user's normal
permissions. Derived files carry what they were derived from in a `.source.json` beside them, and
`read_derived` returns them only while that still holds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import UserError
from .runtime import git_state
from .tasks import TargetScale

CONFIG = "config.yaml"
CLASSES = "classes.json"
CV = "cv.json"
DECISIONS = "decisions.json"
OOF = "oof.csv"
OOF_TTA = "oof_tta.csv"
TTA_AUTO = "tta_auto.json"
TEST_PRED = "test_pred.csv"
WEIGHTS = "weights.json"
LINEAGE = "lineage.json"
GIT = "git.json"
LR_FIND = "lr_find.png"
AUG_PREVIEW = "aug_preview.png"
LR_FIND_CACHE = "lr_find.json"
BEST = "best.pt"
LAST = "last.pt"
HISTORY = "history.json"
NORMALIZATION = "normalization.json"
AVERAGING = "averaging.json"
FROZEN_OOF = "oof_frozen_features.csv"
BEST_EPOCH = "best_epoch.pt"
PSEUDO_LABELS = "pseudo_labels.csv"
INIT_FROM = "init_from.json"
EXPORT_DIR = "export"
EXPORT_JSON = "export.json"
ONNX = "model.onnx"
ONNX_INT8 = "model_int8.onnx"
ONNX_DYNAMIC_INT8 = "model_dynamic_int8.onnx"
ONNX_QAT_INT8 = "model_qat_int8.onnx"
ONNX_QAT_FP32 = "model_qat.onnx"  # the fine-tuned float model qat quantises; removed once quantised
TORCHSCRIPT = "model.ts"
PRUNED = "pruned.pt"
SUBMISSION_LOG = "log.csv"
CV_VS_LB = "cv_vs_lb"  # .png (the plot) and .csv (the joined table), in submissions/
FINAL_TWO = "final_two.json"  # in submissions/: the two final submissions `final-two` proposes
ESTIMATE = "estimate.json"  # `predict --estimate`: the measured prediction time, per view
BUDGET = "budget.json"  # `ensemble --budget`: the members and views chosen within a time limit
LOCK = "train.lock"
WANDB_RUN_ID = "wandb_run_id.txt"
FOLDS_META_SUFFIX = ".json"  # data/folds.csv -> data/folds.json
SOURCE_SUFFIX = ".source.json"
MASKS_SUFFIX = "_masks.npz"  # oof.csv -> oof_masks.npz: a prediction table's segmentation maps
TMP_SUFFIX = ".tmp"
CACHE_DIR = ".cache"
FULL_DIR = "full"  # `train --full`: the model fitted on every training row (FoldFiles), its full.json
FULL_JSON = "full.json"
FULL_SUFFIX = "@full"  # `<exp>@full`: exp's fold run with the full-data fit's test predictions (Run.named)
ERRORS_GRID = "errors_top.png"  # `errors`: the OOF rows of largest loss as an image grid
ERRORS_TABLE = "errors_top.csv"  # ... and as a table
RELIABILITY = "reliability.png"  # `errors`: a reliability diagram per class, and the top-label one
CALIBRATION = "calibration.json"  # `errors`: ECE / MCE per class and overall (ErrorReport)
# What a packaged run (Kaggle dataset, offline notebook) carries besides its checkpoints: thresholds and QWK cuts
# tuned on OOF are re-tuned offline exactly as here.
PACKAGED = (CONFIG, CLASSES, CV, DECISIONS, WEIGHTS, OOF, TTA_AUTO)
# ... and of its export/: the ONNX models `predict.runtime=onnx` runs (TorchScript and pruned weights stay home).
PACKAGED_EXPORT = (ONNX, ONNX_INT8)


# --------------------------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write through `write(tmp_path)` into a temporary file beside `path`, then os.replace it into place.

    mkstemp creates 0600 files; the result gets the mode a plain open() would give (0666 less the umask), so
    teammates can read submissions and checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# A temporary file untouched this long, in a folder that another live process may write to (an experiment's folder
# while another of its folds trains), was left by a killed writer: every write there takes seconds.
STALE_TMP_AGE = 60.0


def remove_stale_tmp(folder: Path, min_age: float = 0.0) -> list[Path]:
    """Remove temporary files that a killed writer left in `folder`: every one where no other writer can be running
    (a fold folder under its lock), those untouched for `min_age` seconds elsewhere (STALE_TMP_AGE)."""
    stale = []
    for p in folder.glob(f".*{TMP_SUFFIX}") if folder.is_dir() else []:
        try:
            if p.is_file() and time.time() - p.stat().st_mtime >= min_age:
                p.unlink()
                stale.append(p)
        except FileNotFoundError:  # its writer finished meanwhile
            pass
    return stale


def replace_dir(building: Path, final: Path) -> Path:
    """Put the complete folder `building` in the place of `final`, whole: a reader finds the old folder or the new
    one, never files of both side by side (a kill between the two renames leaves neither: rebuild it)."""
    old = final.with_name(f".{final.name}.old{TMP_SUFFIX}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(building, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Any writer that takes a file name (torch.jit.save, onnx.save, onnxruntime's quantiser), made atomic."""
    return _atomic(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    return _atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_npz(path: str | Path, **arrays: Any) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a name
            np.savez(f, **arrays)

    return _atomic(path, write)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append '.npy' to a name
            np.save(f, array, allow_pickle=False)

    return _atomic(path, write)


def atomic_savefig(path: str | Path, fig: Any) -> Path:
    return _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def append_csv_row(path: str | Path, row: dict[str, Any]) -> Path:
    """Append one row to a CSV log by rewriting it through a temporary file: a crash leaves the old log whole.
    Columns new to the log are added (empty in the older rows)."""
    path = Path(path)
    old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame()
    return atomic_write_csv(path, pd.concat([old, pd.DataFrame([row])], ignore_index=True))


# --------------------------------------------------------------------------------------------- segmentation maps
#
# A segmentation run's prediction tables (oof.csv, test_pred.csv, oof_tta.csv, fold<k>/...) hold one row per image
# (its id, fold, and each class's largest probability); the probability maps live beside each table, as uint8
# (p * 255, rounded: 1/510 at most off) in a compressed npz with the ids, at the training size. Written before the
# table, whose existence marks a finished fold: a crash between the two leaves no table that lacks its maps.


def masks_file(table: Path) -> Path:
    return table.with_name(table.stem + MASKS_SUFFIX)


def maps_uint8(probs: np.ndarray) -> np.ndarray:
    """Probability maps in [0, 1] as they are stored: uint8 round(p * 255) (uint8 maps are returned as they are)."""
    return probs if probs.dtype == np.uint8 else np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)


def write_masks(table: Path, ids: list[str], probs: np.ndarray) -> Path:
    """The maps (N, C, H, W) of probabilities in [0, 1] (or uint8 already) beside the prediction table `table`."""
    maps = maps_uint8(probs)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, ids=np.asarray(ids, dtype=str), probs=maps)

    return _atomic(masks_file(table), write)


def read_masks(table: Path, ids: list[str]) -> np.ndarray:
    """The uint8 maps beside `table`, checked to be those of its rows `ids`, in that order."""
    path = masks_file(table)
    if not path.is_file():
        raise UserError(f"{path} not found: the segmentation maps of {table.name}; predict (or train) again")
    with np.load(path) as z:
        saved, probs = z["ids"].tolist(), z["probs"]
    if saved != [str(i) for i in ids]:
        raise UserError(f"{path} holds other images than {table.name} ({len(saved)} vs {len(ids)} rows); predict "
                        "(or train) again")  # fmt: skip
    return probs


# --------------------------------------------------------------------------------------------- derived files


def checksum(path: Path) -> str:
    """The file's content (sha256): unlike `stamp`, it survives a copy, an upload and an unzip.
    Remembered per path and stamp (a rewritten file has a new stamp), so a checkpoint is read once per run."""
    return _checksum(str(Path(path).resolve()), stamp(Path(path)))


@functools.lru_cache(maxsize=256)
def _checksum(path: str, _stamp: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stamp(path: Path) -> str:
    """Changes whenever the file is rewritten (a retrained fold invalidates what was derived from it)."""
    st = path.stat()
    return f"{st.st_mtime_ns}:{st.st_size}"


def _source_path(path: Path) -> Path:
    return path.with_name(path.name + SOURCE_SUFFIX)


def write_derived(path: Path, df: pd.DataFrame, source: dict) -> Path:
    """Write `df` and, beside it, what it was derived from (views, checkpoints...): the sidecar first, so a
    crash between the two leaves a file whose source does not match and is recomputed."""
    source_path = _source_path(path)
    source_path.unlink(missing_ok=True)
    atomic_write_csv(path, df)
    atomic_write_json(source_path, json.loads(json.dumps(source)))
    return path


def read_source(path: Path) -> dict | None:
    """What the derived table at `path` was made from, or None (no table, or no record of it)."""
    source_path = _source_path(path)
    return read_json(source_path) if path.is_file() and source_path.is_file() else None


def read_derived(path: Path, source: dict, id_col: str) -> pd.DataFrame | None:
    """The derived table at `path` if it was made from exactly `source`, else None (missing or stale)."""
    source_path = _source_path(path)
    if not (path.is_file() and source_path.is_file()):
        return None
    if read_json(source_path) != json.loads(json.dumps(source)):
        return None
    return read_id_csv(path, id_col)


# --------------------------------------------------------------------------------------------- artefact records
#
# One typed record per artefact, with one writer and one reader (a `Run` / `FoldFiles` method, or
# write_checkpoint / read_checkpoint): no stage builds or parses these files by hand. `to_dict` gives the file's
# keys (an optional field that is None is left out, as the stages always did); `from_dict` refuses a missing or an
# unknown key, and the reader turns that into one line naming the file.


def _plain(obj: Any) -> Any:
    """As it reads back from JSON: tuples -> lists, dict keys -> strings."""
    return json.loads(json.dumps(obj))


def _from_dict(cls: type, d: Any, **convert: Callable[[Any], Any]) -> Any:
    """`cls(**d)`, the fields `convert` names converted (when not None); a key missing or unknown raises KeyError."""
    if not isinstance(d, dict):
        raise TypeError(f"expected a JSON object, got {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = [k for k in d if k not in names]
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in d]
    if unknown or missing:
        raise KeyError(f"missing key(s) {missing}" if missing else f"unknown key(s) {unknown}")
    return cls(**{k: (convert[k](v) if k in convert and v is not None else v) for k, v in d.items()})


def _without_none(record: Any, always: tuple[str, ...] = ()) -> dict[str, Any]:
    """The record's fields in order; those that are None left out, unless named in `always`."""
    out = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is not None or f.name in always:
            out[f.name] = value
    return out


def _read_record(path: Path, parse: Callable[[Any], Any], hint: str) -> Any:
    """The record in the JSON file `path`; a missing, unreadable or foreign file stops with one line naming it."""
    if not path.is_file():
        raise UserError(f"{path} not found: {hint}")
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); {hint}") from None
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: not a {path.name} as this version writes it ({_why(e)}); {hint}") from None


def _why(error: Exception) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


@dataclass
class Checkpoint:
    """fold<k>/best.pt (and the weights it was chosen among: best_epoch.pt, swa.pt, avg_best_k.pt, snapshot.pt): the
    weights to predict with, the epoch and validation score they had, where they came from (model | ema | swa |
    avg_best_k | snapshot), the prediction columns, and the regression target scale the outputs are in (None: the
    identity)."""

    model: dict[str, torch.Tensor]
    epoch: int | None = None
    score: float | None = None
    source: str = "model"
    classes: list[str] | None = None
    target_scale: TargetScale | None = None

    @property
    def scale(self) -> TargetScale:
        return self.target_scale if self.target_scale is not None else TargetScale()

    def to_dict(self) -> dict[str, Any]:
        """Tensors, numbers, strings and containers only: loadable with weights_only=True."""
        out = _without_none(self)
        if self.score is not None:
            out["score"] = float(self.score)
        if self.target_scale is not None:
            out["target_scale"] = self.target_scale.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Checkpoint:
        return _from_dict(cls, d, target_scale=TargetScale.from_dict)


def write_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    return atomic_torch_save(path, ckpt.to_dict())


def read_checkpoint(path: Path) -> Checkpoint:
    if not path.is_file():
        raise UserError(f"{path} not found: train that fold first")
    state = load_checkpoint(path)
    try:
        return Checkpoint.from_dict(state)
    except (KeyError, TypeError, ValueError) as e:
        why = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise UserError(
            f"{path}: not a checkpoint as this version writes it ({why}); retrain the fold (--force)"
        ) from None


@dataclass(frozen=True)
class Classes:
    """classes.json: the prediction columns in order, the task, and the binary task's positive class."""

    task: str
    classes: list[str]
    positive: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "classes": list(self.classes), "positive": self.positive}

    @classmethod
    def from_dict(cls, d: Any) -> Classes:
        return _from_dict(cls, d, classes=list)


@dataclass
class CVSummary:
    """cv.json of an experiment (cv.summarize) or an ensemble (ensemble.blend): per-fold and overall OOF score, which
    folds it covers and on which split, the prediction columns; then what only one of the two writes."""

    exp: str
    task: str
    metric: str
    higher_is_better: bool
    cv: float
    folds: dict[str, float]
    complete: bool  # every fold of folds.csv finished
    folds_missing: list[int]
    partial: bool  # used anyway (--allow-partial)
    folds_hash: str
    pred_cols: list[str]
    # an experiment's (cv.summarize)
    lr: float | None = None  # optim.lr, resolved when it is auto
    lr_auto: bool | None = None
    cv_tta: float | None = None  # OOF re-predicted with the TTA views `tta_views`
    tta_views: list[str] | None = None
    tta_auto: dict | None = None  # tta.views: auto: TTAChoice.summary()
    weight_averaging: dict | None = (
        None  # train.swa / avg_best_k / snapshots: each variant's OOF score, per fold, picked
    )
    ordinal: dict | None = None  # {"levels", "cuts"}: regression rounded to grades at cuts tuned on OOF
    cv_ordinal: float | None = None
    runtime: str | None = None  # what predicted the OOF of cv_tta: torch, onnx fp32, onnx int8
    cv_submission: float | None = None  # the CV of a submission: decisions.json's decisions applied (both kinds)
    # train.frozen_features: the linear probe's OOF score (over every fold, when each has one) and each fold's
    cv_frozen_features: float | None = None
    folds_frozen_features: dict[str, float] | None = None
    folds_differ: dict[str, list[str]] | None = None  # folds trained under another config than the first: the keys
    # an ensemble's (ensemble.blend)
    members: list[str] | None = None
    method: str | None = None
    weights: list[float] | None = None  # None when the blend is no weighted mean (stacking, vote)
    member_cv: dict[str, float] | None = None
    cv_in_sample: float | None = None  # foldwise methods: the meta-model scored on the rows it was fitted on
    folds_nested: dict[str, float] | None = None  # tuned methods: weights tuned on the other folds
    cv_nested: float | None = None
    # model.init_from: the experiment each fold started from, the chain behind it, each fold's source sha256
    init_from: dict | None = None
    seed_bag: SeedBag | None = None  # a seed bag (config key `seeds`): the per-seed CVs, their spread, the bag's

    @property
    def is_ensemble(self) -> bool:
        return self.members is not None

    def to_dict(self) -> dict[str, Any]:
        always = (
            ("members", "method", "weights", "member_cv") if self.is_ensemble else ("lr", "lr_auto", "folds_differ")
        )
        head = tuple(f.name for f in fields(self))[:11]
        out = _without_none(self, head + always)
        if self.seed_bag is not None:
            out["seed_bag"] = self.seed_bag.to_dict()
        return _plain(out)

    @classmethod
    def from_dict(cls, d: Any) -> CVSummary:
        return _from_dict(cls, d, seed_bag=SeedBag.from_dict)


@dataclass
class SeedBag:
    """cv.json's `seed_bag` of a seed bag (config key `seeds`): each seed's member experiment and its CV on the rows
    the bag blends (as predicted: the member's own decisions), their mean and sample standard deviation (the spread a
    reseed alone moves the CV by), and the CV of the bag (their mean prediction)."""

    seeds: list[int]
    members: list[str]
    cv: dict[str, float]  # seed -> that member's CV
    mean: float
    std: float  # over the seeds, ddof=1
    bag: float

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> SeedBag:
        return _from_dict(cls, d, seeds=list, members=list)


@dataclass
class BlendWeights:
    """weights.json of an ensemble: how its members' predictions are combined. `weights` (summing to 1) for a
    weighted mean, else `model` (the JSON parameters of stacking or vote); `rank`: the members' ranks are blended."""

    method: str
    members: list[str]
    weights: list[float] | None = None
    rank: bool = False
    model: dict | None = None
    views: dict[str, list[str]] | None = None  # ensemble --budget: member -> the TTA views it predicts with

    def to_dict(self) -> dict[str, Any]:
        return _plain(_without_none(self, ("weights",)))

    @classmethod
    def from_dict(cls, d: Any) -> BlendWeights:
        return _from_dict(cls, d, members=list)


@dataclass
class Estimate:
    """estimate.json of an experiment (`predict --estimate`): what predicting the test set costs on the machine it was
    measured on. ms_per_image: every fold's one pass over an image with all `views` (decoding included);
    view_ms_per_image: each view alone (decoding included); decode_ms: the part of an image's time that every view
    shares (decoding, augmenting), from the two. A subset S of the views costs decode_ms + sum(view_ms - decode_ms)."""

    exp: str
    device: str
    threads: int
    runtime: str
    folds: int
    views: list[str]
    first_load_s: float
    load_s: float
    ms_per_image: float
    view_ms_per_image: dict[str, float]
    decode_ms: float
    measured_images: int

    def seconds(self, n_images: int, views: list[str] | None = None) -> float:
        """Projected seconds to predict `n_images` with `views` (default all measured ones) through every fold."""
        views = list(self.views) if views is None else list(views)
        if sorted(views) == sorted(self.views):
            ms = self.ms_per_image
        else:
            ms = self.decode_ms + sum(max(self.view_ms_per_image[v] - self.decode_ms, 0.0) for v in views)
        return self.first_load_s + (self.folds - 1) * self.load_s + self.folds * n_images * ms / 1000

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> Estimate:
        return _from_dict(cls, d, views=list, view_ms_per_image=dict)


@dataclass
class BudgetChoice:
    """budget.json of an ensemble blended with `--budget`: the time limit, the test rows, every candidate member
    (with its views and projected seconds), what was chosen (member -> views) and its OOF score and seconds."""

    budget_min: float
    n_test: int
    metric: str
    candidates: dict[str, dict]  # member -> {"views", "seconds", "cv"}
    chosen: dict[str, list[str]]  # member -> views it predicts with
    seconds: float
    cv: float

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> BudgetChoice:
        return _from_dict(cls, d, candidates=dict, chosen=dict)


@dataclass
class FinalTwo:
    """submissions/final_two.json (`final-two`): the best CV, and the hedge: among the runs whose CV the best does not
    beat beyond noise (paired bootstrap), the one whose test predictions differ most from the best's. `candidates`:
    every run looked at, with its CV, gap interval to the best, correlation of test predictions with the best's."""

    metric: str
    best: str
    hedge: str | None
    why: str
    candidates: list[dict]

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> FinalTwo:
        return _from_dict(cls, d, candidates=list)


@dataclass
class FoldNormalization:
    """fold<k>/normalization.json (augment.mean/std: fold): per-channel mean and std of fold k's training images
    on the 0..1 scale, at the size they are fed (image_size after the prediction-time resize), and what they were
    computed from: the rows (a hash of their ids), the size, the channels."""

    mean: list[float]
    std: list[float]
    image_size: int
    in_chans: int
    n_images: int
    rows_hash: str

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> FoldNormalization:
        return _from_dict(cls, d, mean=list, std=list)


@dataclass
class ExportedVariant:
    """One deployable form of a fold's model in export.json: its file (relative to the run folder) and that file's
    sha256, its OOF score on the fold's validation rows, its largest difference with torch, size and CPU speed."""

    file: str
    sha256: str
    score: float
    max_abs_diff: float
    size_mb: float
    zipped_mb: float
    images_per_s: float
    parity_ok: bool | None = None  # onnx: within export.tolerance of torch
    tolerance: float | None = None
    sparsity: float | None = None  # pruned

    def to_dict(self) -> dict[str, Any]:
        return _without_none(self)

    @classmethod
    def from_dict(cls, d: Any) -> ExportedVariant:
        return _from_dict(cls, d)


@dataclass
class ExportedFold:
    checkpoint: str  # sha256 of the best.pt the variants were exported from
    variants: dict[str, ExportedVariant]

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "variants": {k: v.to_dict() for k, v in self.variants.items()}}

    @classmethod
    def from_dict(cls, d: Any) -> ExportedFold:
        return _from_dict(cls, d, variants=lambda vs: {k: ExportedVariant.from_dict(v) for k, v in vs.items()})


@dataclass
class ExportManifest:
    """export/export.json: per fold and variant what `export` wrote and measured; each variant's overall OOF score."""

    exp: str
    metric: str
    higher_is_better: bool
    threads: int
    settings: dict
    overall: dict[str, float]
    folds: dict[str, ExportedFold]

    def to_dict(self) -> dict[str, Any]:
        out = _without_none(self)
        out["folds"] = {k: f.to_dict() for k, f in self.folds.items()}
        return _plain(out)

    @classmethod
    def from_dict(cls, d: Any) -> ExportManifest:
        return _from_dict(cls, d, folds=lambda fs: {k: ExportedFold.from_dict(f) for k, f in fs.items()})


@dataclass
class Lineage:
    """lineage.json of a student (pseudo, distill): what it learns from, with which settings, on which split; and
    per fold the record of what that fold was given (`folds`)."""

    kind: str  # pseudo | distill
    exp: str
    teachers: list[str]
    teacher_weights: dict[str, float]  # the teachers' experiments, ensembles expanded
    settings: dict
    backbone: str
    folds_hash: str
    round: int | None = None  # pseudo
    folds: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        head = {"kind": self.kind, "exp": self.exp}
        if self.round is not None:
            head["round"] = self.round
        rest = {k: getattr(self, k) for k in ("teachers", "teacher_weights", "settings", "backbone", "folds_hash")}
        return _plain({**head, **rest, "folds": self.folds})

    def origin(self) -> dict[str, Any]:
        """Everything but the per-fold records: a student folder mixes no two origins."""
        return {k: v for k, v in self.to_dict().items() if k != "folds"}

    @classmethod
    def from_dict(cls, d: Any) -> Lineage:
        return _from_dict(cls, d)


@dataclass
class TTAChoice:
    """tta_auto.json: the views chosen on OOF among `candidates` (merged with `merge`), the OOF score of the identity
    view alone and of the choice, each greedy step, and the checkpoints' sha256 it was made with."""

    candidates: list[str]
    merge: str
    metric: str
    views: list[str]
    identity: float
    chosen: float
    steps: list[dict]  # [{"view", "score"}]
    checkpoints: dict[str, str]  # fold -> sha256 of its best.pt

    def to_dict(self) -> dict[str, Any]:
        return _plain(_without_none(self))

    def summary(self) -> dict[str, Any]:
        """What cv.json records of it (CVSummary.tta_auto)."""
        return _plain({k: getattr(self, k) for k in ("candidates", "views", "identity", "chosen", "steps")})

    @classmethod
    def from_dict(cls, d: Any) -> TTAChoice:
        return _from_dict(cls, d)


@dataclass
class FullFit:
    """full/full.json (`train --full`): the model fitted on every training row, with the epoch count and LR taken
    from the CV run and where they came from, which weights it keeps, how its test predictions were made, and their
    agreement with the fold ensemble's test_pred.csv."""

    exp: str
    epochs: int
    epochs_rule: str
    fold_epochs: dict[str, int]  # fold -> its best.pt epoch
    lr: float
    lr_from: str
    optimizer_lr: float  # the largest LR of the optimizer's groups as built (the schedule's peak)
    n_rows: int
    weights: str  # model | ema: the weights kept after the last epoch
    weights_rule: str
    folds_checkpoints: dict[str, str]  # fold -> sha256 of the best.pt the epochs were read from
    views: list[str]
    merge: str
    agreement: dict  # label_agreement (None for regression), pearson_r, mean_abs_diff vs the fold ensemble
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> FullFit:
        return _from_dict(cls, d)


@dataclass
class InitFrom:
    """fold<k>/init_from.json (model.init_from): the weights fold k started from, the source experiment's fold-k
    best.pt (`checkpoint`: its sha256), whether its head was kept or reset, and `chain`: every experiment whose
    fold-k training reaches these weights (the source first, then its own init_from's and teachers', ...), each
    checked not to have trained on fold k's validation rows."""

    exp: str
    fold: int
    checkpoint: str
    head: str  # keep | reset
    chain: list[str]

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> InitFrom:
        return _from_dict(cls, d, chain=list)


@dataclass
class ErrorReport:
    """calibration.json (`errors`): the OOF file analysed and why that one, the per-row loss and its mean, and the
    calibration with `n_bins` equal-width bins: the overall ECE / MCE (`overall`: top-label, or all labels pooled;
    None for regression) and per class (one-vs-rest) its bins and ECE / MCE. The top rows by loss: errors_top.csv."""

    exp: str
    task: str
    oof: str
    why: str
    loss: str
    mean_loss: float
    n_rows: int
    n_bins: int
    overall: str | None
    ece: float | None
    mce: float | None
    classes: dict[str, dict]  # class -> {n_bins, counts, confidence, accuracy, ece, mce}

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> ErrorReport:
        return _from_dict(cls, d)


# --------------------------------------------------------------------------------------------- run folders


def seed_member(exp: str, seed: int) -> str:
    """The experiment that trains seed `seed` of the seed bag `exp` (config key `seeds`): a sibling run folder."""
    return f"{exp}-seed{seed}"


def check_name(name: str, what: str) -> str:
    """`name` if it is one plain file or folder name (an experiment, an ensemble, a submission): a path that climbs
    out of its folder (`../x`), names the folder itself (`.`), a sub-folder, a hidden name (`.cache` holds the image
    checks) or a home folder (`~x`) is refused."""
    plain = isinstance(name, str) and name.strip() and not name.startswith((".", "~"))
    if not plain or any(c in name for c in "/\\\0"):
        raise UserError(f"{what} {name!r} is not a plain name: expected one folder or file name, without '/', "
                        "'..' or a leading '.' or '~' (e.g. exp002)")  # fmt: skip
    return name


@dataclass(frozen=True)
class FoldFiles:
    """fold<k>/ of a run."""

    path: Path

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def history(self) -> Path:
        return self.path / HISTORY

    @property
    def oof(self) -> Path:
        return self.path / OOF

    @property
    def test_pred(self) -> Path:
        return self.path / TEST_PRED

    @property
    def pseudo_labels(self) -> Path:
        return self.path / PSEUDO_LABELS

    @property
    def best_epoch(self) -> Path:
        return self.path / BEST_EPOCH

    @property
    def config(self) -> Path:
        """The config this fold was trained under (the run's config.yaml is the latest fold's)."""
        return self.path / CONFIG

    @property
    def averaging(self) -> Path:
        return self.path / AVERAGING

    def averaged(self, variant: str) -> Path:
        """Weights of a weight-averaging variant (swa, avg_best_k, snapshot)."""
        return self.path / f"{variant}.pt"

    def variant_oof(self, variant: str) -> Path:
        """OOF rows of a weight-averaging variant, or of the best epoch ("best")."""
        return self.path / f"oof_{variant}.csv"

    @property
    def frozen_oof(self) -> Path:
        """train.frozen_features: OOF rows of the linear head on the frozen backbone's features."""
        return self.path / FROZEN_OOF

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def normalization(self) -> Path:
        return self.path / NORMALIZATION

    @property
    def init_from(self) -> Path:
        return self.path / INIT_FROM

    def write_init_from(self, record: InitFrom) -> Path:
        return atomic_write_json(self.init_from, record.to_dict())

    def read_init_from(self) -> InitFrom:
        return _read_record(self.init_from, InitFrom.from_dict, "train the fold again (--force)")

    def write_normalization(self, record: FoldNormalization) -> Path:
        return atomic_write_json(self.normalization, record.to_dict())

    def read_normalization(self) -> FoldNormalization:
        return _read_record(self.normalization, FoldNormalization.from_dict,
                            "train the fold (augment.mean/std: fold are computed when it trains)")  # fmt: skip

    def write_best(self, ckpt: Checkpoint) -> Path:
        return write_checkpoint(self.best, ckpt)

    def read_best(self) -> Checkpoint:
        return read_checkpoint(self.best)

    @property
    def wandb_run_id(self) -> Path:
        return self.path / WANDB_RUN_ID

    def finished(self) -> bool:
        """A fold is finished once its oof.csv exists: train writes it last, after best.pt."""
        return self.oof.is_file() and self.best.is_file()

    def clear(self) -> None:
        """Remove what training writes, so a retrained fold starts from nothing."""
        weights = self.path.glob("*.pt")  # last, best, and the weight-averaging variants
        for p in (*weights, self.oof, self.history, self.test_pred, _source_path(self.test_pred), self.averaging,
                  self.config, *self.path.glob("oof_*.csv"), *self.path.glob(f"*{MASKS_SUFFIX}")):  # fmt: skip
            p.unlink(missing_ok=True)
        self.init_from.unlink(missing_ok=True)  # model.init_from: what the fold started from


@dataclass(frozen=True)
class ExportFiles:
    """export/fold<k>/ of a run: fold k's best.pt in deployable forms."""

    path: Path

    onnx = property(lambda self: self.path / ONNX)
    onnx_int8 = property(lambda self: self.path / ONNX_INT8)
    onnx_dynamic_int8 = property(lambda self: self.path / ONNX_DYNAMIC_INT8)
    onnx_qat_int8 = property(lambda self: self.path / ONNX_QAT_INT8)
    onnx_qat_fp32 = property(lambda self: self.path / ONNX_QAT_FP32)
    torchscript = property(lambda self: self.path / TORCHSCRIPT)
    pruned = property(lambda self: self.path / PRUNED)


@dataclass(frozen=True)
class Decisions:
    """What the stages decided, written once into the run folder (`cv` for an experiment, `ensemble` for a blend)
    and applied as written by every later stage: predict's notebook twin, make-submission, the submit message and
    log, upload, serve, tracking. Nobody re-derives them from the config.

    views/merge/runtime: how test_pred.csv was (and the offline notebook will be) predicted: the TTA views in
    order (tta.views: auto resolved), their merge, `torch` or `onnx fp32` / `onnx int8`; None before `predict`.
    models: fold -> sha256 of the model file each fold predicts with (best.pt, or the exported ONNX model).
    threshold (binary labels), thresholds (multilabel, one per prediction column), ordinal ({levels, cuts}:
    regression rounded to grades): tuned on `cv_from`, the OOF predicted as test_pred.csv is; None where the
    submission does not apply them. cv: the metric of `cv_from` with every decision applied, i.e. the CV of exactly
    what a submission holds."""

    metric: str
    higher_is_better: bool
    cv: float
    cv_from: str  # the OOF file the decisions were tuned and scored on
    format: str  # the submission format they were made for (label, probs, tags, value)
    views: list[str] | None = None
    merge: str | None = None
    runtime: str | None = None
    models: dict[str, str] | None = None
    threshold: float | None = None
    thresholds: list[float] | None = None
    ordinal: dict | None = None
    clip: list[float] | None = None  # regression: [low, high], the training target's range
    members: list[str] | None = None  # a blend: its members (each predicted with its own decisions)
    # segmentation: {"classes": [{threshold, min_area, empty_below} per class], "exclusive": one class per pixel}
    postprocess: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> Decisions:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class Run:
    """An experiment's (or ensemble's) folder under output_dir. `full_test`: test_pred is the full-data fit's
    (`<exp>@full`); everything else (OOF, cv.json, decisions) is the fold run's."""

    path: Path
    full_test: bool = False

    @classmethod
    def named(cls, output_dir: str | Path, name: str, what: str = "experiment name", full_ok: bool = False) -> Run:
        """`name`'s folder; `<exp>@full` (where `full_ok`: submissions and blends) is exp's fold run whose test
        predictions are its full-data fit's (full/test_pred.csv, `train --full`)."""
        if isinstance(name, str) and name.endswith(FULL_SUFFIX):
            base = check_name(name[: -len(FULL_SUFFIX)], what)
            if not full_ok:
                raise UserError(f"{what} {name!r} names {base}'s full-data fit: only make-submission, score, submit "
                                f"and ensemble take it; use {base!r} here")  # fmt: skip
            run = cls(Path(output_dir) / base, full_test=True)
            run.check_full(name)
            return run
        return cls(Path(output_dir) / check_name(name, what))

    @property
    def name(self) -> str:
        return self.path.name + (FULL_SUFFIX if self.full_test else "")

    config = property(lambda self: self.path / CONFIG)
    classes = property(lambda self: self.path / CLASSES)
    cv = property(lambda self: self.path / CV)
    decisions = property(lambda self: self.path / DECISIONS)
    oof = property(lambda self: self.path / OOF)
    oof_tta = property(lambda self: self.path / OOF_TTA)
    tta_auto = property(lambda self: self.path / TTA_AUTO)
    test_pred = property(lambda self: self.path / (f"{FULL_DIR}/{TEST_PRED}" if self.full_test else TEST_PRED))
    weights = property(lambda self: self.path / WEIGHTS)
    lineage = property(lambda self: self.path / LINEAGE)
    git = property(lambda self: self.path / GIT)
    lr_find = property(lambda self: self.path / LR_FIND)
    aug_preview = property(lambda self: self.path / AUG_PREVIEW)
    errors_grid = property(lambda self: self.path / ERRORS_GRID)
    errors_table = property(lambda self: self.path / ERRORS_TABLE)
    reliability = property(lambda self: self.path / RELIABILITY)
    calibration = property(lambda self: self.path / CALIBRATION)
    estimate = property(lambda self: self.path / ESTIMATE)
    budget = property(lambda self: self.path / BUDGET)

    export_dir = property(lambda self: self.path / EXPORT_DIR)
    export_json = property(lambda self: self.path / EXPORT_DIR / EXPORT_JSON)

    def export_fold(self, k: int) -> ExportFiles:
        return ExportFiles(self.path / EXPORT_DIR / f"fold{k}")

    def start_export(self) -> Run:
        """A fresh stand-in run folder (hidden, inside this one) in which `export` builds export/; what a killed
        export left there is removed first. finish_export swaps its export/ in whole."""
        staging = Run(self.path / f".{EXPORT_DIR}{TMP_SUFFIX}")
        shutil.rmtree(staging.path, ignore_errors=True)
        staging.export_dir.mkdir(parents=True)
        return staging

    def finish_export(self, staging: Run) -> None:
        replace_dir(staging.export_dir, self.export_dir)
        shutil.rmtree(staging.path, ignore_errors=True)

    def abandon_export(self, staging: Run) -> None:
        shutil.rmtree(staging.path, ignore_errors=True)

    lr_find_cache = property(lambda self: self.path / LR_FIND_CACHE)

    def figure(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def teacher_cache(self, name: str) -> Path:
        return self.path / "teacher" / f"{name}.npz"

    def fold(self, k: int) -> FoldFiles:
        return FoldFiles(self.path / f"fold{k}")

    full = property(lambda self: FoldFiles(self.path / FULL_DIR))  # `train --full`'s model and its files
    full_json = property(lambda self: self.path / FULL_DIR / FULL_JSON)

    def fold_numbers(self) -> list[int]:
        """Every fold<k>/ folder, finished or not."""
        return sorted(int(p.name[4:]) for p in self.path.glob("fold*") if p.is_dir() and p.name[4:].isdigit())

    def finished_folds(self) -> list[int]:
        return [k for k in self.fold_numbers() if self.fold(k).finished()]

    def trained_config(self, k: int) -> Path:
        """The config fold k was trained under: fold<k>/config.yaml, else (a fold trained before folds recorded
        their own) the run's config.yaml."""
        return self.fold(k).config if self.fold(k).config.is_file() else self.config

    def missing_folds(self, n_folds: int) -> list[int]:
        """The folds of 0..n_folds-1 not finished (an experiment's; an ensemble's cv.json lists its own)."""
        return [k for k in range(n_folds) if not self.fold(k).finished()]

    def usable_folds(
        self, n_folds: int, allow_partial: bool, use: str, log: Callable[[str], None] = print
    ) -> list[int]:
        """The finished folds that `use` (predict, upload...) may take. A fold counts only once finished: an
        experiment with unfinished folds stops here, unless `allow_partial`, which takes the finished ones and
        says which are left out."""
        missing = self.missing_folds(n_folds)
        finished = [k for k in range(n_folds) if k not in missing]
        if not finished:
            raise UserError(f"{self.path}: no finished fold (fold<k>/{BEST} + {OOF}) of {n_folds}; train experiment "
                            f"{self.name!r} first")  # fmt: skip
        if missing and not allow_partial:
            raise UserError(
                f"{self.name}: fold(s) {missing} of {n_folds} not finished, so {use} would leave them out: finish "
                f"them (train --fold {','.join(map(str, missing))}) or pass --allow-partial to use fold(s) {finished}"
            )
        if missing:
            log(f"{self.name}: fold(s) {missing} not finished; {use} uses fold(s) {finished} only (--allow-partial)")
        return finished

    def is_ensemble(self) -> bool:
        return self.weights.is_file()

    def is_experiment(self) -> bool:
        return self.config.is_file()

    def members(self) -> list[str]:
        """An ensemble's member runs (weights.json), else none."""
        return list(self.read_weights().members) if self.is_ensemble() else []

    # Each artefact's one writer and one reader.

    def write_classes(self, classes: Classes) -> Path:
        return atomic_write_json(self.classes, classes.to_dict())

    def read_classes(self) -> Classes:
        return _read_record(self.classes, Classes.from_dict, f"train experiment {self.name!r} first")

    def write_cv(self, summary: CVSummary) -> Path:
        return atomic_write_json(self.cv, summary.to_dict())

    def read_cv(self) -> CVSummary:
        return _read_record(self.cv, CVSummary.from_dict, f"train experiment {self.name!r} (every fold) first")

    def write_decisions(self, decisions: Decisions) -> Path:
        return atomic_write_json(self.decisions, decisions.to_dict())

    def read_decisions(self) -> Decisions:
        """The decisions every later stage applies; a run without them was not summarised since its last predict."""
        hint = f"run `predict` (or `cv`) for {self.name!r}: it decides the views, thresholds, cuts a submission applies"
        return _read_record(self.decisions, Decisions.from_dict, hint)

    def oof_as_predicted(self) -> tuple[Path, Decisions | None]:
        """The OOF rows predicted as the test rows were (TTA views, runtime: the file decisions.json was tuned on)
        with those decisions; the plain OOF and None before the run was predicted (or that file is gone)."""
        if self.decisions.is_file():
            decisions = self.read_decisions()
            path = self.path / decisions.cv_from
            if path.is_file():
                return path, decisions
        return self.oof, None

    def write_weights(self, weights: BlendWeights) -> Path:
        return atomic_write_json(self.weights, weights.to_dict())

    def read_weights(self) -> BlendWeights:
        return _read_record(self.weights, BlendWeights.from_dict, f"blend ensemble {self.name!r} again")

    def write_export(self, manifest: ExportManifest) -> Path:
        return atomic_write_json(self.export_json, manifest.to_dict())

    def read_export(self) -> ExportManifest:
        return _read_record(self.export_json, ExportManifest.from_dict, f"run `export` for {self.name!r}")

    def write_lineage(self, lineage: Lineage) -> Path:
        return atomic_write_json(self.lineage, lineage.to_dict())

    def read_lineage(self) -> Lineage:
        return _read_record(self.lineage, Lineage.from_dict, "train the student again (--force)")

    def write_tta_choice(self, choice: TTAChoice) -> Path:
        return atomic_write_json(self.tta_auto, choice.to_dict())

    def read_tta_choice(self) -> TTAChoice:
        return _read_record(self.tta_auto, TTAChoice.from_dict, "predict with tta.views=auto again")

    def check_full(self, name: str) -> None:
        """`<exp>@full` stands for the fold run only while its full fit was made from the fold checkpoints the run
        has now, and predicted with the views its decisions.json holds now."""
        if not self.full_json.is_file():
            raise UserError(f"{self.full_json} not found: {name!r} needs {self.path.name}'s full-data fit; run "
                            f"`train --full` for {self.path.name!r} first")  # fmt: skip
        full = self.read_full()
        now = {k: checksum(self.fold(int(k)).best) if self.fold(int(k)).best.is_file() else None
               for k in full.folds_checkpoints}  # fmt: skip
        views = self.read_decisions().views if self.decisions.is_file() else None
        if now != full.folds_checkpoints or views != full.views:
            what = "fold checkpoints" if now != full.folds_checkpoints else f"TTA views ({full.views} vs {views})"
            raise UserError(f"{self.full_json}: fitted or predicted for other {what} than {self.path.name!r} has now; "
                            f"`train --full --force` for {self.path.name!r} fits it again")  # fmt: skip

    def write_full(self, record: FullFit) -> Path:
        return atomic_write_json(self.full_json, record.to_dict())

    def read_full(self) -> FullFit:
        return _read_record(self.full_json, FullFit.from_dict, f"run `train --full` for {self.path.name!r} (--force)")

    def write_error_report(self, report: ErrorReport) -> Path:
        return atomic_write_json(self.calibration, report.to_dict())

    def read_error_report(self) -> ErrorReport:
        return _read_record(self.calibration, ErrorReport.from_dict, f"run `errors` for {self.name!r}")

    def write_estimate(self, record: Estimate) -> Path:
        return atomic_write_json(self.estimate, record.to_dict())

    def read_estimate(self) -> Estimate:
        return _read_record(self.estimate, Estimate.from_dict, f"time it: predict -c configs/{self.name}.yaml "
                            "--estimate N (make estimate EXP=...)")  # fmt: skip

    def write_budget(self, record: BudgetChoice) -> Path:
        return atomic_write_json(self.budget, record.to_dict())

    def read_budget(self) -> BudgetChoice:
        return _read_record(self.budget, BudgetChoice.from_dict, f"blend {self.name!r} again with --budget")


def read_id_csv(path: Path, id_col: str) -> pd.DataFrame:
    """A table this project wrote (folds.csv, oof.csv, test_pred.csv): ids as the text written (`NA`, `01`), the
    other columns parsed; only an empty cell is missing."""
    return pd.read_csv(path, dtype={id_col: str}, keep_default_na=False, na_values=[""])


def read_pred_csv(path: Path, id_col: str, columns: list[str]) -> pd.DataFrame:
    """A prediction table (oof.csv, test_pred.csv): the id column and `columns` present, no NaN."""
    if not path.is_file():
        raise UserError(f"{path} not found: train (oof.csv) and predict (test_pred.csv) the experiment first")
    df = read_id_csv(path, id_col)
    missing = [c for c in (id_col, *columns) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: column(s) {missing} not found; columns are {list(df.columns)}")
    if df[columns].isna().any().any():
        raise UserError(f"{path}: NaN predictions in {df[columns].columns[df[columns].isna().any()].tolist()}")
    return df


class FoldBusy(UserError):
    """A fold's lock is held by another live process: `holder` says which ("pid N on host H")."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path, self.holder = Path(path), holder
        super().__init__(
            f"{self.path.parent} is being trained by another live process ({holder}, holding {self.path}); "
            "wait for it to finish, or stop it first"
        )


def lock_holder(text: str) -> str:
    """A lock file's content (`pid host`, or a bare pid from older runs) as "pid N on host H"."""
    words = text.split()
    if not words:
        return "pid ?"
    return f"pid {words[0]}" + (f" on host {words[1]}" if len(words) > 1 else "")


class FoldLock:
    """Held (`with FoldLock(fold.lock):`) by the one process that trains a fold: a second live process training the
    same fold stops with FoldBusy, one line naming the holder's pid and host (the lock file holds `pid host`, so
    machines that share the run folder can tell who trains what). An OS lock (flock) on the file, not the file
    itself, counts: the OS drops it when its process ends, however it ends, so a lock left by a killed run is simply
    taken over. `wait=True` blocks until the holder lets go instead (a fold queue waiting for another machine's
    fold). POSIX only (Linux, macOS); where fcntl is missing (Windows) no lock is taken. On a shared filesystem the
    lock is as good as the filesystem's flock: NFSv4 and Lustre/GPFS (mounted with flock support) carry it between
    machines; some NFSv3 setups keep it local to each machine."""

    def __init__(self, path: Path, wait: bool = False) -> None:
        self.path, self.file, self.wait = Path(path), None, wait
        self.made: list[Path] = []  # folders the lock had to create, deepest first

    def __enter__(self) -> FoldLock:
        try:
            import fcntl
        except ImportError:
            return self
        folder = self.path.parent
        while not folder.exists():
            self.made.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except OSError:
            f.seek(0)
            holder = lock_holder(f.read())
            f.close()
            raise FoldBusy(self.path, holder) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} {socket.gethostname()}\n")
        f.flush()
        self.file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is None:
            return
        self.file.close()  # closing drops the lock
        self.file = None
        # A fold that stopped before writing anything (bad input) leaves nothing behind, not even its folder.
        if [p.name for p in self.path.parent.iterdir()] == [self.path.name]:
            self.path.unlink(missing_ok=True)
            for folder in self.made:
                try:
                    folder.rmdir()
                except OSError:
                    break


def folds_meta_path(folds_path: str | Path) -> Path:
    return Path(folds_path).with_suffix(FOLDS_META_SUFFIX)


def submissions_dir(output_dir: str | Path) -> Path:
    """`submissions/` beside the outputs folder (the project root for the default output_dir=outputs)."""
    return Path(output_dir).parent / "submissions"


def submission_path(folder: str | Path, name: str) -> Path:
    check_name(name, "submission name")
    if f"{name}.csv" in (SUBMISSION_LOG, f"{CV_VS_LB}.csv"):
        raise UserError(
            f"submission name {name!r} is taken by submissions/{name}.csv (the submission log); pick another"
        )
    return Path(folder) / f"{name}.csv"


def submission_log_path(folder: str | Path) -> Path:
    return Path(folder) / SUBMISSION_LOG


def cv_vs_lb_paths(folder: str | Path) -> tuple[Path, Path]:
    """(plot, table) of the `lb` command."""
    return Path(folder) / f"{CV_VS_LB}.png", Path(folder) / f"{CV_VS_LB}.csv"


def final_two_path(folder: str | Path) -> Path:
    return Path(folder) / FINAL_TWO


def write_final_two(folder: str | Path, record: FinalTwo) -> Path:
    return atomic_write_json(final_two_path(folder), record.to_dict())


def read_final_two(folder: str | Path) -> FinalTwo:
    return _read_record(final_two_path(folder), FinalTwo.from_dict, "run `final-two` (make final-two)")


def image_check_cache(output_dir: str | Path, folder: Path) -> Path:
    """Where the images of `folder` that decoded are remembered (data.decode.check_images), one file per folder."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return Path(output_dir) / CACHE_DIR / "image_check" / f"{folder.name}-{digest}.json"


# --------------------------------------------------------------------------------------------- checkpoints


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream a resumed run must continue, as plain tensors and numbers (loadable with
    weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
        "loader": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    generator.set_state(state["loader"])


def save_last(path: Path, **parts: Any) -> None:
    """`parts` holds objects with state_dict() (model, optimizer, ...) and plain values (epoch, history, ...)."""
    state = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in parts.items()}
    atomic_torch_save(path, state)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: tensors, numbers, strings and containers only, never code (a planted
    pickle payload in a checkpoint from a teammate or a Kaggle dataset cannot run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        # torch words it "Unsupported global: GLOBAL builtins.exec" or "unsupported GLOBAL posix.system whose
        # module posix is blocked", then advises weights_only=False: never repeated to the user.
        called = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if called:  # a planted payload, or an object that needs its class: neither is run
            raise UserError(
                f"{path}: refused, it would run code ({called.group(1)}); a checkpoint holds tensors and numbers only, "
                "and nothing from it was run. Retrain the fold (--force) or get the file from a source you trust"
            ) from None
        found = re.search(r"WeightsUnpickler error: \s*(\S[^\n]*)", text)
        why = found.group(1) if found else "content other than tensors, numbers and containers"
        raise UserError(f"{path}: not a loadable checkpoint ({why[:200]}); retrain the fold (--force)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # truncated or not a checkpoint at all
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path}: not a loadable checkpoint ({first}); retrain the fold (--force)") from None


def load_last(path: Path, **stateful: Any) -> dict[str, Any]:
    """Load `last.pt` into the given objects; return the plain values."""
    state = load_checkpoint(path)
    for name, obj in stateful.items():
        if obj is not None and state.get(name) is not None:
            obj.load_state_dict(state[name])
    return {k: v for k, v in state.items() if k not in stateful}


# --------------------------------------------------------------------------------------------- code version


def record_git(run: Run, fold: int, where: str | Path | None = None) -> dict:
    """git.json beside config.yaml: the commit of the code (runtime.git_state of `where`, default the package) as fold
    `fold`'s training starts, under `folds`, and the latest one at the top. Outside a git repository commit and dirty
    are null. Returns the record written."""
    state = git_state(where) or {"commit": None, "dirty": None}
    old = read_json(run.git) if run.git.is_file() else {}
    folds = {**(old.get("folds") or {}), str(fold): state}
    record = {**state, "folds": dict(sorted(folds.items(), key=lambda kv: int(kv[0])))}
    atomic_write_json(run.git, record)
    return record


# --------------------------------------------------------------------------------------------- data checks


DATA_CHECK_DIR = "data_check"  # <output_dir>/data_check/: the data-level checks of `check-data`, no experiment's
DATA_CHECK = "data_check.json"
DUPLICATES = "duplicates.csv"
DUPLICATE_GROUPS = "groups.csv"
IMAGE_STATS = "image_stats.csv"
DRIFT = "drift.csv"
DUPLICATES_PNG = "duplicates.png"
TEST_LIKE_PNG = "test_like.png"
DRIFT_PNG = "drift.png"
GROUP_COL = "group"  # the group column of groups.csv (beside the id column, data.id_col)


@dataclass
class DataCheck:
    """data_check.json: what `check-data` found. Near duplicates: the hash and the Hamming distance that links two
    images, the linked pairs within train and between train and test (leaks), the duplicate groups of training
    images (components of two or more) and the rows in them. Adversarial validation: the out-of-fold ROC AUC of a
    classifier telling train from test on image statistics, and the training ids it finds most test-like. Drift:
    per image statistic, the Kolmogorov-Smirnov distance between the train and test distributions."""

    n_train: int
    n_test: int
    hash: str
    hash_distance: int
    train_pairs: int
    leak_pairs: int
    leaked_test_ids: int
    groups: int
    rows_in_groups: int
    adversarial_auc: float | None
    adversarial_features: list[str]
    test_like: list[str]
    drift: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any) -> DataCheck:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class DataCheckFiles:
    """<output_dir>/data_check/: every file `check-data` writes."""

    path: Path

    @property
    def summary(self) -> Path:
        return self.path / DATA_CHECK

    @property
    def duplicates(self) -> Path:
        """id_a, split_a, id_b, split_b, distance, leak: every linked pair (a train/test pair is a leak)."""
        return self.path / DUPLICATES

    @property
    def groups(self) -> Path:
        """<id_col>, group: each training id and its duplicate group (folds.groups_file)."""
        return self.path / DUPLICATE_GROUPS

    @property
    def image_stats(self) -> Path:
        """id, split, hash, the image statistics, test_prob (the adversarial classifier's out-of-fold probability)."""
        return self.path / IMAGE_STATS

    @property
    def drift(self) -> Path:
        """feature, split, n, mean, std, p05, p50, p95, ks: each statistic's distribution per split."""
        return self.path / DRIFT

    @property
    def duplicates_png(self) -> Path:
        return self.path / DUPLICATES_PNG

    @property
    def test_like_png(self) -> Path:
        return self.path / TEST_LIKE_PNG

    @property
    def drift_png(self) -> Path:
        return self.path / DRIFT_PNG

    def write_summary(self, check: DataCheck) -> Path:
        return atomic_write_json(self.summary, check.to_dict())

    def read_summary(self) -> DataCheck:
        return _read_record(self.summary, DataCheck.from_dict, "run `check-data` again (make check-data)")


def data_check_files(output_dir: str | Path) -> DataCheckFiles:
    return DataCheckFiles(Path(output_dir) / DATA_CHECK_DIR)


def write_groups(path: Path, id_col: str, ids: list[str], groups: list[str]) -> Path:
    """The duplicate groups of the training ids (groups.csv): what folds.groups_file reads back (read_groups)."""
    return atomic_write_csv(path, pd.DataFrame({id_col: ids, GROUP_COL: groups}))


def read_groups(path: Path, id_col: str) -> pd.Series:
    """A groups file (folds.groups_file): group by id, as the text written. A file that is missing, lacks the id or
    group column, or repeats an id is a one-line error."""
    if not path.is_file():
        raise UserError(f"{path} not found (config key folds.groups_file): run `check-data` first (make check-data)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    missing = [c for c in (id_col, GROUP_COL) if c not in table.columns]
    if missing:
        raise UserError(f"{path} (folds.groups_file): column(s) {missing} not found; expected {id_col},{GROUP_COL}, "
                        f"found {list(table.columns)}")  # fmt: skip
    if table[id_col].isna().any() or table[GROUP_COL].isna().any():
        raise UserError(f"{path} (folds.groups_file): an empty {id_col} or {GROUP_COL} cell; every row needs both")
    dup = table[id_col][table[id_col].duplicated()]
    if len(dup):
        raise UserError(f"{path} (folds.groups_file): {len(dup)} ids appear twice, first: {list(dup[:3])}")
    return table.set_index(id_col)[GROUP_COL]
