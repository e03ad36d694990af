"""The `lr-find` command: an exponential LR sweep on one fold's training data, with the fold's real set-up."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .config import Config
from .core.runs import atomic_savefig
from .core.runtime import autocast
from .core.tracking import Tracker
from .modeling.optim import build_optimizer
from .train import setup_fold, supervised_step


@dataclass
class LRFindResult:
    lrs: list[float]  # the LR of the group with the largest LR (the head); the others keep their ratio to it
    losses: list[float]  # smoothed, bias-corrected
    suggestion: float | None  # None when fewer than two finite losses were recorded
    diverged: bool = False  # the sweep stopped because the loss blew up


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Yield batches for ever, restarting the iterable (a DataLoader reshuffles) whenever it runs out."""
    passes = 0
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            why = "yielded no batch" if passes == 0 else "ran out and cannot restart (pass a list or a DataLoader)"
            raise ValueError(f"lr_find: `batches` {why}")
        passes += 1


def lr_find(
    model: nn.Module,
    optimizer: Optimizer,
    batches: Iterable[Any],
    compute_loss: Callable[[Any], torch.Tensor],
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    smooth: float = 0.98,
    diverge: float = 4.0,
    scaler: torch.amp.GradScaler | None = None,
) -> LRFindResult:
    """Train for up to num_iter updates at LRs start_lr * q**i (q so the last is end_lr), recording the loss.

    Stops once the smoothed loss exceeds `diverge` x its best, or turns non-finite. The model's weights and
    buffers, the optimizer's state and LRs, the scaler's state (pass the fp16 GradScaler), the training flag and
    torch's RNG are restored afterwards, so a run that calls lr_find first trains exactly like one that does not.
    """
    if not 0 < start_lr < end_lr or num_iter < 2:
        raise ValueError(f"lr_find needs 0 < start_lr < end_lr and num_iter >= 2, got {start_lr}, {end_lr}, {num_iter}")
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), scaler.state_dict() if scaler else None))
    was_training = model.training
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    q = (end_lr / start_lr) ** (1.0 / (num_iter - 1))
    schedule = [start_lr * q**i for i in range(num_iter)]
    try:
        model.train()
        lrs, losses, diverged = _sweep(optimizer, _cycle(batches), compute_loss, schedule, smooth, diverge, scaler)
    finally:
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        if scaler is not None:
            scaler.load_state_dict(saved[2])
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return LRFindResult(lrs=lrs, losses=losses, suggestion=suggest_valley(lrs, losses), diverged=diverged)


def _sweep(
    optimizer: Optimizer,
    batches: Iterator[Any],
    compute_loss: Callable[[Any], torch.Tensor],
    schedule: list[float],
    smooth: float,
    diverge: float,
    scaler: torch.amp.GradScaler | None,
) -> tuple[list[float], list[float], bool]:
    top = max(g["lr"] for g in optimizer.param_groups)
    ratios = [g["lr"] / top if top > 0 else 1.0 for g in optimizer.param_groups]
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    for i, lr in enumerate(schedule):
        for g, r in zip(optimizer.param_groups, ratios, strict=True):
            g["lr"] = lr * r
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(next(batches))
        value = float(loss.detach())
        if not math.isfinite(value):
            return lrs, losses, True
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        # fastai's convention: the loss seen at lr_i was computed before the step taken with lr_i.
        avg = smooth * avg + (1 - smooth) * value
        smoothed = avg / (1 - smooth ** (i + 1))  # bias correction, as in Adam's moments
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if i > 0 and smoothed > diverge * best:
            return lrs, losses, True
    return lrs, losses, False


def suggest_valley(lrs: list[float], losses: list[float], fraction: float = 2 / 3) -> float | None:
    """The 'valley' rule: the longest decreasing subsequence of the loss curve is the valley; it ends at its last
    point and is as wide as it has points. Return the LR `fraction` of the way down it (log-LR interpolation).

    Measuring the width by the number of decreasing points, not the span, keeps a long noisy plateau at tiny LRs
    (where a few points happen to decrease) from stretching the valley; ~2/3 down leaves margin below the
    minimum, where training is already close to unstable.
    """
    n = len(losses)
    if n < 2:
        return None
    length = [1] * n  # length[i]: longest strictly decreasing subsequence ending at point i
    for i in range(n):
        for j in range(i):
            if losses[j] > losses[i]:
                length[i] = max(length[i], length[j] + 1)
    end = max(range(n), key=lambda i: (length[i], -i))  # the longest valley; ties: the one that ends first
    start = end - length[end] + 1
    pos = start + fraction * (end - start)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return math.exp(math.log(lrs[lo]) + (pos - lo) * (math.log(lrs[hi]) - math.log(lrs[lo])))


def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """Loss against LR (log axis) with the suggestion marked, written atomically as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)  # no pyplot: no global figure state, no GUI backend
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggestion {result.suggestion:.2e}")
        ax.legend()
    ax.set_title("LR range test" + (" (stopped: loss diverged)" if result.diverged else ""))
    return atomic_savefig(path, fig)


def run_lr_find(cfg: Config, fold: int, num_iter: int = 100) -> float | None:
    s = setup_fold(cfg, fold)
    optimizer = build_optimizer(s.model, cfg.optim, num_iter, backbone_lr_mult=cfg.model.backbone_lr_mult)
    s.model.train()

    def compute_loss(batch: dict):  # batches arrive on the device, normalised (DeviceLoader)
        with autocast(s.device, s.dtype):
            return supervised_step(s.model, batch, s.criterion, s.mixer)["loss"]

    result = lr_find(s.model, optimizer, s.loader, compute_loss, num_iter=num_iter)
    path = plot_lr_find(result, cfg.run.lr_find)
    suggestion = f"{result.suggestion:.2e}" if result.suggestion else "none (too few finite losses)"
    print(f"lr-find: suggested optim.lr={suggestion}; plot: {path}")
    tracker = Tracker(cfg, "lr_find", "lr_find")
    tracker.image("lr_find", path)
    tracker.finish()
    return result.suggestion
