"""The run-folder contract: every artefact's name and path, how it is written, and how it is read back.

No other module spells an artefact's file name: they ask a `Run` (an experiment or ensemble folder) or its
`FoldFiles` for the path.

    outputs/<exp>/                      Run
        config.yaml                     the resolved config the run was trained with
        classes.json                    prediction columns in order, the task, the binary positive class
        oof.csv                         id, fold, one column per prediction column (every finished fold)
        oof_tta.csv (+ .source.json)    OOF re-predicted with the TTA views; recomputed when the views or a
                                        checkpoint change
        cv.json                         per-fold and overall score, folds hash, prediction columns
        test_pred.csv (+ .source.json)  fold-averaged, TTA-merged test predictions
        weights.json                    ensembles only: method, members, weights
        lineage.json                    students only: teachers, settings, per-fold provenance
        lr_find.png, learning_curves.png, fold_scores.png, confusion_matrix.png
        teacher/                        cached teacher outputs (students)
        fold<k>/                        FoldFiles
            best.pt  last.pt            weights to predict with; everything to resume exactly
            history.json oof.csv        per-epoch metrics; the fold's OOF rows (written last: fold finished)
            test_pred.csv (+ .source.json)   this fold's model on the test set (pseudo-labelling needs it)
            pseudo_labels.csv           students only
    <folds.path> (data/folds.csv) + folds.json (its hash)
    submissions/<name>.csv

Every file is written atomically (a temporary file beside it, then `os.replace`), with the user's normal
permissions. Derived files carry what they were derived from in a `.source.json` beside them, and
`read_derived` returns them only while that still holds.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
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
TEST_PRED = "test_pred.csv"
WEIGHTS = "weights.json"
LINEAGE = "lineage.json"
LR_FIND = "lr_find.png"
BEST = "best.pt"
LAST = "last.pt"
HISTORY = "history.json"
PSEUDO_LABELS = "pseudo_labels.csv"
FOLDS_META_SUFFIX = ".json"  # data/folds.csv -> data/folds.json
SOURCE_SUFFIX = ".source.json"
TMP_SUFFIX = ".tmp"
# What a packaged run (Kaggle dataset, offline notebook) carries besides its checkpoints: thresholds and QWK cuts
# tuned on OOF are re-tuned offline exactly as here.
PACKAGED = (CONFIG, CLASSES, CV, WEIGHTS, OOF)


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


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Remove temporary files that a killed writer left in `folder` (call it when no writer is running)."""
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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


# --------------------------------------------------------------------------------------------- derived files


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

    def finished(self) -> bool:
        """A fold is finished once its oof.csv exists: train writes it last, after best.pt."""
        return self.oof.is_file() and self.best.is_file()

    def clear(self) -> None:
        """Remove what training writes, so a retrained fold starts from nothing."""
        for p in (self.last, self.best, self.oof, self.history, self.test_pred, _source_path(self.test_pred)):
            p.unlink(missing_ok=True)


@dataclass(frozen=True)
class Run:
    """An experiment's (or ensemble's) folder under output_dir."""

    path: Path

    @classmethod
    def named(cls, output_dir: str | Path, name: str) -> Run:
        return cls(Path(output_dir) / name)

    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / CONFIG)
    classes = property(lambda self: self.path / CLASSES)
    cv = property(lambda self: self.path / CV)
    oof = property(lambda self: self.path / OOF)
    oof_tta = property(lambda self: self.path / OOF_TTA)
    test_pred = property(lambda self: self.path / TEST_PRED)
    weights = property(lambda self: self.path / WEIGHTS)
    lineage = property(lambda self: self.path / LINEAGE)
    lr_find = property(lambda self: self.path / LR_FIND)

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

    def checkpoints(self) -> dict[int, Path]:
        """best.pt of every finished fold."""
        return {k: self.fold(k).best for k in self.finished_folds()}

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


def folds_meta_path(folds_path: str | Path) -> Path:
    return Path(folds_path).with_suffix(FOLDS_META_SUFFIX)


def submission_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{name}.csv"


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
    except (RuntimeError, EOFError, OSError) as e:  # truncated file, or a pickle that needs code
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
