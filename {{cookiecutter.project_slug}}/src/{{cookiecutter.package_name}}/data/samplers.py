"""Class-balancing samplers for the training loader: weighted random sampling and up / down-sampling.

`labels` is a 1-D array of class ids, one per training row (the caller maps multilabel rows to their rarest
positive label). Our own BalanceClassSampler replaces Catalyst's, which fails on torch >= 2.14.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

from ..core.errors import UserError
from ..core.registry import Registry
from .tables import class_counts

SamplerFactory = Callable[[np.ndarray, float, int], "Sampler[int] | None"]
SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


def list_samplers() -> list[str]:
    return SAMPLERS.names()


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise UserError(f"sampler labels must be a non-empty 1-D array of class ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"sampler labels must be integer class ids, got dtype {arr.dtype}")
    return arr


def class_weights_for_sampling(labels: Sequence[int] | np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-sample weight 1 / count(class) ** power: power 1 balances classes, 0 is uniform, 0.5 is in between."""
    arr = _as_labels(labels)
    counts = class_counts(arr, "multiclass", int(arr.max()) + 1)
    return 1.0 / counts[arr] ** power


class BalanceClassSampler(Sampler[int]):
    """Every class drawn the same number of times per epoch.

    upsample: each class to the size of the largest one. A smaller class is repeated whole as often as it fits,
              and the remainder drawn without replacement, so every sample appears at least once.
    downsample: each class to the size of the smallest one, drawn without replacement.
    The draw is shuffled and depends only on (seed, epoch): call `set_epoch` before each epoch for a new one.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, mode: str = "upsample", seed: int = 0) -> None:
        super().__init__()
        if mode not in ("upsample", "downsample"):
            raise UserError(f"BalanceClassSampler mode is {mode!r}; expected 'upsample' or 'downsample'")
        arr = _as_labels(labels)
        self.mode = mode
        self.seed = seed
        self.epoch = 0
        self.class_indices = [np.flatnonzero(arr == c) for c in np.unique(arr)]
        sizes = [len(idx) for idx in self.class_indices]
        self.per_class = max(sizes) if mode == "upsample" else min(sizes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.class_indices) * self.per_class

    def _draw_class(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.mode == "downsample":
            return rng.choice(idx, self.per_class, replace=False)
        whole, rest = divmod(self.per_class, len(idx))
        parts = [rng.permutation(idx) for _ in range(whole)]
        parts.append(rng.choice(idx, rest, replace=False))
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = np.concatenate([self._draw_class(idx, rng) for idx in self.class_indices])
        return iter(rng.permutation(drawn).tolist())


class ShuffleSampler(Sampler[int]):
    """Plain shuffling whose order depends only on (seed, epoch): call `set_epoch` before each epoch. torch's
    RandomSampler draws from the loader's generator, which the loader also draws its workers' seeds from, once
    per epoch without persistent workers and once per run with them: the order would depend on num_workers."""

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__()
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())


@SAMPLERS.register("none")
def _none(labels: np.ndarray, power: float, seed: int) -> None:
    return None


@SAMPLERS.register("weighted")
def _weighted(labels: np.ndarray, power: float, seed: int) -> Sampler[int]:
    weights = torch.as_tensor(class_weights_for_sampling(labels, power), dtype=torch.double)
    # One generator for the whole run: each epoch continues its stream, so epochs differ yet runs repeat.
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)


@SAMPLERS.register("upsample")
def _upsample(labels: np.ndarray, power: float, seed: int) -> Sampler[int]:
    return BalanceClassSampler(labels, "upsample", seed)


@SAMPLERS.register("downsample")
def _downsample(labels: np.ndarray, power: float, seed: int) -> Sampler[int]:
    return BalanceClassSampler(labels, "downsample", seed)


def build_sampler(
    labels: Sequence[int] | np.ndarray, mode: str, power: float = 1.0, seed: int = 0
) -> Sampler[int] | None:
    """The training sampler for `train.sampler` (None: plain shuffling). Unknown mode -> UserError."""
    factory = SAMPLERS.get(mode)
    return factory(_as_labels(labels), power, seed)
