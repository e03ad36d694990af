"""The prediction engine: fold models in the configured runtime (torch checkpoints, or the ONNX models that
`export` vouches for), fed normalised batches, activated (the one place outputs become predictions), TTA views merged
on probabilities, several models from one pass over the data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..config import Config
from ..config import load as load_config
from ..core.errors import UserError
from ..core.runs import (
    checksum,
    stamp,
)
from ..core.runtime import (
    amp_dtype,
    compute_setup,
    use_channels_last,
)
from ..core.tasks import PIXEL_TASKS, TargetScale, num_outputs
from ..data.augment import FOLD, Normalize, resolve_normalization
from ..data.folds import expected_folds
from ..data.images import DeviceLoader, make_loader
from ..modeling import tta
from ..modeling.models import build_model
from ..modeling.predictors import OnnxPredictor, Predictor, TorchPredictor


def activate(logits: torch.Tensor, task: str, scale: TargetScale | None = None) -> torch.Tensor:
    """Logits -> the task's prediction format (probabilities, or values for regression). The one place model
    outputs become predictions: regression outputs are standardised (core.tasks.TargetScale) and `scale`, the
    fold's own (`load_fold_weights`, from its best.pt), turns them back into target values."""
    logits = logits.float()
    if task == "multiclass":
        return logits.softmax(-1)
    if task in ("multilabel", *PIXEL_TASKS):  # segmentation (N, C, H, W): one independent map per class
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
                v = tta.get_view(view)
                logits = _inverted(v, predictor(v.apply(x.to(predictor.device, non_blocking=True))), x)
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
        return torch.stack([_inverted(view, self.predictor(view.apply(x)).float(), x) for view in self.views], dim=1)


def _inverted(view: tta.View, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A view's output back onto the input's pixels when it is a map (segmentation); class scores as they are."""
    return view.invert(out, tuple(x.shape[-2:])) if out.ndim == 4 else out


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
    files = cfg.run.fold(fold)
    ckpt = files.read_best()
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise UserError(_mismatch(cfg, files.best, e)) from None
    return ckpt.scale


def _mismatch(cfg: Config, path: Path, error: RuntimeError) -> str:
    try:
        saved = load_config(cfg.run.config).model
    except UserError:
        saved = None
    keys = ("backbone", "in_chans", "drop_rate", "drop_path_rate", "coord_conv")
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


def runtime_name(cfg: Config) -> str:
    """`torch`, or `onnx fp32` / `onnx int8`: what runs the fold models (predict.runtime, predict.onnx_model)."""
    return "torch" if cfg.predict.runtime == "torch" else f"onnx {cfg.predict.onnx_model}"


def predicted_as(source: dict) -> dict | None:
    """The views, merge and runtime that predictions with this `folds_source` were made with (None when the folds
    disagree: a table gathered from differently predicted folds has no one way to reproduce it)."""
    ways = {json.dumps({"views": f["views"], "merge": f["merge"], "runtime": f.get("runtime", "torch")})
            for f in source.get("folds", {}).values()}  # fmt: skip
    return json.loads(ways.pop()) if len(ways) == 1 else None


def model_digests(cfg: Config, folds: list[int]) -> dict[str, str]:
    """Fold -> sha256 of the model file each fold predicts with in the configured runtime."""
    files = {k: _onnx_model(cfg, k) if cfg.predict.runtime == "onnx" else cfg.run.fold(k).best for k in folds}
    return {str(k): checksum(path) for k, path in files.items()}


def as_decided(cfg: Config, views: list[str], merge: str, runtime: str) -> Config:
    """`cfg` predicting as recorded (Decisions): those TTA views and merge, in that runtime."""
    onnx = runtime.startswith("onnx ")
    predict = dataclasses.replace(cfg.predict, runtime="onnx" if onnx else "torch",
                                  onnx_model=runtime.split()[1] if onnx else cfg.predict.onnx_model)  # fmt: skip
    return dataclasses.replace(cfg, tta=dataclasses.replace(cfg.tta, views=list(views), merge=merge), predict=predict)


def _onnx_model(cfg: Config, fold: int) -> Path:
    return exported_onnx(cfg, fold, cfg.predict.onnx_model)  # export.json vouches for it (parity, checkpoint, sha256)


def fold_stats(cfg: Config, fold: int) -> tuple[list[float], list[float]]:
    """augment.mean/std: fold: the statistics fold `fold` was trained with, as its training recorded them."""
    saved = cfg.run.fold(fold).read_normalization()
    return saved.mean, saved.std


class Feed:
    """`feed(dataset)`: a DeviceLoader of tta.batch_size for prediction, its images normalised as the model was
    trained (its pretrained config, or augment.mean/std) and, with `channels_last`, in that memory format. With
    augment.mean/std: fold, `use_fold(k)` sets fold k's statistics (from the run folder) in every loader it made;
    fold_predictors' `load(k)` calls it. Until then such a loader refuses to run."""

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device, workers: int,
                 channels_last: bool = False) -> None:  # fmt: skip
        self.cfg, self.device, self.workers, self.channels_last = cfg, device, workers, channels_last
        self.per_fold = cfg.augment.mean == FOLD
        c = cfg.model.in_chans
        stats = ([0.0] * c, [1.0] * c) if self.per_fold else None
        self.normalize = Normalize(*resolve_normalization(cfg.augment, model, c, stats)).to(device)
        self.fold: int | None = None

    def use_fold(self, fold: int) -> None:
        if self.per_fold and self.fold != fold:
            self.normalize.load_(*fold_stats(self.cfg, fold))
        self.fold = fold

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_fold and self.fold is None:
            raise RuntimeError("augment.mean/std: fold: call use_fold(k) before predicting")
        return self.normalize(x)

    def __call__(self, dataset: Dataset) -> DeviceLoader:
        return make_loader(dataset, self.cfg.tta.batch_size, False, self.workers, self.device, self._normalize,
                           channels_last=self.channels_last)  # fmt: skip


def feeder(cfg: Config, model: nn.Module, device: torch.device, workers: int, channels_last: bool = False) -> Feed:
    """A Feed for `model`'s predictions (see Feed)."""
    return Feed(cfg, model, device, workers, channels_last)


def fold_predictors(cfg: Config, n_classes: int) -> tuple[Callable[[int], Predictor], Feed]:
    """`load(k)` -> fold k's model in the configured runtime (predict.runtime), and `feed(dataset)` -> the loader
    that feeds it. torch: one model on the device, each fold's checkpoint loaded into it in turn. onnx: the fold's
    exported model in an onnxruntime session; the torch model is then only built (on the meta device: no memory)
    for the normalisation its pretrained config names."""
    device, workers = compute_setup(cfg.device, cfg.threads, cfg.data.num_workers)
    if cfg.predict.runtime == "onnx":
        with torch.device("meta"):
            model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False)

        feed = feeder(cfg, model, device, workers)

        def load_onnx(k: int) -> Predictor:
            predictor = OnnxPredictor(_onnx_model(cfg, k), device)
            predictor.scale = cfg.run.fold(k).read_best().scale  # the fold's regression target scale
            feed.use_fold(k)
            return predictor

        return load_onnx, feed
    model = build_model(cfg, num_outputs(cfg.task, n_classes), pretrained=False).to(device)
    channels_last = use_channels_last(cfg.model.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(cfg.train.amp, device)
    feed = feeder(cfg, model, device, workers, channels_last)

    def load(k: int) -> Predictor:
        predictor = TorchPredictor(model, device, dtype)
        predictor.scale = load_fold_weights(cfg, model, k)
        feed.use_fold(k)  # augment.mean/std: fold: fold k's statistics in every loader `feed` made
        return predictor

    return load, feed


ONNX_VARIANT = {"fp32": "onnx", "int8": "onnx_int8"}  # predict.onnx_model -> its variant


def exported_onnx(cfg: Config, fold: int, which: str = "fp32") -> Path:
    """Fold `fold`'s exported ONNX model (`which`: fp32 | int8) for predict.runtime=onnx, after checking that
    export.json vouches for it: exported from the checkpoint the fold has now, the very file `export` wrote (its
    sha256), fp32 parity with torch held."""
    run, variant = cfg.run, ONNX_VARIANT[which]
    path = run.export_fold(fold).onnx if which == "fp32" else run.export_fold(fold).onnx_int8
    if not run.export_json.is_file():
        raise UserError(f"{run.export_json} not found: predict.runtime=onnx runs the models that `export` writes; "
                        f"run `make export EXP={cfg.exp}` first (or set predict.runtime=torch)")  # fmt: skip
    entry = run.read_export().folds.get(str(fold))
    if entry is None or variant not in entry.variants or not path.is_file():
        raise UserError(f"{path}: fold {fold} has no exported {variant} model; export it again with {variant} "
                        f"in export.variants (predict.onnx_model={which})")  # fmt: skip
    if entry.checkpoint != checksum(run.fold(fold).best):
        raise UserError(f"{path} was exported from another {run.fold(fold).best.name} than fold {fold} has now "
                        f"(retrained since?): run `make export EXP={cfg.exp}` again")  # fmt: skip
    if entry.variants[variant].sha256 != checksum(path):
        raise UserError(f"{path} is not the file `export` wrote (its sha256 differs from the one in "
                        f"{run.export_json.name}): replaced since? run `make export EXP={cfg.exp}` again")  # fmt: skip
    onnx = entry.variants.get("onnx")
    if onnx is None or not onnx.parity_ok:
        diff = onnx.max_abs_diff if onnx is not None else float("nan")
        tolerance = onnx.tolerance if onnx is not None and onnx.tolerance is not None else float("nan")
        raise UserError(f"{run.export_json}: fold {fold}'s ONNX model differs from torch by {diff:.2e} > "
                        f"{tolerance:.2e} (export.tolerance); use predict.runtime=torch or export again with another "
                        "export.exporter")  # fmt: skip
    return path
