"""Weight averaging, collected while a fold trains and compared with the best epoch when it ends.

swa         `train.swa`: stochastic weight averaging (Izmailov et al. 2018) with torch.optim.swa_utils.AveragedModel:
            the equal average of the trained weights at the end of each epoch from `train.swa_start` (a fraction
            of the epochs) on. The one-cycle schedule's own tail supplies the low learning rates SWA averages over
            (no SWALR: the loop's scheduler stays one schedule, resumable from last.pt).
avg_best_k  `train.avg_best_k`: the average of the K best epochs' weights (the weights each epoch would have
            saved as best.pt: raw or EMA, whichever scored better).
snapshot    `optim.schedule: cosine_restarts` (SGDR, two cycles or more): snapshot ensembling (Huang et al. 2017) with
            the trained weights at the end of each cycle (at the update where the LR reaches its floor, mid-epoch if
            need be), kept as their running mean. The snapshots become one set of weights rather than a mean of
            their predictions: that is what every later stage takes (one best.pt per fold: predict, export, the
            offline notebook, serve), and snapshots of one fine-tuning run stay in one basin, where the average of
            weights collected at the low-LR ends of cyclic-LR cycles is SWA's own recipe (Izmailov et al. 2018 match
            the ensemble of such snapshots with it at the cost of one model).

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

VARIANTS = ("swa", "avg_best_k", "snapshot")  # compared with "best", the best epoch's weights


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

    def __init__(self, model: nn.Module, swa_from: int | None, best_k: int, metric: Metric,
                 snapshot_at: tuple[int, ...] | list[int] = ()) -> None:  # fmt: skip
        self.swa_from = swa_from  # None: SWA off
        self.swa = AveragedModel(model) if swa_from is not None else None
        self.best_k, self.metric = best_k, metric  # the metric that ranks the epochs
        self.top: list[dict] = []  # [{"score", "epoch", "weights"}], best first, at most best_k
        self.snapshot_at = tuple(snapshot_at)  # update counts after which a snapshot is taken (none: off)
        self.snapshot: dict[str, torch.Tensor] | None = None  # the running mean of the snapshots so far
        self.snapshot_taken: list[int] = []  # the update counts they were taken at

    @property
    def active(self) -> bool:
        """Whether anything is collected (then the fold compares the averages with its best epoch)."""
        return self.swa is not None or self.best_k > 0 or bool(self.snapshot_at)

    def after_update(self, update: int, trained: nn.Module) -> None:
        """Called after each optimizer update (`update` counts them from 1): the weights at a cycle's end join the
        snapshots' running mean (floating tensors; integer buffers are kept from the first snapshot)."""
        if update not in self.snapshot_at or update in self.snapshot_taken:
            return
        state = {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}
        n = len(self.snapshot_taken)
        if self.snapshot is None:
            self.snapshot = state
        else:
            for key, value in state.items():
                if torch.is_floating_point(value):
                    mean = self.snapshot[key].float()
                    self.snapshot[key] = (mean + (value.float() - mean) / (n + 1)).to(value.dtype)
        self.snapshot_taken.append(update)

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
        if self.snapshot is not None and len(self.snapshot_taken) >= 2:
            out["snapshot"] = {k: v.clone() for k, v in self.snapshot.items()}
        return out

    def describe(self) -> dict:
        """What each average is made of (for the fold's averaging.json)."""
        info: dict = {}
        if self.swa is not None:
            info["swa"] = {"from_epoch": self.swa_from + 1, "n_averaged": int(self.swa.n_averaged)}
        if self.best_k:
            info["avg_best_k"] = {"epochs": [e["epoch"] for e in self.top], "scores": [e["score"] for e in self.top]}
        if self.snapshot_at:
            info["snapshot"] = {"cycle_ends": list(self.snapshot_at), "taken_at": list(self.snapshot_taken),
                                "n_averaged": len(self.snapshot_taken)}  # fmt: skip
        return info

    def state_dict(self) -> dict:
        return {"swa": None if self.swa is None else self.swa.state_dict(), "top": self.top,
                "snapshot": self.snapshot, "snapshot_taken": self.snapshot_taken}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if self.swa is not None and state.get("swa") is not None:
            self.swa.load_state_dict(state["swa"])
        self.top = list(state.get("top", []))
        self.snapshot = state.get("snapshot")
        self.snapshot_taken = list(state.get("snapshot_taken", []))


def recompute_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """BatchNorm running statistics of `model` from one pass over `inputs` (swa_utils.update_bn); a model without
    BatchNorm is left as it is."""
    update_bn(inputs, model)
