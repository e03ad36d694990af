"""The epoch loop and evaluation: one pass over the training loader (AMP, accumulation, clipping, EMA, the
schedule stepped per optimizer update), and the validation loss and metric of several weights from one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, metric_name
from ..core.errors import UserError
from ..core.runtime import (
    autocast,
)
from ..modeling import metrics
from ..modeling.models import set_backbone_trainable
from .fold import FoldSetup, Step
from .inference import (
    activate,
    predict_models,
)

LOG_EVERY = 50  # steps between reads of the loss on the host (progress bar, non-finite check): each read waits for


def train_epoch(cfg: Config, s: FoldSetup, model: nn.Module, optimizer, scheduler, scaler, ema, step: Step,
                epoch: int, after_update: Callable[[int], None] | None = None) -> float:  # fmt: skip
    """One pass over the training loader; returns the mean loss. The schedule steps once per optimizer update,
    so gradient accumulation and the last, partial group of batches are counted right. `after_update(n)` runs
    after the n-th update of the run (the schedule's count; snapshots at the ends of its cycles)."""
    model.train()
    # The first model.freeze_backbone_epochs train the head alone (after model.train(): frozen BatchNorm layers
    # go back to eval mode, so their running statistics stay those of the pretrained backbone).
    set_backbone_trainable(model, epoch >= cfg.model.freeze_backbone_epochs)
    accum, n_batches = cfg.optim.grad_accum, s.n_batches
    total = torch.zeros((), device=s.device)  # summed where the loss is: no wait for the GPU at each step
    seen = 0
    bar = tqdm(s.loader, total=n_batches, desc=f"epoch {epoch + 1}", leave=False, disable=None)
    for i, batch in enumerate(bar):  # batches arrive on the device, images normalised (DeviceLoader)
        if i >= n_batches:
            break
        with autocast(s.device, s.dtype):
            losses = step(model, batch, s.criterion)
        group = min(accum, n_batches - (i // accum) * accum)  # the last group may hold fewer batches
        scaler.scale(losses["loss"] / group).backward()
        if (i + 1) % accum == 0 or i + 1 == n_batches:
            if cfg.optim.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(getattr(model, "module", model), step=scheduler.last_epoch)
            if after_update is not None:
                after_update(scheduler.last_epoch)
        total += losses["loss"].detach().float()
        seen += 1
        if seen % LOG_EVERY == 0 or i + 1 == n_batches:  # a non-finite loss makes the sum non-finite for good
            check_finite(float(total), epoch, i)
            bar.set_postfix({k: f"{float(v.detach()):.4f}" for k, v in losses.items()})
    return float(total) / max(seen, 1)


def check_finite(total: float, epoch: int, batch: int) -> None:
    """The targets are checked finite when the table is read: a diverging run is the usual cause of a non-finite
    loss. last.pt still holds the last finished epoch."""
    if not math.isfinite(total):
        first = batch - (batch % LOG_EVERY)
        where = f"batch {batch}" if first == batch else f"batches {first}..{batch}"
        raise UserError(f"loss is {total} at epoch {epoch + 1} {where}: lower optim.lr, or set train.amp=off")


@torch.no_grad()
def evaluate(cfg: Config, s: FoldSetup, models: dict[str, nn.Module]) -> dict[str, tuple[float, float]]:
    """(validation loss, metric) of each of `models` on fold k's validation rows, all from one pass of the loader."""
    outputs = predict_models(models, s.valid_loader, cfg.task, s.device, s.dtype, activation=False)
    y = torch.as_tensor(s.data.y_valid)
    results = {}
    for name, out in outputs.items():
        logits = torch.from_numpy(out)
        logits = logits if logits.ndim == 4 else logits.reshape(len(y), -1)  # segmentation keeps its maps
        loss = float(s.criterion(logits.to(s.device), y.to(s.device)))
        probs = activate(logits, cfg.task, s.target_scale).numpy()
        results[name] = (loss, metrics.score(metric_name(cfg), s.data.y_valid, probs, cfg.task))
    return results
