"""Prediction: every fold's best model x every TTA view, merged on probabilities, folds averaged.

outputs/<exp>/test_pred.csv   id + one column per class/label/target
outputs/<exp>/oof_tta.csv     the validation rows re-predicted with the same views (cv.json: cv vs cv_tta)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import tta
from .artefacts import atomic_write_csv, fold_dir
from .checkpoint import load_best
from .config import Config
from .errors import UserError


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
    model: nn.Module,
    loader: DataLoader,
    task: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    views: Sequence[str] = ("identity",),
    merge: str = "mean",
    activation: bool = True,
    desc: str = "predict",
) -> np.ndarray:
    """Predictions for every row of `loader`, in order. With several views they are merged after activation
    (merging logits of sigmoid/softmax models is biased; regression merges values with a plain mean)."""
    from .runtime import autocast

    model.eval()
    outs = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        x = batch["image"].to(device, non_blocking=True)
        per_view = []
        for name in views:
            with autocast(device, dtype):
                logits = model(tta.get_view(name).apply(x)).float()
            per_view.append(activate(logits, task) if activation or len(views) > 1 else logits)
        if len(per_view) == 1:
            outs.append(per_view[0].cpu())
        else:
            how = "mean" if task == "regression" else merge
            outs.append(torch.as_tensor(tta.merge(per_view, how)).cpu())
    return torch.cat(outs).numpy()


def fold_models(cfg: Config) -> list[int]:
    found = sorted(int(p.parent.name[4:]) for p in cfg.run_dir.glob("fold*/best.pt"))
    if not found:
        raise UserError(f"{cfg.run_dir}: no fold*/best.pt found; train the experiment first (make train EXP={cfg.exp})")
    return found


def _predictor(cfg: Config, n_classes: int) -> tuple[nn.Module, torch.device, torch.dtype | None, tuple, tuple]:
    """An untrained model of the experiment's shape on its device, its autocast dtype and input normalisation;
    fold checkpoints are loaded into it one after the other."""
    from .augment import resolve_normalization
    from .models import build_model, num_outputs
    from .runtime import amp_dtype, resolve_device

    device = resolve_device(cfg.device)
    model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False).to(device)
    mean, std = resolve_normalization(cfg.augment, model, cfg.model.in_chans)
    return model, device, amp_dtype(cfg.train.amp, device), mean, std


def predict_test(cfg: Config, folds: list[int] | None = None) -> pd.DataFrame:
    """Average of the fold models' TTA-merged test predictions -> outputs/<exp>/test_pred.csv."""
    from .fold_data import pred_frame, test_dataset

    folds = folds if folds is not None else fold_models(cfg)
    classes = load_classes(cfg)
    model, device, dtype, mean, std = _predictor(cfg, len(classes))
    ids, dataset = test_dataset(cfg, mean, std)
    loader = DataLoader(dataset, batch_size=cfg.tta.batch_size, num_workers=cfg.data.num_workers)
    total = None
    for k in folds:
        model.load_state_dict(load_best(fold_dir(cfg.run_dir, k) / "best.pt")["model"])
        pred = predict_loader(model, loader, cfg.task, device, dtype, cfg.tta.views, cfg.tta.merge, desc=f"fold {k}")
        # Per-fold predictions too: pseudo-labelling for fold k may only use fold k's model.
        atomic_write_csv(fold_dir(cfg.run_dir, k) / "test_pred.csv", pred_frame(ids, pred, classes, cfg.data.id_col))
        total = pred if total is None else total + pred
    df = pred_frame(ids, total / len(folds), classes, cfg.data.id_col)
    atomic_write_csv(cfg.run_dir / "test_pred.csv", df)
    return df


def predict_oof_tta(cfg: Config) -> pd.DataFrame:
    """Re-predict each fold's validation rows with the TTA views, so the views are chosen on OOF, not on test."""
    from .fold_data import build_fold_data, load_problem, pred_frame

    problem = load_problem(cfg)
    model, device, dtype, mean, std = _predictor(cfg, len(problem.classes))
    frames = []
    for k in fold_models(cfg):
        data = build_fold_data(cfg, problem, k, mean, std)
        loader = DataLoader(data.valid, batch_size=cfg.tta.batch_size, num_workers=cfg.data.num_workers)
        model.load_state_dict(load_best(fold_dir(cfg.run_dir, k) / "best.pt")["model"])
        pred = predict_loader(model, loader, cfg.task, device, dtype, cfg.tta.views, cfg.tta.merge, desc=f"oof {k}")
        frame = pred_frame(data.valid_ids, pred, problem.classes, cfg.data.id_col)
        frame.insert(1, "fold", k)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    atomic_write_csv(cfg.run_dir / "oof_tta.csv", df)
    return df


def load_classes(cfg: Config) -> list[str]:
    from .artefacts import read_json

    path = cfg.run_dir / "classes.json"
    if not path.is_file():
        raise UserError(f"{path} not found; train the experiment first")
    return list(read_json(path)["classes"])
