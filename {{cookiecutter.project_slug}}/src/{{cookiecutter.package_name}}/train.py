"""Train one fold: a plain loop you can read top to bottom.

hold the fold's lock (one live process per fold); start over (--force), or check that what a resume would carry
    on was trained with the same config (`check_resumable`), before anything is written
set up model, data, loss and mixup for fold k (`setup_fold`, shared with lr-find, pseudo and distill)
optimizer (Ranger by default) and schedule (one-cycle, stepped once per optimizer update)
resume from last.pt if a previous run was interrupted (crash, kill, Ctrl-C)
each epoch: train (AMP, accumulation, clipping, EMA), evaluate raw and EMA weights (one pass), keep the better,
            write best.pt and last.pt atomically, stop early when the metric stalls
            (train.swa / train.avg_best_k / cosine_restarts' snapshots: collect the weights to average,
            modeling/averaging.py)
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
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .config import Config, metric_name, save, training_changes
from .core.errors import Interrupted, UserError
from .core.runs import (
    Checkpoint,
    FoldBusy,
    FoldLock,
    atomic_write_json,
    load_last,
    read_checkpoint,
    record_git,
    remove_stale_tmp,
    rng_state,
    save_last,
    set_rng_state,
    write_checkpoint,
)
from .core.runtime import (
    barrier,
    from_main,
    init_distributed,
    is_main,
    per_rank_batch,
    reduce_mean,
    reduce_sum,
    resolve_device,
    sync_buffers,
    world_size,
)
from .core.tracking import Tracker, finish_active
from .data.folds import expected_folds
from .data.problem import FoldData, save_classes, save_predictions
from .engine.fold import FoldSetup, Step, rank_batch_size, setup_fold, start_epoch, supervised_step
from .engine.inference import (
    load_fold_weights,
    predict_loader,
)
from .engine.init_from import source_changed
from .engine.loop import evaluate, train_epoch
from .engine.lr import resolve_lr
from .engine.probe import linear_probe
from .engine.trainer import build_trainer
from .modeling import metrics
from .modeling.averaging import WeightAveraging, recompute_batchnorm, swa_start_epoch
from .modeling.models import checkpoint_state

FINISHED_ELSEWHERE = "finished"  # what rank 0 found under a fold's lock: another process finished it


@dataclass
class FoldState:
    epoch: int = 0  # epochs completed
    best_score: float | None = None
    best_source: str = "model"
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def check_resumable(cfg: Config, fold: int) -> None:
    """What the run already holds (fold `fold`'s last.pt, other finished folds) was trained with the config each
    fold recorded (run.trained_config): carrying on under a config that alters training (config.training_changes)
    would mix two trainings in one fold or one experiment, so it stops, naming the keys, before anything is
    rewritten."""
    run = cfg.run
    resuming = run.fold(fold).last.is_file()
    others = [k for k in run.finished_folds() if k != fold]
    if not (resuming or others):
        return
    if not run.trained_config(fold).is_file():
        if resuming:
            raise UserError(f"{run.fold(fold).last}: no {run.config.name} beside it to tell what it was trained "
                            "with; --force trains the fold from scratch")  # fmt: skip
        return
    checks = [(fold, f"fold {fold} was interrupted")] if resuming else []
    for k, what in checks + [(k, f"fold {k} was trained") for k in others]:
        changed = source_changed(cfg, k)  # model.init_from: the source's fold-k checkpoint retrained since
        if changed:
            raise UserError(f"{changed}: --force trains fold {k} again from the new weights (or name another "
                            "experiment)")  # fmt: skip
        changes = training_changes(run.trained_config(k), cfg)
        if changes:
            raise UserError(
                f"{what} under another config ({'; '.join(changes)}; {run.trained_config(k)}): rerun with the old "
                "values to carry on, or pass --force to train from scratch (or name another experiment)"
            )


def check_forced(cfg: Config, folds: list[int]) -> None:
    """`--force` retrains `folds` under `cfg`: the experiment's other finished folds must have been trained under
    the same config (all but config.RESUME_IGNORES), else one experiment (its CV, its test predictions) would mix
    two trainings. Stops before anything is rewritten, naming the keys."""
    others = [k for k in cfg.run.finished_folds() if k not in folds]
    if not others:
        return
    cfg = resolve_lr(cfg)  # the recorded configs hold the LR they used
    for k in others:
        changed = source_changed(cfg, k)  # model.init_from: the source's fold-k checkpoint retrained since
        if changed:
            raise UserError(f"--force on fold(s) {folds}: {changed}, and one experiment would mix both starts: "
                            "force every fold (--fold all --force), or name a new experiment")  # fmt: skip
        changes = training_changes(cfg.run.trained_config(k), cfg)
        if changes:
            raise UserError(
                f"--force on fold(s) {folds}: fold {k} was trained under another config ({'; '.join(changes)}; "
                f"{cfg.run.trained_config(k)}), and one experiment would mix both: force every fold (--fold all "
                "--force), or name a new experiment (exp=<name>)"
            )


def train_one_fold(
    cfg: Config, fold: int, data: FoldData | None = None, step: Step | None = None, force: bool = False
) -> dict:
    """Train fold `fold`, resuming its last.pt; `force` removes the fold's files first and starts over. Ctrl-C
    stops with `Interrupted`, leaving last.pt (the last finished epoch) to resume from."""

    cfg = resolve_lr(cfg)  # optim.lr: auto -> the LR finder's suggestion (once per experiment, cached)
    out = cfg.run.fold(fold)
    with contextlib.ExitStack() as held:
        found = None  # rank 0 takes the lock, every rank follows what it found: the holder, or FINISHED_ELSEWHERE
        if is_main():
            try:
                held.enter_context(FoldLock(out.lock))
            except FoldBusy as busy:
                found = busy.holder
            else:  # finished by another process (a shared run folder) between fold_pending and the lock
                found = FINISHED_ELSEWHERE if out.finished() and not force else None
        found = from_main(found)
        if found == FINISHED_ELSEWHERE:
            if is_main():
                print(f"fold {fold}: already trained by another process ({out.oof}); --force retrains it")
            return {}
        if found is not None:
            raise FoldBusy(out.lock, str(found))
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
        record_git(cfg.run, fold)  # the code's commit beside it (git.json)
        save(cfg, out.config)  # and the fold's own: cv.json is complete only while every fold's agree
        save_classes(cfg, s.problem)
        if s.init is not None:
            out.write_init_from(s.init)  # model.init_from: what the fold started from
        if cfg.train.frozen_features and not out.frozen_oof.is_file():  # before any step: the weights it starts with
            frozen_features_probe(cfg, s, fold)
    barrier()
    model, metric = s.model, metrics.get_metric(metric_name(cfg))
    step = step or (lambda m, b, c: supervised_step(m, b, c, s.mixer))

    trainer = build_trainer(cfg, model, s.n_batches, s.device, s.dtype)
    optimizer, scheduler, scaler, ema = trainer.optimizer, trainer.scheduler, trainer.scaler, trainer.ema
    swa_from = swa_start_epoch(cfg.train.swa_start, cfg.train.epochs) if cfg.train.swa else None
    averaging = WeightAveraging(model, swa_from, cfg.train.avg_best_k, metric, trainer.snapshot_at)
    # Each rank keeps its own BatchNorm statistics during the epoch; sync_buffers averages them after it.
    train_model = DistributedDataParallel(model, broadcast_buffers=False) if world_size() > 1 else model
    if cfg.model.compile:
        train_model = torch.compile(train_model)

    state = FoldState()
    stateful = {"model": model, **trainer.stateful(), "averaging": averaging}
    resuming = out.last.exists()
    if resuming:  # an interrupted run, of this very config (check_resumable): carry on where it stopped
        extra = load_last(out.last, **stateful)
        state = FoldState(**extra["state"])
        set_rng_state(extra["rng"], s.generator)
        print(f"fold {fold}: resuming after epoch {state.epoch}")

    tracker = Tracker(cfg, f"fold{fold}", f"fold{fold}", resume=resuming, id_file=out.wandb_run_id)  # resumed: same run
    for epoch in tqdm(range(state.epoch, cfg.train.epochs), desc=f"fold {fold}", disable=None):
        start_epoch(cfg, s, fold, epoch)
        t0 = time.perf_counter()
        train_loss = train_epoch(cfg, s, train_model, optimizer, scheduler, scaler, ema, step, epoch,
                                 after_update=lambda n: averaging.after_update(n, model))  # fmt: skip
        seconds = time.perf_counter() - t0
        # Under torchrun: the loss averaged over the ranks, the images of every rank counted.
        train_loss = reduce_mean(train_loss)
        speed = reduce_sum(s.n_batches * per_rank_batch(cfg.train.batch_size) / seconds)
        sync_buffers(model)
        if ema is not None:
            sync_buffers(ema.module)

        # Evaluate the raw and the EMA weights, in one pass over the validation rows; the better of the two is kept.
        results = evaluate(cfg, s, {"model": model} | ({"ema": ema.module} if ema is not None else {}))
        source = max(results, key=lambda k: metric.gain(results[k][1]))  # a tie (or two NaNs): the raw weights
        valid_loss, score = results[source]
        if not math.isfinite(valid_loss):  # weights blown up although each training loss was still finite
            raise UserError(
                f"validation loss is {valid_loss} at epoch {epoch + 1}: lower optim.lr, or set train.amp=off"
            )
        weights = checkpoint_state(ema.module if source == "ema" else model)
        if state.best_score is None or metric.better(score, state.best_score):
            state.best_score, state.best_source, state.bad_epochs = score, source, 0
            if is_main():
                out.write_best(Checkpoint(weights, epoch + 1, score, source, s.problem.classes, s.target_scale))
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
    if averaging.active:
        tracker.summary(compare_averages(cfg, s, fold, averaging))
    scale = load_fold_weights(cfg, model, fold)
    probs = predict_loader(model, s.valid_loader, cfg.task, s.device, s.dtype, desc=f"fold {fold} oof", scale=scale)
    final = metrics.score(metric.name, s.data.y_valid, probs, cfg.task)
    atomic_write_json(out.history, state.history)
    # written last: its presence marks the fold as finished
    save_predictions(out.oof, s.data.valid_ids, probs, s.problem.classes, cfg.data.id_col, fold)
    tracker.summary({"best_score": final, "best_source": state.best_source})
    tracker.finish()
    return {"fold": fold, "score": final, "history": state.history}


def frozen_features_probe(cfg: Config, s: FoldSetup, fold: int) -> float:
    """train.frozen_features: a linear head on the fold's frozen pooled features (engine/probe.py), its OOF rows in
    fold<k>/oof_frozen_features.csv (cv.json: cv_frozen_features beside the fine-tuned CV). The random streams are
    left as they were: the fine-tuning that follows is the one it would be without the probe."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        probe = linear_probe(cfg, s, fold)
    out = cfg.run.fold(fold)
    save_predictions(out.frozen_oof, s.data.valid_ids, probe.probs, s.problem.classes, cfg.data.id_col, fold)
    how = "features computed and cached" if probe.computed else "cached features"
    print(f"fold {fold} linear probe on frozen features ({how}, {probe.key}): "
          f"{metric_name(cfg)} {probe.score:.5f} in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    return probe.score


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
    # A resumed fold may have put an average into best.pt already: the best epoch's weights are then in best_epoch.pt.
    plain = read_checkpoint(out.best_epoch) if out.best_epoch.is_file() else out.read_best()
    variants = {"best": plain.model, **averaging.averaged()}
    scores, weights = {}, {}
    for name, state in variants.items():
        model.load_state_dict(state)
        if name != "best":
            recompute_batchnorm(model, training_images(cfg, s))
            averaged = Checkpoint(checkpoint_state(model), source=name, target_scale=s.target_scale)
            write_checkpoint(out.averaged(name), averaged)
        # a copy: on the CPU checkpoint_state shares the model's storage, which the next variant overwrites
        weights[name] = {k: v.clone() for k, v in checkpoint_state(model).items()}
        probs = predict_loader(model, s.valid_loader, cfg.task, s.device, s.dtype, desc=f"fold {fold} {name}",
                               scale=s.target_scale)  # fmt: skip
        scores[name] = metrics.score(metric.name, s.data.y_valid, probs, cfg.task)
        save_predictions(out.variant_oof(name), s.data.valid_ids, probs, s.problem.classes, cfg.data.id_col, fold)
    # the best scoring one ("best", listed first, on a tie); a NaN (a diverged average) is never picked
    picked = max(scores, key=lambda n: metric.gain(scores[n])) if cfg.train.pick_averaged else "best"
    if picked != "best":
        if not out.best_epoch.is_file():
            write_checkpoint(out.best_epoch, plain)
        out.write_best(dataclasses.replace(plain, model=weights[picked], score=scores[picked], source=picked))
    elif out.best_epoch.is_file():  # a resumed fold that had put an average into best.pt before
        out.write_best(plain)
        out.best_epoch.unlink()
    atomic_write_json(out.averaging, {"scores": scores, "picked": picked, **averaging.describe()})
    shown = " | ".join(f"{n} {v:.5f}" for n, v in scores.items())
    print(f"fold {fold} weight averaging, {metric.name}: {shown} -> best.pt holds {picked}")
    return {f"averaging_{n}": v for n, v in scores.items()}


def fold_pending(cfg: Config, fold: int, force: bool, log: Callable[[str], None] = print) -> bool:
    """Whether `fold` still needs training: a finished fold (its oof.csv) is skipped unless `force` (then
    train_one_fold removes its files first, so nothing resumes from them)."""
    out = cfg.run.fold(fold)
    if out.finished() and not force:
        log(f"fold {fold}: already trained ({out.oof}); --force retrains it")
        return False
    return True


def train_folds(cfg: Config, folds: list[int], force: bool = False, queue: bool = False) -> None:
    """Train the given folds in order (finished ones are skipped unless `force`); the CV summary follows (cli).

    `queue` (`train --fold all`): the folds are a work queue that several processes may run at once, on machines
    that share output_dir: a fold that another live process trains is skipped (its lock says who), and once this
    process has nothing left to take it waits for those folds, so that the CV summary that follows covers every
    fold; a fold whose process died meanwhile is taken over (resumed from its last.pt). A fold named alone
    (`--fold 1`) stops instead (FoldBusy). Under torchrun the processes do not wait (a wait of hours would outlast
    the process group's timeout): they leave those folds to their trainers, and `cv` summarises once they are done.
    """

    rank_batch_size(cfg)  # a batch that does not split across the processes stops before they connect
    resolve_device(cfg.device)  # and a device that is not there, before a fold folder (or its lock) is made
    init_distributed()
    expected_folds(cfg)  # folds.csv holds folds.n_folds folds: checked before any fold folder is made
    if force:
        check_forced(cfg, folds)
    elsewhere: list[int] = []  # folds that other processes train
    for k in folds:
        if from_main(fold_pending(cfg, k, force) if is_main() else None):
            try:
                train_one_fold(cfg, k, force=force)
            except FoldBusy as busy:
                if not queue:
                    raise
                if is_main():
                    print(f"fold {k}: being trained by {busy.holder}, skipped")
                elsewhere.append(k)
    if world_size() > 1:
        if elsewhere and is_main():
            print(f"fold(s) {elsewhere}: trained by other processes; run `cv` once they finish")
        return
    while elsewhere:
        k = elsewhere.pop(0)
        out = cfg.run.fold(k)
        print(f"fold {k}: waiting for the process that trains it")
        with FoldLock(out.lock, wait=True):  # returns once that process lets go: finished, or dead
            pass
        if not out.finished():
            try:
                train_one_fold(cfg, k)  # its process died: carry on from its last.pt
            except FoldBusy as busy:  # a third process took it over first
                print(f"fold {k}: being trained by {busy.holder}, waiting again")
                elsewhere.append(k)
