"""The template's performance harness: render the template with its defaults, then time its real functions.

Every comparison is measured side by side in this one run (variants interleaved, warm-up first, median of the
repeats) and reported as a ratio to its baseline, so the numbers compare across machines and loads.
See benchmarks/README.md for what each row measures and how to read it.

    python benchmarks/run.py                  # about 2-3 minutes on 2 CPU cores
    BENCH_QUICK=1 python benchmarks/run.py    # a ~30 s smoke run: fewer images, steps and repeats
"""

from __future__ import annotations

import os

# Before torch / albumentations / timm are imported: no network, no update checks, no progress bars, no wandb.
for _key, _value in {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled",
                     "WANDB_SILENT": "true", "TQDM_DISABLE": "1"}.items():  # fmt: skip
    os.environ.setdefault(_key, _value)

import contextlib
import dataclasses
import importlib
import io
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK", "0").lower() not in ("", "0", "false", "no")
MODULES = ("augment", "config", "data", "demo", "folds", "infer", "losses", "models", "optim", "runtime", "train", "tta")


@dataclasses.dataclass(frozen=True)
class Plan:
    warmup: int  # untimed runs of every variant first (lazy init, allocator, caches)
    repeats: int  # timed runs of every variant, interleaved; the median is reported
    load_images: int  # images per data-loading pass
    steps: int  # training steps per timed run
    infer_images: int  # images per inference pass
    pipeline_repeats: int


PLAN = Plan(1, 2, 384, 3, 256, 1) if QUICK else Plan(1, 5, 1437, 8, 512, 3)


@dataclasses.dataclass
class Row:
    bench: str
    variant: str
    seconds: float
    ratio: float | None  # seconds / baseline seconds; None when the row has no baseline
    notes: str = ""


# ---------------------------------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(variants: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median seconds of each variant. Variants take turns within each repeat, in a rotating order, so that
    a change of machine load or clock during the run falls on all of them alike."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            variants[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            fn()
        finally:
            torch.set_num_threads(old)

    return run


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The pipeline prints one line per epoch (and progress bars on a terminal): keep them out of the table."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def group(bench: str, medians: dict[str, float], baseline: str, notes: dict[str, str] | None = None,
          per: float = 1.0) -> list[Row]:  # fmt: skip
    """Rows of one comparison, baseline first; `per` divides the times (e.g. seconds per training step)."""
    notes = notes or {}
    order = [baseline, *[n for n in medians if n != baseline]]
    base = medians[baseline]
    return [Row(bench, n, medians[n] / per, medians[n] / base, notes.get(n, "")) for n in order]


# ---------------------------------------------------------------------------------------------------------------
# the render and its demo data


def render_and_import(tmp: Path) -> tuple[Path, SimpleNamespace]:
    """Render with the defaults (as `cookiecutter gh:...` would, minus the prompts) and import the package."""
    from cookiecutter.main import cookiecutter

    project = Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(tmp / "render")))
    (pkg_dir,) = [p.parent for p in (project / "src").glob("*/__init__.py")]
    sys.path.insert(0, str(project / "src"))
    mods = {name: importlib.import_module(f"{pkg_dir.name}.{name}") for name in MODULES}
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
    """The demo competition in the render, and the render's demo config (1 epoch, wandb off, outputs in tmp)."""
    os.chdir(project)  # the config's paths (data/demo, ...) are relative to the project
    P.demo.write_demo("data/demo")
    overrides = ["train.epochs=1", "wandb.mode=disabled", f"output_dir={tmp / 'outputs'}"]
    cfg = P.config.load("configs/demo.yaml", overrides)
    d = cfg.data
    table = pd.read_csv(Path(d.dir) / d.train_csv, dtype={d.id_col: str})
    paths = [P.data.image_path(Path(d.dir) / d.train_images, i, d.image_ext) for i in table[d.id_col]]
    y = table[d.target_col].to_numpy(np.int64)
    counts = np.bincount(y)
    mean, std = P.augment.resolve_normalization(cfg.augment, {}, cfg.model.in_chans)
    return Demo(cfg, paths, y, P.models.num_outputs(cfg.task, len(counts)), counts, mean, std)


def demo_tensors(P: SimpleNamespace, demo: Demo, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` demo images as one normalised float batch (evaluation transforms), and their labels."""
    tf = P.augment.build_transforms(demo.cfg.augment, False, demo.mean, demo.std)
    ds = P.data.ImageDataset(demo.paths[:n], demo.y[:n], tf, demo.cfg.model.in_chans)
    return torch.stack([ds[i]["image"] for i in range(len(ds))]), torch.as_tensor(demo.y[:n])


# ---------------------------------------------------------------------------------------------------------------
# 1. data loading


def bench_loading(P: SimpleNamespace, demo: Demo) -> list[Row]:
    cfg, n = demo.cfg, min(PLAN.load_images, len(demo.paths))
    tf = P.augment.build_transforms(cfg.augment, True, demo.mean, demo.std)
    t0 = time.perf_counter()
    cached = P.data.ImageDataset(demo.paths[:n], demo.y[:n], tf, cfg.model.in_chans, cache=True)
    fill = time.perf_counter() - t0
    plain = P.data.ImageDataset(demo.paths[:n], demo.y[:n], tf, cfg.model.in_chans, cache=False)

    def one_pass(ds: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in P.data.make_loader(ds, cfg.train.batch_size, True, num_workers=0):
                pass

        return run

    variants = {"cache_images=false": one_pass(plain), "cache_images=true": one_pass(cached)}
    med = side_by_side(variants, torch.device("cpu"), PLAN.warmup, PLAN.repeats)
    seen = n // cfg.train.batch_size * cfg.train.batch_size  # drop_last
    notes = {k: f"{seen / v:,.0f} img/s" for k, v in med.items()}
    notes["cache_images=true"] += f"; filling the cache took {fill:.2f} s once"
    bench = f"1. data loading, one pass of {n} imgs (cpu)"
    return group(bench, med, "cache_images=false", notes)


# ---------------------------------------------------------------------------------------------------------------
# 2. training steps


def make_step(P: SimpleNamespace, demo: Demo, batch: tuple, device: torch.device, optimizer: str = "ranger",
              channels_last: bool = False, dtype: torch.dtype | None = None) -> tuple[Callable[[], None], Any]:  # fmt: skip
    """One training step as train.train_epoch does it: autocast forward, (scaled) backward, step, zero_grad."""
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
            loss = P.train.supervised_step(model, item, criterion)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step, opt


def repeat(fn: Callable[[], None], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            fn()

    return run


def bench_train_step(P: SimpleNamespace, demo: Demo, device: torch.device) -> list[Row]:
    batch, steps, dev = demo_tensors(P, demo, demo.cfg.train.batch_size), PLAN.steps, device.type
    step = {"ranger fp32 contiguous": make_step(P, demo, batch, device)[0],
            "adamw": make_step(P, demo, batch, device, "adamw")[0],
            "channels_last": make_step(P, demo, batch, device, channels_last=True)[0],
            "bf16 autocast": make_step(P, demo, batch, device, dtype=torch.bfloat16)[0]}  # fmt: skip
    threads = torch.get_num_threads()
    if dev == "cpu":
        step["1 thread"] = with_threads(1, step["ranger fp32 contiguous"])
    else:
        step["fp16 autocast"] = make_step(P, demo, batch, device, dtype=torch.float16)[0]
    med = side_by_side({k: repeat(f, steps) for k, f in step.items()}, device, PLAN.warmup, PLAN.repeats)
    base = "ranger fp32 contiguous"
    label = f"{base} ({threads} threads)" if dev == "cpu" else base
    med = {label if k == base else k: v for k, v in med.items()}
    ips = {k: f"{steps * len(batch[0]) / v:,.0f} img/s" for k, v in med.items()}
    rows = group(f"2. train step, batch {len(batch[0])} ({dev})", {label: med[label]}, label,
                 {label: ips[label] + "; the demo config: the baseline of 2a-2d"}, per=steps)  # fmt: skip
    rows += group(f"2a. optimizer in the step ({dev})", {k: med[k] for k in ("adamw", label)}, "adamw", ips, steps)
    rows += group(f"2b. memory format ({dev})", {k: med[k] for k in (label, "channels_last")}, label, ips, steps)
    if dev == "cpu":
        rows += group(f"2c. torch threads ({dev})", {k: med[k] for k in ("1 thread", label)}, "1 thread", ips, steps)
    precisions = [k for k in ("fp16 autocast", "bf16 autocast") if k in med]
    rows += group(f"2d. precision ({dev})", {k: med[k] for k in (label, *precisions)}, label, ips, steps)
    return rows + bench_optimizer_step(P, demo, batch, device)


def bench_optimizer_step(P: SimpleNamespace, demo: Demo, batch: tuple, device: torch.device) -> list[Row]:
    """optimizer.step() alone, on gradients of one real backward pass (kept, not zeroed, between steps)."""
    variants = {}
    for name in ("adamw", "ranger"):
        step, opt = make_step(P, demo, batch, device, name)
        step()  # creates the optimizer state
        model_params = [p for g in opt.param_groups for p in g["params"]]
        for p in model_params:
            p.grad = torch.randn_like(p) * 1e-3
        variants[name] = repeat(opt.step, PLAN.steps)
    med = side_by_side(variants, device, PLAN.warmup, PLAN.repeats)
    n_params = sum(p.numel() for p in model_params)
    notes = {"ranger": f"{n_params / 1e6:.1f}M params; Ranger = RAdam + Lookahead + gradient centralisation"}
    return group(f"2e. optimizer.step() alone ({device.type})", med, "adamw", notes, PLAN.steps)


# ---------------------------------------------------------------------------------------------------------------
# 3. inference with TTA


def bench_tta(P: SimpleNamespace, demo: Demo, device: torch.device) -> list[Row]:
    cfg, n = demo.cfg, min(PLAN.infer_images, len(demo.paths))
    model = P.models.build_model(cfg, demo.n_out, pretrained=False).to(device)
    tf = P.augment.build_transforms(cfg.augment, False, demo.mean, demo.std)
    dataset = P.data.ImageDataset(demo.paths[:n], None, tf, cfg.model.in_chans, cache=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.tta.batch_size, num_workers=0)
    dtype = P.runtime.amp_dtype(cfg.train.amp, device)
    views = {"1 view: identity": ["identity"], "2 views: identity, hflip": ["identity", "hflip"]}
    if len(cfg.tta.views) > 1 and list(cfg.tta.views) != ["identity", "hflip"]:
        views[f"{len(cfg.tta.views)} views: {', '.join(cfg.tta.views)} (demo)"] = list(cfg.tta.views)
    views["8 views: d4"] = P.tta.d4_views()
    for name in views.values():
        P.tta.get_view(name[-1])  # an unknown view fails here, before any timing

    def predict(v: list[str]) -> Callable[[], None]:
        return lambda: P.infer.predict_loader(model, loader, cfg.task, device, dtype, v, cfg.tta.merge)

    med = side_by_side({k: predict(v) for k, v in views.items()}, device, PLAN.warmup, PLAN.repeats)
    base = med["1 view: identity"]
    notes = {k: f"{med[k] / base / len(v):.2f} of a 1-view pass per view; {n / med[k]:,.0f} img/s"
             for k, v in views.items()}  # fmt: skip
    return group(f"3. predict_loader, {n} imgs ({device.type})", med, "1 view: identity", notes)


# ---------------------------------------------------------------------------------------------------------------
# 4. the pipeline stage against a plain loop


def plain_loop(demo: Demo, x: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device,
               dtype: torch.dtype | None) -> Callable[[], None]:  # fmt: skip
    """timm + torch only: the same model, optimizer (pytorch-optimizer's Ranger, as the pipeline) and batch
    size, `steps` steps over tensors already in memory; no augmentation, EMA, evaluation or checkpoints."""
    from pytorch_optimizer import load_optimizer

    m, o, bs = demo.cfg.model, demo.cfg.optim, demo.cfg.train.batch_size

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
    spans: dict[str, list[float]] = {"folds": [], "train epoch": []}

    def pipeline() -> None:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)  # else train_one_fold resumes from last.pt
        t0 = time.perf_counter()
        P.folds.write_folds(cfg, force=True)
        spans["folds"].append(time.perf_counter() - t0)
        with quiet():
            result = P.train.train_one_fold(cfg, 0)
        speed = result["history"][0]["images_per_s"]
        spans["train epoch"].append(steps * cfg.train.batch_size / speed)

    P.folds.write_folds(cfg, force=True)
    n_train = int((pd.read_csv(cfg.folds.path)["fold"] != 0).sum())
    steps = n_train // cfg.train.batch_size  # the pipeline's training loader drops the last partial batch
    x, y = demo_tensors(P, demo, len(demo.paths))
    variants = {"plain timm+torch loop": plain_loop(demo, x, y, steps, device, dtype), "pipeline": pipeline}
    med = side_by_side(variants, device, PLAN.warmup, PLAN.pipeline_repeats)
    med["  of which write_folds"] = statistics.median(spans["folds"][PLAN.warmup :])
    med["  of which the train epoch"] = statistics.median(spans["train epoch"][PLAN.warmup :])
    notes = {
        "plain timm+torch loop": f"{steps} steps on in-memory tensors, Ranger, no augmentation/EMA/eval",
        "pipeline": "write_folds + train_one_fold(fold 0): cache, train, eval raw+EMA, checkpoints, OOF",
        "  of which the train epoch": f"train_epoch alone ({steps} steps: augmentation, EMA, one-cycle)",
    }
    bench = f"4. fold 0 x 1 epoch, {cfg.model.backbone} ({device.type})"
    return group(bench, med, "plain timm+torch loop", notes)


# ---------------------------------------------------------------------------------------------------------------
# report


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def machine_facts(P: SimpleNamespace) -> list[str]:
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    cpu = platform.processor() or platform.machine()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"torch {torch.__version__}, timm {timm.__version__}, python {platform.python_version()}, "
        f"package {P.name} rendered from {ROOT}",
        f"cpu {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}); cuda: {cuda}",
        f"load average (1/5/15 min) at the end: {load}  (other processes on the machine skew absolute times)",
        f"mode: {'quick (BENCH_QUICK=1)' if QUICK else 'full'}; warm-up {PLAN.warmup}, median of {PLAN.repeats} "
        f"(pipeline: {PLAN.pipeline_repeats}) interleaved repeats",
    ]


def print_table(rows: list[Row]) -> None:
    head = ("benchmark", "variant", "median time", "ratio to baseline", "notes")
    cells = [(r.bench, r.variant, fmt_time(r.seconds), "-" if r.ratio is None else f"{r.ratio:.2f}", r.notes)
             for r in rows]  # fmt: skip
    shown = []
    for i, c in enumerate(cells):  # the benchmark name once per group
        shown.append(("" if i and c[0] == cells[i - 1][0] else c[0], *c[1:]))
    widths = [max(len(str(c[i])) for c in [head, *shown]) for i in range(4)]
    line = " | ".join(["{:<%d}" % widths[0], "{:<%d}" % widths[1], "{:>%d}" % widths[2], "{:>%d}" % widths[3], "{}"])
    print(line.format(*head))
    print("-+-".join("-" * w for w in [*widths, len(head[4])]))
    for i, c in enumerate(shown):
        if i and c[0]:
            print()
        print(line.format(*c))


def main() -> int:
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp, cwd = Path(tmp_name), Path.cwd()
        try:
            project, P = render_and_import(tmp)
            demo = load_demo(P, project, tmp)
            devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
            sections: list[tuple[str, Callable[[], list[Row]]]] = [("1. data loading", lambda: bench_loading(P, demo))]
            for dev in devices:
                sections.append((f"2. train step ({dev.type})", lambda d=dev: bench_train_step(P, demo, d)))
                sections.append((f"3. TTA ({dev.type})", lambda d=dev: bench_tta(P, demo, d)))
            sections.append(("4. pipeline", lambda: bench_pipeline(P, demo)))
            rows: list[Row] = []
            for name, run in sections:
                t0 = time.perf_counter()
                rows += run()
                print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        finally:
            os.chdir(cwd)
    print()
    print("\n".join(machine_facts(P)))
    print("ratio = median time / the baseline's median time (the first row of each group): < 1 is faster\n")
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
