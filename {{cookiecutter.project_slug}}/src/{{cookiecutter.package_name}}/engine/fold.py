"""Fold k's training set-up: its rows, model (head started at the prior), loss, mixup, the loaders that put
normalised batches on the device, all seeded from (seed, fold); and one supervised step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config
from ..core.errors import UserError
from ..core.runs import InitFrom
from ..core.runtime import (
    ShardedSampler,
    amp_dtype,
    compute_setup,
    per_rank_batch,
    seed_everything,
    use_channels_last,
    world_size,
)
from ..core.tasks import TargetScale, num_outputs
from ..data.augment import FOLD, MixBatch, Normalize, build_mixup, resolve_normalization
from ..data.images import DeviceLoader, make_loader, set_epoch
from ..data.problem import (
    FoldData,
    Problem,
    build_fold_data,
    fold_normalization,
    load_problem,
)
from ..data.samplers import ShuffleSampler, build_sampler
from ..modeling.losses import build_loss, prior_logits
from ..modeling.models import build_model, init_head
from .init_from import start_from

# the GPU to finish the queued steps, so reading every step would keep the GPU idle while the host launches the next
Step = Callable[[nn.Module, dict, nn.Module], dict[str, torch.Tensor]]


def supervised_step(model: nn.Module, batch: dict, criterion: nn.Module, mixer: MixBatch | None = None) -> dict:
    """One forward pass -> named losses; "loss" is what gets back-propagated, the rest is only logged."""
    x, y = batch["image"], batch["target"]
    if mixer is not None:
        x, y = mixer(x, y)
    return {"loss": criterion(model(x), y)}


@dataclass
class FoldSetup:
    problem: Problem
    data: FoldData
    model: nn.Module
    criterion: nn.Module
    mixer: MixBatch | None
    loader: DeviceLoader  # batches on the device, images normalised
    valid_loader: DeviceLoader
    n_batches: int  # training batches per epoch (train.limit_batches caps it)
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = full precision
    generator: torch.Generator  # seeds the loader's workers (the order: the samplers' (seed, epoch)); in last.pt
    target_scale: TargetScale | None = None  # regression: the fold's target standardisation (saved in best.pt)
    init: InitFrom | None = None  # model.init_from: the weights the fold started from (fold<k>/init_from.json)


def rank_batch_size(cfg: Config) -> int:
    """This process's share of the global `train.batch_size` (all of it without torchrun); mixup needs it even."""
    batch = per_rank_batch(cfg.train.batch_size)
    if (cfg.augment.mixup_alpha > 0 or cfg.augment.cutmix_alpha > 0) and batch % 2:
        per = f" per process ({world_size()} processes)" if world_size() > 1 else ""
        raise UserError(f"config key 'train.batch_size' gives {batch} rows{per}; mixup/cutmix need an even number")
    return batch


def train_loader(
    cfg: Config, fold: int, data: FoldData, generator: torch.Generator, workers: int, **to_device
) -> DeviceLoader:
    """Fold k's training batches, on the device (`to_device`: make_loader's device, normalize, channels_last). Under
    torchrun every rank draws the same order and keeps its own stride of it (ShardedSampler), batch_size / N rows a
    batch: the N ranks' batches together are one process's batches."""
    sampler = None
    if data.sampler_labels is not None:  # balance classes in training only; validation keeps its distribution
        sampler = build_sampler(data.sampler_labels, cfg.train.sampler, cfg.train.sampler_power, cfg.seed + fold)
    if world_size() > 1:
        sampler = ShardedSampler(sampler or ShuffleSampler(len(data.train), cfg.seed + fold))
    return make_loader(data.train, rank_batch_size(cfg), True, workers, **to_device, sampler=sampler,
                       batch_sampler=data.batch_sampler, seed=cfg.seed + fold, generator=generator)  # fmt: skip


def setup_fold(cfg: Config, fold: int, data: FoldData | None = None) -> FoldSetup:
    generator = seed_everything(cfg.seed + fold, cfg.train.deterministic)
    device, workers = compute_setup(cfg.device, cfg.threads, cfg.data.num_workers)
    rank_batch_size(cfg)
    problem = load_problem(cfg)  # tables, folds, and every image decoded once: bad input stops here
    n_rows = len(problem.rows(fold, valid=False))
    if data is None and n_rows < cfg.train.batch_size:
        raise UserError(f"config key 'train.batch_size' is {cfg.train.batch_size}, more than the {n_rows} training "
                        f"rows of fold {fold}; use at most {n_rows}")  # fmt: skip
    n_out = num_outputs(cfg.task, len(problem.classes))
    model = build_model(cfg, n_out).to(device)
    channels_last = use_channels_last(cfg.model.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    stats = fold_normalization(cfg, problem, fold) if cfg.augment.mean == FOLD else None
    normalize = Normalize(*resolve_normalization(cfg.augment, model, cfg.model.in_chans, stats)).to(device)
    data = data or build_fold_data(cfg, problem, fold)
    set_epoch(data.train, cfg.seed, fold, 0)  # seeded before any pass (lr-find iterates without epochs)
    to_device = {"device": device, "normalize": normalize, "channels_last": channels_last}
    loader = train_loader(cfg, fold, data, generator, workers, **to_device)
    n_batches = min(len(loader), cfg.train.limit_batches or len(loader))
    if n_batches == 0:
        raise UserError(f"fold {fold}: its {len(data.train)} training rows make no full batch of "
                        f"train.batch_size={cfg.train.batch_size}; lower train.batch_size")  # fmt: skip
    mixer = build_mixup(cfg.augment, cfg.task, n_out, cfg.loss.label_smoothing)
    # Mixup already smooths its soft targets: the loss must not smooth them a second time.
    loss_cfg = dataclasses.replace(cfg.loss, label_smoothing=0.0) if mixer else cfg.loss
    scale = problem.target_scale(fold, cfg.task)  # regression targets are learnt standardised
    criterion = build_loss(loss_cfg, cfg.task, n_out, data.class_counts, scale).to(device)
    # The logits start at the best constant prediction (the training rows' prior; regression: the mean), so the
    # first loss is the prior's entropy: no epoch goes into learning a bias, which with rare labels and a sigmoid
    # head starting at p = 0.5 cost more than the runs were long.
    start = prior_logits(cfg.loss, cfg.task, n_out, data.class_counts)
    if cfg.model.init_head == "prior" and not init_head(model, start):
        print(f"note: no output layer with a bias found in {cfg.model.backbone}'s head; model.init_head skipped")
    # model.init_from: the source's fold-k weights (its head too, unless init_from_head=reset); a resumed fold carries
    # on from its last.pt instead. Regression: the fold standardises its targets itself, as the source did.
    init = None
    if cfg.model.init_from is not None and not cfg.run.fold(fold).last.is_file():
        init = start_from(cfg, problem, fold, model)
    valid_loader = make_loader(data.valid, cfg.tta.batch_size, False, workers, **to_device)
    dtype = amp_dtype(cfg.train.amp, device)
    return FoldSetup(problem, data, model, criterion, mixer, loader, valid_loader, n_batches, device, dtype, generator,
                     scale, init)  # fmt: skip


def start_epoch(cfg: Config, s: FoldSetup, fold: int, epoch: int) -> None:
    """Epoch `epoch`'s order of the training rows and their augmentations: both from (seed, fold, epoch) only."""
    s.loader.set_epoch(epoch)
    set_epoch(s.data.train, cfg.seed, fold, epoch)
