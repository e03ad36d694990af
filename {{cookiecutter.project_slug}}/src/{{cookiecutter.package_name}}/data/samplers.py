"""Class-balancing samplers for the training loader: weighted random sampling and up / down-sampling.

`labels` holds one entry per training row: a class id (1-D), or a row of 0/1 tags (2-D, multilabel). Our own
BalanceClassSampler replaces Catalyst's, which fails on torch >= 2.14.

Multilabel rows share tags, so "balancing" there means lifting the rare tags UP, never drawing a tag's rows less
often than plain shuffling does: `weighted` draws each row `multilabel_weights` times per epoch on average (>= 1,
the epoch grows); `upsample` groups rows by their rarest tag and repeats every group to the largest one.

Every sampler (and the plain ShuffleSampler) draws epoch k from (seed, k) only, after `set_epoch(k)`; train passes
seed + fold, and its loader's set_epoch reaches the sampler. A resumed fold so draws what the uninterrupted run drew.
"""

from __future__ import annotations

import math
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
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise UserError(f"sampler labels must be a non-empty 1-D array of class ids (or 2-D 0/1 tags), got shape "
                        f"{arr.shape}")  # fmt: skip
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"sampler labels must be integer class ids (or 0/1 tags), got dtype {arr.dtype}")
    if arr.ndim == 2 and not np.isin(arr, (0, 1)).all():
        raise UserError("2-D sampler labels must be 0/1 tags (one row per sample, one column per tag)")
    return arr


def _with_untagged(tags: np.ndarray) -> np.ndarray:
    """Multi-hot rows + one column marking the rows without any tag (a group of their own)."""
    return np.column_stack([tags, tags.sum(1) == 0]).astype(bool)


def rarest_tag(tags: np.ndarray) -> np.ndarray:
    """Multi-hot rows -> each row's rarest tag (ties: the lower column), the class ids that up / down-sampling
    balance; rows without a tag get id = the number of tags."""
    tagged = _with_untagged(_as_labels(tags))
    freq = tagged.sum(0).astype(np.float64)
    return np.where(tagged, freq[None, :], np.inf).argmin(1).astype(np.int64)


def multilabel_weights(tags: np.ndarray, power: float = 1.0) -> np.ndarray:
    """How many times per epoch each multilabel row is drawn on average: the largest (n_max / n_t) ** power over
    its tags t (n_t rows carry tag t, n_max the most common tag; untagged rows count as one more tag). Every row
    gets >= 1, so every tag's rows are drawn at least as often as without sampling, and at power 1 the rarest
    tag's rows as often as the most common tag's."""
    tagged = _with_untagged(_as_labels(tags))
    freq = tagged.sum(0).astype(np.float64)
    lift = np.where(freq > 0, (freq.max() / np.maximum(freq, 1)) ** power, 0.0)
    return np.where(tagged, lift[None, :], 0.0).max(1)


def class_weights_for_sampling(labels: Sequence[int] | np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-sample weight 1 / count(class) ** power: power 1 balances classes, 0 is uniform, 0.5 is in between."""
    arr = _as_labels(labels)
    if arr.ndim != 1:
        raise UserError(f"class weights need 1-D class ids, got shape {arr.shape} (tags: multilabel_weights)")
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


class WeightedSampler(WeightedRandomSampler):
    """torch's WeightedRandomSampler (`weights`, `num_samples`, with replacement) whose draw depends only on
    (seed, epoch): call `set_epoch` before each epoch. A generator carried over from epoch to epoch would make
    epoch k's draw depend on how many epochs this process ran before it, and a resumed fold would replay epoch 0."""

    def __init__(self, weights: Sequence[float] | np.ndarray, num_samples: int, seed: int = 0) -> None:
        super().__init__(torch.as_tensor(np.asarray(weights), dtype=torch.double), num_samples, replacement=True)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        p = self.weights.numpy() / self.weights.sum().item()
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(rng.choice(len(p), self.num_samples, replace=True, p=p).tolist())


@SAMPLERS.register("none")
def _none(labels: np.ndarray, power: float, seed: int) -> None:
    return None


@SAMPLERS.register("weighted")
def _weighted(labels: np.ndarray, power: float, seed: int) -> Sampler[int]:
    """Classes: weight 1 / count ** power over an epoch of the same length. Tags (2-D): `multilabel_weights`
    expected draws per row, the epoch as long as their sum."""
    if labels.ndim == 2:
        expected = multilabel_weights(labels, power)
        n = math.ceil(expected.sum() - 1e-9)
    else:
        expected, n = class_weights_for_sampling(labels, power), len(labels)
    return WeightedSampler(expected, n, seed)


@SAMPLERS.register("upsample")
def _upsample(labels: np.ndarray, power: float, seed: int) -> Sampler[int]:
    return BalanceClassSampler(rarest_tag(labels) if labels.ndim == 2 else labels, "upsample", seed)


@SAMPLERS.register("downsample")
def _downsample(labels: np.ndarray, power: float, seed: int) -> Sampler[int]:
    return BalanceClassSampler(rarest_tag(labels) if labels.ndim == 2 else labels, "downsample", seed)


def build_sampler(
    labels: Sequence[int] | np.ndarray, mode: str, power: float = 1.0, seed: int = 0
) -> Sampler[int] | None:
    """The training sampler for `train.sampler` (None: plain shuffling). Unknown mode -> UserError. Every sampler
    draws epoch k from (seed, k) only, once `set_epoch(k)` has run: the loader's set_epoch reaches it, so a resumed
    fold draws what the uninterrupted run drew (`seed` already holds the fold: train passes seed + fold)."""
    sampler = SAMPLERS.get(mode)(_as_labels(labels), power, seed)
    if sampler is not None and not callable(getattr(sampler, "set_epoch", None)):
        # Its draw would depend on how many epochs the process ran: a resumed fold would not continue the run.
        raise TypeError(f"sampler {mode!r} ({type(sampler).__name__}) has no set_epoch(epoch)")
    return sampler
