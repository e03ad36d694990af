"""Samplers: exact per-class counts for up / down-sampling, seeded draws, weighted sampling balance, and multilabel
sampling that lifts rare tags up without drawing any tag less than plain shuffling does. Every sampler draws epoch k
from (seed, k) only, also through the training loader and under torchrun: what a resumed fold needs."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler, WeightedRandomSampler

from {{ cookiecutter.package_name }} import config
from {{ cookiecutter.package_name }}.config import CHOICES
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runtime import ShardedSampler
from {{ cookiecutter.package_name }}.data import samplers, tables
from {{ cookiecutter.package_name }}.data.augment import Normalize
from {{ cookiecutter.package_name }}.data.images import ImageDataset, make_loader
from {{ cookiecutter.package_name }}.data.problem import build_fold_data, load_problem
from {{ cookiecutter.package_name }}.engine.fold import train_loader

from conftest import small_config

# 3 classes of sizes 7, 2, 4 with non-contiguous ids and shuffled order
LABELS = np.array([5, 0, 5, 2, 5, 2, 5, 0, 5, 2, 5, 2, 5])


def test_samplers_match_config_choices():
    assert sorted(CHOICES["train.sampler"]) == samplers.list_samplers()


@pytest.mark.parametrize("mode", samplers.list_samplers())
def test_every_sampler_yields_valid_indices(mode):
    sampler = samplers.build_sampler(LABELS, mode, seed=3)
    if mode == "none":
        assert sampler is None
        return
    drawn = list(sampler)
    assert len(drawn) == len(sampler)
    assert all(isinstance(i, int) and 0 <= i < len(LABELS) for i in drawn)


@pytest.mark.parametrize(("mode", "per_class"), [("upsample", 7), ("downsample", 2)])
def test_balance_exact_counts(mode, per_class):
    sampler = samplers.build_sampler(LABELS, mode, seed=0)
    assert isinstance(sampler, samplers.BalanceClassSampler)
    assert len(sampler) == 3 * per_class
    for epoch in range(5):
        sampler.set_epoch(epoch)
        drawn = np.array(list(sampler))
        assert len(drawn) == 3 * per_class
        assert Counter(LABELS[drawn].tolist()) == {5: per_class, 0: per_class, 2: per_class}
        if mode == "upsample":  # every sample appears at least once
            assert set(drawn.tolist()) == set(range(len(LABELS)))
            # the 4-sample class drawn 7 times: each of its samples once or twice (whole copies + remainder)
            counts = Counter(drawn[LABELS[drawn] == 2].tolist())
            assert set(counts.values()) <= {1, 2}
        else:  # without replacement
            assert len(set(drawn.tolist())) == len(drawn)


def test_balance_deterministic_per_seed_and_epoch():
    def draw(seed, epoch):
        s = samplers.BalanceClassSampler(LABELS, "upsample", seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert draw(0, 0) == draw(0, 0)
    assert draw(0, 1) == draw(0, 1)
    assert draw(0, 0) != draw(0, 1)
    assert draw(0, 0) != draw(1, 0)


def test_balance_is_shuffled():
    labels = np.repeat([0, 1], 50)
    drawn = np.array(list(samplers.BalanceClassSampler(labels, "downsample")))
    # not grouped by class: the first half holds both classes
    assert set(labels[drawn[:50]].tolist()) == {0, 1}


def epoch_draw(sampler, epoch: int) -> np.ndarray:
    sampler.set_epoch(epoch)
    return np.fromiter(sampler, int)


def training_sampler(labels: np.ndarray, mode: str, seed: int):
    """What the training loader draws from for `train.sampler=mode`: the registry's sampler, or (none) shuffling."""
    return samplers.build_sampler(labels, mode, seed=seed) or samplers.ShuffleSampler(len(labels), seed)


# 1-D class ids (sizes 40, 15, 5) and 2-D tags: each sampler's two ways in
SEEDED_LABELS = {
    "classes": np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [40, 15, 5])),
    "tags": (np.random.default_rng(1).random((60, 3)) < [0.5, 0.2, 0.05]).astype(np.int64),
}


@pytest.mark.parametrize("kind", SEEDED_LABELS)
@pytest.mark.parametrize("mode", samplers.list_samplers())
def test_every_sampler_draws_from_seed_and_epoch_only(mode, kind):
    """Epoch k's indices depend on (seed, k) only, never on how many epochs the sampler ran before: a resumed fold
    (a fresh sampler set to epoch k) draws what the uninterrupted run drew at epoch k."""
    labels = SEEDED_LABELS[kind]
    fresh = {e: epoch_draw(training_sampler(labels, mode, seed=4), e) for e in range(3)}
    ran = training_sampler(labels, mode, seed=4)
    for epoch in range(3):  # epochs 0..2 in one process, each iterated twice (an lr-find pass, a re-iteration)
        first, again = epoch_draw(ran, epoch), np.fromiter(ran, int)
        assert np.array_equal(first, fresh[epoch]) and np.array_equal(again, fresh[epoch]), epoch
    assert np.array_equal(epoch_draw(training_sampler(labels, mode, seed=4), 2), fresh[2])  # built anew: the same
    assert all(len(d) and d.min() >= 0 and d.max() < len(labels) for d in fresh.values())
    for a, b in ((0, 1), (0, 2), (1, 2)):  # a new draw each epoch
        assert not np.array_equal(fresh[a], fresh[b]), (a, b)
    assert not np.array_equal(epoch_draw(training_sampler(labels, mode, seed=5), 0), fresh[0])  # seed (+ fold)


def test_a_sampler_without_set_epoch_is_refused(monkeypatch):
    monkeypatch.setitem(samplers.SAMPLERS._items, "plain", lambda labels, power, seed: SequentialSampler(labels))
    with pytest.raises(TypeError, match=r"'plain' .* no set_epoch"):
        samplers.build_sampler(LABELS, "plain")
    with pytest.raises(TypeError, match="set_epoch"):
        ShardedSampler(SequentialSampler(LABELS))
    loader = make_loader(ImageDataset([], None, None, 1), 2, False, 0, torch.device("cpu"), Normalize((0.5,), (0.5,)))
    with pytest.raises(TypeError, match="SequentialSampler has no set_epoch"):
        loader.set_epoch(1)  # an evaluation loader has no epochs


def test_weighted_sampler_balances_90_10():
    labels = np.array([0] * 900 + [1] * 100)
    sampler = samplers.build_sampler(labels, "weighted", power=1.0, seed=0)
    assert isinstance(sampler, WeightedRandomSampler)
    assert len(sampler) == len(labels)
    drawn = np.concatenate([epoch_draw(sampler, epoch) for epoch in range(20)])  # 20 epochs = 20,000 draws
    share = (labels[drawn] == 1).mean()
    # expected 0.5; sd of the share = sqrt(0.25 / 20000) = 0.0035, so 0.02 is ~6 sd while unweighted gives 0.1
    assert abs(share - 0.5) < 0.02
    again = np.fromiter(samplers.build_sampler(labels, "weighted", seed=0), int)
    assert np.array_equal(again, drawn[:1000])  # same seed, same first epoch
    assert len({tuple(drawn[i : i + 1000]) for i in range(0, 20000, 1000)}) == 20  # a new sample every epoch


def test_class_weights_formula():
    w = samplers.class_weights_for_sampling(LABELS, power=1.0)
    expected = np.array([1 / {5: 7, 0: 2, 2: 4}[c] for c in LABELS])
    np.testing.assert_allclose(w, expected)
    # each class carries the same total weight at power 1
    totals = np.bincount(LABELS, weights=w)[[0, 2, 5]]
    np.testing.assert_allclose(totals, 1.0)
    np.testing.assert_allclose(samplers.class_weights_for_sampling(LABELS, power=0.0), np.ones(len(LABELS)))
    np.testing.assert_allclose(samplers.class_weights_for_sampling(LABELS, power=0.5), np.sqrt(expected))


def test_bad_input():
    with pytest.raises(UserError, match="sampler"):
        samplers.build_sampler(LABELS, "oversample")
    with pytest.raises(UserError, match="1-D"):
        samplers.build_sampler(np.zeros((3, 2, 2), dtype=int), "upsample")
    with pytest.raises(UserError, match="0/1 tags"):
        samplers.build_sampler(np.full((3, 2), 2), "weighted")
    with pytest.raises(UserError, match="integer"):
        samplers.build_sampler(np.array([0.5, 1.0]), "weighted")


def imbalanced_tags(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Overlapping tags from common to rare (about 60%, 25%, 8%, 2% and 0.5% of the rows; some rows untagged)."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 5)) < np.array([0.6, 0.25, 0.08, 0.02, 0.005])).astype(np.int64)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_multilabel_weighted_sampling_lifts_rare_tags_up_never_down(power):
    y = imbalanced_tags()
    cfg = config.Config(exp="x", task="multilabel")
    tags = tables.stratify_labels(cfg, y.astype(np.float32))  # what training hands the sampler
    sampler = samplers.build_sampler(tags, "weighted", power=power, seed=0)
    assert isinstance(sampler, WeightedRandomSampler) and len(sampler) >= len(y)
    counts = y.sum(0)
    w = sampler.weights.numpy()
    expected = len(sampler) * (w[:, None] * y).sum(0) / w.sum()  # each tag's rows drawn per epoch, on average
    assert (expected >= counts).all(), (expected, counts)
    rarest, commonest = counts.argmin(), counts.argmax()
    assert expected[rarest] >= counts[commonest] ** power * counts[rarest] ** (1 - power) - 1e-6
    drawn = np.concatenate([epoch_draw(sampler, epoch) for epoch in range(10)])  # 10 epochs
    per_epoch = y[drawn].sum(0) / 10
    # each count is a sum of many draws: within 5% of its expectation, and no tag below its count
    np.testing.assert_allclose(per_epoch, expected, rtol=0.05)
    assert (per_epoch >= 0.95 * counts).all()
    untagged = np.flatnonzero(y.sum(1) == 0)
    assert len(untagged) and np.isin(untagged, drawn).any()  # rows without a tag stay in the draw


def test_multilabel_upsample_keeps_every_row_and_lifts_the_rarest_tag():
    y = imbalanced_tags(600)
    sampler = samplers.build_sampler(y, "upsample", seed=1)
    drawn = np.fromiter(sampler, int)
    assert set(drawn.tolist()) == set(range(len(y)))  # every row at least once: no tag drawn less than its count
    groups = samplers.rarest_tag(y)
    sizes = Counter(groups[drawn].tolist())
    assert len(set(sizes.values())) == 1  # each rarest-tag group drawn as often as the largest one holds rows
    assert y[drawn].sum(0)[4] >= max(Counter(groups.tolist()).values())  # so the rarest tag is lifted up to it


@pytest.mark.parametrize("sampler", ["none", "weighted"])
def test_torchrun_ranks_share_out_exactly_the_batches_of_one_process(small_project, monkeypatch, sampler):
    """train.batch_size is the global batch: under torchrun rank r takes batch_size / N rows of every batch, and
    batch b of all ranks together is batch b of one process (same rows, same order of batches, same count)."""
    cfg = small_config(small_project, overrides=[f"train.sampler={sampler}", "train.batch_size=8"])
    data = build_fold_data(cfg, load_problem(cfg), 0)
    to_device = {"device": torch.device("cpu"), "normalize": Normalize((0.5,), (0.5,))}

    def batches(world: int, rank: int) -> list[list[int]]:
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(rank))
        generator = torch.Generator()
        generator.manual_seed(cfg.seed)
        return [sorted(b["index"].tolist()) for b in train_loader(cfg, 0, data, generator, 0, **to_device)]

    one, rank0, rank1 = batches(1, 0), batches(2, 0), batches(2, 1)
    assert len(one) == len(rank0) == len(rank1) == len(data.train) // 8
    assert all(len(b) == 4 for b in rank0 + rank1)
    assert [sorted(a + b) for a, b in zip(rank0, rank1, strict=True)] == one
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match=r"'train.batch_size' is 8: under torchrun .* split across 3 processes"):
        train_loader(cfg, 0, data, torch.Generator(), 0, **to_device)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("sampler", samplers.list_samplers())
def test_a_fresh_training_loader_set_to_an_epoch_draws_that_epoch(small_project, monkeypatch, sampler, world):
    """The loader's set_epoch reaches every sampler (through ShardedSampler under torchrun): a loader built anew
    for a resumed fold and set to epoch 2 gives the batches that the loader which ran epochs 0 and 1 gives."""
    cfg = small_config(small_project, overrides=[f"train.sampler={sampler}", "train.batch_size=8"])
    data = build_fold_data(cfg, load_problem(cfg), 1)
    to_device = {"device": torch.device("cpu"), "normalize": Normalize((0.5,), (0.5,))}
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "0")

    def epochs(loader, which) -> list[list[list[int]]]:
        out = []
        for epoch in which:
            loader.set_epoch(epoch)
            out.append([b["index"].tolist() for b in loader])
        return out

    ran = epochs(train_loader(cfg, 1, data, torch.Generator().manual_seed(cfg.seed), 0, **to_device), range(3))
    resumed = epochs(train_loader(cfg, 1, data, torch.Generator().manual_seed(cfg.seed), 0, **to_device), [2])
    assert resumed[0] == ran[2] and ran[0] != ran[1] != ran[2]
