"""Prediction: every finished fold's best model x every TTA view, merged on probabilities, folds averaged.

outputs/<exp>/test_pred.csv   id + one column per class/label/target (and fold<k>/test_pred.csv per fold)
outputs/<exp>/oof_tta.csv     the validation rows re-predicted with the same views (cv.json: cv vs cv_tta)
Both carry the checkpoints and views they came from (core/runs.py, derived files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .config import Config
from .core.errors import UserError
from .core.runs import load_best, read_derived, stamp, write_derived
from .core.runtime import amp_dtype, autocast, compute_setup, use_channels_last
from .core.tasks import num_outputs
from .data.augment import Normalize, resolve_normalization
from .data.images import DeviceLoader, make_loader
from .data.problem import build_fold_data, load_problem, pred_frame, test_dataset
from .modeling import tta
from .modeling.models import build_model


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
def predict_models(
    models: Mapping[str, nn.Module],
    loader: Iterable[dict],
    task: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    views: Sequence[str] = ("identity",),
    merge: str = "mean",
    activation: bool = True,
    desc: str = "predict",
) -> dict[str, np.ndarray]:
    """Predictions of each of `models` for every row of `loader` (a DeviceLoader: batches on `device`, images
    normalised), in order, from one pass over the data. With several views they are merged after activation
    (merging logits of sigmoid/softmax models is biased; regression merges values with a plain mean).
    Outputs stay on the device until the end: copying each batch back would wait for the GPU every batch."""
    for model in models.values():
        model.eval()
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        x = batch["image"]
        if not x.is_floating_point():
            raise TypeError("predict_models takes normalised images: wrap the DataLoader in data.images.DeviceLoader")
        for name, model in models.items():
            per_view = []
            for view in views:
                with autocast(device, dtype):
                    logits = model(tta.get_view(view).apply(x)).float()
                per_view.append(activate(logits, task) if activation or len(views) > 1 else logits)
            how = "mean" if task == "regression" else merge
            outs[name].append(per_view[0] if len(per_view) == 1 else torch.as_tensor(tta.merge(per_view, how)))
    return {name: torch.cat(o).cpu().numpy() for name, o in outs.items()}


def predict_loader(
    model: nn.Module,
    loader: Iterable[dict],
    task: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    views: Sequence[str] = ("identity",),
    merge: str = "mean",
    activation: bool = True,
    desc: str = "predict",
) -> np.ndarray:
    """predict_models for one model."""
    return predict_models({"model": model}, loader, task, device, dtype, views, merge, activation, desc)["model"]


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
    """What a fold's predictions depend on: the checkpoint, the views and how they are merged."""
    return {"checkpoint": stamp(cfg.run.fold(fold).best), "views": list(cfg.tta.views), "merge": cfg.tta.merge}


def folds_source(cfg: Config, folds: list[int]) -> dict:
    """What predictions averaged or gathered over `folds` depend on."""
    return {"folds": {str(k): prediction_source(cfg, k) for k in folds}}


def predictor(cfg: Config, n_classes: int) -> tuple[nn.Module, torch.device, torch.dtype | None, Callable]:
    """An untrained model of the experiment's shape on its device (fold checkpoints are loaded into it one after
    the other), its autocast dtype, and `loader(dataset)`: a DeviceLoader of tta.batch_size that feeds it, its
    images normalised as in training."""
    device, workers = compute_setup(cfg.device, cfg.threads, cfg.data.num_workers)
    model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False).to(device)
    channels_last = use_channels_last(cfg.model.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalize(*resolve_normalization(cfg.augment, model, cfg.model.in_chans)).to(device)

    def loader(dataset: Dataset) -> DeviceLoader:
        return make_loader(dataset, cfg.tta.batch_size, False, workers, device, normalize, channels_last=channels_last)

    return model, device, amp_dtype(cfg.train.amp, device), loader


def predict_test(cfg: Config, folds: list[int] | None = None) -> pd.DataFrame:
    """Average of the fold models' TTA-merged test predictions -> outputs/<exp>/test_pred.csv, and each fold's
    own (pseudo-labelling for fold k may only use fold k's model)."""
    run, folds = cfg.run, folds if folds is not None else fold_models(cfg)
    classes = list(run.read_classes()["classes"])
    model, device, dtype, make = predictor(cfg, len(classes))
    ids, dataset = test_dataset(cfg)
    loader = make(dataset)
    total = None
    for k in folds:
        model.load_state_dict(load_best(run.fold(k).best)["model"])
        pred = predict_loader(model, loader, cfg.task, device, dtype, cfg.tta.views, cfg.tta.merge, desc=f"fold {k}")
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
    model, device, dtype, make = predictor(cfg, len(problem.classes))
    frames = []
    for k in folds:
        data = build_fold_data(cfg, problem, k)
        loader = make(data.valid)
        model.load_state_dict(load_best(run.fold(k).best)["model"])
        pred = predict_loader(model, loader, cfg.task, device, dtype, cfg.tta.views, cfg.tta.merge, desc=f"oof {k}")
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
