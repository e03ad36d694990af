"""The task types every stage handles, and what follows from a task alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

TASKS = ("multiclass", "binary", "multilabel", "regression", "segmentation")
SIGMOID_TASKS = ("binary", "multilabel")  # independent sigmoid outputs, labels by a threshold
# One mask per class, (N, C, H, W): independent sigmoid maps (exclusive classes too: the submission keeps one class
# per pixel), an smp decoder around the timm backbone, predictions stored as arrays (npz), submitted as RLE.
PIXEL_TASKS = ("segmentation",)
CLASSIFICATION_TASKS = ("multiclass", "binary", "multilabel")  # predictions are probabilities
SINGLE_OUTPUT_TASKS = ("binary", "regression")  # one output, one prediction column: (N,) arrays in the metrics


def num_outputs(task: str, n_classes: int) -> int:
    """Logits per image: one per class (multiclass) or label (multilabel), one for binary and regression."""
    return 1 if task in SINGLE_OUTPUT_TASKS else n_classes


@dataclass(frozen=True)
class TargetScale:
    """Regression targets in the model's units: standardised with the mean and std of a fold's TRAINING rows, so
    the model learns values of unit scale around 0 (where its head starts) whatever the target's units.

    The loss sees `standardize(target)`; `invert(output)` turns outputs back into target values, and it is the
    only way outputs become values (predict.activate). Each fold's best.pt carries its own scale (`to_dict`), so
    predict, the offline notebook and teachers invert exactly as training standardised. The identity (0, 1) is
    what a checkpoint without one, and every other task, gets."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, y: Any) -> TargetScale:
        y = np.asarray(y, dtype=np.float64)
        mean, std = float(y.mean()), float(y.std())
        return cls(mean, std if math.isfinite(std) and std > 0 else 1.0)  # a constant target: shift only

    @classmethod
    def from_dict(cls, d: dict | None) -> TargetScale:
        return cls(float(d["mean"]), float(d["std"])) if d else cls()

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    def standardize(self, y: Any) -> Any:
        return (y - self.mean) / self.std

    def invert(self, out: Any) -> Any:
        return out * self.std + self.mean
