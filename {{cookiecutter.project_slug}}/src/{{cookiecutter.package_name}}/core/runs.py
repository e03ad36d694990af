"""The run-folder contract: every artefact's name and path, how it is written, and how it is read back.

No other module spells an artefact's file name: they ask a `Run` (an experiment or ensemble folder) or its
`FoldFiles` for the path.

    outputs/<exp>/                      Run
        config.yaml                     the resolved config the run was trained with
        classes.json                    prediction columns in order, the task, the binary positive class
        oof.csv                         id, fold, one column per prediction column (every finished fold)
        oof_tta.csv (+ .source.json)    OOF re-predicted with the TTA views; recomputed when the views or a
                                        checkpoint change
        tta_auto.json                   tta.views: auto: the views chosen on OOF, the scores, the checkpoints' sha256
        cv.json                         per-fold and overall score, folds hash, prediction columns
        test_pred.csv (+ .source.json)  fold-averaged, TTA-merged test predictions
        weights.json                    ensembles only: method, members, weights
        lineage.json                    students only: teachers, settings, per-fold provenance
        lr_find.json                    the LR finder's sweep and suggestion, with what it depends on (optim.lr: auto
                                        reuses it while that holds)
        lr_find.png, learning_curves.png, fold_scores.png, confusion_matrix.png
        aug_preview.png                 training images x draws of the augmentation preset (aug-preview)
        teacher/                        cached teacher outputs (students)
        export/                         `export`: deployable forms of each fold's best.pt
            export.json                 per fold and variant: OOF score, parity with torch, file size, CPU img/s
            fold<k>/model.onnx model_int8.onnx model.ts pruned.pt
        fold<k>/                        FoldFiles
            best.pt  last.pt            weights to predict with; everything to resume exactly
            swa.pt avg_best_k.pt        train.swa / train.avg_best_k: the averaged weights (BatchNorm recomputed)
            oof_<variant>.csv           their OOF rows, and the best epoch's (oof_best.csv), to compare in cv.json
            averaging.json              each variant's make-up and score, and which one best.pt holds
            best_epoch.pt               the best epoch's weights when train.pick_averaged put an average in best.pt
            config.yaml                 the config this fold was trained under (cv.json is complete when they agree)
            history.json oof.csv        per-epoch metrics; the fold's OOF rows (written last: fold finished)
            train.lock                  held by the process training the fold (FoldLock)
            test_pred.csv (+ .source.json)   this fold's model on the test set (pseudo-labelling needs it)
            pseudo_labels.csv           students only
    <folds.path> (data/folds.csv) + folds.json (its hash)
    <output_dir>/.cache/image_check/<folder>-<hash>.json   images already checked to decode (size, mtime)
    submissions/<name>.csv
    submissions/log.csv                 one row per `submit`: time, file, its size and sha256, experiment, CV, message
    submissions/cv_vs_lb.png, .csv      `lb`: the log joined to Kaggle's submission history, CV against public score

Every file is written atomically (a temporary file beside it, then `os.replace`), with the user's normal
permissions. Derived files carry what they were derived from in a `.source.json` beside them, and
`read_derived` returns them only while that still holds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import UserError

CONFIG = "config.yaml"
CLASSES = "classes.json"
CV = "cv.json"
OOF = "oof.csv"
OOF_TTA = "oof_tta.csv"
TTA_AUTO = "tta_auto.json"
TEST_PRED = "test_pred.csv"
WEIGHTS = "weights.json"
LINEAGE = "lineage.json"
LR_FIND = "lr_find.png"
AUG_PREVIEW = "aug_preview.png"
LR_FIND_CACHE = "lr_find.json"
BEST = "best.pt"
LAST = "last.pt"
HISTORY = "history.json"
AVERAGING = "averaging.json"
BEST_EPOCH = "best_epoch.pt"
PSEUDO_LABELS = "pseudo_labels.csv"
EXPORT_DIR = "export"
EXPORT_JSON = "export.json"
ONNX = "model.onnx"
ONNX_INT8 = "model_int8.onnx"
TORCHSCRIPT = "model.ts"
PRUNED = "pruned.pt"
SUBMISSION_LOG = "log.csv"
CV_VS_LB = "cv_vs_lb"  # .png (the plot) and .csv (the joined table), in submissions/
LOCK = "train.lock"
FOLDS_META_SUFFIX = ".json"  # data/folds.csv -> data/folds.json
SOURCE_SUFFIX = ".source.json"
TMP_SUFFIX = ".tmp"
CACHE_DIR = ".cache"
# What a packaged run (Kaggle dataset, offline notebook) carries besides its checkpoints: thresholds and QWK cuts
# tuned on OOF are re-tuned offline exactly as here.
PACKAGED = (CONFIG, CLASSES, CV, WEIGHTS, OOF, TTA_AUTO)
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


def read_derived(path: Path, source: dict, id_col: str) -> pd.DataFrame | None:
    """The derived table at `path` if it was made from exactly `source`, else None (missing or stale)."""
    source_path = _source_path(path)
    if not (path.is_file() and source_path.is_file()):
        return None
    if read_json(source_path) != json.loads(json.dumps(source)):
        return None
    return pd.read_csv(path, dtype={id_col: str})


# --------------------------------------------------------------------------------------------- run folders


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
        """Weights of a weight-averaging variant (swa, avg_best_k)."""
        return self.path / f"{variant}.pt"

    def variant_oof(self, variant: str) -> Path:
        """OOF rows of a weight-averaging variant, or of the best epoch ("best")."""
        return self.path / f"oof_{variant}.csv"

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    def finished(self) -> bool:
        """A fold is finished once its oof.csv exists: train writes it last, after best.pt."""
        return self.oof.is_file() and self.best.is_file()

    def clear(self) -> None:
        """Remove what training writes, so a retrained fold starts from nothing."""
        weights = self.path.glob("*.pt")  # last, best, and the weight-averaging variants
        for p in (*weights, self.oof, self.history, self.test_pred, _source_path(self.test_pred), self.averaging,
                  self.config, *self.path.glob("oof_*.csv")):  # fmt: skip
            p.unlink(missing_ok=True)


@dataclass(frozen=True)
class ExportFiles:
    """export/fold<k>/ of a run: fold k's best.pt in deployable forms."""

    path: Path

    onnx = property(lambda self: self.path / ONNX)
    onnx_int8 = property(lambda self: self.path / ONNX_INT8)
    torchscript = property(lambda self: self.path / TORCHSCRIPT)
    pruned = property(lambda self: self.path / PRUNED)


@dataclass(frozen=True)
class Run:
    """An experiment's (or ensemble's) folder under output_dir."""

    path: Path

    @classmethod
    def named(cls, output_dir: str | Path, name: str, what: str = "experiment name") -> Run:
        return cls(Path(output_dir) / check_name(name, what))

    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / CONFIG)
    classes = property(lambda self: self.path / CLASSES)
    cv = property(lambda self: self.path / CV)
    oof = property(lambda self: self.path / OOF)
    oof_tta = property(lambda self: self.path / OOF_TTA)
    tta_auto = property(lambda self: self.path / TTA_AUTO)
    test_pred = property(lambda self: self.path / TEST_PRED)
    weights = property(lambda self: self.path / WEIGHTS)
    lineage = property(lambda self: self.path / LINEAGE)
    lr_find = property(lambda self: self.path / LR_FIND)
    aug_preview = property(lambda self: self.path / AUG_PREVIEW)

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
        return list(read_json(self.weights).get("members", [])) if self.is_ensemble() else []

    def read_classes(self) -> dict:
        if not self.classes.is_file():
            raise UserError(f"{self.classes} not found: train experiment {self.name!r} first")
        return read_json(self.classes)

    def read_cv(self) -> dict:
        if not self.cv.is_file():
            raise UserError(f"{self.cv} not found: train experiment {self.name!r} (every fold) first")
        return read_json(self.cv)

    def read_weights(self) -> dict:
        return read_json(self.weights)


def read_pred_csv(path: Path, id_col: str, columns: list[str]) -> pd.DataFrame:
    """A prediction table (oof.csv, test_pred.csv): the id column and `columns` present, no NaN."""
    if not path.is_file():
        raise UserError(f"{path} not found: train (oof.csv) and predict (test_pred.csv) the experiment first")
    df = pd.read_csv(path, dtype={id_col: str})
    missing = [c for c in (id_col, *columns) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: column(s) {missing} not found; columns are {list(df.columns)}")
    if df[columns].isna().any().any():
        raise UserError(f"{path}: NaN predictions in {df[columns].columns[df[columns].isna().any()].tolist()}")
    return df


class FoldLock:
    """Held (`with FoldLock(fold.lock):`) by the one process that trains a fold: a second live process training the
    same fold stops with one line naming the holder's pid. An OS lock (flock) on the file, not the file itself,
    counts: the OS drops it when its process ends, however it ends, so a lock left by a killed run is simply taken
    over. POSIX only (Linux, macOS); where fcntl is missing (Windows) no lock is taken."""

    def __init__(self, path: Path) -> None:
        self.path, self.file = Path(path), None
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
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise UserError(
                f"{self.path.parent} is being trained by another live process (pid {holder}, holding {self.path}); "
                "wait for it to finish, or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
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


def load_best(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: train that fold first")
    return load_checkpoint(path)
