"""Optimizers (Ranger by default, via pytorch-optimizer) and LR schedules stepped once per optimizer update.

Add an optimizer with one line in `_TABLE` (or `OPTIMIZERS.register(name, factory)`), a schedule with
`@SCHEDULES.register(name)`; `optim.name` and `optim.schedule` accept the new name at once. `optim.lookahead` wraps
whichever optimizer in pytorch-optimizer's Lookahead (those that hold one already, ranger and ranger21, refuse it).
"""

from __future__ import annotations

import bisect
import fnmatch
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from ..core.errors import UserError
from ..core.registry import Registry
from .models import head_parameter_ids, unwrap

if TYPE_CHECKING:
    from ..core.schema import OptimConfig

OptimizerFactory = Callable[..., Optimizer]  # (params, cfg_optim, **extra) -> Optimizer
ScheduleFactory = Callable[[Optimizer, "OptimConfig", int], LRScheduler]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
SCHEDULES: Registry[ScheduleFactory] = Registry("schedule")


# ---------------------------------------------------------------------------------------------------------------
# parameter groups


def _is_no_decay(name: str, p: torch.Tensor, skip: set[str]) -> bool:
    # 1-D tensors are norm scales/shifts and biases; timm lists the rest (pos_embed, cls_token; XCiT: 'pos_embed.*').
    return p.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)


def param_groups(
    model: nn.Module, weight_decay: float, lr: float, backbone_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Up to four groups: head / backbone x decay / no decay. Each carries its own 'lr' and 'weight_decay'.

    Frozen parameters are kept (an optimizer skips a parameter without a gradient), so that unfreezing the backbone
    after `model.freeze_backbone_epochs` trains it without rebuilding the optimizer.
    """
    model = unwrap(model)
    nwd = getattr(model, "no_weight_decay", None)
    skip = set(nwd()) if callable(nwd) else set()
    head = head_parameter_ids(model)
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        part = "head" if id(p) in head else "backbone"
        no_decay = _is_no_decay(name, p, skip)
        key = f"{part}_no_decay" if no_decay else part
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr if part == "head" else lr * backbone_lr_mult,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": key,
            }
        groups[key]["params"].append(p)
    order = ("head", "head_no_decay", "backbone", "backbone_no_decay")
    return [groups[k] for k in order if k in groups]


# ---------------------------------------------------------------------------------------------------------------
# optimizers


def _momentum(c: OptimConfig) -> dict[str, Any]:
    return {"momentum": c.momentum}


def _sgd(c: OptimConfig) -> dict[str, Any]:
    return {"momentum": c.momentum, "nesterov": c.momentum > 0}  # torch refuses nesterov without momentum


# name -> (class, or pytorch-optimizer name; kwargs from the config beyond lr and weight_decay).
# pytorch-optimizer is imported lazily: it is slow to import and only one optimizer is used per run.
_TABLE: dict[str, tuple[type[Optimizer] | str, Callable[[OptimConfig], dict[str, Any]] | None]] = {
    "adam": (torch.optim.Adam, None),  # L2 (coupled) weight decay
    "adamw": (torch.optim.AdamW, None),
    "sgd": (torch.optim.SGD, _sgd),
    # torch's RAdam takes an SGD-like step while the variance is unrectified, like the original RAdam and Ranger.
    "radam": (torch.optim.RAdam, lambda c: {"decoupled_weight_decay": True}),
    "nadam": (torch.optim.NAdam, lambda c: {"decoupled_weight_decay": True}),
    # pytorch-optimizer 4.1's Ranger with its default degenerated_to_sgd=False moves the weights UP the gradient for
    # the first 5 steps (step size -lr, no guard); True gives the original Ranger's SGD-like steps instead.
    # beta2 = 0.99 (fastai's ranger; pytorch-optimizer's default is 0.999): RAdam's rectification is a warm-up of
    # about 2 / (1 - beta2) updates on top of the schedule's own; with 0.999 a run of a few hundred updates trains at
    # 10-30% of optim.lr throughout (measured: 3x the LR needed for the same score), with 0.99 it is over in ~200.
    "ranger": ("ranger", lambda c: {"degenerated_to_sgd": True, "betas": (0.95, 0.99)}),
    # Ranger21's built-in warm-up/warm-down uses one global LR (it would flatten the head/backbone ratio) and would
    # stack on top of ours: off, so `optim.schedule` alone shapes the LR. num_iterations comes from _EXTRA.
    "ranger21": ("ranger21", lambda c: {"disable_lr_scheduler": True}),
    "lamb": ("lamb", None),
    "lars": ("lars", _momentum),
    "madgrad": ("madgrad", _momentum),
    "adamod": ("adamod", None),
    "diffgrad": ("diffgrad", None),
    "adabelief": ("adabelief", None),
    "adan": ("adan", None),
    "lion": ("lion", None),  # wants a 3-10x smaller lr than AdamW
    "adamp": ("adamp", None),
    "sgdp": ("sgdp", lambda c: {"momentum": c.momentum, "nesterov": c.momentum > 0}),
    "yogi": ("yogi", None),
    "novograd": ("novograd", None),
    "ademamix": ("ademamix", None),
    "adopt": ("adopt", None),
    "laprop": ("laprop", None),
    "came": ("came", None),
    "grams": ("grams", None),
    "stableadamw": ("stableadamw", None),
    "tiger": ("tiger", None),
    "aida": ("aida", None),
    "apollo": ("apollo", None),
    "soap": ("soap", None),
    "rmsprop": (torch.optim.RMSprop, _momentum),  # L2 (coupled) weight decay, like adam
    "adagrad": (torch.optim.Adagrad, None),
    # QHAdam's recommended nus and betas (Ma & Yarats 2019); pytorch-optimizer's default nus (1, 1) is plain Adam.
    "qhadam": ("qhadam", lambda c: {"nus": (0.7, 1.0), "betas": (0.995, 0.999), "weight_decouple": True}),
    # Not offered: pytorch-optimizer 4.1's `kron` (PSGD Kron) tried to allocate 110 GB for its preconditioner in the
    # first step on test_resnet's conv weights (on the demo it did not return in 85 s). Every name here takes a few
    # steps on a small conv net in the tests (test_optim.py).
}

# Arguments that depend on the run, not the config: name -> kwargs from total_steps (the number of updates).
_EXTRA: dict[str, Callable[[int], dict[str, Any]]] = {
    "ranger21": lambda total: {"num_iterations": total},
}


def _make_factory(name: str) -> OptimizerFactory:
    cls_or_name, from_cfg = _TABLE[name]

    def factory(params: Any, cfg: OptimConfig, **extra: Any) -> Optimizer:
        if isinstance(cls_or_name, str):
            from pytorch_optimizer import load_optimizer

            cls = load_optimizer(cls_or_name)
        else:
            cls = cls_or_name
        kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **(from_cfg(cfg) if from_cfg else {}), **extra}
        return cls(params, **kwargs)

    factory.__name__ = f"make_{name}"
    return factory


# Optimizers with a Lookahead of their own: `optim.lookahead` would put a second one around it.
_HAS_LOOKAHEAD = ("ranger", "ranger21")

for _name in _TABLE:
    OPTIMIZERS.register(_name, _make_factory(_name), lookahead=_name in _HAS_LOOKAHEAD)


def has_lookahead(name: str) -> bool:
    """Whether optimizer `name` already holds a Lookahead (then `optim.lookahead` is refused)."""
    return bool(OPTIMIZERS.meta(name).get("lookahead", False))


def with_lookahead(optimizer: Optimizer, k: int, alpha: float) -> Optimizer:
    """pytorch-optimizer's Lookahead (Zhang et al. 2019) around `optimizer`: every k updates the slow weights move
    alpha of the way to the fast ones, and the fast weights restart from them. Its param_groups are the inner
    optimizer's, so schedules, the loss scaler and clipping see the same groups; its state_dict holds both."""
    from pytorch_optimizer import Lookahead

    return Lookahead(optimizer, k=k, alpha=alpha)


def list_optimizers() -> list[str]:
    return OPTIMIZERS.names()


def build_optimizer(
    model: nn.Module, cfg_optim: OptimConfig, total_steps: int | None = None, backbone_lr_mult: float = 1.0
) -> Optimizer:
    """The optimizer named by `optim.name` over `param_groups(model, ...)`.

    total_steps (optimizer updates in the whole run) is needed only by optimizers listed in `_EXTRA` (ranger21);
    backbone_lr_mult is `models.backbone_lr_mult(cfg.model)`.
    """
    factory = OPTIMIZERS.get(cfg_optim.name)
    extra: dict[str, Any] = {}
    if cfg_optim.name in _EXTRA:
        if total_steps is None:
            raise ValueError(f"optimizer {cfg_optim.name!r} needs total_steps (the number of optimizer updates)")
        extra = _EXTRA[cfg_optim.name](total_steps)
    groups = param_groups(model, cfg_optim.weight_decay, cfg_optim.lr, backbone_lr_mult)
    optimizer = factory(groups, cfg_optim, **extra)
    if cfg_optim.lookahead:
        if has_lookahead(cfg_optim.name):
            raise UserError(f"config key 'optim.lookahead' is true, but optim.name={cfg_optim.name} holds a "
                            "Lookahead already")  # fmt: skip
        optimizer = with_lookahead(optimizer, cfg_optim.lookahead_k, cfg_optim.lookahead_alpha)
    return optimizer


# ---------------------------------------------------------------------------------------------------------------
# schedules: total_steps is the number of optimizer updates; call scheduler.step() after each optimizer.step()


def updates_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer updates in one epoch: the last, partial accumulation also updates."""
    return math.ceil(n_batches / max(1, grad_accum))


def total_updates(n_batches: int, grad_accum: int, epochs: int) -> int:
    return epochs * updates_per_epoch(n_batches, grad_accum)


def list_schedules() -> list[str]:
    return SCHEDULES.names()


def build_scheduler(optimizer: Optimizer, cfg_optim: OptimConfig, total_steps: int) -> LRScheduler:
    """The `optim.schedule` scheduler; each group's current 'lr' is its peak (build it on a fresh optimizer)."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise UserError(
            f"no optimizer updates to schedule (total_steps={total_steps!r}): the training loader is empty; "
            "check train.batch_size against the number of training rows"
        )
    return SCHEDULES.get(cfg_optim.schedule)(optimizer, cfg_optim, total_steps)


def _cycles_momentum(optimizer: Optimizer) -> bool:
    d = optimizer.defaults
    return "betas" in d or d.get("momentum", 0.0) > 0  # SGD without momentum must stay without


def _safe_pct_start(pct_start: float, total_steps: int) -> float:
    """OneCycleLR divides by zero when a phase is empty (e.g. pct_start * total_steps == 1): keep the peak at an
    index in [1, total_steps - 2] so both phases hold a step. Fewer than 3 updates cannot hold a cycle."""
    if total_steps < 3:
        return 0.0
    return min(max(pct_start, 2 / total_steps), (total_steps - 1) / total_steps)


@SCHEDULES.register("one_cycle")
def one_cycle(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    """lr/div_factor -> lr at pct_start (cosine) -> lr/(div_factor*final_div_factor); betas[0] or momentum
    cycles 0.95 -> 0.85 -> 0.95 the other way round. Ranger reads group['betas'] every step, so it cycles too."""
    return OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=_safe_pct_start(cfg.pct_start, total_steps),
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        cycle_momentum=_cycles_momentum(optimizer),
    )


def _cosine_from(step: int, start: int, total_steps: int) -> float:
    """1 at `start`, cosine down to 0 at `total_steps` (one past the last update, so the last update is not wasted)."""
    span = max(1, total_steps - start)
    progress = min(1.0, (step - start) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("flat_cos")
def flat_cos(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    """lr for flat_pct of the updates, then cosine to ~0 (fastai's fit_flat_cos)."""
    flat = round(cfg.flat_pct * total_steps)
    return LambdaLR(optimizer, lambda s: 1.0 if s < flat else _cosine_from(s, flat, total_steps))


@SCHEDULES.register("cosine")
def cosine(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    """Linear warm-up over warmup_pct of the updates (lr/(w+1), 2lr/(w+1), ...), then cosine from lr to 0."""
    warm = round(cfg.warmup_pct * total_steps)
    return LambdaLR(optimizer, lambda s: (s + 1) / (warm + 1) if s < warm else _cosine_from(s, warm, total_steps))


@SCHEDULES.register("constant")
def constant(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    return LambdaLR(optimizer, lambda s: 1.0)


def restart_bounds(cfg: OptimConfig, total_steps: int) -> list[int]:
    """cosine_restarts: the update counts where the cycles start, then `total_steps` (where the last one ends).
    Cycle i (0-based) is `optim.restart_mult` ** i times as long as the first, and the `optim.restart_cycles` cycles
    fill the run, so the run ends at a cycle's end. A cycle that rounds to no update at all (fewer updates than
    cycles) is dropped."""
    n, mult = cfg.restart_cycles, cfg.restart_mult
    lengths = [mult**i for i in range(n)]
    cum = [sum(lengths[:i]) for i in range(n + 1)]
    return sorted({round(total_steps * c / cum[-1]) for c in cum})


def snapshot_steps(cfg: OptimConfig, total_steps: int) -> list[int]:
    """The update counts after which a cycle of the schedule ends (snapshot ensembling takes the weights there):
    every cycle end of cosine_restarts when it has two cycles or more, none for the other schedules."""
    if not SCHEDULES.meta(cfg.schedule).get("restarts"):
        return []
    ends = restart_bounds(cfg, total_steps)[1:]
    return ends if len(ends) >= 2 else []


@SCHEDULES.register("cosine_restarts", restarts=True)
def cosine_restarts(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    """SGDR (Loshchilov & Hutter 2017), stepped per update: `restart_cycles` cosine cycles from lr down towards
    lr * restart_floor, each `restart_mult` times as long as the one before and restarting at lr; the run ends at
    the last cycle's end. Each cycle's end is a snapshot (snapshot_steps; modeling/averaging.py)."""
    bounds, floor = restart_bounds(cfg, total_steps), cfg.restart_floor

    def factor(step: int) -> float:
        i = bisect.bisect_right(bounds, step) - 1
        if i >= len(bounds) - 1:  # past the last update: the end of the last cycle
            return floor
        start, end = bounds[i], bounds[i + 1]
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (step - start) / (end - start)))

    return LambdaLR(optimizer, factor)


@SCHEDULES.register("step")
def step_decay(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    """Step decay: lr, multiplied by step_gamma after every step_pct of the updates (0.3: at 30%, 60% and 90%)."""
    size = max(1, round(cfg.step_pct * total_steps))
    return LambdaLR(optimizer, lambda s: cfg.step_gamma ** (s // size))
