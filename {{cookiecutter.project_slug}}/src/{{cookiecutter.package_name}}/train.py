"""Train one fold: a plain loop you can read top to bottom.

hold the fold's lock (one live process per fold); start over (--force), or check that what a resume would carry
    on was trained with the same config (`check_resumable`), before anything is written
set up model, data, loss and mixup for fold k (`setup_fold`, shared with lr-find, pseudo and distill)
optimizer (Ranger by default) and schedule (one-cycle, stepped once per optimizer update)
resume from last.pt if a previous run was interrupted (crash, kill, Ctrl-C)
each epoch: train (AMP, accumulation, clipping, EMA), evaluate raw and EMA weights (one pass), keep the better,
            write best.pt and last.pt atomically, stop early when the metric stalls
            (train.swa / train.avg_best_k: collect the weights to average, modeling/averaging.py)
score the averaged weights beside the best epoch's (BatchNorm recomputed); train.pick_averaged may put one in best.pt
predict the validation rows with the best weights -> fold<k>/oof.csv

The data path runs at GPU speed: workers persist across epochs and send uint8 images, which are copied without
blocking and normalised on the device (data.images.DeviceLoader); the loop never waits for the GPU within an epoch
(the loss is summed on the device and read every LOG_EVERY steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .config import Config, metric_name, save, training_changes
from .core.errors import Interrupted, UserError
from .core.runs import (
    FoldLock,
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
    per_rank_batch,
    reduce_mean,
    reduce_sum,
    resolve_device,
    seed_everything,
    sync_buffers,
    use_channels_last,
    world_size,
)
from .core.tasks import TargetScale, num_outputs
from .core.tracking import Tracker, finish_active
from .data.augment import MixBatch, Normalize, build_mixup, resolve_normalization
from .data.folds import expected_folds
from .data.images import DeviceLoader, make_loader, set_epoch
from .data.problem import FoldData, Problem, build_fold_data, load_problem, pred_frame, save_classes
from .data.samplers import ShuffleSampler, build_sampler
from .modeling import metrics
from .modeling.averaging import WeightAveraging, recompute_batchnorm, swa_start_epoch
from .modeling.losses import build_loss, prior_logits
from .modeling.models import backbone_lr_mult, build_model, checkpoint_state, init_head, set_backbone_trainable
from .modeling.optim import build_optimizer, build_scheduler, total_updates
from .predict import activate, load_fold_weights, predict_loader, predict_models

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
    target_scale: TargetScale | None = None  # regression: the fold's target standardisation (saved in best.pt)


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
    normalize = Normalize(*resolve_normalization(cfg.augment, model, cfg.model.in_chans)).to(device)
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
    valid_loader = make_loader(data.valid, cfg.tta.batch_size, False, workers, **to_device)
    dtype = amp_dtype(cfg.train.amp, device)
    return FoldSetup(problem, data, model, criterion, mixer, loader, valid_loader, n_batches, device, dtype, generator,
                     scale)  # fmt: skip


def start_epoch(cfg: Config, s: FoldSetup, fold: int, epoch: int) -> None:
    """Epoch `epoch`'s order of the training rows and their augmentations: both from (seed, fold, epoch) only."""
    s.loader.set_epoch(epoch)
    set_epoch(s.data.train, cfg.seed, fold, epoch)


@dataclass
class FoldState:
    epoch: int = 0  # epochs completed
    best_score: float | None = None
    best_source: str = "model"
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def check_resumable(cfg: Config, fold: int) -> None:
    """What the run already holds (fold `fold`'s last.pt, other finished folds) was trained with the run's
    config.yaml: carrying on under a config that alters training (config.training_changes) would mix two
    trainings in one fold or one experiment, so it stops, naming the keys, before anything is rewritten."""
    run = cfg.run
    resuming = run.fold(fold).last.is_file()
    others = [k for k in run.finished_folds() if k != fold]
    if not (resuming or others):
        return
    if not run.config.is_file():
        if resuming:
            raise UserError(f"{run.fold(fold).last}: no {run.config.name} beside it to tell what it was trained "
                            "with; --force trains the fold from scratch")  # fmt: skip
        return
    changes = training_changes(run.config, cfg)
    if changes:
        what = f"fold {fold} was interrupted" if resuming else f"fold(s) {others} were trained"
        raise UserError(
            f"{what} under another config ({'; '.join(changes)}; {run.config}): rerun with the old values to carry "
            "on, or pass --force to train from scratch (or name another experiment)"
        )


def train_one_fold(
    cfg: Config, fold: int, data: FoldData | None = None, step: Step | None = None, force: bool = False
) -> dict:
    """Train fold `fold`, resuming its last.pt; `force` removes the fold's files first and starts over. Ctrl-C
    stops with `Interrupted`, leaving last.pt (the last finished epoch) to resume from."""
    from .lr_find import resolve_lr  # lr_find builds on setup_fold: imported here, not at the top

    cfg = resolve_lr(cfg)  # optim.lr: auto -> the LR finder's suggestion (once per experiment, cached)
    out = cfg.run.fold(fold)
    with FoldLock(out.lock) if is_main() else contextlib.nullcontext():
        if is_main():
            if force:
                out.clear()  # nothing resumes from an old last.pt
            else:
                check_resumable(cfg, fold)  # before config.yaml is rewritten
        barrier()
        try:
            return _train_one_fold(cfg, fold, data, step)
        except KeyboardInterrupt:
            finish_active(exit_code=130)
            saved = load_last(out.last)["state"]["epoch"] if out.last.is_file() else 0
            raise Interrupted(f"fold {fold} after epoch {saved}") from None


def _train_one_fold(cfg: Config, fold: int, data: FoldData | None, step: Step | None) -> dict:
    out = cfg.run.fold(fold)
    s = setup_fold(cfg, fold, data)  # bad input stops here, before the run folder exists
    out.path.mkdir(parents=True, exist_ok=True)
    if is_main():
        remove_stale_tmp(out.path)  # a killed checkpoint write leaves its temporary file behind
        save(cfg, cfg.run.config)  # the resolved config, before anything can go wrong
        save_classes(cfg, s.problem)
    model, metric = s.model, metrics.get_metric(metric_name(cfg))
    step = step or (lambda m, b, c: supervised_step(m, b, c, s.mixer))

    total_steps = total_updates(s.n_batches, cfg.optim.grad_accum, cfg.train.epochs)
    optimizer = build_optimizer(model, cfg.optim, total_steps, backbone_lr_mult=backbone_lr_mult(cfg.model))
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    scaler = torch.amp.GradScaler(s.device.type, enabled=s.dtype == torch.float16)  # bf16 needs no loss scaling
    # EMA decay warms up from 0 towards train.ema_decay, so short runs average over a sensible window too.
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True) if cfg.train.ema else None
    swa_from = swa_start_epoch(cfg.train.swa_start, cfg.train.epochs) if cfg.train.swa else None
    averaging = WeightAveraging(model, swa_from, cfg.train.avg_best_k, metric.higher_is_better)
    # Each rank keeps its own BatchNorm statistics during the epoch; sync_buffers averages them after it.
    train_model = DistributedDataParallel(model, broadcast_buffers=False) if world_size() > 1 else model
    if cfg.model.compile:
        train_model = torch.compile(train_model)

    state = FoldState()
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "ema": ema,
                "averaging": averaging}  # fmt: skip
    if out.last.exists():  # an interrupted run, of this very config (check_resumable): carry on where it stopped
        extra = load_last(out.last, **stateful)
        state = FoldState(**extra["state"])
        set_rng_state(extra["rng"], s.generator)
        print(f"fold {fold}: resuming after epoch {state.epoch}")

    tracker = Tracker(cfg, f"fold{fold}", f"fold{fold}")
    sign = 1.0 if metric.higher_is_better else -1.0
    for epoch in tqdm(range(state.epoch, cfg.train.epochs), desc=f"fold {fold}", disable=None):
        start_epoch(cfg, s, fold, epoch)
        t0 = time.perf_counter()
        train_loss = train_epoch(cfg, s, train_model, optimizer, scheduler, scaler, ema, step, epoch)
        seconds = time.perf_counter() - t0
        # Under torchrun: the loss averaged over the ranks, the images of every rank counted.
        train_loss = reduce_mean(train_loss)
        speed = reduce_sum(s.n_batches * per_rank_batch(cfg.train.batch_size) / seconds)
        sync_buffers(model)
        if ema is not None:
            sync_buffers(ema.module)

        # Evaluate the raw and the EMA weights, in one pass over the validation rows; the better of the two is kept.
        results = evaluate(cfg, s, {"model": model} | ({"ema": ema.module} if ema is not None else {}))
        source = max(results, key=lambda k: sign * results[k][1])
        valid_loss, score = results[source]
        if not math.isfinite(valid_loss):  # weights blown up although each training loss was still finite
            raise UserError(
                f"validation loss is {valid_loss} at epoch {epoch + 1}: lower optim.lr, or set train.amp=off"
            )
        weights = checkpoint_state(ema.module if source == "ema" else model)
        if state.best_score is None or sign * score > sign * state.best_score:
            state.best_score, state.best_source, state.bad_epochs = score, source, 0
            if is_main():
                best = {"model": weights, "epoch": epoch + 1, "score": score, "source": source}
                if s.target_scale is not None:
                    best["target_scale"] = s.target_scale.to_dict()
                atomic_torch_save(out.best, best | {"classes": s.problem.classes})
        else:
            state.bad_epochs += 1
        averaging.after_epoch(epoch, model, weights, score)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "valid_loss": valid_loss, "score": score,
               "score_model": results["model"][1], "score_ema": results.get("ema", (0.0, None))[1],
               "lr": optimizer.param_groups[0]["lr"], "images_per_s": speed}  # fmt: skip
        state.history.append(row)
        state.epoch = epoch + 1
        tracker.log({k: v for k, v in row.items() if v is not None}, step=epoch + 1)
        if is_main():
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
    if cfg.train.swa or cfg.train.avg_best_k:
        tracker.summary(compare_averages(cfg, s, fold, averaging))
    scale = load_fold_weights(cfg, model, fold)
    probs = predict_loader(model, s.valid_loader, cfg.task, s.device, s.dtype, desc=f"fold {fold} oof", scale=scale)
    final = metrics.score(metric.name, s.data.y_valid, probs, cfg.task)
    oof = pred_frame(s.data.valid_ids, probs, s.problem.classes, cfg.data.id_col)
    oof.insert(1, "fold", fold)
    atomic_write_json(out.history, state.history)
    atomic_write_csv(out.oof, oof)  # written last: its presence marks the fold as finished
    tracker.summary({"best_score": final, "best_source": state.best_source})
    tracker.finish()
    return {"fold": fold, "score": final, "history": state.history}


def training_images(cfg: Config, s: FoldSetup) -> Iterator[torch.Tensor]:
    """One epoch of training images as the loop feeds them to the model (BatchNorm statistics of averaged weights)."""
    for i, batch in enumerate(s.loader):
        if i >= s.n_batches:
            break
        yield batch["image"]  # on the device, normalised and in the model's memory format (DeviceLoader)


def compare_averages(cfg: Config, s: FoldSetup, fold: int, averaging: WeightAveraging) -> dict[str, float]:
    """Score the best epoch's weights and each average (BatchNorm recomputed on the training images) on the fold's
    validation rows; write the averages (fold<k>/<variant>.pt), everyone's OOF rows (oof_<variant>.csv) and
    averaging.json. With train.pick_averaged the best scoring one goes into best.pt (the best epoch's weights then
    stay in best_epoch.pt); else best.pt keeps the best epoch. Returns the scores."""
    out, model = cfg.run.fold(fold), s.model
    metric = metrics.get_metric(metric_name(cfg))
    plain = load_best(out.best_epoch if out.best_epoch.is_file() else out.best)  # a resumed fold may have picked
    variants = {"best": plain["model"], **averaging.averaged()}
    scores, weights = {}, {}
    for name, state in variants.items():
        model.load_state_dict(state)
        if name != "best":
            recompute_batchnorm(model, training_images(cfg, s))
            scale = {"target_scale": s.target_scale.to_dict()} if s.target_scale is not None else {}
            atomic_torch_save(out.averaged(name), {"model": checkpoint_state(model), "source": name, **scale})
        # a copy: on the CPU checkpoint_state shares the model's storage, which the next variant overwrites
        weights[name] = {k: v.clone() for k, v in checkpoint_state(model).items()}
        probs = predict_loader(model, s.valid_loader, cfg.task, s.device, s.dtype, desc=f"fold {fold} {name}",
                               scale=s.target_scale)  # fmt: skip
        scores[name] = metrics.score(metric.name, s.data.y_valid, probs, cfg.task)
        oof = pred_frame(s.data.valid_ids, probs, s.problem.classes, cfg.data.id_col)
        oof.insert(1, "fold", fold)
        atomic_write_csv(out.variant_oof(name), oof)
    sign = 1.0 if metric.higher_is_better else -1.0
    ranked = [n for n in scores if scores[n] == scores[n]]  # NaN (a diverged average) is never picked
    picked = max(ranked, key=lambda n: sign * scores[n]) if cfg.train.pick_averaged and ranked else "best"
    if picked != "best":
        if not out.best_epoch.is_file():
            atomic_torch_save(out.best_epoch, plain)
        atomic_torch_save(out.best, {**plain, "model": weights[picked], "score": scores[picked], "source": picked})
    elif out.best_epoch.is_file():  # a resumed fold that had put an average into best.pt before
        atomic_torch_save(out.best, plain)
        out.best_epoch.unlink()
    atomic_write_json(out.averaging, {"scores": scores, "picked": picked, **averaging.describe()})
    shown = " | ".join(f"{n} {v:.5f}" for n, v in scores.items())
    print(f"fold {fold} weight averaging, {metric.name}: {shown} -> best.pt holds {picked}")
    return {f"averaging_{n}": v for n, v in scores.items()}


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
    """The targets are checked finite when the table is read: a diverging run is the usual cause of a non-finite
    loss. last.pt still holds the last finished epoch."""
    if not math.isfinite(total):
        first = batch - (batch % LOG_EVERY)
        where = f"batch {batch}" if first == batch else f"batches {first}..{batch}"
        raise UserError(f"loss is {total} at epoch {epoch + 1} {where}: lower optim.lr, or set train.amp=off")


@torch.no_grad()
def evaluate(cfg: Config, s: FoldSetup, models: dict[str, nn.Module]) -> dict[str, tuple[float, float]]:
    """(validation loss, metric) of each of `models` on fold k's validation rows, all from one pass of the loader."""
    outputs = predict_models(models, s.valid_loader, cfg.task, s.device, s.dtype, activation=False)
    y = torch.as_tensor(s.data.y_valid)
    results = {}
    for name, out in outputs.items():
        logits = torch.from_numpy(out)
        loss = float(s.criterion(logits.reshape(len(y), -1).to(s.device), y.to(s.device)))
        probs = activate(logits, cfg.task, s.target_scale).numpy()
        results[name] = (loss, metrics.score(metric_name(cfg), s.data.y_valid, probs, cfg.task))
    return results


def fold_pending(cfg: Config, fold: int, force: bool, log: Callable[[str], None] = print) -> bool:
    """Whether `fold` still needs training: a finished fold (its oof.csv) is skipped unless `force` (then
    train_one_fold removes its files first, so nothing resumes from them)."""
    out = cfg.run.fold(fold)
    if out.finished() and not force:
        log(f"fold {fold}: already trained ({out.oof}); --force retrains it")
        return False
    return True


def train_folds(cfg: Config, folds: list[int], force: bool = False) -> dict:
    """Train the given folds in order (finished ones are skipped unless `force`), then the CV summary."""
    from .cv import summarize

    rank_batch_size(cfg)  # a batch that does not split across the processes stops before they connect
    resolve_device(cfg.device)  # and a device that is not there, before a fold folder (or its lock) is made
    init_distributed()
    expected_folds(cfg)  # folds.csv holds folds.n_folds folds: checked before any fold folder is made
    for k in folds:
        if fold_pending(cfg, k, force):
            train_one_fold(cfg, k, force=force)
    return summarize(cfg) if is_main() else {}
