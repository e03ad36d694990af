"""Sections 1 and 5 of benchmarks/run.py: the pipeline's data path and training epoch against timm's own, on JPEG
files in a Kaggle layout written here, and the decode cache on large JPEGs.

    1a. the loader alone: make_loader (+ its DeviceLoader) against timm's create_loader, same files, workers, batch
    1b. the decode cache: 1,024-px JPEGs trained at 256 px, decoded every epoch or read from data.cache=disk/memory
    5.  one training epoch: train.setup_fold + train.train_epoch against a reference loop that feeds the same model
        from timm's create_loader (timm's train.py recipe with timm's public functions), and a raw loop that trains
        on one batch resident on the device (the upper bound: no data at all)

On CUDA the same rows run on the GPU: resnet50 at 224 px, bf16, batch 128. On CPU a small model at a small size
(a CPU trains resnet50 at a few images per second; the loop, not the model, is what these rows compare).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pandas as pd
import timm
import torch
from harness import Row, group, quiet, side_by_side
from PIL import Image
from torch import nn

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class Profile:
    device: torch.device
    backbone: str  # the model of the training-epoch rows
    train_size: int  # their input size
    batch: int
    dtype: torch.dtype | None  # autocast
    channels_last: bool
    workers: int  # loader processes, the same for every loader of a group: the pipeline's own choice (plan_cpu)
    threads: int  # torch threads of this process during the rows (plan_cpu)
    loader_size: int  # input size of the loader-alone rows (timm's default)
    n_images: int  # 256-px JPEGs for the loader rows
    n_epoch: int  # of which the training-epoch competition uses the first n_epoch
    n_big: int  # 1,024-px JPEGs for the decode-cache rows
    warmup: int
    repeats: int


def profile(P: SimpleNamespace, device: torch.device, quick: bool) -> Profile:
    threads, workers = P.runtime.plan_cpu(device, "auto", "auto")
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        n = 1536 if quick else 6144
        return Profile(device, "resnet50", 224, 128, dtype, True, workers, threads, 224, n, n, 128 if quick else 512,
                       1, 2 if quick else 3)  # fmt: skip
    n = 192 if quick else 768
    return Profile(device, "test_resnet", 64, 32, None, False, workers, threads, 224, n, 160 if quick else 480,
                   64 if quick else 320, 1, 2 if quick else 5)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# the files


def write_jpegs(folder: Path, n: int, size: int, n_classes: int = 10, seed: int = 0) -> list[str]:
    """`n` synthetic photos (smooth colour fields with grain, JPEG quality 90) as <class>/<i>.jpg under `folder`:
    timm's folder reader takes the sub-folders as classes, and the pipeline's train.csv names the same files."""
    rng = np.random.default_rng(seed)
    grain = rng.integers(-10, 11, (2 * size, 2 * size, 3), dtype=np.int16)  # shifted per image: cheap to vary
    names = []
    for i in range(n):
        name = f"{i % n_classes}/{i:05d}.jpg"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        dy, dx = rng.integers(0, size, 2)
        img += grain[dy : dy + size, dx : dx + size]
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
        names.append(name)
    return names


def labels_of(names: list[str]) -> np.ndarray:
    return np.array([int(n.split("/")[0]) for n in names], dtype=np.int64)


def write_competition(root: Path, names: list[str], valid_every: int = 12) -> list[str]:
    """root/train.csv (id = <class>/<i>.jpg, label) and root/folds.csv: every `valid_every`-th row is fold 0 (the
    validation rows), the others fold 1. Returns the training rows of fold 0 (what train_epoch iterates)."""
    ids = pd.Series(names)
    pd.DataFrame({"id": ids, "label": labels_of(names)}).to_csv(root / "train.csv", index=False)
    fold = (np.arange(len(names)) % valid_every != 0).astype(int)
    pd.DataFrame({"id": ids, "fold": fold}).to_csv(root / "folds.csv", index=False)
    return [n for n, f in zip(names, fold, strict=True) if f == 1]


def link_tree(src: Path, dest: Path, names: list[str]) -> Path:
    """dest/<class>/<i>.jpg -> the same files under src: timm's reader sees exactly the rows the pipeline trains on."""
    for name in names:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).symlink_to((src / name).resolve())
    return dest


def drain(loader: Any, before: Callable[[], None] | None = None) -> Callable[[], None]:
    """One pass over `loader`, batches on the device (timed() synchronises CUDA at the end)."""

    def run() -> None:
        if before is not None:
            before()
        for _ in loader:
            pass

    return run


def timm_loader(root: Path, prof: Profile, size: int, training: bool) -> Any:
    """timm's create_loader as timm's train.py builds it: its prefetcher (uint8 from the workers, normalised on the
    device), persistent workers, its default augmentation (random-resized crop, flip, colour jitter 0.4) or its
    evaluation transform (resize to size / 0.875, centre crop)."""
    from timm.data import ImageDataset, create_loader

    return create_loader(ImageDataset(str(root)), input_size=(3, size, size), batch_size=prof.batch,
                         is_training=training, num_workers=prof.workers, device=prof.device, use_prefetcher=True,
                         persistent_workers=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# 1a. the loader alone


def bench_loader(P: SimpleNamespace, prof: Profile, folder: Path, names: list[str]) -> list[Row]:
    paths, labels = [folder / n for n in names], labels_of(names)
    aug = P.config.AugmentConfig(image_size=prof.loader_size)  # the pipeline's default augmentation (preset light)
    normalize = P.augment.Normalize(*IMAGENET).to(prof.device)
    variants, epoch = {}, [0]
    for training, kind in ((True, "train"), (False, "eval")):
        ds = P.images.ImageDataset(paths, labels, P.augment.build_transforms(aug, training, 3), 3)
        ours = P.images.make_loader(ds, prof.batch, training, prof.workers, prof.device, normalize,
                                    channels_last=prof.channels_last)  # fmt: skip

        def next_epoch(ds: Any = ds, loader: Any = ours) -> None:  # new augmentation seeds, as each epoch draws
            epoch[0] += 1
            loader.set_epoch(epoch[0])
            P.images.set_epoch(ds, 0, 0, epoch[0])

        variants[f"timm create_loader, {kind}"] = drain(timm_loader(folder, prof, prof.loader_size, training))
        variants[f"make_loader, {kind}"] = drain(ours, next_epoch if training else None)  # evaluation: no seeds
    med = side_by_side(variants, prof.device, prof.warmup, prof.repeats)
    n = {k: len(paths) // prof.batch * prof.batch if "train" in k else len(paths) for k in med}
    notes = {k: f"{n[k] / v:,.0f} img/s" for k, v in med.items()}
    for kind in ("train", "eval"):
        speed = med[f"timm create_loader, {kind}"] / med[f"make_loader, {kind}"]
        notes[f"make_loader, {kind}"] += f"; {speed:.2f}x timm's speed"
    notes["timm create_loader, train"] += "; random-resized crop, flip, colour jitter"
    notes["make_loader, train"] += "; preset light (resize, affine, flip), seeded per sample"
    title = (f"1a. loader alone, {len(paths)} {prof.loader_size}-px crops of 256-px JPEGs, batch {prof.batch}, "
             f"{prof.workers} workers ({prof.device.type})")  # fmt: skip
    rows = group(title, {k: v for k, v in med.items() if "train" in k}, "timm create_loader, train", notes)
    return rows + group(title, {k: v for k, v in med.items() if "eval" in k}, "timm create_loader, eval", notes)


# ---------------------------------------------------------------------------------------------------------------
# 1b. the decode cache


def bench_cache(P: SimpleNamespace, prof: Profile, tmp: Path) -> list[Row]:
    folder = tmp / "big"
    names = write_jpegs(folder, prof.n_big, 1024, seed=1)
    paths, labels = [folder / n for n in names], labels_of(names)
    aug = P.config.AugmentConfig(image_size=256)
    size = P.augment.source_size(aug, 3)
    tf = P.augment.build_transforms(aug, True, 3)
    normalize = P.augment.Normalize(*IMAGENET).to(prof.device)
    build_workers = P.runtime.available_cores()  # as data/problem.image_cache builds it: every core
    built = {}
    caches = {"none": None}
    for mode in ("disk", "memory"):
        t0 = time.perf_counter()
        with quiet():  # its progress bar
            caches[mode] = P.cache.open_cache(mode, paths, 3, size, tmp / "cache", build_workers)
        built[mode] = time.perf_counter() - t0
    variants, epoch = {}, [0]
    label = {"none": "decode every epoch (data.cache=none)", "disk": "data.cache=disk, epoch 2 on",
             "memory": "data.cache=memory, epoch 2 on"}  # fmt: skip
    for mode, cache in caches.items():
        ds = P.images.ImageDataset(paths, labels, tf, 3, cache)
        loader = P.images.make_loader(ds, prof.batch, True, prof.workers, prof.device, normalize)

        def next_epoch(ds: Any = ds) -> None:
            epoch[0] += 1
            P.images.set_epoch(ds, 0, 0, epoch[0])

        variants[label[mode]] = drain(loader, next_epoch)
    med = side_by_side(variants, prof.device, prof.warmup, prof.repeats)
    seen = len(paths) // prof.batch * prof.batch
    notes = {k: f"{seen / v:,.0f} img/s" for k, v in med.items()}
    on_disk = sum(f.stat().st_size for f in caches["disk"].folder.glob("*.npy")) / 2**20
    jpegs = sum(p.stat().st_size for p in paths) / 2**20
    speedup = med[label["none"]] / med[label["disk"]]
    notes[label["disk"]] += (f"; {speedup:.1f}x faster; built once in {built['disk']:.1f} s; {on_disk:.0f} MB "
                             f"of arrays ({jpegs:.0f} MB of JPEGs)")  # fmt: skip
    notes[label["memory"]] += f"; decoded once in {built['memory']:.1f} s, per process"
    title = (f"1b. decode cache, {len(paths)} 1,024-px JPEGs trained at 256 px (kept at {size} px), "
             f"{prof.workers} workers ({prof.device.type})")  # fmt: skip
    return group(title, med, label["none"], notes)


# ---------------------------------------------------------------------------------------------------------------
# 5. one training epoch


def pipeline_epoch(P: SimpleNamespace, prof: Profile, root: Path, out: Path) -> tuple[Callable[[], None], int]:
    """train_epoch of fold 0 exactly as train_one_fold runs it (the set-up, optimizer, schedule, EMA), epoch after
    epoch; returns it and the images per epoch."""
    amp = "off" if prof.dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[prof.dtype]
    overrides = [
        f"data.dir={root}", "data.train_images=train", "data.image_ext=.jpg", f"folds.path={root / 'folds.csv'}",
        "folds.n_folds=2", f"model.backbone={prof.backbone}", "model.pretrained=false", f"output_dir={out}",
        f"augment.image_size={prof.train_size}", "optim.name=adamw", "optim.weight_decay=0.05",
        f"train.batch_size={prof.batch}", "train.epochs=1000", f"train.amp='{amp}'", "wandb.mode=disabled",
        f"model.channels_last={str(prof.channels_last).lower()}",
    ]  # fmt: skip
    (root / "bench.yaml").write_text("task: multiclass\n")
    cfg = P.config.load(root / "bench.yaml", overrides)
    s = P.fold.setup_fold(cfg, 0)
    t = P.trainer.build_trainer(cfg, s.model, s.n_batches, s.device, s.dtype)  # the optimizer, schedule, scaler, EMA
    epoch = [0]

    def step(m: nn.Module, b: dict, c: nn.Module) -> dict:
        return P.fold.supervised_step(m, b, c, s.mixer)

    def run() -> None:
        e = epoch[0]
        epoch[0] += 1
        P.fold.start_epoch(cfg, s, 0, e)
        with quiet():
            P.loop.train_epoch(cfg, s, s.model, t.optimizer, t.scheduler, t.scaler, t.ema, step, e)

    return run, s.n_batches * cfg.train.batch_size


def autocast(prof: Profile) -> Callable[[], Any]:
    if prof.dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, prof.device.type, dtype=prof.dtype)


def timm_epoch(prof: Profile, root: Path, n_classes: int) -> tuple[Callable[[], None], int]:
    """The reference: timm's train.py training loop (non-distributed), written with timm's public functions:
    create_loader (prefetcher), create_model, create_optimizer_v2 (AdamW), create_scheduler_v2 (cosine, stepped per
    update), ModelEmaV3, autocast; it reads the loss every step (losses_m.update(loss.item(), ...)) as train.py does."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import AverageMeter, ModelEmaV3

    loader = timm_loader(root, prof, prof.train_size, training=True)
    torch.manual_seed(0)
    model = timm.create_model(prof.backbone, pretrained=False, num_classes=n_classes).to(prof.device)
    if prof.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=1000, updates_per_epoch=len(loader))
    ema = ModelEmaV3(model, decay=0.998)
    loss_fn = nn.CrossEntropyLoss().to(prof.device)
    amp = autocast(prof)
    state = {"updates": 0, "epoch": 0}

    def run() -> None:
        model.train()
        losses = AverageMeter()
        for x, y in loader:
            if prof.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp():
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.update(loss.item(), x.size(0))
            optimizer.zero_grad()
            state["updates"] += 1
            ema.update(model, step=state["updates"])
            scheduler.step_update(num_updates=state["updates"])
        state["epoch"] += 1
        scheduler.step(state["epoch"])

    return run, len(loader) * prof.batch


def raw_epoch(prof: Profile, n_classes: int, steps: int) -> Callable[[], None]:
    """The upper bound: `steps` steps of the same model and optimizer on one batch kept on the device."""
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = timm.create_model(prof.backbone, pretrained=False, num_classes=n_classes).to(prof.device).train()
    x = torch.randn(prof.batch, 3, prof.train_size, prof.train_size, device=prof.device)
    y = torch.randint(0, n_classes, (prof.batch,), device=prof.device)
    if prof.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    amp = autocast(prof)

    def run() -> None:
        for _ in range(steps):
            with amp():
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    return run


def bench_epoch(P: SimpleNamespace, prof: Profile, tmp: Path, folder: Path, names: list[str]) -> list[Row]:
    root = tmp / f"competition-{prof.device.type}"
    (root / "train").mkdir(parents=True)
    names = names[: prof.n_epoch]
    for name in names:  # the pipeline reads data.dir/train/<id>: the same files, linked
        (root / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "train" / name).symlink_to((folder / name).resolve())
    train_rows = write_competition(root, names)
    timm_root = link_tree(folder, root / "timm", train_rows)
    n_classes = len(set(labels_of(names).tolist()))
    ours, n_ours = pipeline_epoch(P, prof, root, tmp / "outputs")
    ref, n_ref = timm_epoch(prof, timm_root, n_classes)
    raw = raw_epoch(prof, n_classes, n_ours // prof.batch)
    names_ = {"ref": "timm reference loop", "ours": "pipeline train_epoch", "raw": "raw loop, resident batch"}
    med = side_by_side({names_["ref"]: ref, names_["ours"]: ours, names_["raw"]: raw}, prof.device, prof.warmup,
                       prof.repeats)  # fmt: skip
    n = {names_["ref"]: n_ref, names_["ours"]: n_ours, names_["raw"]: n_ours}
    ips = {k: n[k] / v for k, v in med.items()}
    notes = {k: f"{v:,.0f} img/s" for k, v in ips.items()}
    notes[names_["ours"]] += (f"; {ips[names_['ours']] / ips[names_['ref']]:.2f}x the reference's img/s, "
                              f"{ips[names_['ours']] / ips[names_['raw']]:.2f}x the raw loop's")  # fmt: skip
    notes[names_["ref"]] += "; timm's train.py recipe, prefetcher, EMA, loss.item() every step"
    notes[names_["raw"]] += "; upper bound: no data, no EMA"
    dtype = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[prof.dtype]
    title = (f"5. training epoch, {prof.backbone} {prof.train_size} px {dtype}{' channels_last' * prof.channels_last}, "
             f"batch {prof.batch}, {n_ours} images, {prof.workers} workers, {prof.threads} threads "
             f"({prof.device.type})")  # fmt: skip
    return group(title, med, names_["ref"], notes)


# ---------------------------------------------------------------------------------------------------------------


def run_sections(P: SimpleNamespace, tmp: Path, quick: bool, log: Callable[[str, float], None]) -> list[Row]:
    """Every row of this module, on the CPU and (when there is one) on the GPU. The process's torch threads are set
    to the pipeline's own choice for the device (plan_cpu), and restored after."""
    rows: list[Row] = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    before = torch.get_num_threads()
    for device in devices:
        prof = profile(P, device, quick)
        P.runtime.set_threads(prof.threads)
        t0 = time.perf_counter()
        folder = tmp / f"jpegs-{device.type}"
        names = write_jpegs(folder, prof.n_images, 256)
        log(f"write {prof.n_images} 256-px JPEGs ({device.type})", time.perf_counter() - t0)
        sections: list[tuple[str, Callable[[], list[Row]]]] = [
            ("1a. loader alone", functools.partial(bench_loader, P, prof, folder, names)),
            ("1b. decode cache", functools.partial(bench_cache, P, prof, tmp / f"cache-{device.type}")),
            ("5. training epoch", functools.partial(bench_epoch, P, prof, tmp, folder, names)),
        ]
        for name, section in sections:
            t0 = time.perf_counter()
            rows += section()
            log(f"{name} ({device.type})", time.perf_counter() - t0)
        shutil.rmtree(folder, ignore_errors=True)
    P.runtime.set_threads(before)
    return rows
