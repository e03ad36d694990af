"""Training losses for every task, built from `cfg.loss`, and the knowledge-distillation loss.

Each loss is an nn.Module with forward(logits, target, sample_weight=None) -> scalar. It takes the model's logits as
they come ((N, C) multiclass, (N, 1) binary and regression, (N, L) multilabel) and the task's targets: class ids (N,)
or soft targets (N, C) (mixup, pseudo labels) for multiclass; 0/1 or soft floats (N,) binary, (N, L) multilabel;
floats (N,) regression; segmentation logits (N, C, H, W), one sigmoid map per class, with 0/1 masks (N, C, H, W)
(uint8 or float). `sample_weight` (N,) weights rows (images), e.g. pseudo-labelled ones: every segmentation loss is
computed per image, then averaged, so that it can.
Half-precision logits are computed in float32: log-softmax and focal powers lose too much in fp16.

Add a loss: write a factory `(cfg_loss, task, weights) -> nn.Module` and decorate it with
`@LOSSES.register(name, tasks=(...), options=(...))`; `loss.name` accepts it at once, and tests/test_losses.py
asks for a reference formula for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import UserError
from ..core.registry import Registry
from ..core.tasks import PIXEL_TASKS, SIGMOID_TASKS, TASKS, TargetScale

if TYPE_CHECKING:
    from ..core.schema import LossConfig


def upcast(x: Tensor) -> Tensor:
    """fp16/bf16 -> float32 (log-softmax and focal powers lose too much in half precision); others as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _weighted_mean(num: Tensor, den: Tensor, sample_weight: Tensor | None) -> Tensor:
    """sum_i s_i num_i / sum_i s_i den_i: a mean over rows, weighted by class and sample weights."""
    if sample_weight is not None:
        s = sample_weight.to(num.dtype).reshape(-1)
        num, den = s * num, s * den
    return num.sum() / den.sum().clamp_min(1e-12)


def _multiclass_targets(target: Tensor, logits: Tensor) -> Tensor:
    if target.ndim == 1 and not target.is_floating_point():
        return F.one_hot(target.long(), logits.shape[1]).to(logits.dtype)
    if target.shape == logits.shape:
        return target.to(logits.dtype)
    raise ValueError(
        f"multiclass target must be class ids (N,) or soft targets {tuple(logits.shape)}, got "
        f"{target.dtype} {tuple(target.shape)}"
    )


def sigmoid_inputs(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Binary (N, 1) logits with (N,) targets, or multilabel (N, L) with (N, L), as matching (N, L) floats."""
    x = upcast(logits)
    x = x[:, None] if x.ndim == 1 else x
    t = target[:, None] if target.ndim == 1 else target
    if t.shape != x.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    return x, t.to(x.dtype)


def column_inputs(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Regression (N, 1) outputs with (N,) targets (or several columns with as many targets)."""
    x, t = upcast(logits).reshape(len(logits), -1), target.reshape(len(target), -1)
    if t.shape != x.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    return x, t.to(x.dtype)


class SoftmaxLoss(nn.Module):
    """Softmax cross-entropy with label smoothing, class weights and a focal factor (gamma > 0):
    sum_i s_i sum_c w_c t'_ic (1 - p_ic)^gamma (-log p_ic) / sum_i s_i sum_c w_c t_ic, where t' is t smoothed
    towards uniform. Hard ids become one-hot rows, so hard and soft targets share the formula; the denominator
    uses the unsmoothed t, which makes it exactly F.cross_entropy(weight=w, label_smoothing=eps) on hard ids."""

    def __init__(self, label_smoothing: float = 0.0, class_weight: Tensor | None = None, gamma: float = 0.0):
        super().__init__()
        self.label_smoothing, self.gamma = label_smoothing, gamma
        self.register_buffer("class_weight", class_weight)

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        x = upcast(logits)
        t = _multiclass_targets(target, x)
        logp = x.log_softmax(dim=1)
        eps = self.label_smoothing
        smoothed = t * (1 - eps) + eps / x.shape[1] if eps else t
        w = torch.ones_like(x[0]) if self.class_weight is None else self.class_weight.to(x.dtype)
        per = -smoothed * w * logp
        if self.gamma:  # 1 - p = -expm1(log p), exact near p = 1; the clamp keeps gamma < 1 gradients finite
            per = per * (-torch.expm1(logp)).clamp_min(1e-12).pow(self.gamma)
        den = (t * w).sum(1) if self.class_weight is not None else torch.ones_like(x[:, 0])
        return _weighted_mean(per.sum(1), den, sample_weight)


class SigmoidLoss(nn.Module):
    """Binary cross-entropy (binary, multilabel, segmentation) with label smoothing (t' = t (1 - eps) + eps / 2),
    positive and negative weights a, b and a focal factor: -(a t' log s(x) + b (1 - t') log s(-x)) (1 - p_t)^gamma,
    p_t = s(x) t' + s(-x) (1 - t'); the mean over labels (and pixels), then over rows."""

    def __init__(
        self, label_smoothing: float = 0.0, pos: Tensor | None = None, neg: Tensor | None = None, gamma: float = 0.0
    ):
        super().__init__()
        self.label_smoothing, self.gamma = label_smoothing, gamma
        self.register_buffer("pos", pos)
        self.register_buffer("neg", neg)

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        x, t = sigmoid_inputs(logits, target)
        eps = self.label_smoothing
        t = t * (1 - eps) + eps / 2 if eps else t
        a = 1.0 if self.pos is None else self.pos.to(x.dtype)
        b = 1.0 if self.neg is None else self.neg.to(x.dtype)
        per = -(a * t * F.logsigmoid(x) + b * (1 - t) * F.logsigmoid(-x))
        if self.gamma:
            one_minus_pt = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
            per = per * one_minus_pt.clamp_min(1e-12).pow(self.gamma)
        return _weighted_mean(per.flatten(1).mean(1), per.new_ones(len(per)), sample_weight)


class RegressionLoss(nn.Module):
    def __init__(self, kind: str, delta: float = 1.0):
        super().__init__()
        self.kind, self.delta = kind, delta

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        x, t = column_inputs(logits, target)
        if self.kind == "mse":
            per = F.mse_loss(x, t, reduction="none")
        elif self.kind == "l1":
            per = F.l1_loss(x, t, reduction="none")
        else:
            per = F.huber_loss(x, t, reduction="none", delta=self.delta)
        return _weighted_mean(per.mean(1), torch.ones_like(x[:, 0]), sample_weight)


class StandardizedTarget(nn.Module):
    """A regression loss on targets in the model's units (core.tasks.TargetScale): every target the loss is given
    (labelled rows, pseudo labels, mixed targets, validation rows) is standardised here, in one place."""

    def __init__(self, loss: nn.Module, scale: TargetScale):
        super().__init__()
        self.loss, self.scale = loss, scale

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return self.loss(logits, self.scale.standardize(target.float()), sample_weight)


class SoftF1Loss(nn.Module):
    """1 - soft F1 (probabilities in place of 0/1 predictions), macro over labels: optimises F1 directly.
    It is a batch statistic, so small batches make it noisy."""

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        x, t = sigmoid_inputs(logits, target)
        p = torch.sigmoid(x)
        s = 1.0 if sample_weight is None else sample_weight.to(x.dtype).reshape(-1, 1)
        tp, fp, fn = (s * p * t).sum(0), (s * p * (1 - t)).sum(0), (s * (1 - p) * t).sum(0)
        return 1 - (2 * tp / (2 * tp + fp + fn + 1e-7)).mean()


def mask_inputs(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Segmentation (N, C, H, W) logits and masks of the same shape, as matching floats (float32 at least)."""
    x = upcast(logits)
    if x.ndim != 4 or target.shape != x.shape:
        raise ValueError(f"segmentation logits {tuple(logits.shape)} and masks {tuple(target.shape)} do not match")
    return x, target.to(x.dtype)


# Soft Dice and Jaccard add this to numerator and denominator. Per image, an empty mask then scores
# 1 / (1 + predicted mass): about 1 for an empty prediction, Kaggle's empty-on-empty rule, and any false positive costs.
# Without it (smp's DiceLoss, smooth=0) an empty mask gives 0 / mass, no gradient at all, which is why smp zeroes
# those channels, and a model learns nothing from the empty images that dominate Kaggle's per-image metric.
MASK_SMOOTH = 1.0


def _overlap(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Soft intersection sum(p t) and soft size sum(p) + sum(t) per image and class, (N, C) each."""
    p = torch.sigmoid(x)
    return (p * t).sum((2, 3)), (p + t).sum((2, 3))


def soft_dice_loss(x: Tensor, t: Tensor) -> Tensor:
    """1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s), the mean over classes: (N,) per image."""
    inter, size = _overlap(x, t)
    return 1 - ((2 * inter + MASK_SMOOTH) / (size + MASK_SMOOTH)).mean(1)


def soft_jaccard_loss(x: Tensor, t: Tensor) -> Tensor:
    """1 - (sum(p t) + s) / (sum(p) + sum(t) - sum(p t) + s), the mean over classes: (N,) per image."""
    inter, size = _overlap(x, t)
    return 1 - ((inter + MASK_SMOOTH) / (size - inter + MASK_SMOOTH)).mean(1)


def lovasz_hinge_loss(x: Tensor, t: Tensor) -> Tensor:
    """Berman et al.'s Lovasz hinge per image and class (the convex surrogate of 1 - IoU: hinge errors sorted
    in decreasing order, weighted by the gradient of the Jaccard loss), the mean over classes: (N,) per image.
    smp's LovaszLoss(per_image=True) mixes an image's classes into one ranking; this ranks each class alone and is
    vectorised over all image x class pairs (one sort), with the same value as smp's `_lovasz_hinge_flat` per pair."""
    n, c = x.shape[:2]
    x, t = x.reshape(n * c, -1), t.reshape(n * c, -1)
    errors = 1 - x * (2 * t - 1)
    errors, order = errors.sort(dim=1, descending=True)
    gt = t.gather(1, order)
    total = gt.sum(1, keepdim=True)
    jaccard = 1 - (total - gt.cumsum(1)) / (total + (1 - gt).cumsum(1))  # the union is >= 1 from the first pixel
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors) * grad).sum(1).reshape(n, c).mean(1)


_MASK_PARTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "bce": lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none").flatten(1).mean(1),
    "dice": soft_dice_loss,
    "jaccard": soft_jaccard_loss,
    "lovasz": lovasz_hinge_loss,
}


class MaskLoss(nn.Module):
    """The sum of segmentation losses, each computed per image ((N,) values) and averaged over images with the sample
    weights: bce (the mean over pixels), dice, jaccard, lovasz (the mean over classes)."""

    def __init__(self, parts: tuple[str, ...]):
        super().__init__()
        self.parts = parts

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        x, t = mask_inputs(logits, target)
        per = sum(_MASK_PARTS[part](x, t) for part in self.parts)
        return _weighted_mean(per, torch.ones_like(per), sample_weight)


_DEFAULT = {"multiclass": "ce", "binary": "bce", "multilabel": "bce", "regression": "mse", "segmentation": "bce_dice"}
OPTIONS = ("label_smoothing", "class_weight", "pos_weight")  # config keys a loss may or may not honour
PIXEL_PRIOR_MIN = 1e-4  # the smallest pixel fraction a segmentation head starts at (logit -9.2)


@dataclass(frozen=True)
class LossWeights:
    """What `loss.class_weight` and `loss.pos_weight` turn into, for the factories."""

    class_weight: Tensor | None = None  # (C,) multiclass
    pos: Tensor | None = None  # (L,) sigmoid tasks: weight of the positive term
    neg: Tensor | None = None  # (L,) sigmoid tasks: weight of the negative term


LossFactory = Callable[["LossConfig", str, LossWeights], nn.Module]
# Each entry's metadata: `tasks` it supports, `options` (of OPTIONS) it honours; for segmentation `pixel_options`
# (default: `options`), since class and positive weights are per-label tensors that a pixel loss does not take; and
# `pixel_prior`: whether its best constant output is the pixel log-odds (losses with a BCE term; see prior_logits).
LOSSES: Registry[LossFactory] = Registry("loss")


def list_losses(task: str | None = None) -> list[str]:
    """All loss names, or those that support `task`."""
    return LOSSES.names(lambda meta: task is None or task in meta["tasks"])


def default_loss(task: str) -> str:
    """The task's usual loss, what `loss.name: auto` means."""
    if task not in _DEFAULT:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return _DEFAULT[task]


def resolve_loss(cfg_loss: LossConfig, task: str) -> str:
    return default_loss(task) if cfg_loss.name == "auto" else cfg_loss.name


def build_loss(
    cfg_loss: LossConfig,
    task: str,
    num_outputs: int,
    class_counts: np.ndarray | None = None,
    target_scale: TargetScale | None = None,
) -> nn.Module:
    """The loss named by `cfg_loss.name`. `class_counts` (data.tables.class_counts of the training rows) is needed
    for `class_weight: balanced`; regression targets are standardised with `target_scale` before the loss."""
    check_options(cfg_loss, task)
    factory = LOSSES.get(resolve_loss(cfg_loss, task))
    loss = factory(cfg_loss, task, _weights(cfg_loss, task, num_outputs, class_counts))
    return StandardizedTarget(loss, target_scale) if task == "regression" and target_scale is not None else loss


def prior_logits(cfg_loss: LossConfig, task: str, num_outputs: int, class_counts: np.ndarray | None) -> Tensor:
    """The logits of the best constant prediction under this loss for targets with these class counts (those of
    the fold's training rows): where the head starts (train.setup_fold), so the first loss is the prior's entropy
    and no epoch is spent learning the bias. Multiclass: the log class frequencies; binary and multilabel: each
    label's log-odds; both weighted as the loss weighs classes (class_weight, pos_weight) and smoothed as it smooths
    targets (so `balanced` starts uniform). Regression: 0, the mean of standardised targets. A class the training
    rows lack counts as half a row (a finite logit).

    Segmentation: `class_counts` is each class's mean pixel fraction over the training masks ((C,) floats in [0, 1],
    not counts); losses with a BCE term (bce, focal, bce_dice) start at its smoothed log-odds, clipped to
    [PIXEL_PRIOR_MIN, 1 - PIXEL_PRIOR_MIN] so that a class with hardly any pixels still gets a gradient; the
    region losses (dice, jaccard, lovasz) have no such optimum and start at 0, where their gradient is largest."""
    if task == "regression" or class_counts is None:
        return torch.zeros(num_outputs)
    if task in PIXEL_TASKS:
        frac = np.asarray(class_counts, dtype=np.float64).reshape(-1)
        if frac.shape != (num_outputs,) or not ((frac >= 0) & (frac <= 1)).all():
            raise ValueError(f"segmentation class_counts must be {num_outputs} pixel fractions in [0, 1], got {frac}")
        if not LOSSES.meta(resolve_loss(cfg_loss, task)).get("pixel_prior", False):
            return torch.zeros(num_outputs)
        eps = cfg_loss.label_smoothing
        p = np.clip(frac * (1 - eps) + eps / 2, PIXEL_PRIOR_MIN, 1 - PIXEL_PRIOR_MIN)
        return torch.tensor(np.log(p) - np.log1p(-p), dtype=torch.float32)
    w = _weights(cfg_loss, task, num_outputs, class_counts)
    eps = cfg_loss.label_smoothing
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 0.5)
    if task == "multiclass":
        p = counts / counts.sum()
        p = p * (1 - eps) + eps / len(p)  # the mean smoothed target
        if w.class_weight is not None:
            p = p * w.class_weight.double().numpy()
        return torch.tensor(np.log(p / p.sum()), dtype=torch.float32)
    counts = counts.reshape(2, -1)
    p = counts[1] / counts.sum(0)
    p = p * (1 - eps) + eps / 2
    pos = p * (1.0 if w.pos is None else w.pos.double().numpy())
    neg = (1 - p) * (1.0 if w.neg is None else w.neg.double().numpy())
    return torch.tensor(np.log(pos) - np.log(neg), dtype=torch.float32)


def check_options(cfg: LossConfig, task: str) -> None:
    """The loss exists for the task, and every option set is one it honours (run at config load)."""
    name = resolve_loss(cfg, task)
    meta = LOSSES.meta(name)
    honoured = meta.get("pixel_options", meta["options"]) if task in PIXEL_TASKS else meta["options"]
    if task not in meta["tasks"]:
        raise UserError(
            f"config key 'loss.name': loss {name!r} does not support task {task!r} (it supports: "
            f"{', '.join(meta['tasks'])}); losses for {task}: {', '.join(list_losses(task))}"
        )
    is_set = {"label_smoothing": cfg.label_smoothing != 0, "class_weight": cfg.class_weight != "none"}
    is_set["pos_weight"] = cfg.pos_weight is not None
    for key, on in is_set.items():
        if on and key not in honoured:
            where = f" for task {task}" if task in PIXEL_TASKS and key in meta["options"] else ""
            raise UserError(
                f"config key 'loss.{key}' is not used by loss {name!r}{where}; unset it or pick another loss"
            )
    if cfg.pos_weight is not None and task not in SIGMOID_TASKS:
        raise UserError(f"config key 'loss.pos_weight' applies to binary/multilabel tasks, not {task}")
    if cfg.pos_weight is not None and cfg.pos_weight <= 0:
        raise UserError(f"config key 'loss.pos_weight' is {cfg.pos_weight}; expected > 0")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"config key 'loss.label_smoothing' is {cfg.label_smoothing}; expected 0 <= value < 1")
    if name == "focal" and cfg.focal_gamma < 0:
        raise UserError(f"config key 'loss.focal_gamma' is {cfg.focal_gamma}; expected >= 0")
    if name == "huber" and cfg.huber_delta <= 0:
        raise UserError(f"config key 'loss.huber_delta' is {cfg.huber_delta}; expected > 0")


def _weights(cfg: LossConfig, task: str, num_outputs: int, counts: np.ndarray | None) -> LossWeights:
    """class_weight=balanced: weight n / (k * count) per class (k classes; k = 2 per sigmoid output)."""
    balanced = None
    if cfg.class_weight == "balanced":
        if counts is None:
            raise ValueError("loss.class_weight=balanced needs class_counts (see data.tables.class_counts)")
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


@LOSSES.register("ce", tasks=("multiclass",), options=("label_smoothing", "class_weight"))
def _ce(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return SoftmaxLoss(cfg.label_smoothing, w.class_weight)


@LOSSES.register("soft_ce", tasks=("multiclass",), options=("label_smoothing", "class_weight"))
def _soft_ce(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return SoftmaxLoss(cfg.label_smoothing, w.class_weight)  # the same formula: ce takes soft targets too


@LOSSES.register(
    "bce", tasks=(*SIGMOID_TASKS, *PIXEL_TASKS), options=OPTIONS, pixel_options=("label_smoothing",), pixel_prior=True
)
def _bce(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return SigmoidLoss(cfg.label_smoothing, w.pos, w.neg)


@LOSSES.register(
    "focal",
    tasks=("multiclass", *SIGMOID_TASKS, *PIXEL_TASKS),
    options=OPTIONS,
    pixel_options=("label_smoothing",),
    pixel_prior=True,
)
def _focal(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    if task == "multiclass":
        return SoftmaxLoss(cfg.label_smoothing, w.class_weight, gamma=cfg.focal_gamma)
    return SigmoidLoss(cfg.label_smoothing, w.pos, w.neg, gamma=cfg.focal_gamma)


@LOSSES.register("soft_f1", tasks=SIGMOID_TASKS, options=())
def _soft_f1(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return SoftF1Loss()


@LOSSES.register("bce_dice", tasks=PIXEL_TASKS, options=(), pixel_prior=True)
def _bce_dice(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    """BCE + soft Dice with equal weight, the usual Kaggle segmentation loss: BCE learns every pixel (and the empty
    masks), Dice the overlap of small objects, which BCE's mean over pixels barely sees."""
    return MaskLoss(("bce", "dice"))


@LOSSES.register("dice", tasks=PIXEL_TASKS, options=())
def _dice(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return MaskLoss(("dice",))


@LOSSES.register("jaccard", tasks=PIXEL_TASKS, options=())
def _jaccard(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return MaskLoss(("jaccard",))


@LOSSES.register("lovasz", tasks=PIXEL_TASKS, options=())
def _lovasz(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    """Lovasz hinge, the IoU surrogate; often a fine-tuning loss after bce_dice (it starts slowly from scratch)."""
    return MaskLoss(("lovasz",))


@LOSSES.register("mse", tasks=("regression",), options=())
def _mse(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return RegressionLoss("mse")


@LOSSES.register("l1", tasks=("regression",), options=())
def _l1(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return RegressionLoss("l1")


@LOSSES.register("huber", tasks=("regression",), options=())
def _huber(cfg: LossConfig, task: str, w: LossWeights) -> nn.Module:
    return RegressionLoss("huber", cfg.huber_delta)


# --- distillation ----------------------------------------------------------------------------------------------------


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, task: str, temperature: float = 1.0) -> Tensor:
    """Hinton's soft-target loss at temperature T (teacher detached): multiclass T^2 KL(p_t || p_s) per row;
    binary/multilabel T^2 BCE(s/T, sigmoid(t/T)), the sigmoid analogue (per pixel for segmentation, whose maps are
    sigmoids too); regression MSE(s, t)."""
    if temperature <= 0:
        raise UserError(f"config key 'distill.temperature' is {temperature}; expected > 0")
    s, t, temp = upcast(student_logits), upcast(teacher_logits.detach()), float(temperature)
    if task == "multiclass":
        log_ps, log_pt = (s / temp).log_softmax(1), (t / temp).log_softmax(1)
        return temp**2 * F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")
    if task in SIGMOID_TASKS or task in PIXEL_TASKS:
        x, soft = sigmoid_inputs(s, t)
        return temp**2 * F.binary_cross_entropy_with_logits(x / temp, torch.sigmoid(soft / temp))
    if task == "regression":
        x, y = column_inputs(s, t)
        return F.mse_loss(x, y)
    raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
