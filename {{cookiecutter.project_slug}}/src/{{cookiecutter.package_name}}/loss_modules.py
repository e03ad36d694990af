"""The loss modules behind the `losses` registry: softmax, sigmoid, regression and soft-F1 losses.

Each is an nn.Module with forward(logits, target, sample_weight=None) -> scalar, taking the model's logits as they
come and the task's hard or soft targets (see losses.py). Half-precision logits are computed in float32: log-softmax
and focal powers lose too much in fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    """Binary cross-entropy (binary, multilabel) with label smoothing (t' = t (1 - eps) + eps / 2), positive and
    negative weights a, b and a focal factor: -(a t' log s(x) + b (1 - t') log s(-x)) (1 - p_t)^gamma,
    p_t = s(x) t' + s(-x) (1 - t'); the mean over labels, then over rows."""

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
        return _weighted_mean(per.mean(1), torch.ones_like(x[:, 0]), sample_weight)


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


class SoftF1Loss(nn.Module):
    """1 - soft F1 (probabilities in place of 0/1 predictions), macro over labels: optimises F1 directly.
    It is a batch statistic, so small batches make it noisy."""

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        x, t = sigmoid_inputs(logits, target)
        p = torch.sigmoid(x)
        s = 1.0 if sample_weight is None else sample_weight.to(x.dtype).reshape(-1, 1)
        tp, fp, fn = (s * p * t).sum(0), (s * p * (1 - t)).sum(0), (s * (1 - p) * t).sum(0)
        return 1 - (2 * tp / (2 * tp + fp + fn + 1e-7)).mean()
