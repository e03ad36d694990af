"""`train --full`: one model fitted on every training row, after the CV run, with what the CV run decided.

refuse unless the CV run is done: every fold finished, cv.json, and `predict` run (decisions.json: the TTA views the
    full model's test predictions must apply, "decisions travel"); the experiment's config must be the one every fold
    was trained under (config.training_changes), so the full fit trains nothing the folds did not
epochs: round(mean of the folds' best.pt epochs), at least 1; LR: cv.json's (optim.lr resolved: `auto` is not rerun)
train through the folds' own pieces (engine/fold.setup_fold, engine/loop.train_epoch, engine/trainer.build_trainer):
    a "fold" (FULL_FOLD) no row validates on, so every row trains; no evaluation, early stopping or OOF; the last
    epoch's weights are kept: the EMA's when train.ema is on and most folds' best.pt held the EMA's, else the raw ones
predict the test set with the decisions' views and merge -> full/test_pred.csv; its agreement with the fold
    ensemble's test_pred.csv -> full/full.json (written last: the fit is finished)

`<exp>@full` (core/runs.Run.named) then submits or blends exp's fold run with these test predictions: the OOF, the
CV, the decisions and the blend weights stay the fold run's, since the full model has no OOF rows.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

from .config import Config, save, training_changes
from .core.errors import Interrupted, UserError
from .core.runs import (
    Checkpoint,
    FoldLock,
    FullFit,
    atomic_write_json,
    checksum,
    load_last,
    read_pred_csv,
    read_source,
    remove_stale_tmp,
    rng_state,
    save_last,
    set_rng_state,
    stamp,
)
from .core.runtime import compute_setup, use_channels_last
from .core.tasks import PIXEL_TASKS
from .data.augment import FOLD
from .data.folds import expected_folds
from .data.problem import save_predictions, test_dataset
from .engine.fold import setup_fold, start_epoch, supervised_step
from .engine.inference import feeder, predict_loader, predicted_as
from .engine.loop import train_epoch
from .engine.trainer import build_trainer
from .modeling.models import checkpoint_state
from .modeling.predictors import TorchPredictor

FULL_FOLD = 1000  # the full fit's fold number (and seed offset): no row of folds.csv has it, so every row trains
EPOCHS_RULE = "round(mean of the folds' best.pt epochs), at least 1"
WEIGHTS_RULE = "the last epoch's: EMA when train.ema and most folds' best.pt held the EMA, else the raw weights"


def full_epochs(fold_epochs: dict[str, int]) -> int:
    """EPOCHS_RULE: the folds' best epochs, averaged and rounded half up, at least 1."""
    return max(1, math.floor(float(np.mean(list(fold_epochs.values()))) + 0.5))


def agreement(full: np.ndarray, folds: np.ndarray, task: str, threshold: float | None = None,
              thresholds: list[float] | None = None) -> dict:  # fmt: skip
    """How far the full model's test predictions are from the fold ensemble's: the share of rows (multilabel: of
    row x tag cells) given the same label (the decisions' thresholds where they are tuned, else 0.5; None for
    regression), the Pearson r of the predictions, and their mean absolute difference."""
    a, b = np.asarray(full, np.float64), np.asarray(folds, np.float64)
    if task == "multiclass":
        labels = float(np.mean(a.argmax(1) == b.argmax(1)))
    elif task == "binary":
        t = 0.5 if threshold is None else threshold
        labels = float(np.mean((a.ravel() >= t) == (b.ravel() >= t)))
    elif task == "multilabel":
        t = np.asarray(thresholds if thresholds is not None else [0.5] * a.shape[1])
        labels = float(np.mean((a >= t) == (b >= t)))
    else:
        labels = None
    x, y = a.ravel(), b.ravel()
    r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    return {"label_agreement": labels, "pearson_r": r, "mean_abs_diff": float(np.mean(np.abs(x - y)))}


def _refusals(cfg: Config) -> None:
    run = cfg.run
    if cfg.task in PIXEL_TASKS:
        raise UserError(f"train --full: task={cfg.task} is not supported (classification, tags and regression are)")
    if run.lineage.is_file():
        raise UserError(f"train --full: {cfg.exp} is a student ({run.lineage}); its folds learn from fold-wise "
                        "teachers, which a model on every row cannot: fit a plain experiment's")  # fmt: skip
    if cfg.augment.mean == FOLD or cfg.augment.std == FOLD:
        raise UserError("train --full: augment.mean/std: fold normalises each fold with its own statistics; the "
                        "full fit has no fold to take them from: give augment.mean/std as numbers")  # fmt: skip
    averaging = [k for k, on in (("train.swa", cfg.train.swa), ("train.avg_best_k", cfg.train.avg_best_k)) if on]
    if averaging:
        raise UserError(f"train --full: {', '.join(averaging)} averages weights picked on validation scores, which "
                        "the full fit has none of: fit the full model of an experiment without it")  # fmt: skip


def full_config(cfg: Config, log: Callable[[str], None] = print) -> tuple[Config, dict[str, int], dict[str, str]]:
    """The config the full fit trains under: the experiment's, as every fold was trained (checked), with cv.json's
    LR and the epochs of EPOCHS_RULE; and the folds' best epochs and best.pt sha256. Refuses (one line) unless the
    CV run is complete and predicted."""
    _refusals(cfg)
    run, n_folds = cfg.run, expected_folds(cfg)
    missing = run.missing_folds(n_folds)
    if missing:
        raise UserError(f"train --full: fold(s) {missing} of {n_folds} not finished; the full fit takes its epochs "
                        f"from every fold: finish them first (train --fold {','.join(map(str, missing))})")  # fmt: skip
    cv = run.read_cv()
    if not cv.complete or cv.partial or cv.lr is None:
        raise UserError(f"{run.cv}: not the summary of every fold with its LR; run `cv` for {cfg.exp!r} first")
    decisions = run.read_decisions()
    if decisions.views is None:
        raise UserError(f"{run.decisions}: made before `predict`; run `predict` for {cfg.exp!r} first: the full "
                        "model's test predictions apply the views it decides")  # fmt: skip
    if decisions.runtime != "torch":
        raise UserError(f"{run.decisions}: test_pred.csv was predicted by {decisions.runtime}; the full model runs "
                        f"in torch: predict {cfg.exp!r} with predict.runtime=torch first")  # fmt: skip
    source = read_source(run.test_pred)
    decided = {"views": decisions.views, "merge": decisions.merge, "runtime": decisions.runtime}
    if source is None or predicted_as(source) != decided:
        raise UserError(f"{run.test_pred} was not predicted as {run.decisions} says; run `predict` for "
                        f"{cfg.exp!r} again")  # fmt: skip
    trained = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=cv.lr))
    for k in range(n_folds):
        changes = training_changes(run.trained_config(k), trained)
        if changes:
            raise UserError(f"train --full: fold {k} was trained under another config ({'; '.join(changes)}; "
                            f"{run.trained_config(k)}); the full fit must train as the folds did: rerun with "
                            "the folds' values")  # fmt: skip
    fold_epochs = {str(k): int(run.fold(k).read_best().epoch or cfg.train.epochs) for k in range(n_folds)}
    epochs = full_epochs(fold_epochs)
    sums = {str(k): checksum(run.fold(k).best) for k in range(n_folds)}
    log(f"{cfg.exp} full fit: {epochs} epoch(s) ({EPOCHS_RULE}: {fold_epochs}), lr {cv.lr:g} (cv.json"
        f"{', optim.lr auto' if cv.lr_auto else ''})")  # fmt: skip
    full = dataclasses.replace(trained, train=dataclasses.replace(trained.train, epochs=epochs))
    return full, fold_epochs, sums


def train_full(cfg: Config, force: bool = False, log: Callable[[str], None] = print) -> FullFit:
    """The `train --full` command: fit, predict the test set, record full.json. Done already (the same folds):
    nothing is redone unless `force`, which starts over. An interrupted fit resumes from full/last.pt."""
    run = cfg.run
    full_cfg, fold_epochs, sums = full_config(cfg, log)
    files = run.full
    if run.full_json.is_file() and not force:
        run.check_full(f"{cfg.exp}@full")  # made from the fold checkpoints and views the run has now
        done = run.read_full()
        log(f"{files.path}: already fitted ({run.full_json}); --force fits it again")
        return done
    with FoldLock(files.lock):
        if force:
            files.clear()
            run.full_json.unlink(missing_ok=True)
        elif files.last.is_file():
            changes = training_changes(files.config, full_cfg)
            if changes:
                raise UserError(f"{files.last} was trained under another config ({'; '.join(changes)}): "
                                "train --full --force starts it over")  # fmt: skip
        try:
            return _fit(cfg, full_cfg, fold_epochs, sums, log)
        except KeyboardInterrupt:
            saved = load_last(files.last)["state"]["epoch"] if files.last.is_file() else 0
            raise Interrupted(f"full fit after epoch {saved}") from None


def _fit(cfg: Config, full_cfg: Config, fold_epochs: dict[str, int], sums: dict[str, str],
         log: Callable[[str], None]) -> FullFit:  # fmt: skip
    run, files, t0 = cfg.run, cfg.run.full, time.perf_counter()
    s = setup_fold(full_cfg, FULL_FOLD)
    files.path.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(files.path)
    save(full_cfg, files.config)
    model = s.model
    trainer = build_trainer(full_cfg, model, s.n_batches, s.device, s.dtype)
    optimizer, ema = trainer.optimizer, trainer.ema
    peak = max(g.get("max_lr", g.get("initial_lr", g["lr"])) for g in optimizer.param_groups)
    stateful = {"model": model, **trainer.stateful()}
    state = {"epoch": 0, "history": []}
    if files.last.is_file():
        extra = load_last(files.last, **stateful)
        state = extra["state"]
        set_rng_state(extra["rng"], s.generator)
        log(f"full fit: resuming after epoch {state['epoch']}")
    epochs = full_cfg.train.epochs
    for epoch in range(state["epoch"], epochs):
        start_epoch(full_cfg, s, FULL_FOLD, epoch)
        t = time.perf_counter()
        loss = train_epoch(full_cfg, s, model, optimizer, trainer.scheduler, trainer.scaler, ema,
                           lambda m, b, c: supervised_step(m, b, c, s.mixer), epoch)  # fmt: skip
        if not math.isfinite(loss):
            raise UserError(f"full fit: training loss is {loss} at epoch {epoch + 1}: lower optim.lr")
        speed = s.n_batches * full_cfg.train.batch_size / (time.perf_counter() - t)
        state["history"].append({"epoch": epoch + 1, "train_loss": loss, "lr": optimizer.param_groups[0]["lr"],
                                 "images_per_s": speed})  # fmt: skip
        state["epoch"] = epoch + 1
        log(f"full fit epoch {epoch + 1}/{epochs} train_loss {loss:.4f} {speed:.0f} img/s")
        save_last(files.last, **stateful, state=state, rng=rng_state(s.generator))

    sources = [run.fold(int(k)).read_best().source for k in fold_epochs]
    use_ema = ema is not None and sources.count("ema") * 2 > len(sources)
    kept = ema.module if use_ema else model
    classes = run.read_classes()
    files.write_best(Checkpoint(checkpoint_state(kept), epochs, None, "ema" if use_ema else "model",
                                list(classes.classes), s.target_scale))  # fmt: skip
    atomic_write_json(files.history, state["history"])

    # The test set, predicted as the fold ensemble's test_pred.csv was: the decisions' views and merge.
    decisions = run.read_decisions()
    predictor = TorchPredictor(kept, s.device, s.dtype)
    predictor.scale = files.read_best().scale  # regression: the full fit's target scale (every row's)
    _, workers = compute_setup(full_cfg.device, full_cfg.threads, full_cfg.data.num_workers)
    feed = feeder(full_cfg, kept, s.device, workers, use_channels_last(full_cfg.model.channels_last, s.device))
    ids, dataset = test_dataset(full_cfg)
    pred = predict_loader(predictor, feed(dataset), cfg.task, views=decisions.views, merge=decisions.merge,
                          desc="full test")  # fmt: skip
    source = {"folds": {"full": {"checkpoint": stamp(files.best), "views": list(decisions.views),
                                 "merge": decisions.merge}}}  # fmt: skip
    cols, id_col = list(classes.classes), cfg.data.id_col
    save_predictions(files.test_pred, ids, pred, cols, id_col, source=source)
    ens = read_pred_csv(run.test_pred, id_col, cols).set_index(id_col)
    if set(ens.index) != set(ids):
        raise UserError(f"{run.test_pred} covers other test ids than {cfg.data.test_csv}: run `predict` again")
    agree = agreement(pred.reshape(len(ids), -1), ens.loc[ids, cols].to_numpy(np.float64), cfg.task,
                      decisions.threshold, decisions.thresholds)  # fmt: skip
    record = FullFit(
        exp=cfg.exp, epochs=epochs, epochs_rule=EPOCHS_RULE, fold_epochs=fold_epochs, lr=float(full_cfg.optim.lr),
        lr_from=f"{run.cv.name} (lr{', optim.lr auto' if run.read_cv().lr_auto else ''})", optimizer_lr=float(peak),
        n_rows=len(s.data.train), weights="ema" if use_ema else "model", weights_rule=WEIGHTS_RULE,
        folds_checkpoints=sums, views=list(decisions.views), merge=str(decisions.merge), agreement=agree,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip
    run.write_full(record)  # written last: the fit is finished
    shown = ", ".join(f"{k} {v:.4f}" for k, v in agree.items() if v is not None)
    log(f"{files.test_pred}: {len(ids)} rows; agreement with the fold ensemble: {shown}")
    return record
