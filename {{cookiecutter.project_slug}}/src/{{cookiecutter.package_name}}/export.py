"""`export`: every finished fold's best model in the forms a deployment takes, each checked and measured.

    outputs/<exp>/export/fold<k>/model.ts          TorchScript (torch.jit.trace)
                                 model.onnx        ONNX with a dynamic batch axis
                                 model_int8.onnx   ONNX int8: static quantisation calibrated on fold k's training images
                                 model_dynamic_int8.onnx   ONNX int8, dynamic quantisation (no calibration)
                                 model_qat_int8.onnx       ONNX int8 after a quantisation-aware fine-tune (export.qat_*)
                                 pruned.pt         globally magnitude-pruned weights (optionally fine-tuned)
    outputs/<exp>/export/export.json               per fold and variant: OOF score on fold k's validation rows,
                                                   max |probability difference| with torch, file size, CPU images/s,
                                                   the file's sha256; each variant's overall OOF score; the
                                                   checkpoint's sha256 it came from (core/runs.ExportManifest)

Each variant is scored like the fp32 torch model it came from: on the fold's validation rows (never seen in
training, calibration or fine-tuning), so the table says what int8 or pruning costs in the competition's metric.
Parity and speed are measured on the CPU (a code competition's notebook may have no GPU) on the first
`export.check_batches` validation batches, decoded beforehand: images/s is the model's, not the loader's.
An ONNX model further than `export.tolerance` from torch (on probabilities; relative to the largest value for
regression) is recorded as failing and `predict.runtime=onnx` refuses it, as it refuses a model exported from
another checkpoint than the fold has now, or a file whose sha256 is not the one export.json records.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .config import Config, metric_name
from .core.runs import ExportedFold, ExportedVariant, ExportManifest, Run, atomic_torch_save, checksum, maps_uint8
from .core.runtime import amp_dtype, compute_setup
from .core.tasks import PIXEL_TASKS, TargetScale, num_outputs
from .core.tracking import Tracker
from .data.augment import build_transforms
from .data.images import ImageDataset
from .data.problem import Problem, build_fold_data, load_problem, pred_frame
from .engine.fold import setup_fold, start_epoch, supervised_step
from .engine.inference import (
    Feed,
    activate,
    feeder,
    fold_models,
    predict_loader,
)
from .engine.loop import train_epoch
from .engine.scoring import (
    score_oof,
)
from .engine.trainer import build_trainer
from .modeling import deploy, metrics
from .modeling.models import build_model
from .modeling.predictors import OnnxPredictor, Predictor, TorchPredictor

REFERENCE = "torch"  # the fp32 checkpoint itself: every other variant is compared with it


@dataclass
class Variant:
    """One deployable form of a fold's model: its file and how to run it on a device."""

    name: str
    path: Path
    make: Callable[[torch.device], Predictor]
    sparsity: float | None = None  # the pruned model's


def run_export(cfg: Config) -> ExportManifest:
    """The `export` command: every finished fold, every variant in export.variants (and the fp32 torch model they
    are compared with) -> export/, export.json, and a printed table."""
    run, folds = cfg.run, fold_models(cfg)
    problem = load_problem(cfg)
    model = build_model(cfg, num_outputs(cfg.task, len(problem.classes)), pretrained=False)
    device, workers = compute_setup(cfg.device, cfg.threads, cfg.data.num_workers)
    feed = feeder(cfg, model, torch.device("cpu"), workers)  # images normalised on the CPU, where variants are checked
    staging = run.start_export()  # built aside, swapped in whole: never files of two exports side by side
    try:
        info = _export_folds(cfg, problem, folds, model, feed, device, staging)
        staging.write_export(info)
        run.finish_export(staging)
    except BaseException:  # bad input, a failing exporter, Ctrl-C: the previous export/ stays as it was
        run.abandon_export(staging)
        raise
    print(format_table(info))
    print(f"{run.export_json} written")
    tracker = Tracker(cfg, "export", "export")  # a run per export, in the experiment's group
    tracker.summary(
        {f"{variant}/{key}": value for variant, row in table_rows(info).items() for key, value in row.items()}
    )
    tracker.finish()
    return info


def _export_folds(cfg: Config, problem: Problem, folds: list[int], model: nn.Module, feed: Feed,
                  device: torch.device, staging: Run) -> ExportManifest:  # fmt: skip
    per_fold, oof = {}, {}
    for k in folds:
        print(f"fold {k}: exporting {', '.join(cfg.export.variants)}")
        per_fold[str(k)], preds = export_fold(cfg, problem, k, model, feed, device, staging)
        for name, part in preds.items():
            oof.setdefault(name, []).append(part)
    overall = {}
    for n, parts in oof.items():  # each fold's (table, predictions): segmentation scores the maps themselves
        frames, preds = zip(*parts, strict=True)
        maps = np.concatenate(preds) if cfg.task in PIXEL_TASKS else None
        overall[n] = score_oof(cfg, problem, pd.concat(frames, ignore_index=True), maps)[1]
    name = metric_name(cfg)
    return ExportManifest(
        exp=cfg.exp,
        metric=name,
        higher_is_better=metrics.get_metric(name).higher_is_better,
        threads=torch.get_num_threads(),
        settings=dataclasses.asdict(cfg.export),
        overall=overall,
        folds=per_fold,
    )


def export_fold(
    cfg: Config, problem: Problem, k: int, model: nn.Module, feed: Feed, device: torch.device, out: Run | None = None
) -> tuple[ExportedFold, dict[str, tuple[pd.DataFrame, np.ndarray]]]:
    """Fold k's variants: written (into `out`'s export/, default the run's own), checked on the CPU against torch,
    timed, scored on fold k's validation rows. Returns fold k's entry of export.json (file paths as in the run
    folder) and each variant's OOF predictions."""
    out = out or cfg.run
    best, files, x = cfg.run.fold(k).best, out.export_fold(k), cfg.export
    ckpt = cfg.run.fold(k).read_best()
    model.to("cpu").load_state_dict(ckpt.model)
    feed.use_fold(k)  # augment.mean/std: fold: fold k's own statistics
    scale = ckpt.scale  # regression outputs -> target values
    model.eval()
    data = build_fold_data(cfg, problem, k)
    loader = feed(data.valid)
    check = [batch["image"] for batch in islice(loader, x.check_batches)]
    example = torch.cat([check[0], check[0]])[:2]  # two rows: torch.export would specialise a batch of one
    dtype = amp_dtype(cfg.train.amp, device)
    cpu = torch.device("cpu")

    def torch_variant(name: str, path: Path, module: nn.Module, sparsity: float | None = None) -> Variant:
        return Variant(name, path, lambda d: TorchPredictor(module, d, dtype if d.type != "cpu" else None), sparsity)

    variants = [torch_variant(REFERENCE, best, model)]
    if "torchscript" in x.variants:
        deploy.export_torchscript(model, example, files.torchscript)
        variants.append(
            torch_variant("torchscript", files.torchscript, deploy.load_torchscript(files.torchscript, cpu))
        )
    if "onnx" in x.variants:
        deploy.export_onnx(model, example, files.onnx, x.exporter, x.opset, x.dynamic_size)
        variants.append(Variant("onnx", files.onnx, lambda d: OnnxPredictor(files.onnx, d)))
    if "onnx_int8" in x.variants:
        deploy.quantize_int8(files.onnx, files.onnx_int8, calibration_batches(cfg, problem, k, feed), x.per_channel,
                             x.dynamic_size)  # fmt: skip
        variants.append(Variant("onnx_int8", files.onnx_int8, lambda d: OnnxPredictor(files.onnx_int8, d)))
    if "dynamic_int8" in x.variants:
        deploy.quantize_dynamic_int8(files.onnx, files.onnx_dynamic_int8, x.per_channel, x.dynamic_size)
        variants.append(Variant("dynamic_int8", files.onnx_dynamic_int8,
                                lambda d: OnnxPredictor(files.onnx_dynamic_int8, d)))  # fmt: skip
    if "qat" in x.variants:
        qat = qat_model(cfg, k, model)
        try:
            deploy.export_onnx(qat, example, files.onnx_qat_fp32, x.exporter, x.opset, x.dynamic_size)
            deploy.quantize_int8(files.onnx_qat_fp32, files.onnx_qat_int8, calibration_batches(cfg, problem, k, feed),
                                 x.per_channel, x.dynamic_size)  # fmt: skip
        finally:
            files.onnx_qat_fp32.unlink(missing_ok=True)
        variants.append(Variant("qat", files.onnx_qat_int8, lambda d: OnnxPredictor(files.onnx_qat_int8, d)))
    if "pruned" in x.variants:
        pruned, sparsity = prune_model(cfg, k, model)
        atomic_torch_save(files.pruned, {"model": pruned.state_dict(), "sparsity": sparsity})
        variants.append(torch_variant("pruned", files.pruned, pruned, sparsity))

    entry, preds, reference = ExportedFold(checksum(best), {}), {}, None
    for v in variants:
        probs, images_per_s = timed_probs(v.make(cpu), check, cfg.task, scale)
        if reference is None:
            reference = probs
            # Probabilities lie in 0..1; regression values may be in the thousands, where float32 rounding alone
            # exceeds an absolute 1e-4: there the tolerance is relative to the largest value.
            tolerance = x.tolerance * (max(1.0, float(np.abs(probs).max())) if cfg.task == "regression" else 1.0)
        oof = predict_loader(v.make(device), loader, cfg.task, desc=f"fold {k} {v.name}")
        frame = pred_frame(data.valid_ids, oof, problem.classes, cfg.data.id_col)
        frame.insert(1, "fold", k)
        preds[v.name] = (frame, maps_uint8(oof) if oof.ndim == 4 else oof)
        diff = float(np.abs(probs - reference).max())
        content = v.path.read_bytes()
        entry.variants[v.name] = ExportedVariant(
            file=v.path.relative_to(out.path if v.path.is_relative_to(out.path) else cfg.run.path).as_posix(),
            sha256=checksum(v.path),
            score=metrics.score(metric_name(cfg), data.y_valid, oof, cfg.task),
            max_abs_diff=diff,
            size_mb=len(content) / 2**20,
            zipped_mb=len(zlib.compress(content)) / 2**20,
            images_per_s=images_per_s,
            parity_ok=diff <= tolerance if v.name == "onnx" else None,
            tolerance=tolerance if v.name == "onnx" else None,
            sparsity=v.sparsity,
        )
    onnx = entry.variants.get("onnx")
    if onnx is not None and not onnx.parity_ok:
        print(
            f"warning: fold {k}: ONNX probabilities differ from torch by up to {onnx.max_abs_diff:.2e} > "
            f"{tolerance:.2e} (export.tolerance); predict.runtime=onnx refuses it (try another export.exporter)"
        )
    model.to(cpu)
    return entry, preds


@torch.inference_mode()
def timed_probs(
    predictor: Predictor, batches: list[torch.Tensor], task: str, scale: TargetScale | None = None
) -> tuple[np.ndarray, float]:
    """Probabilities of `predictor` on `batches` (already decoded), and the images per second it took, after one
    untimed warm-up batch (first-call allocations and kernel choices)."""
    predictor(batches[0])
    start = time.perf_counter()
    out = [activate(predictor(b), task, scale) for b in batches]
    seconds = time.perf_counter() - start
    return torch.cat(out).numpy(), sum(len(b) for b in batches) / max(seconds, 1e-9)


def calibration_batches(cfg: Config, problem: Problem, k: int, feed: Feed) -> Iterator[np.ndarray]:
    """export.calibration_batches batches of fold k's training images (a seeded random draw), transformed as at
    prediction time: int8 ranges must never see the validation rows the int8 model is scored on."""
    rows = problem.rows(k, valid=False)
    n = min(len(rows), cfg.export.calibration_batches * cfg.tta.batch_size)
    rows = np.random.default_rng(cfg.seed + k).choice(rows, size=n, replace=False)
    tf = build_transforms(cfg.augment, False, cfg.model.in_chans)
    for batch in feed(ImageDataset([problem.paths[i] for i in rows], None, tf, cfg.model.in_chans)):
        yield batch["image"].numpy()


def prune_model(cfg: Config, k: int, model: nn.Module) -> tuple[nn.Module, float]:
    """A copy of `model` with export.sparsity of its conv/linear weights zeroed, fine-tuned for
    export.prune_finetune_epochs on fold k's training rows (zeros kept, on the configured device), returned on the
    CPU with its measured sparsity."""
    pruned = copy.deepcopy(model)
    params = deploy.prune_global(pruned, cfg.export.sparsity)
    if cfg.export.prune_finetune_epochs > 0:
        finetune(cfg, k, pruned, cfg.export.prune_finetune_epochs, cfg.export.prune_finetune_lr, "pruned")
    deploy.make_permanent(params)
    return pruned.to("cpu").eval(), deploy.sparsity_of(pruned)


def qat_model(cfg: Config, k: int, model: nn.Module) -> nn.Module:
    """Fold k's model fine-tuned quantisation-aware (modeling/deploy.py: BatchNorm folded, int8 fake quantisation
    of weights and activations) for export.qat_epochs at export.qat_lr x optim.lr on fold k's training rows, then
    back to float layers whose weights sit on the int8 grid; on the CPU, in eval mode. `model` is left as it was."""
    qat = deploy.fold_batchnorm(copy.deepcopy(model).to("cpu").eval())
    hooks = deploy.prepare_qat(qat)
    finetune(cfg, k, qat, cfg.export.qat_epochs, cfg.export.qat_lr, "qat")
    return deploy.finish_qat(qat.to("cpu"), hooks)


def finetune(cfg: Config, k: int, model: nn.Module, epochs: int, lr_share: float, what: str) -> None:
    """A short training run of `model` on fold k's training rows with train.py's own loop (augmentation, loss,
    mixup, AMP as configured): `epochs` epochs at `lr_share` x optim.lr, no EMA, nothing frozen, the validation
    rows untouched."""
    ft = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, pretrained=False, freeze_backbone_epochs=0),
        optim=dataclasses.replace(cfg.optim, lr=cfg.optim.lr * lr_share),
        train=dataclasses.replace(cfg.train, epochs=epochs, ema=False),
    )
    s = setup_fold(ft, k)  # seeded for fold k; it builds a model of its own, unused here
    model.to(s.device)
    t = build_trainer(ft, model, s.n_batches, s.device, s.dtype)  # ft.train.ema is off: no EMA
    step = lambda m, b, c: supervised_step(m, b, c, s.mixer)  # noqa: E731
    for epoch in range(epochs):
        start_epoch(cfg, s, k, cfg.train.epochs + epoch)  # draws of their own, after the training epochs'
        loss = train_epoch(ft, s, model, t.optimizer, t.scheduler, t.scaler, None, step, epoch)
        print(f"fold {k} {what} fine-tune epoch {epoch + 1}/{epochs} train_loss {loss:.4f}")
    model.eval()


def table_rows(info: ExportManifest) -> dict[str, dict[str, float]]:
    """The export table's figures, per variant: overall OOF score and its difference with torch, the largest
    probability difference with torch over the folds, the per-fold means of file size and CPU images/s, whether every
    fold's ONNX parity held, and the pruned model's sparsity."""
    folds, ref = list(info.folds.values()), info.overall[REFERENCE]
    out = {}
    for name, score in info.overall.items():
        rows = [f.variants[name] for f in folds]
        out[name] = {
            "oof_score": score,
            "vs_torch": score - ref,
            "max_abs_diff": max(r.max_abs_diff for r in rows),
            "size_mb": float(np.mean([r.size_mb for r in rows])),
            "zipped_mb": float(np.mean([r.zipped_mb for r in rows])),
            "images_per_s": float(np.mean([r.images_per_s for r in rows])),
            "parity_ok": all(r.parity_ok is not False for r in rows),
            **({"sparsity": rows[0].sparsity} if rows[0].sparsity is not None else {}),
        }
    return out


def format_table(info: ExportManifest) -> str:
    """One row per variant of `table_rows`."""
    folds = list(info.folds.values())
    direction = metrics.get_metric(info.metric).direction
    header = ("OOF score", 11), ("vs torch", 11), ("max|dp|", 10), ("size MB", 10), ("zipped MB", 11), ("img/s", 9)
    lines = [
        f"{info.exp}: export of {len(folds)} fold(s); {info.metric} on OOF ({direction}); "
        f"CPU images/s with {info.threads} thread(s)",
        f"  {'variant':<14}" + "".join(f"{title:>{width}}" for title, width in header),
    ]
    for name, r in table_rows(info).items():
        label = name + (f" ({100 * r['sparsity']:.0f}%)" if "sparsity" in r else "")
        flag = "" if r["parity_ok"] else "  PARITY FAILED"
        lines.append(
            f"  {label:<14}{r['oof_score']:>11.5f}{r['vs_torch']:>+11.5f}{r['max_abs_diff']:>10.1e}"
            f"{r['size_mb']:>10.2f}{r['zipped_mb']:>11.2f}{r['images_per_s']:>9.0f}{flag}"
        )
    return "\n".join(lines)
