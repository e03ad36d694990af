"""Train one fold: a plain loop you can read top to bottom.

set up model, data, loss and mixup for fold k (`setup_fold`, shared with lr-find, pseudo and distill)
optimizer (Ranger by default) and schedule (one-cycle, stepped once per optimizer update)
resume from last.pt if a previous run was interrupted
each epoch: train (AMP, accumulation, clipping, EMA), evaluate raw and EMA weights (one pass), keep the better,
            write best.pt and last.pt atomically, stop early when the metric stalls
predict the validation rows with the best weights -> fold<k>/oof.csv

The data path runs at GPU speed: workers persist across epochs and send uint8 images, which are copied without
blocking and normalised on the device (data.images.DeviceLoader); the loop never waits for the GPU within an epoch
(the loss is summed on the device and read every LOG_EVERY steps).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from .config import Config, metric_name, save
from .core.runs import (
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    load_best,
    load_last,
    remove_stale_tmp,
    rng_state,
    save_last,
    set_rng_state,
)
from .core.runtime import (
    ShardedSampler,
    amp_dtype,
    autocast,
    barrier,
    compute_setup,
    init_distributed,
    is_main,
    seed_everything,
    sync_buffers,
    use_channels_last,
    world_size,
)
from .core.tasks import num_outputs
from .core.tracking import Tracker
from .data.augment import MixBatch, Normalize, build_mixup, resolve_normalization
from .data.images import DeviceLoader, make_loader, set_epoch
from .data.problem import FoldData, Problem, build_fold_data, load_problem, pred_frame, save_classes
from .data.samplers import build_sampler
from .modeling import metrics
from .modeling.losses import build_loss
from .modeling.models import build_model, checkpoint_state, set_backbone_trainable
from .modeling.optim import build_optimizer, build_scheduler, total_updates
from .predict import activate, predict_loader, predict_models

LOG_EVERY = 50  # steps between reads of the loss on the host (progress bar, non-finite check): each read waits for
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
    generator: torch.Generator  # drives shuffling; saved in last.pt so a resumed run draws the same batches


def setup_fold(cfg: Config, fold: int, data: FoldData | None = None) -> FoldSetup:
    generator = seed_everything(cfg.seed + fold, cfg.train.deterministic)
    device, workers = compute_setup(cfg.device, cfg.threads, cfg.data.num_workers)
    problem = load_problem(cfg)
    n_out = num_outputs(cfg.task, len(problem.classes))
    model = build_model(cfg, n_out).to(device)
    channels_last = use_channels_last(cfg.model.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalize(*resolve_normalization(cfg.augment, model, cfg.model.in_chans)).to(device)
    data = data or build_fold_data(cfg, problem, fold)
    set_epoch(data.train, cfg.seed, fold, 0)  # seeded before any pass (lr-find iterates without epochs)
    sampler = None
    if data.sampler_labels is not None:  # balance classes in training only; validation keeps its distribution
        sampler = build_sampler(data.sampler_labels, cfg.train.sampler, cfg.train.sampler_power, cfg.seed + fold)
    if world_size() > 1:  # each rank sees its own share of every epoch
        sampler = ShardedSampler(sampler, len(data.train)) if sampler else DistributedSampler(data.train, seed=cfg.seed)
    to_device = {"device": device, "normalize": normalize, "channels_last": channels_last}
    loader = make_loader(data.train, cfg.train.batch_size, True, workers, **to_device, sampler=sampler,
                         batch_sampler=data.batch_sampler, seed=cfg.seed + fold, generator=generator)  # fmt: skip
    n_batches = min(len(loader), cfg.train.limit_batches or len(loader))
    if n_batches == 0:
        raise ValueError(f"fold {fold}: {len(data.train)} training rows < train.batch_size={cfg.train.batch_size}")
    mixer = build_mixup(cfg.augment, cfg.task, n_out, cfg.loss.label_smoothing)
    # Mixup already smooths its soft targets: the loss must not smooth them a second time.
    loss_cfg = dataclasses.replace(cfg.loss, label_smoothing=0.0) if mixer else cfg.loss
    criterion = build_loss(loss_cfg, cfg.task, n_out, data.class_counts).to(device)
    valid_loader = make_loader(data.valid, cfg.tta.batch_size, False, workers, **to_device)
    dtype = amp_dtype(cfg.train.amp, device)
    return FoldSetup(problem, data, model, criterion, mixer, loader, valid_loader, n_batches, device, dtype, generator)


@dataclass
class FoldState:
    epoch: int = 0  # epochs completed
    best_score: float | None = None
    best_source: str = "model"
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def train_one_fold(cfg: Config, fold: int, data: FoldData | None = None, step: Step | None = None) -> dict:
    out = cfg.run.fold(fold)
    out.path.mkdir(parents=True, exist_ok=True)
    s = setup_fold(cfg, fold, data)
    if is_main():
        remove_stale_tmp(out.path)  # a killed checkpoint write leaves its temporary file behind
        save(cfg, cfg.run.config)  # the resolved config, before anything can go wrong
        save_classes(cfg, s.problem)
    model, metric = s.model, metrics.get_metric(metric_name(cfg))
    step = step or (lambda m, b, c: supervised_step(m, b, c, s.mixer))

    total_steps = total_updates(s.n_batches, cfg.optim.grad_accum, cfg.train.epochs)
    optimizer = build_optimizer(model, cfg.optim, total_steps, backbone_lr_mult=cfg.model.backbone_lr_mult)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    scaler = torch.amp.GradScaler(s.device.type, enabled=s.dtype == torch.float16)  # bf16 needs no loss scaling
    # EMA decay warms up from 0 towards train.ema_decay, so short runs average over a sensible window too.
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True) if cfg.train.ema else None
    train_model = DistributedDataParallel(model) if world_size() > 1 else model
    if cfg.model.compile:
        train_model = torch.compile(train_model)

    state = FoldState()
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "ema": ema}
    if out.last.exists():  # an interrupted run: carry on exactly where it stopped
        extra = load_last(out.last, **stateful)
        state = FoldState(**extra["state"])
        set_rng_state(extra["rng"], s.generator)
        print(f"fold {fold}: resuming after epoch {state.epoch}")

    tracker = Tracker(cfg, f"fold{fold}", f"fold{fold}")
    sign = 1.0 if metric.higher_is_better else -1.0
    for epoch in tqdm(range(state.epoch, cfg.train.epochs), desc=f"fold {fold}", disable=None):
        s.loader.set_epoch(epoch)  # the order of the rows
        set_epoch(s.data.train, cfg.seed, fold, epoch)  # and their augmentations: both from (seed, fold, epoch)
        t0 = time.perf_counter()
        train_loss = train_epoch(cfg, s, train_model, optimizer, scheduler, scaler, ema, step, epoch)
        seconds = time.perf_counter() - t0
        sync_buffers(model)

        # Evaluate the raw and the EMA weights, in one pass over the validation rows; the better of the two is kept.
        results = evaluate(cfg, s, {"model": model} | ({"ema": ema.module} if ema is not None else {}))
        source = max(results, key=lambda k: sign * results[k][1])
        valid_loss, score = results[source]
        if state.best_score is None or sign * score > sign * state.best_score:
            state.best_score, state.best_source, state.bad_epochs = score, source, 0
            if is_main():
                weights = checkpoint_state(ema.module if source == "ema" else model)
                best = {"model": weights, "epoch": epoch + 1, "score": score, "source": source}
                atomic_torch_save(out.best, best | {"classes": s.problem.classes})
        else:
            state.bad_epochs += 1
        speed = s.n_batches * cfg.train.batch_size / seconds
        row = {"epoch": epoch + 1, "train_loss": train_loss, "valid_loss": valid_loss, "score": score,
               "score_model": results["model"][1], "score_ema": results.get("ema", (0.0, None))[1],
               "lr": optimizer.param_groups[0]["lr"], "images_per_s": speed}  # fmt: skip
        state.history.append(row)
        state.epoch = epoch + 1
        tracker.log({k: v for k, v in row.items() if v is not None}, step=epoch + 1)
        print(f"fold {fold} epoch {epoch + 1}/{cfg.train.epochs} train_loss {train_loss:.4f} valid_loss "
              f"{valid_loss:.4f} {metric.name} {score:.5f} ({source}) {row['images_per_s']:.0f} img/s")  # fmt: skip
        if is_main():
            save_last(out.last, **stateful, state=dataclasses.asdict(state), rng=rng_state(s.generator))
        if cfg.train.early_stopping and state.bad_epochs >= cfg.train.early_stopping:
            print(f"fold {fold}: early stop, no improvement for {state.bad_epochs} epochs")
            break

    # Out-of-fold predictions of the best weights (rank 0's job; the others wait for its checkpoint, then leave).
    barrier()
    if not is_main():
        return {"fold": fold}
    model.load_state_dict(load_best(out.best)["model"])
    probs = predict_loader(model, s.valid_loader, cfg.task, s.device, s.dtype, desc=f"fold {fold} oof")
    final = metrics.score(metric.name, s.data.y_valid, probs, cfg.task)
    oof = pred_frame(s.data.valid_ids, probs, s.problem.classes, cfg.data.id_col)
    oof.insert(1, "fold", fold)
    atomic_write_json(out.history, state.history)
    atomic_write_csv(out.oof, oof)  # written last: its presence marks the fold as finished
    tracker.summary({"best_score": final, "best_source": state.best_source})
    tracker.finish()
    return {"fold": fold, "score": final, "history": state.history}


def train_epoch(cfg: Config, s: FoldSetup, model: nn.Module, optimizer, scheduler, scaler, ema, step: Step,
                epoch: int) -> float:  # fmt: skip
    """One pass over the training loader; returns the mean loss. The schedule steps once per optimizer update,
    so gradient accumulation and the last, partial group of batches are counted right."""
    model.train()
    # The first model.freeze_backbone_epochs train the head alone (after model.train(): frozen BatchNorm layers
    # go back to eval mode, so their running statistics stay those of the pretrained backbone).
    set_backbone_trainable(model, epoch >= cfg.model.freeze_backbone_epochs)
    accum, n_batches = cfg.optim.grad_accum, s.n_batches
    total = torch.zeros((), device=s.device)  # summed where the loss is: no wait for the GPU at each step
    seen = 0
    bar = tqdm(s.loader, total=n_batches, desc=f"epoch {epoch + 1}", leave=False, disable=None)
    for i, batch in enumerate(bar):  # batches arrive on the device, images normalised (DeviceLoader)
        if i >= n_batches:
            break
        with autocast(s.device, s.dtype):
            losses = step(model, batch, s.criterion)
        group = min(accum, n_batches - (i // accum) * accum)  # the last group may hold fewer batches
        scaler.scale(losses["loss"] / group).backward()
        if (i + 1) % accum == 0 or i + 1 == n_batches:
            if cfg.optim.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(getattr(model, "module", model), step=scheduler.last_epoch)
        total += losses["loss"].detach().float()
        seen += 1
        if seen % LOG_EVERY == 0 or i + 1 == n_batches:  # a non-finite loss makes the sum non-finite for good
            check_finite(float(total), epoch, i)
            bar.set_postfix({k: f"{float(v.detach()):.4f}" for k, v in losses.items()})
    return float(total) / max(seen, 1)


def check_finite(total: float, epoch: int, batch: int) -> None:
    if not math.isfinite(total):
        first = batch - (batch % LOG_EVERY)
        raise FloatingPointError(f"loss is {total} at epoch {epoch + 1} batch {first}..{batch}: lower optim.lr or set "
                                 "amp=off")  # fmt: skip


@torch.no_grad()
def evaluate(cfg: Config, s: FoldSetup, models: dict[str, nn.Module]) -> dict[str, tuple[float, float]]:
    """(validation loss, metric) of each of `models` on fold k's validation rows, all from one pass of the loader."""
    outputs = predict_models(models, s.valid_loader, cfg.task, s.device, s.dtype, activation=False)
    y = torch.as_tensor(s.data.y_valid)
    results = {}
    for name, out in outputs.items():
        logits = torch.from_numpy(out)
        loss = float(s.criterion(logits.reshape(len(y), -1).to(s.device), y.to(s.device)))
        probs = activate(logits, cfg.task).numpy()
        results[name] = (loss, metrics.score(metric_name(cfg), s.data.y_valid, probs, cfg.task))
    return results


def fold_pending(cfg: Config, fold: int, force: bool, log: Callable[[str], None] = print) -> bool:
    """Whether `fold` still needs training: a finished fold (its oof.csv) is skipped unless `force`, which first
    removes its checkpoints so nothing resumes from them."""
    out = cfg.run.fold(fold)
    if out.finished() and not force:
        log(f"fold {fold}: already trained ({out.oof}); --force retrains it")
        return False
    if force and is_main():
        out.clear()
    barrier()
    return True


def train_folds(cfg: Config, folds: list[int], force: bool = False) -> dict:
    """Train the given folds in order (finished ones are skipped unless `force`), then the CV summary."""
    from .cv import summarize

    init_distributed()
    for k in folds:
        if fold_pending(cfg, k, force):
            train_one_fold(cfg, k)
    return summarize(cfg) if is_main() else {}
