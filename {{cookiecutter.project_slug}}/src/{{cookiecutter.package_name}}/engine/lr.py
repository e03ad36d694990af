"""The `lr-find` command: an exponential LR sweep on one fold's training data, with the fold's real set-up; and
`optim.lr: auto`, which runs that sweep once per experiment (fold 0, cached in the run folder) and trains every fold
at its suggestion.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.optim import Optimizer

from ..config import Config
from ..core.errors import UserError
from ..core.runs import atomic_savefig, atomic_write_json, read_json
from ..core.runtime import autocast, barrier, is_main
from ..core.tracking import Tracker
from ..data.folds import read_folds
from .fold import setup_fold, supervised_step
from .trainer import make_optimizer


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
    return LRFindResult(lrs=lrs, losses=losses, suggestion=suggest_lr(lrs, losses), diverged=diverged)


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


def _log_interp(lrs: list[float], a: float, b: float, position: float) -> float:
    """The LR `position` of the way from point a to point b, on the log scale."""
    pos = a + position * (b - a)
    lo = math.floor(pos)
    hi = min(lo + 1, len(lrs) - 1)
    return math.exp(math.log(lrs[lo]) + (pos - lo) * (math.log(lrs[hi]) - math.log(lrs[lo])))


def suggest_lr(lrs: list[float], losses: list[float], fall: tuple[float, float] = (0.3, 0.8)) -> float | None:
    """The middle (on the log scale) of the descent: between the LR at which the loss has covered fall[0] of its
    way from the plateau down to the floor and the LR at which it has covered fall[1].

    Why not the valley rule (`suggest_valley`, kept as the fallback when the loss never falls): a head started at
    the prior makes the plateau at tiny LRs a smooth, strictly decreasing curve that the valley rule counts as
    descent (it picked 0.004-0.02 where 0.02-0.1 train best), and the noisy flat floor of imbalanced labels or a
    regression moved it a decade up. The plateau is the median of the points after the smoothing's warm-up (the
    first tenth, whose bias-corrected average rests on a few batches), the floor the lowest point after it; 30%
    of the fall is clear of the plateau's noise and drift, 80% is where the floor begins. On 14 sweeps of the
    synthetic competitions and the demo (benchmarks/defaults.py) it picked 0.02-0.11, where the hand-tuned LRs
    were 0.02-0.1."""
    n = len(losses)
    if n < 10:
        return suggest_valley(lrs, losses)
    skip = n // 10
    plateau = sorted(losses[skip : max(skip + 3, int(0.3 * n))])
    base = plateau[len(plateau) // 2]
    floor = min(losses[skip:])
    drop = base - floor
    if not drop > 0:
        return suggest_valley(lrs, losses)
    lowest = losses.index(floor, skip)
    start = skip
    for i in range(skip, lowest):
        if losses[i] > base - fall[0] * drop:
            start = i + 1  # after the last point that has not fallen that far yet
    bottom = next(i for i in range(start, n) if losses[i] <= base - fall[1] * drop)
    return _log_interp(lrs, start, bottom, 0.5)


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
    return _log_interp(lrs, start, end, fraction)


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


# The sweep `optim.lr: auto` runs (and `lr-find` by default): 100 updates from 1e-6 to 10, stopped at divergence.
SWEEP = {"start_lr": 1e-6, "end_lr": 10.0, "num_iter": 100}
# Config keys the sweep does not depend on: changing them keeps the cached suggestion.
IGNORED_KEYS = ("exp", "competition", "output_dir", "optim.lr", "train.epochs", "train.early_stopping",
                "data.num_workers", "tta", "wandb", "pseudo", "distill", "submit")  # fmt: skip


def _with_lr(cfg: Config, lr: float) -> Config:
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))


def sweep(cfg: Config, fold: int, num_iter: int = SWEEP["num_iter"]) -> LRFindResult:
    """The LR range test on fold `fold`'s training rows, with the fold's model, loss, augmentation and optimizer."""
    # The sweep sets every LR itself (keeping each group's ratio to the head's): the configured one is a placeholder.
    cfg = _with_lr(cfg, 1.0) if cfg.optim.lr == "auto" else cfg
    s = setup_fold(cfg, fold)
    optimizer = make_optimizer(cfg, s.model, num_iter)  # no schedule: the sweep sets every LR itself
    s.model.train()

    def compute_loss(batch: dict):  # batches arrive on the device, normalised (DeviceLoader)
        with autocast(s.device, s.dtype):
            return supervised_step(s.model, batch, s.criterion, s.mixer)["loss"]

    start, end = SWEEP["start_lr"], SWEEP["end_lr"]
    return lr_find(s.model, optimizer, s.loader, compute_loss, start_lr=start, end_lr=end, num_iter=num_iter)


def cache_key(cfg: Config, fold: int, num_iter: int) -> dict:
    """What a sweep's result depends on: the config but the keys it ignores, the folds, the sweep's settings."""
    conf = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key in IGNORED_KEYS:
        *parents, leaf = key.split(".")
        node = conf
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    key = {"config": conf, "folds_hash": read_folds(cfg)[1], "fold": fold, **SWEEP, "num_iter": num_iter}
    return json.loads(json.dumps(key))  # as it reads back from lr_find.json


def cached_sweep(cfg: Config, fold: int = 0, num_iter: int = SWEEP["num_iter"]) -> dict | None:
    """The cached sweep (lr_find.json) if it was made with exactly this key, else None."""
    path = cfg.run.lr_find_cache
    if not path.is_file():
        return None
    cached = read_json(path)
    return cached if cached.get("key") == cache_key(cfg, fold, num_iter) else None


def record_sweep(cfg: Config, fold: int, num_iter: int = SWEEP["num_iter"]) -> LRFindResult:
    """Sweep, plot (lr_find.png, also to wandb) and cache the result in lr_find.json, where `optim.lr: auto` finds it
    (for fold 0 and the default number of steps)."""
    result = sweep(cfg, fold, num_iter)
    path = plot_lr_find(result, cfg.run.lr_find)
    record = {"key": cache_key(cfg, fold, num_iter), "suggestion": result.suggestion, "diverged": result.diverged,
              "lrs": result.lrs, "losses": result.losses}  # fmt: skip
    atomic_write_json(cfg.run.lr_find_cache, record)
    tracker = Tracker(cfg, "lr_find", "lr_find")
    tracker.image("lr_find", path)
    tracker.finish()
    return result


def resolve_lr(cfg: Config) -> Config:
    """`cfg` with optim.lr a number: as configured, or (`auto`) the suggestion of the LR finder on fold 0, run once
    per experiment and cached in lr_find.json (with its plot, lr_find.png) for every later fold and run.
    Under torchrun, rank 0 sweeps and the other ranks read its result."""
    if cfg.optim.lr != "auto":
        return cfg
    cached = cached_sweep(cfg)
    if cached is None:
        if is_main():
            print(f"{cfg.exp}: optim.lr=auto, running the LR finder on fold 0 ({SWEEP['num_iter']} steps at most)")
            record_sweep(cfg, 0)
        barrier()
        cached = cached_sweep(cfg)
    if cached is None or cached.get("suggestion") is None:
        raise UserError(
            f"optim.lr=auto: the LR finder found no usable learning rate (the loss was not finite; see "
            f"{cfg.run.lr_find}); set optim.lr to a number"
        )
    lr = float(cached["suggestion"])
    print(f"{cfg.exp}: optim.lr=auto -> {lr:.3g} (LR finder on fold 0: {cfg.run.lr_find})")
    return _with_lr(cfg, lr)


def recorded_lr(cfg: Config) -> float | None:
    """The learning rate the experiment trains with: the configured number, or auto's cached suggestion (None if
    the finder has not run for this config)."""
    if cfg.optim.lr != "auto":
        return float(cfg.optim.lr)
    cached = cached_sweep(cfg)
    return None if cached is None or cached.get("suggestion") is None else float(cached["suggestion"])
