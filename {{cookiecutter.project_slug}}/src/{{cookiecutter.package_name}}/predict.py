"""Prediction: every finished fold's best model x every TTA view, merged on probabilities, folds averaged.

outputs/<exp>/test_pred.csv   id + one column per class/label/target (and fold<k>/test_pred.csv per fold)
outputs/<exp>/oof_tta.csv     the validation rows re-predicted as the test set is: the same views and runtime
                              (cv.json: cv vs cv_tta; the submission's decisions are tuned on them)
Both carry the checkpoints and views they came from (core/runs.py, derived files).
`predict.runtime` chooses what runs the fold models: the checkpoints in torch, or the ONNX models `export` wrote
(fp32 or int8) in onnxruntime (modeling/predictors.py); views and merging are the same for both.
`predict --estimate N` projects the time to predict N test images, for a code competition's time limit, and records
what it measured (each view alone too) in estimate.json, which `ensemble --budget` reads.

`tta.views: auto`: each candidate view (`tta.candidates`) predicts every fold's validation rows once; the views are
then chosen greedily on those OOF predictions, merged in numpy (modeling/tta.greedy_views: a view is kept only when
it raises the OOF score), recorded in tta_auto.json (with the checkpoints' sha256, so a retrained fold or another
candidate list chooses again) and used for the test predictions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset

from .config import Config
from .core.errors import UserError
from .core.runs import STALE_TMP_AGE, Estimate, read_derived, remove_stale_tmp
from .core.runtime import resolve_device
from .data.problem import build_fold_data, load_problem, pred_frame, save_predictions, test_dataset
from .engine.inference import (
    fold_models,
    fold_predictors,
    folds_source,
    predict_loader,
    prediction_source,
    runtime_name,
)
from .engine.views import resolve_views

# ----------------------------------------------------------------------------------------------- tta.views: auto


# ----------------------------------------------------------------------------------------------- test and OOF


def predict_test_folds(cfg: Config, folds: list[int]) -> tuple[list[str], dict[int, np.ndarray]]:
    """Each fold model's TTA-merged test predictions -> fold<k>/test_pred.csv (pseudo-labelling for fold k may
    only use fold k's model). Returns the test ids and the predictions by fold."""
    cfg = resolve_views(cfg)
    run = cfg.run
    classes = run.read_classes().classes
    load, feed = fold_predictors(cfg, len(classes))
    ids, dataset = test_dataset(cfg)
    loader = feed(dataset)
    preds = {}
    for k in folds:
        pred = predict_loader(load(k), loader, cfg.task, views=cfg.tta.views, merge=cfg.tta.merge, desc=f"fold {k}")
        save_predictions(run.fold(k).test_pred, ids, pred, classes, cfg.data.id_col, source=prediction_source(cfg, k))
        preds[k] = pred
    return ids, preds


def predict_test(cfg: Config, folds: list[int] | None = None, allow_partial: bool = False) -> pd.DataFrame:
    """Average of the fold models' TTA-merged test predictions -> outputs/<exp>/test_pred.csv (and each fold's
    own). `folds` default: every fold, all finished (or, with `allow_partial`, the finished ones)."""
    cfg = resolve_views(cfg)
    folds = folds if folds is not None else fold_models(cfg, allow_partial)
    ids, preds = predict_test_folds(cfg, folds)
    classes = cfg.run.read_classes().classes
    mean = sum(preds.values()) / len(folds)
    save_predictions(cfg.run.test_pred, ids, mean, classes, cfg.data.id_col, source=folds_source(cfg, folds))
    return pred_frame(ids, mean, classes, cfg.data.id_col)


def predict_oof_tta(cfg: Config, folds: list[int] | None = None) -> pd.DataFrame:
    """Re-predict each fold's validation rows with the TTA views, so the views are chosen on OOF, not on test.
    Reused while the views, the merge and every checkpoint are those it was made with. `folds` default: every
    fold, all finished."""
    cfg = resolve_views(cfg)
    run, folds = cfg.run, folds if folds is not None else fold_models(cfg)
    source = folds_source(cfg, folds)
    done = read_derived(run.oof_tta, source, cfg.data.id_col)
    if done is not None:
        return done
    problem = load_problem(cfg)
    load, feed = fold_predictors(cfg, len(problem.classes))
    ids, fold, preds = [], [], []
    for k in folds:
        data = build_fold_data(cfg, problem, k)
        loader = feed(data.valid)
        preds.append(predict_loader(load(k), loader, cfg.task, views=cfg.tta.views, merge=cfg.tta.merge,
                                    desc=f"oof {k}"))  # fmt: skip
        ids += data.valid_ids
        fold += [k] * len(data.valid_ids)
    pred = np.concatenate(preds)
    save_predictions(run.oof_tta, ids, pred, problem.classes, cfg.data.id_col, np.asarray(fold), source)
    return read_derived(run.oof_tta, source, cfg.data.id_col)


def run_predict(cfg: Config, oof_tta: bool = True, allow_partial: bool = False) -> list[str]:
    """The `predict` command: test predictions, and the OOF rows re-predicted with the same TTA views (unless there
    is one view, or `oof_tta` is off); the CV summary with and without TTA follows (cli). An experiment with
    unfinished folds stops unless `allow_partial` (then its finished folds are used, and cv.json says so). Returns
    the views predicted with."""
    folds = fold_models(cfg, allow_partial)
    for folder in (cfg.run.path, *(cfg.run.fold(k).path for k in folds)):
        remove_stale_tmp(folder, STALE_TMP_AGE)  # what a killed predict left
    resolved = resolve_views(cfg)  # tta.views: auto chooses the views on OOF here, before the test set is seen
    df = predict_test(resolved, folds)
    print(f"{cfg.run.test_pred}: {len(df)} rows")
    # The OOF rows predicted as the test set was, unless that is what training already wrote (one view, torch):
    # the CV of the submission and its thresholds are taken on them.
    if (list(resolved.tta.views) != ["identity"] or resolved.predict.runtime != "torch") and oof_tta:
        predict_oof_tta(resolved, folds)
    return list(resolved.tta.views)


def _seconds_per_image(predictor, loader, cfg: Config, view: str, n: int) -> float:
    start = time.perf_counter()
    predict_loader(predictor, loader, cfg.task, views=[view], merge=cfg.tta.merge, desc=f"timing {view}")
    return (time.perf_counter() - start) / n


def estimate(cfg: Config, n_images: int, batches: int = 3, log: Callable[[str], None] = print) -> dict:
    """Projected time of `predict` on `n_images` test images on this machine, with the configured runtime, folds
    and TTA views. Timed: the first fold's model loaded (with the one-off imports and model building), a second
    fold's loaded, then up to `batches` batches of real test images through the first with every view, decoding
    and augmenting included (after one untimed warm-up batch that pays the first-call costs). Projected:
    first load + (folds - 1) x load + folds x n_images x per-image time. With data.cache the real run
    decodes each image once, not once per fold: the projection is an upper bound, as a time limit wants. The OOF
    re-prediction is left out: a code competition's notebook predicts the test set only."""
    if n_images < 1:
        raise UserError(f"--estimate {n_images}: expected the number of test images, >= 1")
    cfg = resolve_views(cfg)  # tta.views: auto -> the views chosen on OOF (chosen now if not yet), as predict does
    folds, views = fold_models(cfg), list(cfg.tta.views)
    classes = cfg.run.read_classes().classes
    start = time.perf_counter()
    load, feed = fold_predictors(cfg, len(classes))
    predictor = load(folds[0])
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    predictor = load(folds[-1])  # loading the next fold: what each fold after the first costs
    load_s = time.perf_counter() - start
    uncached = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache="none"))
    _, dataset = test_dataset(uncached)  # decoded inside the timed pass
    size = cfg.tta.batch_size
    sample = Subset(dataset, range(min(len(dataset), batches * size)))
    if len(sample) == 0:
        raise UserError(f"{cfg.data.test_csv}: no test images to time")
    loader, warm = feed(sample), feed(Subset(dataset, range(min(len(dataset), size))))
    predict_loader(predictor, warm, cfg.task, views=views, merge=cfg.tta.merge, desc="warm-up")
    start = time.perf_counter()
    predict_loader(predictor, loader, cfg.task, views=views, merge=cfg.tta.merge, desc="timing")
    per_image = (time.perf_counter() - start) / len(sample)
    view_ms = {views[0]: 1000 * per_image}
    if len(views) > 1:  # each view alone too: what a subset of the views costs (ensemble --budget)
        view_ms = {v: 1000 * _seconds_per_image(predictor, loader, cfg, v, len(sample)) for v in views}
    n_folds = len(folds)
    total = first_s + (n_folds - 1) * load_s + n_folds * n_images * per_image
    runtime = runtime_name(cfg)
    log(f"{cfg.exp}: {n_folds} fold(s) x {len(views)} view(s) {views}, runtime {runtime}: {predictor.where}")
    log(f"  measured on {len(sample)} test images through fold {folds[-1]}: {1000 * per_image:.3f} ms per image "
        f"(all {len(views)} views, decoding included); loading the first fold's model {first_s:.3f} s (imports "
        f"included), another {load_s:.3f} s")  # fmt: skip
    log(f"  projected for {n_images} images: {first_s:.3f} s + {n_folds - 1} x {load_s:.3f} s + {n_folds} folds x "
        f"{n_images} x {1000 * per_image:.3f} ms = {total:.1f} s ({total / 60:.1f} min)")  # fmt: skip
    # decoding and augmenting, shared by every view: the views alone sum to it once per view, all together once
    shared = (sum(view_ms.values()) - 1000 * per_image) / (len(views) - 1) if len(views) > 1 else 0.0
    decode_ms = float(np.clip(shared, 0.0, min(view_ms.values())))
    record = Estimate(exp=cfg.exp, device=str(resolve_device(cfg.device)), threads=torch.get_num_threads(),
                      runtime=runtime, folds=n_folds, views=views, first_load_s=first_s, load_s=load_s,
                      ms_per_image=1000 * per_image, view_ms_per_image=view_ms, decode_ms=decode_ms,
                      measured_images=len(sample))  # fmt: skip
    log(f"  each view alone (ms per image): {', '.join(f'{v} {ms:.3f}' for v, ms in view_ms.items())}; "
        f"-> {cfg.run.write_estimate(record)}")  # fmt: skip
    return {"images": n_images, "folds": n_folds, "views": views, "runtime": runtime, "first_load_s": first_s,
            "load_s": load_s, "ms_per_image": 1000 * per_image, "total_s": total}  # fmt: skip
