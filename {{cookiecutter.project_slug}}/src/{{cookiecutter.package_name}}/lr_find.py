"""The `lr-find` command: the LR range test on one fold (engine/lr.py), its plot (lr_find.png, also to wandb) and
the suggestion, cached in lr_find.json where `optim.lr: auto` finds it."""

from __future__ import annotations

from .config import Config
from .engine.lr import SWEEP, record_sweep


def run_lr_find(cfg: Config, fold: int, num_iter: int = SWEEP["num_iter"]) -> float | None:
    result = record_sweep(cfg, fold, num_iter)
    suggestion = f"{result.suggestion:.2e}" if result.suggestion else "none (too few finite losses)"
    print(f"lr-find: suggested optim.lr={suggestion}; plot: {cfg.run.lr_find}")
    return result.suggestion
