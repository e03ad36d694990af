"""Training losses for every task, built from `cfg.loss`, and the knowledge-distillation loss.

Each loss is an nn.Module with forward(logits, target, sample_weight=None) -> scalar. It takes the model's logits as
they come ((N, C) multiclass, (N, 1) binary and regression, (N, L) multilabel) and the task's targets: class ids (N,)
or soft targets (N, C) (mixup, pseudo labels) for multiclass; 0/1 or soft floats (N,) binary, (N, L) multilabel;
floats (N,) regression. `sample_weight` (N,) weights rows, e.g. pseudo-labelled ones.
The modules themselves are in loss_modules.py; this file holds the registry, the config checks, the class weights
and the distillation loss.

Add a loss: write a factory `(cfg_loss, task, weights) -> nn.Module` and decorate it with
`@_register(name, tasks, options)`; tests/test_losses.py then asks for a reference formula for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TASKS, LossConfig
from .errors import UserError
from .loss_modules import RegressionLoss, SigmoidLoss, SoftF1Loss, SoftmaxLoss, column_inputs, sigmoid_inputs, upcast
from .registry import Registry

SIGMOID_TASKS = ("binary", "multilabel")
_DEFAULT = {"multiclass": "ce", "binary": "bce", "multilabel": "bce", "regression": "mse"}


@dataclass(frozen=True)
class LossWeights:
    """What `loss.class_weight` and `loss.pos_weight` turn into, for the factories."""

    class_weight: Tensor | None = None  # (C,) multiclass
    pos: Tensor | None = None  # (L,) sigmoid tasks: weight of the positive term
    neg: Tensor | None = None  # (L,) sigmoid tasks: weight of the negative term


LossFactory = Callable[[LossConfig, str, LossWeights], nn.Module]


@dataclass(frozen=True)
class LossSpec:
    name: str
    factory: LossFactory
    tasks: tuple[str, ...]
    options: tuple[str, ...]  # which of label_smoothing / class_weight / pos_weight it honours


LOSSES: Registry[LossSpec] = Registry("loss")


def _register(name: str, tasks: tuple[str, ...], options: tuple[str, ...] = ()) -> Callable[[LossFactory], LossFactory]:
    def deco(factory: LossFactory) -> LossFactory:
        LOSSES.add(name, LossSpec(name, factory, tasks, options))
        return factory

    return deco


def list_losses(task: str | None = None) -> list[str]:
    """All loss names, or those that support `task`."""
    return [n for n in LOSSES.names() if task is None or task in LOSSES.get(n).tasks]


def loss_tasks(name: str) -> tuple[str, ...]:
    return LOSSES.get(name).tasks


def default_loss(task: str) -> str:
    if task not in _DEFAULT:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return _DEFAULT[task]


def build_loss(cfg_loss: LossConfig, task: str, num_outputs: int, class_counts: np.ndarray | None = None) -> nn.Module:
    """The loss named by `cfg_loss.name` ('auto': `default_loss(task)`). `class_counts` (from `class_counts()`)
    is needed for `class_weight: balanced`."""
    name = default_loss(task) if cfg_loss.name == "auto" else cfg_loss.name
    spec = LOSSES.get(name)
    if task not in spec.tasks:
        raise UserError(
            f"loss {name!r} does not support task {task!r} (it supports: {', '.join(spec.tasks)}); "
            f"losses for {task}: {', '.join(list_losses(task))}"
        )
    _check_options(cfg_loss, spec, task)
    return spec.factory(cfg_loss, task, _weights(cfg_loss, task, num_outputs, class_counts))


def _check_options(cfg: LossConfig, spec: LossSpec, task: str) -> None:
    is_set = {"label_smoothing": cfg.label_smoothing != 0, "class_weight": cfg.class_weight != "none"}
    is_set["pos_weight"] = cfg.pos_weight is not None
    for key, on in is_set.items():
        if on and key not in spec.options:
            raise UserError(f"config key 'loss.{key}' is not used by loss {spec.name!r}; unset it or pick another loss")
    if cfg.pos_weight is not None and task not in SIGMOID_TASKS:
        raise UserError(f"config key 'loss.pos_weight' applies to binary/multilabel tasks, not {task}")
    if cfg.pos_weight is not None and cfg.pos_weight <= 0:
        raise UserError(f"config key 'loss.pos_weight' is {cfg.pos_weight}; expected > 0")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"config key 'loss.label_smoothing' is {cfg.label_smoothing}; expected 0 <= value < 1")
    if cfg.class_weight not in ("none", "balanced"):
        raise UserError(f"config key 'loss.class_weight' is {cfg.class_weight!r}; allowed: none, balanced")
    if spec.name == "focal" and cfg.focal_gamma < 0:
        raise UserError(f"config key 'loss.focal_gamma' is {cfg.focal_gamma}; expected >= 0")
    if spec.name == "huber" and cfg.huber_delta <= 0:
        raise UserError(f"config key 'loss.huber_delta' is {cfg.huber_delta}; expected > 0")


def class_counts(y: Any, task: str, num_outputs: int) -> np.ndarray:
    """Training-target counts in the form `build_loss` takes: multiclass (C,) rows per class (soft targets summed);
    binary (2,) and multilabel (2, L): negatives then positives."""
    y = np.asarray(y, dtype=np.float64)
    if task == "multiclass":
        return y.sum(0) if y.ndim == 2 else np.bincount(y.astype(np.int64), minlength=num_outputs).astype(float)
    if task in SIGMOID_TASKS:
        y = y.reshape(len(y), -1)
        counts = np.stack([len(y) - y.sum(0), y.sum(0)])  # (2, L)
        return counts[:, 0] if task == "binary" else counts
    raise UserError(f"class counts are for classification tasks, not {task!r}")


def _weights(cfg: LossConfig, task: str, num_outputs: int, counts: np.ndarray | None) -> LossWeights:
    """class_weight=balanced: weight n / (k * count) per class (k classes; k = 2 per sigmoid output)."""
    balanced = None
    if cfg.class_weight == "balanced":
        if counts is None:
            raise ValueError("loss.class_weight=balanced needs class_counts (see losses.class_counts)")
        counts = np.asarray(counts, dtype=np.float64)
        counts = counts.reshape(2, -1) if task in SIGMOID_TASKS else counts
        if counts.ndim != (2 if task in SIGMOID_TASKS else 1) or counts.shape[-1] != num_outputs:
            raise ValueError(f"class_counts has shape {counts.shape}; expected {num_outputs} outputs")
        k = 2 if task in SIGMOID_TASKS else num_outputs
        balanced = torch.tensor(counts.sum(0) / (k * np.maximum(counts, 1)), dtype=torch.float32)
    if task not in SIGMOID_TASKS:
        return LossWeights(class_weight=balanced)
    pos = None if cfg.pos_weight is None else torch.full((num_outputs,), float(cfg.pos_weight))
    if balanced is not None:
        pos = balanced[1] * (1.0 if pos is None else pos)
    return LossWeights(pos=pos, neg=None if balanced is None else balanced[0])


# --- the registry ----------------------------------------------------------------------------------------------------


@_register("ce", ("multiclass",), ("label_smoothing", "class_weight"))
def _ce(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return SoftmaxLoss(cfg.label_smoothing, w.class_weight)


@_register("soft_ce", ("multiclass",), ("label_smoothing", "class_weight"))
def _soft_ce(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return SoftmaxLoss(cfg.label_smoothing, w.class_weight)  # the same formula: ce takes soft targets too


@_register("bce", SIGMOID_TASKS, ("label_smoothing", "class_weight", "pos_weight"))
def _bce(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return SigmoidLoss(cfg.label_smoothing, w.pos, w.neg)


@_register("focal", ("multiclass", *SIGMOID_TASKS), ("label_smoothing", "class_weight", "pos_weight"))
def _focal(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    if task == "multiclass":
        return SoftmaxLoss(cfg.label_smoothing, w.class_weight, gamma=cfg.focal_gamma)
    return SigmoidLoss(cfg.label_smoothing, w.pos, w.neg, gamma=cfg.focal_gamma)


@_register("soft_f1", SIGMOID_TASKS)
def _soft_f1(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return SoftF1Loss()


@_register("mse", ("regression",))
def _mse(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return RegressionLoss("mse")


@_register("l1", ("regression",))
def _l1(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return RegressionLoss("l1")


@_register("huber", ("regression",))
def _huber(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return RegressionLoss("huber", cfg.huber_delta)


# --- distillation ----------------------------------------------------------------------------------------------------


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, task: str, temperature: float = 1.0) -> Tensor:
    """Hinton's soft-target loss at temperature T (teacher detached): multiclass T^2 KL(p_t || p_s) per row;
    binary/multilabel T^2 BCE(s/T, sigmoid(t/T)), the sigmoid analogue; regression MSE(s, t)."""
    if temperature <= 0:
        raise UserError(f"config key 'distill.temperature' is {temperature}; expected > 0")
    s, t, temp = upcast(student_logits), upcast(teacher_logits.detach()), float(temperature)
    if task == "multiclass":
        log_ps, log_pt = (s / temp).log_softmax(1), (t / temp).log_softmax(1)
        return temp**2 * F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")
    if task in SIGMOID_TASKS:
        x, soft = sigmoid_inputs(s, t)
        return temp**2 * F.binary_cross_entropy_with_logits(x / temp, torch.sigmoid(soft / temp))
    if task == "regression":
        x, y = column_inputs(s, t)
        return F.mse_loss(x, y)
    raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def probs_to_logits(probs: Any, task: str, eps: float = 1e-6) -> Tensor:
    """Saved teacher predictions (probabilities, as in oof.csv / test_pred.csv) -> logits for distillation_loss:
    log p (multiclass; softmax(log p / T) is p sharpened or softened), logit p (sigmoid tasks), values unchanged."""
    p = probs.detach().float() if isinstance(probs, Tensor) else torch.as_tensor(np.asarray(probs), dtype=torch.float32)
    if task == "multiclass":
        return p.clamp_min(eps).log()
    if task in SIGMOID_TASKS:
        p = p.clamp(eps, 1 - eps)
        return p.log() - (-p).log1p()
    return p
