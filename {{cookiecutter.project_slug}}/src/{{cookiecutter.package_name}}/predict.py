"""Prediction: every finished fold's best model x every TTA view, merged on probabilities, folds averaged.

outputs/<exp>/test_pred.csv   id + one column per class/label/target (and fold<k>/test_pred.csv per fold)
outputs/<exp>/oof_tta.csv     the validation rows re-predicted with the same views (cv.json: cv vs cv_tta)
Both carry the checkpoints and views they came from (core/runs.py, derived files).
`predict.runtime` chooses what runs the fold models: the checkpoints in torch, or the ONNX models `export` wrote
(fp32 or int8) in onnxruntime (modeling/predictors.py); views and merging are the same for both.
`predict --estimate N` projects the time to predict N test images, for a code competition's time limit.

`tta.views: auto`: each candidate view (`tta.candidates`) predicts every fold's validation rows once; the views are
then chosen greedily on those OOF predictions, merged in numpy (modeling/tta.greedy_views: a view is kept only when
it raises the OOF score), recorded in tta_auto.json (with the checkpoints' sha256, so a retrained fold or another
candidate list chooses again) and used for the test predictions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from .config import Config, metric_name
from .config import load as load_config
from .core.errors import UserError
from .core.runs import atomic_write_json, checksum, load_best, read_derived, read_json, stamp, write_derived
from .core.runtime import amp_dtype, compute_setup, use_channels_last
from .core.tasks import TargetScale, num_outputs
from .data.augment import Normalize, resolve_normalization
from .data.folds import expected_folds
from .data.images import DeviceLoader, make_loader
from .data.problem import build_fold_data, load_problem, pred_frame, test_dataset
from .modeling import metrics, tta
from .modeling.models import build_model
from .modeling.predictors import OnnxPredictor, Predictor, TorchPredictor


def activate(logits: torch.Tensor, task: str, scale: TargetScale | None = None) -> torch.Tensor:
    """Logits -> the task's prediction format (probabilities, or values for regression). The one place model
    outputs become predictions: regression outputs are standardised (core.tasks.TargetScale) and `scale`, the
    fold's own (`load_fold_weights`, from its best.pt), turns them back into target values."""
    logits = logits.float()
    if task == "multiclass":
        return logits.softmax(-1)
    if task == "multilabel":
        return logits.sigmoid()
    out = logits.reshape(len(logits), -1)[:, 0]
    if task == "binary":
        return out.sigmoid()
    return out if scale is None else scale.invert(out)


@torch.inference_mode()
def predict_models(
    models: Mapping[str, nn.Module | Predictor],
    loader: Iterable[dict],
    task: str,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    views: Sequence[str] = ("identity",),
    merge: str = "mean",
    activation: bool = True,
    desc: str = "predict",
    scale: TargetScale | None = None,
) -> dict[str, np.ndarray]:
    """Predictions of each of `models` for every row of `loader`, in order, from one pass over the data (training
    evaluates its raw and EMA weights together). A model is a Predictor, or a torch model on `device` under `dtype`
    autocast. `loader` is a data.images.DeviceLoader: batches on the device, images normalised as in training.
    With several views they are merged after activation (merging logits of sigmoid/softmax models is biased;
    regression merges values with a plain mean). Regression outputs are turned back into target values with the
    fold's target scale (`scale`, else each predictor's, from its best.pt). Outputs stay on the device until the
    end: copying each batch back would wait for the GPU every batch."""
    predictors = {
        name: m if isinstance(m, Predictor) else TorchPredictor(m, device or torch.device("cpu"), dtype)
        for name, m in models.items()
    }
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in predictors}
    how = "mean" if task == "regression" else merge
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        x = batch["image"]
        if not x.is_floating_point():
            raise TypeError("predict_models takes normalised images: feed it a data.images.DeviceLoader")
        for name, predictor in predictors.items():
            fold_scale = scale if scale is not None else predictor.scale
            per_view = []
            for view in views:
                logits = predictor(tta.get_view(view).apply(x.to(predictor.device, non_blocking=True)))
                per_view.append(activate(logits, task, fold_scale) if activation or len(views) > 1 else logits)
            outs[name].append(per_view[0] if len(per_view) == 1 else torch.as_tensor(tta.merge(per_view, how)))
    return {name: torch.cat(o).cpu().numpy() for name, o in outs.items()}


def predict_loader(
    model: nn.Module | Predictor, loader: Iterable[dict], task: str, *args: Any, **kwargs: Any
) -> np.ndarray:
    """predict_models for one model, with the same options."""
    return predict_models({"model": model}, loader, task, *args, **kwargs)["model"]


class _ViewStack(Predictor):
    """A predictor's outputs on several views of each batch, side by side (N, V, outputs): every view of a row from
    one pass over the data."""

    def __init__(self, predictor: Predictor, views: Sequence[str]) -> None:
        self.predictor, self.views = predictor, [tta.get_view(v) for v in views]
        self.device, self.where = predictor.device, predictor.where

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.predictor(view.apply(x)).float() for view in self.views], dim=1)


def predict_views(predictor: Predictor, loader: Iterable[dict], task: str, views: Sequence[str],
                  desc: str = "views") -> dict[str, np.ndarray]:  # fmt: skip
    """Each view's own (activated, unmerged) predictions of every row of `loader`."""
    stacked = predict_loader(_ViewStack(predictor, views), loader, task, activation=False, desc=desc)
    logits = torch.from_numpy(stacked)
    return {v: activate(logits[:, i], task, predictor.scale).numpy() for i, v in enumerate(views)}


def merge_views(preds: Sequence[np.ndarray], task: str, how: str) -> np.ndarray:
    """What predict_loader does with several views: merged after activation; regression values by their mean."""
    return preds[0] if len(preds) == 1 else np.asarray(tta.merge(preds, "mean" if task == "regression" else how))


def fold_models(cfg: Config, allow_partial: bool = False) -> list[int]:
    """The experiment's finished folds (best.pt and oof.csv): an interrupted fold's checkpoint is never used, and
    an experiment with unfinished folds stops unless `allow_partial`."""
    return cfg.run.usable_folds(expected_folds(cfg), allow_partial, "predict")


def load_fold_weights(cfg: Config, model: nn.Module, fold: int) -> TargetScale:
    """Fold k's best weights into `model`; returns the target scale its outputs are in (identity unless
    regression). Weights that do not fit the model the config builds (another backbone, in_chans...) stop with one
    line naming what the experiment was trained with."""
    path = cfg.run.fold(fold).best
    state = load_best(path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(_mismatch(cfg, path, e)) from None
    return TargetScale.from_dict(state.get("target_scale"))


def _mismatch(cfg: Config, path: Path, error: RuntimeError) -> str:
    try:
        saved = load_config(cfg.run.config).model
    except UserError:
        saved = None
    keys = ("backbone", "in_chans", "drop_rate", "drop_path_rate")
    changed = [k for k in keys if saved is not None and getattr(saved, k) != getattr(cfg.model, k)]
    if changed:
        was = ", ".join(f"model.{k}={getattr(saved, k)!r}" for k in changed)
        now = ", ".join(f"model.{k}={getattr(cfg.model, k)!r}" for k in changed)
        return (f"{path} was trained with {was} ({cfg.run.config}) but the config has {now}; predict with the "
                "experiment's own model settings, or retrain it")  # fmt: skip
    detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line or "key" in line), "")
    return f"{path} does not fit the model the config builds ({detail[:200]}); retrain the fold (train --force)"


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


Feed = Callable[[Dataset], DeviceLoader]


def feeder(cfg: Config, model: nn.Module, device: torch.device, workers: int, channels_last: bool = False) -> Feed:
    """`feed(dataset)`: a DeviceLoader of tta.batch_size for prediction, its images normalised as `model` was
    trained (its pretrained config, or augment.mean/std) and, with `channels_last`, in that memory format."""
    normalize = Normalize(*resolve_normalization(cfg.augment, model, cfg.model.in_chans)).to(device)

    def feed(dataset: Dataset) -> DeviceLoader:
        return make_loader(dataset, cfg.tta.batch_size, False, workers, device, normalize, channels_last=channels_last)

    return feed


def fold_predictors(cfg: Config, n_classes: int) -> tuple[Callable[[int], Predictor], Feed]:
    """`load(k)` -> fold k's model in the configured runtime (predict.runtime), and `feed(dataset)` -> the loader
    that feeds it. torch: one model on the device, each fold's checkpoint loaded into it in turn. onnx: the fold's
    exported model in an onnxruntime session; the torch model is then only built (on the meta device: no memory)
    for the normalisation its pretrained config names."""
    device, workers = compute_setup(cfg.device, cfg.threads, cfg.data.num_workers)
    if cfg.predict.runtime == "onnx":
        with torch.device("meta"):
            model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False)

        def load_onnx(k: int) -> Predictor:
            predictor = OnnxPredictor(_onnx_model(cfg, k), device)
            predictor.scale = TargetScale.from_dict(load_best(cfg.run.fold(k).best).get("target_scale"))
            return predictor

        return load_onnx, feeder(cfg, model, device, workers)
    model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False).to(device)
    channels_last = use_channels_last(cfg.model.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(cfg.train.amp, device)

    def load(k: int) -> Predictor:
        predictor = TorchPredictor(model, device, dtype)
        predictor.scale = load_fold_weights(cfg, model, k)
        return predictor

    return load, feeder(cfg, model, device, workers, channels_last)


# ----------------------------------------------------------------------------------------------- tta.views: auto


def checkpoint_digests(cfg: Config, folds: list[int]) -> dict[str, str]:
    """Content hashes, not times: a packaged run (Kaggle dataset) keeps its choice although its files are copies."""
    return {str(k): checksum(cfg.run.fold(k).best) for k in folds}


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
    load, feed = fold_predictors(cfg, len(problem.classes))
    ids, fold_col, per_view = [], [], {v: [] for v in candidates}
    for k in folds:
        data = build_fold_data(cfg, problem, k)
        loader = feed(data.valid)
        for v, pred in predict_views(load(k), loader, cfg.task, candidates, f"oof views {k}").items():
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


def predict_test_folds(cfg: Config, folds: list[int]) -> tuple[list[str], dict[int, np.ndarray]]:
    """Each fold model's TTA-merged test predictions -> fold<k>/test_pred.csv (pseudo-labelling for fold k may
    only use fold k's model). Returns the test ids and the predictions by fold."""
    cfg = resolve_views(cfg)
    run = cfg.run
    classes = list(run.read_classes()["classes"])
    load, feed = fold_predictors(cfg, len(classes))
    ids, dataset = test_dataset(cfg)
    loader = feed(dataset)
    preds = {}
    for k in folds:
        pred = predict_loader(load(k), loader, cfg.task, views=cfg.tta.views, merge=cfg.tta.merge, desc=f"fold {k}")
        write_derived(run.fold(k).test_pred, pred_frame(ids, pred, classes, cfg.data.id_col), prediction_source(cfg, k))
        preds[k] = pred
    return ids, preds


def predict_test(cfg: Config, folds: list[int] | None = None, allow_partial: bool = False) -> pd.DataFrame:
    """Average of the fold models' TTA-merged test predictions -> outputs/<exp>/test_pred.csv (and each fold's
    own). `folds` default: every fold, all finished (or, with `allow_partial`, the finished ones)."""
    cfg = resolve_views(cfg)
    folds = folds if folds is not None else fold_models(cfg, allow_partial)
    ids, preds = predict_test_folds(cfg, folds)
    classes = list(cfg.run.read_classes()["classes"])
    df = pred_frame(ids, sum(preds.values()) / len(folds), classes, cfg.data.id_col)
    write_derived(cfg.run.test_pred, df, folds_source(cfg, folds))
    return df


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
    frames = []
    for k in folds:
        data = build_fold_data(cfg, problem, k)
        loader = feed(data.valid)
        pred = predict_loader(load(k), loader, cfg.task, views=cfg.tta.views, merge=cfg.tta.merge, desc=f"oof {k}")
        frame = pred_frame(data.valid_ids, pred, problem.classes, cfg.data.id_col)
        frame.insert(1, "fold", k)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    write_derived(run.oof_tta, df, source)
    return df


def run_predict(cfg: Config, oof_tta: bool = True, allow_partial: bool = False) -> dict:
    """The `predict` command: test predictions, the OOF rows re-predicted with the same TTA views (unless there is
    one view, or `oof_tta` is off), and the CV summary with and without TTA. An experiment with unfinished folds
    stops unless `allow_partial` (then its finished folds are used, and cv.json says so)."""
    from .cv import summarize

    folds = fold_models(cfg, allow_partial)
    resolved = resolve_views(cfg)  # tta.views: auto chooses the views on OOF here, before the test set is seen
    df = predict_test(resolved, folds)
    print(f"{cfg.run.test_pred}: {len(df)} rows")
    if list(resolved.tta.views) != ["identity"] and oof_tta:
        predict_oof_tta(resolved, folds)
    result = summarize(cfg, allow_partial=allow_partial)
    sign = 1 if result["higher_is_better"] else -1
    if "cv_tta" in result and sign * result["cv_tta"] < sign * result["cv"]:  # TTA is chosen on OOF, not on test
        print(f"warning: TTA {list(resolved.tta.views)} scores worse on OOF ({result['cv_tta']:.5f}) than one view "
              f"({result['cv']:.5f}); try other tta.views, or tta.views=[identity]")  # fmt: skip
    return result


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
    folds, views = fold_models(cfg), list(cfg.tta.views)
    classes = list(cfg.run.read_classes()["classes"])
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
