"""The template's performance harness: render the template with its defaults, then time its real functions.

Every comparison is measured side by side in this one run (warm-up, then the variants interleaved, median of the
repeats) and reported as a ratio to its baseline. See benchmarks/README.md for what each row measures.

    python benchmarks/run.py                  # ~5 minutes on 2 idle CPU cores; the GPU rows too where CUDA is
    BENCH_QUICK=1 python benchmarks/run.py    # a smoke run: fewer images, steps and repeats
    BENCH_THREADS=2 python benchmarks/run.py  # torch threads for the rows of sections 2-4 but 2c (default 1)
"""

from __future__ import annotations

import os

# Set before torch, timm and albumentations are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "disabled"  # the tracker reads it before the config: a benchmark never logs a run

import contextlib
import dataclasses
import importlib
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datapath
import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from harness import Row, group, print_table, quiet, repeat, side_by_side, with_threads

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK", "0").lower() not in ("", "0", "false", "no")
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
ALL_THREADS = torch.get_num_threads()  # torch's default: one per core
BATCH = 64  # training-step batch (the pipeline run keeps the demo config's own batch size)
STEPS = {"cpu": 1, "cuda": 20}  # training steps per timed run: one CPU step already takes a tenth of a second
OPT_STEPS = 5  # optimizer.step() calls per timed run
# The generated package's modules that the benchmarks call: short name -> module inside the package.
MODS = {
    "augment": "data.augment",
    "cache": "data.cache",
    "config": "config",
    "demo": "data.demo",
    "folds": "data.folds",
    "decode": "data.decode",
    "fold": "engine.fold",
    "images": "data.images",
    "inference": "engine.inference",
    "loop": "engine.loop",
    "losses": "modeling.losses",
    "models": "modeling.models",
    "optim": "modeling.optim",
    "runtime": "core.runtime",
    "tasks": "core.tasks",
    "train": "train",
    "trainer": "engine.trainer",
    "tta": "modeling.tta",
}


@dataclasses.dataclass(frozen=True)
class Plan:
    warmup: int  # untimed runs of every variant first (lazy init, allocator, caches)
    repeats: int  # timed runs of every variant, interleaved; the median is reported
    infer_images: int  # images per inference pass
    pipeline_warmup: int
    pipeline_repeats: int
    limit_batches: int  # train.limit_batches of the pipeline run (0: the whole epoch)
    slow_s: float  # a training-step variant whose warm-up run takes longer is not repeated


PLAN = Plan(1, 2, 64, 0, 1, 4, 3.0) if QUICK else Plan(1, 5, 128, 1, 2, 0, 10.0)


def bench(variants: dict[str, Callable[[], Any]], device: torch.device, slow_s: float | None = None) -> dict:
    return side_by_side(variants, device, PLAN.warmup, PLAN.repeats, slow_s)


# ---------------------------------------------------------------------------------------------------------------
# the render and its demo data


def render_and_import(tmp: Path) -> tuple[Path, SimpleNamespace]:
    """Render with the defaults (as `cookiecutter gh:...` does, minus the prompts) and import the package."""
    from cookiecutter.main import cookiecutter

    project = Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(tmp / "render")))
    (pkg_dir,) = [p.parent for p in (project / "src").glob("*/__init__.py")]
    sys.path.insert(0, str(project / "src"))
    mods = {name: importlib.import_module(f"{pkg_dir.name}.{module}") for name, module in MODS.items()}
    where = Path(mods["train"].__file__).resolve().parent
    if where != pkg_dir.resolve():  # an installed copy (e.g. `make demo`'s editable install) would be timed instead
        raise RuntimeError(f"imported {pkg_dir.name} from {where}, not from the render {pkg_dir}")
    return project, SimpleNamespace(name=pkg_dir.name, **mods)


@dataclasses.dataclass
class Demo:
    cfg: Any
    paths: list[Path]
    y: np.ndarray
    n_out: int
    counts: np.ndarray
    mean: tuple
    std: tuple


def load_demo(P: SimpleNamespace, project: Path, tmp: Path) -> Demo:
    """The demo competition in the render and its config (configs/demo.yaml), 1 epoch, outputs in `tmp`."""
    os.chdir(project)  # the config's paths (data/demo, ...) are relative to the project
    P.demo.write_demo("data/demo")
    overrides = ["train.epochs=1", f"train.limit_batches={PLAN.limit_batches}", f"output_dir={tmp / 'outputs'}",
                 f"threads={THREADS}"]  # fmt: skip
    cfg = P.config.load("configs/demo.yaml", overrides)
    d = cfg.data
    table = pd.read_csv(Path(d.dir) / d.train_csv, dtype={d.id_col: str})
    paths = [P.decode.image_path(Path(d.dir) / d.train_images, i, d.image_ext) for i in table[d.id_col]]
    y = table[d.target_col].to_numpy(np.int64, copy=True)
    counts = np.bincount(y)
    mean, std = P.augment.resolve_normalization(cfg.augment, {}, cfg.model.in_chans)
    return Demo(cfg, paths, y, P.tasks.num_outputs(cfg.task, len(counts)), counts, mean, std)


def demo_dataset(P: SimpleNamespace, demo: Demo, n: int) -> Any:
    """The first `n` demo images, decoded once (data.cache=memory), with the evaluation transforms."""
    tf = P.augment.build_transforms(demo.cfg.augment, False, demo.cfg.model.in_chans)
    with quiet():  # its progress bar
        cache = P.cache.open_cache("memory", demo.paths[:n], demo.cfg.model.in_chans, None)
    return P.images.ImageDataset(demo.paths[:n], demo.y[:n], tf, demo.cfg.model.in_chans, cache)


def demo_tensors(P: SimpleNamespace, demo: Demo, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` demo images as one normalised batch (evaluation transforms), and their labels."""
    ds = demo_dataset(P, demo, n)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))]).permute(0, 3, 1, 2)  # items are HWC
    return P.augment.Normalize(demo.mean, demo.std)(images), torch.as_tensor(demo.y[:n])


# ---------------------------------------------------------------------------------------------------------------
# 2. training steps


def make_step(
    P: SimpleNamespace,
    demo: Demo,
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    optimizer: str = "ranger",
    channels_last: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[Callable[[], None], Any]:
    """One training step as train.train_epoch takes it: autocast forward, (scaled) backward, step, zero_grad."""
    cfg = demo.cfg
    torch.manual_seed(0)
    model = P.models.build_model(cfg, demo.n_out, pretrained=False).to(device).train()
    x, y = batch[0].to(device), batch[1].to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = P.optim.build_optimizer(model, dataclasses.replace(cfg.optim, name=optimizer))
    criterion = P.losses.build_loss(cfg.loss, cfg.task, demo.n_out, demo.counts).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    item = {"image": x, "target": y}

    def step() -> None:
        with P.runtime.autocast(device, dtype):
            loss = P.fold.supervised_step(model, item, criterion)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step, opt


def bench_train_step(P: SimpleNamespace, demo: Demo, device: torch.device) -> list[Row]:
    batch, dev, steps = demo_tensors(P, demo, BATCH), device.type, STEPS[device.type]
    base = f"{demo.cfg.optim.name} fp32 contiguous"  # the demo config's step; the baseline of 2b and 2d
    step = {
        base: make_step(P, demo, batch, device)[0],
        "adamw": make_step(P, demo, batch, device, "adamw")[0],
        "channels_last": make_step(P, demo, batch, device, channels_last=True)[0],
    }
    if dev == "cpu" or torch.cuda.is_bf16_supported():  # GPUs before Ampere have no bf16
        step["bf16 autocast"] = make_step(P, demo, batch, device, dtype=torch.bfloat16)[0]
    if dev == "cuda":
        step["fp16 autocast"] = make_step(P, demo, batch, device, dtype=torch.float16)[0]
    elif ALL_THREADS > 1:
        step["1 thread"] = with_threads(1, step[base])
        step[f"{ALL_THREADS} threads"] = with_threads(ALL_THREADS, step[base])
    med = bench({k: repeat(f, steps) for k, f in step.items()}, device, slow_s=PLAN.slow_s)
    ips = {k: f"{steps * BATCH / v:,.0f} img/s" for k, v in med.items()}
    ips[base] += f"; {THREADS} thread{'s' if THREADS > 1 else ''}" if dev == "cpu" else ""

    def pick(*names: str) -> dict[str, float]:
        return {k: med[k] for k in names if k in med}

    title = f"batch {BATCH}, {dev}"
    rows = group(f"2a. train step: optimizer ({title})", pick("adamw", base), "adamw", ips, steps)
    rows += group(f"2b. train step: memory format ({title})", pick(base, "channels_last"), base, ips, steps)
    if "1 thread" in med:
        threads = pick("1 thread", f"{ALL_THREADS} threads")
        rows += group(f"2c. train step: torch threads ({title})", threads, "1 thread", ips, steps)
    precisions = pick(base, "fp16 autocast", "bf16 autocast")
    rows += group(f"2d. train step: precision ({title})", precisions, base, ips, steps)
    return rows + bench_optimizer_step(P, demo, batch, device)


def bench_optimizer_step(P: SimpleNamespace, demo: Demo, batch: tuple, device: torch.device) -> list[Row]:
    """optimizer.step() alone, on fixed gradients (kept, not zeroed, between steps)."""
    variants, n_params = {}, 0
    for name in ("adamw", "ranger"):
        step, opt = make_step(P, demo, batch, device, name)
        step()  # creates the optimizer state
        params = [p for g in opt.param_groups for p in g["params"]]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        variants[name], n_params = repeat(opt.step, OPT_STEPS), sum(p.numel() for p in params)
    notes = {"ranger": f"{n_params / 1e6:.1f}M params; Ranger = RAdam + Lookahead + gradient centralisation"}
    return group(f"2e. optimizer.step() alone ({device.type})", bench(variants, device), "adamw", notes, OPT_STEPS)


# ---------------------------------------------------------------------------------------------------------------
# 3. inference with TTA


def bench_tta(P: SimpleNamespace, demo: Demo, device: torch.device) -> list[Row]:
    cfg, n = demo.cfg, min(PLAN.infer_images, len(demo.paths))
    model = P.models.build_model(cfg, demo.n_out, pretrained=False).to(device)
    normalize = P.augment.Normalize(demo.mean, demo.std).to(device)
    loader = P.images.make_loader(demo_dataset(P, demo, n), cfg.tta.batch_size, False, 0, device, normalize)
    dtype = P.runtime.amp_dtype(cfg.train.amp, device)
    views = {"1 view: identity": ["identity"], "2 views: identity, hflip": ["identity", "hflip"]}
    if len(cfg.tta.views) > 1 and list(cfg.tta.views) != ["identity", "hflip"]:
        views[f"{len(cfg.tta.views)} views: {', '.join(cfg.tta.views)} (demo)"] = list(cfg.tta.views)
    d4 = P.tta.list_tta_views()  # the eight symmetries of the square
    views[f"{len(d4)} views: d4"] = d4
    for names in views.values():
        for name in names:
            P.tta.get_view(name)  # an unknown view fails here, before any timing

    def predict(v: list[str]) -> Callable[[], None]:
        return lambda: P.inference.predict_loader(model, loader, cfg.task, device, dtype, v, cfg.tta.merge)

    med = bench({k: predict(v) for k, v in views.items()}, device)
    one = med["1 view: identity"]
    notes = {
        k: f"{med[k] / one / len(v):.2f} x a 1-view pass per view; {n / med[k]:,.0f} img/s" for k, v in views.items()
    }
    return group(f"3. predict_loader, {n} imgs ({device.type})", med, "1 view: identity", notes)


# ---------------------------------------------------------------------------------------------------------------
# 4. the pipeline stage against a plain loop


def plain_loop(demo: Demo, data: tuple, steps: int, device: torch.device, dtype: torch.dtype | None) -> Callable:
    """timm + torch only: the same model, optimizer (pytorch-optimizer's Ranger, as the pipeline's) and batch
    size, `steps` steps over tensors already in memory; no augmentation, EMA, evaluation or checkpoints."""
    from pytorch_optimizer import load_optimizer

    m, o, bs = demo.cfg.model, demo.cfg.optim, demo.cfg.train.batch_size
    x, y = data

    def run() -> None:
        torch.manual_seed(0)
        model = timm.create_model(m.backbone, pretrained=False, num_classes=demo.n_out, in_chans=m.in_chans)
        model = model.to(device).train()
        opt = load_optimizer("ranger")(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        order = torch.randperm(len(x))
        for i in range(steps):
            idx = order[i * bs : (i + 1) * bs]
            amp = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with amp:
                loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return run


def bench_pipeline(P: SimpleNamespace, demo: Demo) -> list[Row]:
    cfg = demo.cfg
    device = P.runtime.resolve_device(cfg.device)
    dtype = P.runtime.amp_dtype(cfg.train.amp, device)
    P.folds.write_folds(cfg, force=True)
    n_train = int((pd.read_csv(cfg.folds.path)["fold"] != 0).sum())
    steps = n_train // cfg.train.batch_size  # the training loader drops the last partial batch
    steps = min(steps, cfg.train.limit_batches or steps)
    spans: dict[str, list[float]] = {"folds": [], "epoch": []}

    def pipeline() -> None:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)  # else train_one_fold resumes from last.pt
        t0 = time.perf_counter()
        P.folds.write_folds(cfg, force=True)
        spans["folds"].append(time.perf_counter() - t0)
        with quiet():
            result = P.train.train_one_fold(cfg, 0)
        spans["epoch"].append(steps * cfg.train.batch_size / result["history"][0]["images_per_s"])

    plain = plain_loop(demo, demo_tensors(P, demo, len(demo.paths)), steps, device, dtype)
    variants = {"plain timm+torch loop": plain, "folds + train_one_fold": pipeline}
    med = side_by_side(variants, device, PLAN.pipeline_warmup, PLAN.pipeline_repeats)
    med["  of which write_folds"] = statistics.median(spans["folds"][PLAN.pipeline_warmup :])
    med["  of which train_epoch"] = statistics.median(spans["epoch"][PLAN.pipeline_warmup :])
    notes = {
        "plain timm+torch loop": f"{steps} steps of batch {cfg.train.batch_size} on in-memory tensors, Ranger",
        "folds + train_one_fold": "fold 0: cache images, train, eval raw + EMA, checkpoints, OOF",
        "  of which train_epoch": f"the same {steps} steps with augmentation, loader, EMA, one-cycle",
    }
    title = f"4. fold 0 x 1 epoch, {cfg.model.backbone} ({device.type})"
    return group(title, med, "plain timm+torch loop", notes, no_ratio=("  of which write_folds",))


# ---------------------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_facts(P: SimpleNamespace) -> list[str]:
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    warm = f"pipeline: warm-up {PLAN.pipeline_warmup}, {PLAN.pipeline_repeats} repeat(s)"
    limit = f", train.limit_batches={PLAN.limit_batches}" if PLAN.limit_batches else ""
    return [
        f"torch {torch.__version__}, timm {timm.__version__}, python {platform.python_version()}; "
        f"package {P.name} rendered with the defaults from {ROOT}",
        f"cpu {cpu_name()}, {os.cpu_count()} logical cores; torch threads {THREADS} for sections 2-4 but 2c "
        f"(BENCH_THREADS; torch's default here is {ALL_THREADS}); sections 1 and 5 use the pipeline's own threads "
        f"and workers (runtime.plan_cpu); cuda: {cuda}",
        f"load average (1/5/15 min) at the end: {load}  (other processes on the machine skew absolute times)",
        f"mode: {'quick (BENCH_QUICK=1)' if QUICK else 'full'}; warm-up {PLAN.warmup}, then the median of "
        f"{PLAN.repeats} interleaved repeats ({warm}{limit})",
    ]


def log(name: str, seconds: float) -> None:
    print(f"[bench] {name}: {seconds:.1f} s", flush=True)


def main() -> int:
    t_start = time.perf_counter()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp, cwd = Path(tmp_name), Path.cwd()
        try:
            project, P = render_and_import(tmp)
            demo = load_demo(P, project, tmp)
            devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
            sections: list[tuple[str, Callable[[], list[Row]]]] = []
            for dev in devices:
                sections.append((f"2. train step ({dev.type})", lambda d=dev: bench_train_step(P, demo, d)))
                sections.append((f"3. TTA ({dev.type})", lambda d=dev: bench_tta(P, demo, d)))
            sections.append(("4. pipeline", lambda: bench_pipeline(P, demo)))
            rows: list[Row] = []
            for name, run in sections:
                t0 = time.perf_counter()
                rows += run()
                log(name, time.perf_counter() - t0)
            rows = datapath.run_sections(P, tmp, QUICK, log) + rows  # sections 1 and 5
            rows = [r for r in rows if not r.bench.startswith("5.")] + [r for r in rows if r.bench.startswith("5.")]
        finally:
            os.chdir(cwd)
    print("\n" + "\n".join(machine_facts(P)))
    print("ratio = median time / the median time of the group's first row (its baseline): < 1 is faster\n")
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
