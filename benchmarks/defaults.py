"""Do the defaults learn on competitions they were not written for? For each task's synthetic competition of the
generated tests (tests/synthetic.py: multiclass; imbalanced binary; one or two digits on a 16x32 canvas as
multilabel tags; ordinal grades as regression), fold 0 is trained from scratch as the guard tests/test_learns.py
trains it (configs/exp001.yaml + a tiny model on a CPU), and scored against:

- the same run at hand-picked learning rates (a grid; "tuned" is the best of it and the default),
- the same run with `optim.lr=auto` (the LR finder's suggestion),
- a scikit-learn logistic regression on the raw pixels (the guard's bar), on the same validation rows.

    python benchmarks/defaults.py                      # every task, the default grid (~5 min on 2 idle cores)
    python benchmarks/defaults.py --tasks multilabel --lrs 0.01 0.03 --epochs 5
    python benchmarks/defaults.py --project PATH       # a render you already have, instead of a fresh one

Prints one table (scores on fold 0's validation rows with the task's metric, each run's learning rate) and, for
the multilabel shape, the prior's entropy against the validation BCE after the first epoch (does the loss leave the
prior at once?) and the F1 of the defaults against the tuned LR.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import contextlib
import importlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LRS = (0.003, 0.01, 0.02, 0.05, 0.1)  # with the default (0.03), the hand-tuning grid
TASKS = ("multiclass", "binary", "multilabel", "regression")


def render(tmp: Path) -> Path:
    from cookiecutter.main import cookiecutter

    return Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(tmp / "render")))


def import_project(project: Path) -> SimpleNamespace:
    """The generated package, its tests' synthetic competitions and the guard's config, from `project`."""
    (pkg,) = [p.parent.name for p in (project / "src").glob("*/__init__.py")]
    sys.path[:0] = [str(project / "src"), str(project / "tests")]
    mods = {m: importlib.import_module(f"{pkg}.{m}") for m in ("cli", "config", "data.problem", "modeling.metrics")}
    guard = importlib.import_module("test_learns")
    if Path(guard.__file__).resolve().parents[1] != project.resolve():
        raise RuntimeError(f"imported the tests from {guard.__file__}, not from {project}")
    synthetic = importlib.import_module("synthetic")
    return SimpleNamespace(cli=mods["cli"], config=mods["config"], problem=mods["data.problem"],
                           metrics=mods["modeling.metrics"], guard=guard, synthetic=synthetic)  # fmt: skip


def train(P: SimpleNamespace, path: Path, name: str, overrides: list[str]) -> dict:
    """Fold 0 of experiment `name` -> its score, epoch history, learning rate and seconds."""
    t0 = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = P.cli.main(["train", "-c", str(path), "--fold", "0", f"exp={name}", *overrides])
    if code != 0:
        raise RuntimeError(f"{name}: train exited {code}\n{out.getvalue()[-2000:]}")
    run = path.parents[1] / "outputs" / name
    cv = json.loads((run / "cv.json").read_text())
    history = json.loads((run / "fold0" / "history.json").read_text())
    return {"score": cv["folds"]["0"], "lr": cv["lr"], "history": history, "seconds": time.perf_counter() - t0}


def prior_entropy(P: SimpleNamespace, cfg) -> float:
    problem = P.problem.load_problem(cfg)
    y = problem.y[problem.rows(0, valid=False)].reshape(-1, len(problem.classes))
    p = y.mean(0)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def bench_task(P: SimpleNamespace, root: Path, task: str, lrs: list[float], epochs: int) -> dict:
    path = P.guard.guard_config(root, task)
    with contextlib.redirect_stdout(io.StringIO()):
        assert P.cli.main(["folds", "-c", str(path)]) == 0
    cfg = P.config.load(path)
    higher = P.metrics.get_metric(P.config.metric_name(cfg)).higher_is_better
    epochs_key = [f"train.epochs={epochs}"]
    result = {"task": task, "metric": P.config.metric_name(cfg), "higher": higher,
              "baseline": P.synthetic.pixel_baseline(cfg, 0),
              "defaults": train(P, path, "defaults", epochs_key),
              "auto": train(P, path, "auto", [*epochs_key, "optim.lr=auto"]),
              "grid": {lr: train(P, path, f"lr{lr:g}", [*epochs_key, f"optim.lr={lr}"]) for lr in lrs}}  # fmt: skip
    sign = 1 if higher else -1
    tried = [result["defaults"], *result["grid"].values()]  # the default LR is one of the hand-picked ones
    result["tuned"] = max(tried, key=lambda r: sign * r["score"])
    if task == "multilabel":
        result["entropy"] = prior_entropy(P, cfg)
    return result


def print_report(results: list[dict], epochs: int) -> None:
    head = ("task", "metric", "logistic regr.", "defaults (lr)", "auto (lr)", "tuned (lr)", "beats LR", "grid")
    rows = []
    for r in results:
        sign = 1 if r["higher"] else -1

        def cell(run: dict) -> str:
            return f"{run['score']:.4f} ({run['lr']:.3g})"

        grid = "  ".join(f"{lr:g}: {g['score']:.4f}" for lr, g in r["grid"].items())
        beats = "yes" if sign * r["defaults"]["score"] > sign * r["baseline"] else "NO"
        rows.append((r["task"], r["metric"], f"{r['baseline']:.4f}", cell(r["defaults"]), cell(r["auto"]),
                     cell(r["tuned"]), beats, grid))  # fmt: skip
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    print(f"fold 0, trained from scratch for {epochs} epochs (tests/test_learns.py's settings)")
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in results:
        if r["task"] != "multilabel":
            continue
        first = r["defaults"]["history"][0]
        print(f"\nmultilabel: prior entropy (BCE of the best constant) {r['entropy']:.4f}; defaults after epoch 1: "
              f"train BCE {first['train_loss']:.4f}, valid BCE {first['valid_loss']:.4f} "
              f"({first['valid_loss'] / r['entropy']:.2f} x the entropy)")  # fmt: skip
        gap = r["tuned"]["score"] - r["defaults"]["score"]
        print(
            f"multilabel: F1 after {epochs} epochs, defaults {r['defaults']['score']:.4f} vs tuned LR "
            f"{r['tuned']['score']:.4f} (lr {r['tuned']['lr']:g}): gap {gap:+.4f}"
        )
    seconds = sum(run["seconds"] for r in results for run in [r["defaults"], r["auto"], *r["grid"].values()])
    print(f"\n{seconds / 60:.1f} min of training; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LRS), help="the hand-tuning grid")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--project", type=Path, help="an existing render to use instead of rendering the template")
    parser.add_argument("--keep", type=Path, help="write the competitions and runs here (lr_find.png...), not to /tmp")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per run, as the guard's budget is stated
    with tempfile.TemporaryDirectory() as tmp:
        project = args.project or render(Path(tmp))
        P = import_project(project)
        work = args.keep or Path(tmp)
        results = []
        for task in args.tasks:
            results.append(bench_task(P, work / task, task, args.lrs, args.epochs))
            print(f"{task} done", file=sys.stderr)
        print_report(results, args.epochs)


if __name__ == "__main__":
    main()
