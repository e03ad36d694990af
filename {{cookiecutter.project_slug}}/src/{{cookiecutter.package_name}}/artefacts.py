"""Where a run's files live, and how they are written: atomically, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write through `write(tmp_path)` into a temporary file beside `path`, then os.replace it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    return _atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_savefig(path: str | Path, fig: Any) -> Path:
    return _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold{fold}"
