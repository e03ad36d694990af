"""Trainer assembly: what updates a model's weights, built in one place for every stage that trains (train, the LR
finder, export's fine-tune of a pruned model, the benchmarks).

The optimizer's parameter groups (the backbone at model.backbone_lr_mult of the head's LR), the schedule (one-cycle
by default, stepped once per optimizer update), the loss scaler (fp16 only: bf16 needs none) and the EMA of the
weights (its decay warms up from 0, so short runs average over a sensible window too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim import Optimizer

from ..config import Config
from ..modeling.models import backbone_lr_mult
from ..modeling.optim import build_optimizer, build_scheduler, snapshot_steps, total_updates


def make_optimizer(cfg: Config, model: nn.Module, total_steps: int) -> Optimizer:
    """optim.name over the model's parameter groups (head at optim.lr, backbone at its multiple of it)."""
    return build_optimizer(model, cfg.optim, total_steps, backbone_lr_mult=backbone_lr_mult(cfg.model))


@dataclass
class Trainer:
    optimizer: Optimizer
    scheduler: Any  # a torch LR scheduler, stepped once per optimizer update
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    snapshot_at: tuple[int, ...] = ()  # updates after which the schedule ends a cycle (cosine_restarts' snapshots)

    def stateful(self) -> dict[str, Any]:
        """What last.pt saves and a resume loads, by name."""
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler, "ema": self.ema}


def build_trainer(cfg: Config, model: nn.Module, n_batches: int, device: torch.device,
                  dtype: torch.dtype | None) -> Trainer:  # fmt: skip
    """The optimizer, schedule, scaler and EMA (train.ema) for `cfg.train.epochs` epochs of `n_batches` batches, and
    where the schedule's cycles end (snapshot ensembling)."""
    total_steps = total_updates(n_batches, cfg.optim.grad_accum, cfg.train.epochs)
    optimizer = make_optimizer(cfg, model, total_steps)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True) if cfg.train.ema else None
    return Trainer(optimizer, scheduler, scaler, ema, tuple(snapshot_steps(cfg.optim, total_steps)))
