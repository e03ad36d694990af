"""Weight averaging, collected while a fold trains and compared with the best epoch when it ends.

swa         `train.swa`: stochastic weight averaging (Izmailov et al. 2018) with torch.optim.swa_utils.AveragedModel:
            the equal average of the trained weights at the end of each epoch from `train.swa_start` (a fraction
            of the epochs) on. The one-cycle schedule's own tail supplies the low learning rates SWA averages over
            (no SWALR: the loop's scheduler stays one schedule, resumable from last.pt).
avg_best_k  `train.avg_best_k`: the average of the K best epochs' weights (the weights each epoch would have
            saved as best.pt: raw or EMA, whichever scored better).

Averaged weights match no epoch's BatchNorm statistics: `finish` recomputes them with swa_utils.update_bn on the
training images. Everything here lives in last.pt too (state_dict), so an interrupted fold resumes with it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from .metrics import Metric

VARIANTS = ("swa", "avg_best_k")  # compared with "best", the best epoch's weights


def swa_start_epoch(swa_start: float, epochs: int) -> int:
    """The first epoch (0-based) whose weights SWA averages: the last (1 - swa_start) of training, at least one."""
    return min(int(swa_start * epochs), epochs - 1)


def mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; integer buffers (BatchNorm's batch counter) from the first."""
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


class WeightAveraging:
    """`after_epoch` collects; `averaged()` returns name -> weights of what was collected (nothing when off)."""

    def __init__(self, model: nn.Module, swa_from: int | None, best_k: int, metric: Metric) -> None:
        self.swa_from = swa_from  # None: SWA off
        self.swa = AveragedModel(model) if swa_from is not None else None
        self.best_k, self.metric = best_k, metric  # the metric that ranks the epochs
        self.top: list[dict] = []  # [{"score", "epoch", "weights"}], best first, at most best_k

    def after_epoch(self, epoch: int, trained: nn.Module, kept: dict[str, torch.Tensor], score: float) -> None:
        """`trained`: the model as the optimiser left it (SWA's trajectory); `kept`: the epoch's best.pt candidate
        weights (on the CPU) with their validation `score`."""
        if self.swa is not None and epoch >= self.swa_from:
            self.swa.update_parameters(trained)
        if self.best_k and score == score:  # a NaN score (diverged) never counts among the best
            self.top.append({"score": score, "epoch": epoch + 1, "weights": copy.deepcopy(kept)})
            self.top.sort(key=lambda e: -self.metric.gain(e["score"]))
            del self.top[self.best_k :]

    def averaged(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        if self.swa is not None and int(self.swa.n_averaged) > 0:
            out["swa"] = {k: v.detach().cpu() for k, v in self.swa.module.state_dict().items()}
        if self.best_k and len(self.top) >= 2:
            out["avg_best_k"] = mean_state([e["weights"] for e in self.top])
        return out

    def describe(self) -> dict:
        """What each average is made of (for the fold's averaging.json)."""
        info: dict = {}
        if self.swa is not None:
            info["swa"] = {"from_epoch": self.swa_from + 1, "n_averaged": int(self.swa.n_averaged)}
        if self.best_k:
            info["avg_best_k"] = {"epochs": [e["epoch"] for e in self.top], "scores": [e["score"] for e in self.top]}
        return info

    def state_dict(self) -> dict:
        return {"swa": None if self.swa is None else self.swa.state_dict(), "top": self.top}

    def load_state_dict(self, state: dict) -> None:
        if self.swa is not None and state.get("swa") is not None:
            self.swa.load_state_dict(state["swa"])
        self.top = list(state.get("top", []))


def recompute_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """BatchNorm running statistics of `model` from one pass over `inputs` (swa_utils.update_bn); a model without
    BatchNorm is left as it is."""
    update_bn(inputs, model)
