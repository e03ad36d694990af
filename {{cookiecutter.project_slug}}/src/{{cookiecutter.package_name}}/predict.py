"""Prediction: every finished fold's best model x every TTA view, merged on probabilities, folds averaged.

outputs/<exp>/test_pred.csv   id + one column per class/label/target (and fold<k>/test_pred.csv per fold)
outputs/<exp>/oof_tta.csv     the validation rows re-predicted with the same views (cv.json: cv vs cv_tta)
Both carry the checkpoints and views they came from (core/runs.py, derived files).
`predict.runtime` chooses what runs the fold models: the checkpoints in torch, or the ONNX models `export` wrote
(fp32 or int8) in onnxruntime (modeling/predictors.py); views and merging are the same for both.
`predict --estimate N` projects the time to predict N test images, for a code competition's time limit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .config import Config
from .core.errors import UserError
from .core.runs import load_best, read_derived, stamp, write_derived
from .core.runtime import amp_dtype, resolve_device
from .core.tasks import num_outputs
from .data.augment import resolve_normalization
from .data.problem import build_fold_data, load_problem, pred_frame, test_dataset
from .modeling import tta
from .modeling.models import build_model
from .modeling.predictors import OnnxPredictor, Predictor, TorchPredictor


def activate(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits -> the task's prediction format (probabilities, or values for regression)."""
    logits = logits.float()
    if task == "multiclass":
        return logits.softmax(-1)
    if task == "multilabel":
        return logits.sigmoid()
    out = logits.reshape(len(logits), -1)[:, 0]
    return out.sigmoid() if task == "binary" else out


@torch.inference_mode()
def predict_loader(
    model: nn.Module | Predictor,
    loader: DataLoader,
    task: str,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    views: Sequence[str] = ("identity",),
    merge: str = "mean",
    activation: bool = True,
    desc: str = "predict",
) -> np.ndarray:
    """Predictions for every row of `loader`, in order, by a Predictor (or a torch model on `device` under `dtype`
    autocast). With several views they are merged after activation (merging logits of sigmoid/softmax models is
    biased; regression merges values with a plain mean)."""
    predictor = model if isinstance(model, Predictor) else TorchPredictor(model, device or torch.device("cpu"), dtype)
    outs = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        x = batch["image"].to(predictor.device, non_blocking=True)
        per_view = []
        for name in views:
            logits = predictor(tta.get_view(name).apply(x))
            per_view.append(activate(logits, task) if activation or len(views) > 1 else logits)
        if len(per_view) == 1:
            outs.append(per_view[0].cpu())
        else:
            how = "mean" if task == "regression" else merge
            outs.append(torch.as_tensor(tta.merge(per_view, how)).cpu())
    return torch.cat(outs).numpy()


def fold_models(cfg: Config) -> list[int]:
    """The experiment's finished folds (best.pt and oof.csv): an interrupted fold's checkpoint is never used."""
    run = cfg.run
    found = run.finished_folds()
    if not found:
        raise UserError(f"{run.path}: no finished fold (fold<k>/best.pt + oof.csv); train the experiment first "
                        f"(make train EXP={cfg.exp})")  # fmt: skip
    unfinished = sorted(set(run.fold_numbers()) - set(found))
    if unfinished:
        print(f"{cfg.exp}: fold(s) {unfinished} not finished, not used (finish them with `train --fold ...`)")
    return found


def prediction_source(cfg: Config, fold: int) -> dict:
    """What a fold's predictions depend on: the checkpoint, the views and how they are merged (and the exported
    model, when onnxruntime runs one)."""
    source = {"checkpoint": stamp(cfg.run.fold(fold).best), "views": list(cfg.tta.views), "merge": cfg.tta.merge}
    if cfg.predict.runtime == "onnx":
        source |= {"runtime": f"onnx {cfg.predict.onnx_model}", "model": stamp(_onnx_model(cfg, fold))}
    return source


def folds_source(cfg: Config, folds: list[int]) -> dict:
    """What predictions averaged or gathered over `folds` depend on."""
    return {"folds": {str(k): prediction_source(cfg, k) for k in folds}}


def _onnx_model(cfg: Config, fold: int) -> Path:
    from .export import exported_onnx  # the export stage vouches for its files (parity, checkpoint)

    return exported_onnx(cfg, fold, cfg.predict.onnx_model)


def fold_predictors(cfg: Config, n_classes: int) -> tuple[Callable[[int], Predictor], tuple, tuple]:
    """`load(k)` -> fold k's model in the configured runtime (predict.runtime), and the input normalisation.
    torch: one model on the device, each fold's checkpoint loaded into it in turn. onnx: the fold's exported model
    in an onnxruntime session; the torch model is then only built (on the meta device: no memory) for the
    normalisation its pretrained config names."""
    device = resolve_device(cfg.device)
    if cfg.predict.runtime == "onnx":
        with torch.device("meta"):
            model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False)
        mean, std = resolve_normalization(cfg.augment, model, cfg.model.in_chans)
        return (lambda k: OnnxPredictor(_onnx_model(cfg, k), device)), mean, std
    model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False).to(device)
    mean, std = resolve_normalization(cfg.augment, model, cfg.model.in_chans)
    dtype = amp_dtype(cfg.train.amp, device)

    def load(k: int) -> Predictor:
        model.load_state_dict(load_best(cfg.run.fold(k).best)["model"])
        return TorchPredictor(model, device, dtype)

    return load, mean, std


def predict_test(cfg: Config, folds: list[int] | None = None) -> pd.DataFrame:
    """Average of the fold models' TTA-merged test predictions -> outputs/<exp>/test_pred.csv, and each fold's
    own (pseudo-labelling for fold k may only use fold k's model)."""
    run, folds = cfg.run, folds if folds is not None else fold_models(cfg)
    classes = list(run.read_classes()["classes"])
    load, mean, std = fold_predictors(cfg, len(classes))
    ids, dataset = test_dataset(cfg, mean, std)
    loader = DataLoader(dataset, batch_size=cfg.tta.batch_size, num_workers=cfg.data.num_workers)
    total = None
    for k in folds:
        pred = predict_loader(load(k), loader, cfg.task, views=cfg.tta.views, merge=cfg.tta.merge, desc=f"fold {k}")
        write_derived(run.fold(k).test_pred, pred_frame(ids, pred, classes, cfg.data.id_col), prediction_source(cfg, k))
        total = pred if total is None else total + pred
    df = pred_frame(ids, total / len(folds), classes, cfg.data.id_col)
    write_derived(run.test_pred, df, folds_source(cfg, folds))
    return df


def predict_oof_tta(cfg: Config) -> pd.DataFrame:
    """Re-predict each fold's validation rows with the TTA views, so the views are chosen on OOF, not on test.
    Reused while the views, the merge and every checkpoint are those it was made with."""
    run, folds = cfg.run, fold_models(cfg)
    source = folds_source(cfg, folds)
    done = read_derived(run.oof_tta, source, cfg.data.id_col)
    if done is not None:
        return done
    problem = load_problem(cfg)
    load, mean, std = fold_predictors(cfg, len(problem.classes))
    frames = []
    for k in folds:
        data = build_fold_data(cfg, problem, k, mean, std)
        loader = DataLoader(data.valid, batch_size=cfg.tta.batch_size, num_workers=cfg.data.num_workers)
        pred = predict_loader(load(k), loader, cfg.task, views=cfg.tta.views, merge=cfg.tta.merge, desc=f"oof {k}")
        frame = pred_frame(data.valid_ids, pred, problem.classes, cfg.data.id_col)
        frame.insert(1, "fold", k)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    write_derived(run.oof_tta, df, source)
    return df


def run_predict(cfg: Config, oof_tta: bool = True) -> dict:
    """The `predict` command: test predictions, the OOF rows re-predicted with the same TTA views (unless there is
    one view, or `oof_tta` is off), and the CV summary with and without TTA."""
    from .cv import summarize

    df = predict_test(cfg)
    print(f"{cfg.run.test_pred}: {len(df)} rows")
    if list(cfg.tta.views) != ["identity"] and oof_tta:
        predict_oof_tta(cfg)
    result = summarize(cfg)
    sign = 1 if result["higher_is_better"] else -1
    if "cv_tta" in result and sign * result["cv_tta"] < sign * result["cv"]:  # TTA is chosen on OOF, not on test
        print(f"warning: TTA {list(cfg.tta.views)} scores worse on OOF ({result['cv_tta']:.5f}) than one view "
              f"({result['cv']:.5f}); try other tta.views, or tta.views=[identity]")  # fmt: skip
    return result


def estimate(cfg: Config, n_images: int, batches: int = 3, log: Callable[[str], None] = print) -> dict:
    """Projected time of `predict` on `n_images` test images on this machine, with the configured runtime, folds
    and TTA views. Timed: the first fold's model loaded (with the one-off imports and model building), a second
    fold's loaded, then up to `batches` batches of real test images through the first with every view, decoding
    and augmenting included (after one untimed warm-up batch that pays the first-call costs). Projected:
    first load + (folds - 1) x load + folds x n_images x per-image time. With data.cache_images the real run
    decodes each image once, not once per fold: the projection is an upper bound, as a time limit wants. The OOF
    re-prediction is left out: a code competition's notebook predicts the test set only."""
    if n_images < 1:
        raise UserError(f"--estimate {n_images}: expected the number of test images, >= 1")
    folds, views = fold_models(cfg), list(cfg.tta.views)
    classes = list(cfg.run.read_classes()["classes"])
    start = time.perf_counter()
    load, mean, std = fold_predictors(cfg, len(classes))
    predictor = load(folds[0])
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    predictor = load(folds[-1])  # loading the next fold: what each fold after the first costs
    load_s = time.perf_counter() - start
    uncached = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_images=False))
    _, dataset = test_dataset(uncached, mean, std)  # decoded inside the timed pass
    size = cfg.tta.batch_size
    sample = Subset(dataset, range(min(len(dataset), batches * size)))
    if len(sample) == 0:
        raise UserError(f"{cfg.data.test_csv}: no test images to time")
    loader = DataLoader(sample, batch_size=size, num_workers=cfg.data.num_workers)
    warm = DataLoader(Subset(dataset, range(min(len(dataset), size))), batch_size=size)
    predict_loader(predictor, warm, cfg.task, views=views, merge=cfg.tta.merge, desc="warm-up")
    start = time.perf_counter()
    predict_loader(predictor, loader, cfg.task, views=views, merge=cfg.tta.merge, desc="timing")
    per_image = (time.perf_counter() - start) / len(sample)
    n_folds = len(folds)
    total = first_s + (n_folds - 1) * load_s + n_folds * n_images * per_image
    runtime = "torch" if cfg.predict.runtime == "torch" else f"onnx {cfg.predict.onnx_model}"
    log(f"{cfg.exp}: {n_folds} fold(s) x {len(views)} view(s) {views}, runtime {runtime}: {predictor.where}")
    log(f"  measured on {len(sample)} test images through fold {folds[-1]}: {1000 * per_image:.3f} ms per image "
        f"(all {len(views)} views, decoding included); loading the first fold's model {first_s:.3f} s (imports "
        f"included), another {load_s:.3f} s")  # fmt: skip
    log(f"  projected for {n_images} images: {first_s:.3f} s + {n_folds - 1} x {load_s:.3f} s + {n_folds} folds x "
        f"{n_images} x {1000 * per_image:.3f} ms = {total:.1f} s ({total / 60:.1f} min)")  # fmt: skip
    return {"images": n_images, "folds": n_folds, "views": views, "runtime": runtime, "first_load_s": first_s,
            "load_s": load_s, "ms_per_image": 1000 * per_image, "total_s": total}  # fmt: skip
