"""The `lr-find` command: an exponential LR sweep on one fold's training data, with the fold's real set-up."""

from __future__ import annotations

from .config import Config
from .lrfind import lr_find, plot_lr_find
from .optim import build_optimizer
from .runtime import autocast
from .tracking import Tracker
from .train import setup_fold, supervised_step


def run_lr_find(cfg: Config, fold: int, num_iter: int = 100) -> float | None:
    s = setup_fold(cfg, fold)
    optimizer = build_optimizer(s.model, cfg.optim, num_iter, backbone_lr_mult=cfg.model.backbone_lr_mult)
    s.model.train()

    def compute_loss(batch: dict):
        batch = {k: v.to(s.device) if hasattr(v, "to") else v for k, v in batch.items()}
        with autocast(s.device, s.dtype):
            return supervised_step(s.model, batch, s.criterion, s.mixer)["loss"]

    result = lr_find(s.model, optimizer, s.loader, compute_loss, num_iter=num_iter)
    path = plot_lr_find(result, cfg.run_dir / "lr_find.png")
    suggestion = f"{result.suggestion:.2e}" if result.suggestion else "none (too few finite losses)"
    print(f"lr-find: suggested optim.lr={suggestion}; plot: {path}")
    tracker = Tracker(cfg, "lr_find", "lr_find")
    tracker.image("lr_find", path)
    tracker.finish()
    return result.suggestion
