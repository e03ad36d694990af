"""Prediction: every finished fold's best model x every TTA view, merged on probabilities, folds averaged.

outputs/<exp>/test_pred.csv   id + one column per class/label/target (and fold<k>/test_pred.csv per fold)
outputs/<exp>/oof_tta.csv     the validation rows re-predicted with the same views (cv.json: cv vs cv_tta)
Both carry the checkpoints and views they came from (core/runs.py, derived files).

`tta.views: auto`: each candidate view (`tta.candidates`) predicts every fold's validation rows once; the views are
then chosen greedily on those OOF predictions, merged in numpy (modeling/tta.greedy_views: a view is kept only when
it raises the OOF score), recorded in tta_auto.json (with the checkpoints' sha256, so a retrained fold or another
candidate list chooses again) and used for the test predictions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import Config, metric_name
from .core.errors import UserError
from .core.runs import atomic_write_json, file_sha256, load_best, read_derived, read_json, stamp, write_derived
from .core.runtime import amp_dtype, autocast, resolve_device
from .core.tasks import num_outputs
from .data.augment import resolve_normalization
from .data.problem import build_fold_data, load_problem, pred_frame, test_dataset
from .modeling import metrics, tta
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


class _ViewStack(nn.Module):
    """The model's outputs on several views of each batch, side by side (N, V, outputs): every view of a row from
    one pass over the data."""

    def __init__(self, model: nn.Module, views: Sequence[str]) -> None:
        super().__init__()
        self.model, self.views = model, [tta.get_view(v) for v in views]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(view.apply(x)).float() for view in self.views], dim=1)


def predict_views(model: nn.Module, loader: DataLoader, task: str, device: torch.device, dtype: torch.dtype | None,
                  views: Sequence[str], desc: str = "views") -> dict[str, np.ndarray]:  # fmt: skip
    """Each view's own (activated, unmerged) predictions of every row of `loader`."""
    logits = torch.from_numpy(predict_loader(_ViewStack(model, views), loader, task, device, dtype,
                                             activation=False, desc=desc))  # fmt: skip
    return {v: activate(logits[:, i], task).numpy() for i, v in enumerate(views)}


def merge_views(preds: Sequence[np.ndarray], task: str, how: str) -> np.ndarray:
    """What predict_loader does with several views: merged after activation; regression values by their mean."""
    return preds[0] if len(preds) == 1 else np.asarray(tta.merge(preds, "mean" if task == "regression" else how))


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


def _predictor(cfg: Config, n_classes: int) -> tuple[nn.Module, torch.device, torch.dtype | None, tuple, tuple]:
    """An untrained model of the experiment's shape on its device, its autocast dtype and input normalisation;
    fold checkpoints are loaded into it one after the other."""
    device = resolve_device(cfg.device)
    model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False).to(device)
    mean, std = resolve_normalization(cfg.augment, model, cfg.model.in_chans)
    return model, device, amp_dtype(cfg.train.amp, device), mean, std


# ----------------------------------------------------------------------------------------------- tta.views: auto


def checkpoint_digests(cfg: Config, folds: list[int]) -> dict[str, str]:
    """Content hashes, not times: a packaged run (Kaggle dataset) keeps its choice although its files are copies."""
    return {str(k): file_sha256(cfg.run.fold(k).best) for k in folds}


def _candidates(cfg: Config) -> list[str]:
    return ["identity", *[v for v in dict.fromkeys(cfg.tta.candidates) if v != "identity"]]


def read_choice(cfg: Config) -> dict | None:
    """tta_auto.json if it was chosen among the configured candidates and merge by the current checkpoints."""
    path = cfg.run.tta_auto
    if not path.is_file():
        return None
    choice = read_json(path)
    same = choice.get("candidates") == _candidates(cfg) and choice.get("merge") == cfg.tta.merge
    return choice if same and choice.get("checkpoints") == checkpoint_digests(cfg, cfg.run.finished_folds()) else None


def with_views(cfg: Config, views: Sequence[str]) -> Config:
    return dataclasses.replace(cfg, tta=dataclasses.replace(cfg.tta, views=list(views)))


def resolve_views(cfg: Config, choose: bool = True) -> Config | None:
    """`cfg` with concrete TTA views: as configured, or (tta.views: auto) those chosen on OOF, choosing them now if
    no valid choice exists and `choose` (else None)."""
    if list(cfg.tta.views) != [tta.AUTO]:
        return cfg
    choice = read_choice(cfg) or (choose_views(cfg) if choose else None)
    return None if choice is None else with_views(cfg, choice["views"])


def choose_views(cfg: Config) -> dict:
    """Greedy forward selection of TTA views on OOF (see the module's doc) -> tta_auto.json; the chosen views' merged
    OOF predictions become oof_tta.csv, as `predict_oof_tta` would write them."""
    run, folds, candidates = cfg.run, fold_models(cfg), _candidates(cfg)
    problem = load_problem(cfg)
    model, device, dtype, mean, std = _predictor(cfg, len(problem.classes))
    ids, fold_col, per_view = [], [], {v: [] for v in candidates}
    for k in folds:
        data = build_fold_data(cfg, problem, k, mean, std)
        loader = DataLoader(data.valid, batch_size=cfg.tta.batch_size, num_workers=cfg.data.num_workers)
        model.load_state_dict(load_best(run.fold(k).best)["model"])
        for v, pred in predict_views(model, loader, cfg.task, device, dtype, candidates, f"oof views {k}").items():
            per_view[v].append(pred)
        ids += data.valid_ids
        fold_col += [k] * len(data.valid_ids)
    preds = {v: np.concatenate(parts) for v, parts in per_view.items()}
    position = {i: n for n, i in enumerate(problem.ids)}
    y = problem.y[[position[i] for i in ids]]
    metric = metrics.get_metric(metric_name(cfg))
    sign = 1.0 if metric.higher_is_better else -1.0

    def gain(pred: np.ndarray) -> float:
        score = metrics.score(metric.name, y, pred, cfg.task)
        return -np.inf if np.isnan(score) else sign * score

    chosen, steps = tta.greedy_views(preds, gain, "mean" if cfg.task == "regression" else cfg.tta.merge)
    choice = {
        "candidates": candidates,
        "merge": cfg.tta.merge,
        "metric": metric.name,
        "views": chosen,
        "identity": sign * steps[0]["gain"],
        "chosen": sign * steps[-1]["gain"],
        "steps": [{"view": st["view"], "score": sign * st["gain"]} for st in steps],
        "checkpoints": checkpoint_digests(cfg, folds),
    }
    resolved = with_views(cfg, chosen)
    oof = pred_frame(ids, merge_views([preds[v] for v in chosen], cfg.task, cfg.tta.merge), problem.classes,
                     cfg.data.id_col)  # fmt: skip
    oof.insert(1, "fold", fold_col)
    write_derived(run.oof_tta, oof, folds_source(resolved, folds))
    atomic_write_json(run.tta_auto, choice)
    print(f"{cfg.exp}: TTA views chosen on OOF {chosen}: {metric.name} {choice['chosen']:.5f} "
          f"(identity alone {choice['identity']:.5f}; candidates {candidates})")  # fmt: skip
    return choice


# ----------------------------------------------------------------------------------------------- test and OOF


def predict_test(cfg: Config, folds: list[int] | None = None) -> pd.DataFrame:
    """Average of the fold models' TTA-merged test predictions -> outputs/<exp>/test_pred.csv, and each fold's
    own (pseudo-labelling for fold k may only use fold k's model)."""
    cfg = resolve_views(cfg)
    run, folds = cfg.run, folds if folds is not None else fold_models(cfg)
    classes = list(run.read_classes()["classes"])
    model, device, dtype, mean, std = _predictor(cfg, len(classes))
    ids, dataset = test_dataset(cfg, mean, std)
    loader = DataLoader(dataset, batch_size=cfg.tta.batch_size, num_workers=cfg.data.num_workers)
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
    cfg = resolve_views(cfg)
    run, folds = cfg.run, fold_models(cfg)
    source = folds_source(cfg, folds)
    done = read_derived(run.oof_tta, source, cfg.data.id_col)
    if done is not None:
        return done
    problem = load_problem(cfg)
    model, device, dtype, mean, std = _predictor(cfg, len(problem.classes))
    frames = []
    for k in folds:
        data = build_fold_data(cfg, problem, k, mean, std)
        loader = DataLoader(data.valid, batch_size=cfg.tta.batch_size, num_workers=cfg.data.num_workers)
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

    resolved = resolve_views(cfg)  # tta.views: auto chooses the views on OOF here, before the test set is seen
    df = predict_test(resolved)
    print(f"{cfg.run.test_pred}: {len(df)} rows")
    if list(resolved.tta.views) != ["identity"] and oof_tta:
        predict_oof_tta(resolved)
    result = summarize(cfg)
    sign = 1 if result["higher_is_better"] else -1
    if "cv_tta" in result and sign * result["cv_tta"] < sign * result["cv"]:  # TTA is chosen on OOF, not on test
        print(f"warning: TTA {list(resolved.tta.views)} scores worse on OOF ({result['cv_tta']:.5f}) than one view "
              f"({result['cv']:.5f}); try other tta.views, or tta.views=[identity]")  # fmt: skip
    return result
