"""wandb, one run per fold: group = experiment, job_type = fold<k>, plus ONE `cv` run per experiment that every later
`cv`/`predict` updates (a stable run id, resumed), and a run per `export` (job_type export) and per `ensemble`.
A fold interrupted and resumed logs on in its own run: its id is kept in the fold folder (fold<k>/wandb_run_id.txt)
while last.pt lets it resume; a fold trained from scratch (--force) gets a new run. Offline and disabled modes need
no login.

`cfg` is the experiment's Config (duck-typed: core imports nothing above it).

Everything goes through `Tracker`, so the training loop never imports wandb and never breaks because of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from .runs import atomic_write_text
from .runtime import is_main


def stable_run_id(cfg: Any, name: str) -> str:
    """The same id for the same experiment folder every time: `<exp>-<name>-<hash of the run folder's path>`. The
    hash keeps two checkouts (or competitions) that both have an exp001 from updating each other's run."""
    digest = hashlib.sha1(str(Path(cfg.run_dir).resolve()).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{cfg.exp}-{name}")[:54] + f"-{digest}"


def kept_run_id(cfg: Any, name: str, id_file: Path, resume: bool) -> str:
    """The run id kept in `id_file`: the one there when `resume` (a fold carrying on from its last.pt), else a new
    one, written there for the next resume (a fresh id per training from scratch: a retrained fold is a new run)."""
    if resume and id_file.is_file() and id_file.read_text().strip():
        return id_file.read_text().strip()
    run_id = stable_run_id(cfg, f"{name}-{secrets.token_hex(3)}")
    id_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(id_file, run_id)
    return run_id


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def score_summary(result: dict) -> dict[str, float]:
    """A cv.json record (an experiment's or an ensemble's) as summary values: the CV and every variant of it
    (each `cv_*` number: cv_tta, cv_ordinal, cv_nested... and any added later), the weight-averaging OOF scores
    (weight_averaging/<variant>) and each fold's score (fold<k>)."""
    out = {k: v for k, v in result.items() if (k == "cv" or k.startswith("cv_")) and _number(v)}
    averaging = result.get("weight_averaging") or {}
    out |= {f"weight_averaging/{k}": v for k, v in averaging.items() if _number(v)}
    return out | {f"fold{k}": v for k, v in result.get("folds", {}).items()}


class Tracker:
    def __init__(self, cfg: Any, name: str, job_type: str, resume: bool = False, id_file: Path | None = None) -> None:
        """A run named `<exp>-<name>`. `resume` without `id_file`: the experiment's one run of that name, updated
        (stable_run_id). With `id_file`: the run whose id it keeps when `resume`, else a new one (kept_run_id)."""
        self.run: Any = None
        mode = os.environ.get("WANDB_MODE", cfg.wandb.mode)
        if mode == "disabled" or not is_main():
            return
        import wandb

        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        if id_file is not None:
            run_id = kept_run_id(cfg, name, id_file, resume)
        else:
            run_id = stable_run_id(cfg, name) if resume else None
        try:
            self.run = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                group=cfg.exp,
                job_type=job_type,
                name=f"{cfg.exp}-{name}",
                tags=list(cfg.wandb.tags),
                config=dataclasses.asdict(cfg),
                dir=str(cfg.run_dir),
                mode=mode,
                reinit="finish_previous",
                **({"id": run_id, "resume": "allow"} if run_id else {}),
            )
        except Exception as e:  # not logged in, no network...: train anyway, say why once
            print(f"wandb: not logging ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            self.run = None

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def image(self, key: str, path: Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def confusion(self, y_true: list[int], y_pred: list[int], class_names: list[str]) -> None:
        if self.run is not None:
            import wandb

            plot = wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=class_names)
            self.run.log({"confusion_matrix": plot})

    def table(self, key: str, rows: list[dict[str, Any]], image_cols: tuple[str, ...] = ("image",)) -> None:
        """`rows` (dicts with the same keys, in order) as a wandb.Table; the cells of `image_cols` (HWC uint8
        arrays, or image files) as wandb.Image."""
        if self.run is not None and rows:
            import wandb

            columns = list(rows[0])
            data = [[wandb.Image(v if not isinstance(v, Path) else str(v)) if c in image_cols else v
                     for c, v in row.items()] for row in rows]  # fmt: skip
            self.run.log({key: wandb.Table(columns=columns, data=data)})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def finish_active(exit_code: int | None = None) -> None:
    """Finish the wandb run left open by a stage cut short (Ctrl-C), with `exit_code`, so it is not left running."""
    wandb = sys.modules.get("wandb")  # not imported: no run to finish
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)
