"""Shared test set-up: everything offline, and small demo competitions written on demand."""

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.datasets import load_digits
from sklearn.utils import Bunch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# On a busy shared machine (CI) wandb's service and a run's start can take longer than its defaults (30 s, 90 s), which
# would fail an offline run for the load alone: the tests wait for them as long as their own hang guards allow.
os.environ.setdefault("WANDB__SERVICE_WAIT", "300")
os.environ.setdefault("WANDB_INIT_TIMEOUT", "600")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.runs import BlendWeights, Checkpoint, Classes, CVSummary, Run, write_derived
from {{ cookiecutter.package_name }}.data import demo, folds, tables
from {{ cookiecutter.package_name }}.data import problem as fold_data
from {{ cookiecutter.package_name }}.engine import codec
from {{ cookiecutter.package_name }}.modeling import metrics, models
from {{ cookiecutter.package_name }}.students import teachers

# Tiny tensors on a 2-core machine: threads cost more than they bring, and one thread keeps runs bit-exact.
torch.set_num_threads(1)

# A model and settings that train in seconds on a CPU: used by every end-to-end test.
TINY = """
model:
  backbone: test_resnet
  pretrained: false
  in_chans: 1
augment:
  image_size: 16
  preset: light
  hflip: false
train:
  epochs: 1
  batch_size: 32
  limit_batches: 4
  ema: false
data:
  num_workers: 0
threads: 1
"""


# The segmentation demo (64 px canvases, three classes of masks) at a size and decoder that train in seconds.
TINY_SEGMENTATION = """
data:
  class_col: ClassId
  rle_col: EncodedPixels
  num_workers: 0
model:
  backbone: test_resnet
  pretrained: false
  in_chans: 1
  decoder_channels: [16, 8, 8, 8, 8]
augment:
  image_size: 32
  hflip: false
train:
  epochs: 1
  batch_size: 16
  limit_batches: 4
  ema: false
threads: 1
wandb:
  mode: disabled
"""


def write_config(root: Path, task: str = "multiclass", metric: str = "auto", n_folds: int = 3, extra: str = "",
                 name: str = "exp") -> Path:  # fmt: skip
    """A config for the demo competition in `root`/data, outputs in `root`/outputs. `extra` is appended YAML."""
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {
        "task": task,
        "metric": metric,
        "output_dir": str(root / "outputs"),
        "data": {"dir": str(root / "data")},
        "folds": {"n_folds": n_folds, "path": str(root / "data" / "folds.csv")},
    }
    OmegaConf.save(OmegaConf.merge(base, OmegaConf.create(extra or "{}")), path)
    return path


def make_project(root: Path, task: str = "multiclass", metric: str = "auto", n_folds: int = 3, images: bool = True,
                 size: int = 16, extra: str = "") -> config.Config:  # fmt: skip
    """The demo competition for `task` in `root`/data, its config, and folds.csv written by the folds module.
    `images=False` skips the PNGs (most of the writing time) for tests that never open an image."""
    with pytest.MonkeyPatch.context() as mp:
        if not images:
            mp.setattr(demo, "_to_png", lambda *args: None)
        demo.write_demo(root / "data", task, size=size)
    cfg = config.load(write_config(root, task, metric, n_folds, extra))
    folds.write_folds(cfg)
    return cfg


def cli_main(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process, as typed: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The one line a refusal prints (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="session")
def new_project():
    """`new_project(root, task, ...)` -> Config of a fresh demo competition (see make_project)."""
    return make_project


# --- a training stopped after epoch k, deterministically --------------------------------------------------------------

# Run by `python -c` before the CLI: core.runs.save_last (called once per finished epoch with the fold's last.pt) is
# wrapped, before the CLI is imported so that `from ..core.runs import save_last` binds the wrapper, to send a signal
# to the process's own group once the given number of epochs is saved: as a terminal's Ctrl-C reaches the process and
# its loader workers, or as a kill reaches them. No race between a file's appearance and the end of the training.
_STOP_AFTER_EPOCH = """
import os, signal, sys
from {package}.core import runs
after, sig, argv = int(sys.argv[1]), signal.Signals[sys.argv[2]], sys.argv[3:]
assert os.getpgid(0) == os.getpid(), "start it in a process group of its own: the signal goes to the whole group"
# as started from a terminal: a test runner started in the background by a shell (`make test &`) passes SIGINT on
# ignored, and Python then installs no KeyboardInterrupt handler, so the Ctrl-C would do nothing
signal.signal(signal.SIGINT, signal.default_int_handler)
save_last, saved = runs.save_last, []
def stop_after(path, **parts):
    save_last(path, **parts)
    saved.append(path)
    if len(saved) == after:
        os.killpg(os.getpgid(0), sig)
runs.save_last = stop_after
from {package} import cli
sys.exit(cli.main(argv))
"""


def cli_stopped_after(epochs: int, sig: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`python -m <package> ARGV` in a process group of its own (its loader workers join it, as typed in a terminal),
    which signals `sig` ("SIGINT", "SIGKILL") to that group right after its `epochs`-th epoch checkpoint."""
    code = _STOP_AFTER_EPOCH.format(package=config.__package__)
    cmd = [sys.executable, "-c", code, str(epochs), sig, *map(str, argv)]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


# --- synthetic experiments (ensembling, submissions) -----------------------------------------------------------------


def encode_truth(cfg: config.Config, table: pd.DataFrame) -> tuple[np.ndarray, list[str], str | None]:
    """The encoded targets of `table`, with the classes and the positive class derived from the training table."""
    train = tables.read_train(cfg)
    classes = tables.derive_classes(cfg, train)
    positive = tables.binary_positive(cfg, train) if cfg.task == "binary" else None
    return tables.encode_targets(cfg, table, classes, positive), classes, positive


def noisy_predictions(y: np.ndarray, task: str, n_cols: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(N, C) predictions of a model whose error grows with `noise`; noise 0 ranks/labels everything right."""
    if task == "regression":
        return (y + noise * rng.standard_normal(len(y)))[:, None]
    if task == "multiclass":
        logits = 3.0 * np.eye(n_cols)[y] + noise * rng.standard_normal((len(y), n_cols))
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    t = y.reshape(len(y), -1)
    return 1 / (1 + np.exp(-(3.0 * (2 * t - 1) + noise * rng.standard_normal(t.shape))))


def fake_experiment(
    cfg: config.Config, exp: str, noise: float, seed: int = 0, shuffle: bool = False, cv: float | None = None
) -> Path:
    """outputs/<exp>/{oof.csv, test_pred.csv (rows in test.csv order), cv.json, classes.json, decisions.json} in the
    training stage's formats (cv.json, classes.json and decisions.json through the run folder's own writers), of a
    model whose error grows with `noise`. `shuffle`: oof.csv in another row order; `cv` stands in for the OOF score
    in cv.json."""
    rng, id_col, run = np.random.default_rng(seed), cfg.data.id_col, Path(cfg.output_dir) / exp
    fold_df, h = folds.read_folds(cfg)
    train = tables.read_train(cfg).merge(fold_df[[id_col, "fold"]], on=id_col)
    y, classes, positive = encode_truth(cfg, train)
    oof = pd.DataFrame(noisy_predictions(y, cfg.task, len(classes), noise, rng), columns=classes)
    oof.insert(0, "fold", train["fold"].to_numpy())
    oof.insert(0, id_col, train[id_col].to_numpy())
    test_ids = tables.read_table(Path(cfg.data.dir) / "test.csv", id_col)[id_col]
    solution = tables.read_table(Path(cfg.data.dir) / "solution.csv", id_col).set_index(id_col).loc[test_ids]
    y_test = encode_truth(cfg, solution)[0]
    test = pd.DataFrame(noisy_predictions(y_test, cfg.task, len(classes), noise, rng), columns=classes)
    test.insert(0, id_col, test_ids.to_numpy())
    run.mkdir(parents=True, exist_ok=True)
    (oof.sample(frac=1.0, random_state=seed) if shuffle else oof).to_csv(run / "oof.csv", index=False)
    # as `predict` writes it: beside it, how it was predicted (one view, torch; no real checkpoint behind it)
    way = {"views": ["identity"], "merge": "mean", "runtime": "torch"}
    source = {"folds": {"0": {"checkpoint": "fake", "views": way["views"], "merge": way["merge"]}}}
    write_derived(run / "test_pred.csv", test, source)
    name = config.metric_name(cfg)
    pred = oof[classes].to_numpy()
    pred = pred[:, 0] if cfg.task in ("binary", "regression") else pred
    fold = train["fold"].to_numpy()
    per_fold = {str(k): metrics.score(name, y[fold == k], pred[fold == k], cfg.task) for k in np.unique(fold)}
    summary = CVSummary(
        exp=exp,
        task=cfg.task,
        metric=name,
        higher_is_better=metrics.get_metric(name).higher_is_better,
        cv=metrics.score(name, y, pred, cfg.task) if cv is None else cv,
        folds=per_fold,
        complete=True,
        folds_missing=[],
        partial=False,
        folds_hash=h,
        pred_cols=classes,
        lr=cfg.optim.lr if cfg.optim.lr != "auto" else None,
        lr_auto=cfg.optim.lr == "auto",
    )
    Run(run).write_cv(summary)
    Run(run).write_classes(Classes(cfg.task, classes, positive))
    # decisions.json as `cv` writes it (thresholds, cuts tuned on this OOF): what make-submission applies
    codec.record_decisions(cfg, Run(run), classes, y, oof[classes].to_numpy(), y, "oof.csv", way)
    return run


def on_other_folds(cfg: config.Config, exp: str) -> None:
    """Makes the experiment `exp` look trained on another split: folds hash 0123456789abcdef in its cv.json."""
    run = Run.named(cfg.output_dir, exp)
    run.write_cv(dataclasses.replace(run.read_cv(), folds_hash="0123456789abcdef"))


# --- teacher-student projects (pseudo-labelling, distillation) -------------------------------------------------------

# TINY with smaller batches, a fixed normalisation and a single TTA view (and two folds, see small_config).
SMALL_CHANGES = """
data:
  cache: memory
augment:
  mean: [0.5]
  std: [0.5]
train:
  batch_size: 16
  limit_batches: 2
tta:
  views: [identity]
wandb:
  mode: disabled
"""
SMALL = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(TINY), OmegaConf.create(SMALL_CHANGES)))


def small_config(root: Path, name: str = "exp", overrides: list[str] | tuple[str, ...] = ()) -> config.Config:
    """Writes the SMALL config `name` for the project in `root` (two folds) and loads it with `overrides`."""
    return config.load(write_config(root, n_folds=2, extra=SMALL, name=name), overrides)


def small_digits(per_class: int = 16) -> Bunch:
    """The first `per_class` images of each digit, in load_digits' format."""
    d = load_digits()
    rows = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(10)])
    return Bunch(data=d.data[rows], target=d.target[rows])


@pytest.fixture(scope="module")
def small_project(tmp_path_factory) -> Iterator[Path]:
    """The root of a small multiclass demo competition (128 train, 32 test images) and its two folds; wandb off.
    Configs: `small_config(root, name, overrides)`."""
    root = tmp_path_factory.mktemp("small")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "load_digits", small_digits)
        make_project(root, n_folds=2, extra=SMALL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        yield root


def fingerprint_teacher(cfg: config.Config, name: str, offset: int = 0) -> None:
    """A fake trained multiclass teacher whose fold j model outputs the logits 5 * onehot(j + offset) for any image
    (zero weights, a bias): logits of any other origin than fold k's models show up in fold k. Its files are written
    by the run folder's own writers; its fold j model predicts class j + offset, so its accuracy is that class's
    share of fold j's validation rows."""
    tcfg = dataclasses.replace(cfg, exp=name)
    problem = fold_data.load_problem(cfg)
    n_classes = len(problem.classes)
    scores = {}
    for j in range(cfg.folds.n_folds):
        model = models.build_model(tcfg, n_classes, pretrained=False)
        with torch.no_grad():
            model.get_classifier().weight.zero_()
            model.get_classifier().bias.copy_(5.0 * torch.eye(n_classes)[j + offset])
        scores[str(j)] = float(np.mean(problem.y[problem.rows(j, valid=True)] == j + offset))
        tcfg.run.fold(j).write_best(Checkpoint(model.state_dict(), 1, scores[str(j)], "model", problem.classes))
        tcfg.run.fold(j).oof.write_text(f"{cfg.data.id_col},fold\n")  # a finished fold has both
    config.save(tcfg, tcfg.run_dir / "config.yaml")
    tcfg.run.write_classes(Classes("multiclass", problem.classes, None))
    correct = sum(np.sum(problem.y[problem.rows(j, valid=True)] == j + offset) for j in range(cfg.folds.n_folds))
    summary = CVSummary(
        exp=name,
        task="multiclass",
        metric="accuracy",
        higher_is_better=True,
        cv=float(correct / len(problem.y)),
        folds=scores,
        complete=True,
        folds_missing=[],
        partial=False,
        folds_hash=problem.folds_hash,
        pred_cols=problem.classes,
        lr=tcfg.optim.lr if tcfg.optim.lr != "auto" else None,
        lr_auto=tcfg.optim.lr == "auto",
    )
    tcfg.run.write_cv(summary)


def weighted_teacher(cfg: config.Config, name: str, members: list[str], weights: list[float]) -> None:
    """outputs/<name>: a weighted blend of the teachers `members` as the ensemble stage leaves it (weights.json,
    classes.json and a cv.json of the members' split and columns), through the run folder's own writers."""
    ens, first = Run.named(cfg.output_dir, name), Run.named(cfg.output_dir, members[0])
    ens.path.mkdir()
    total = sum(weights)
    ens.write_weights(BlendWeights("weighted", members, [w / total for w in weights]))
    ens.write_classes(first.read_classes())
    member_cv = {m: Run.named(cfg.output_dir, m).read_cv().cv for m in members}
    summary = dataclasses.replace(
        first.read_cv(),
        exp=name,
        lr=None,
        lr_auto=None,
        members=members,
        method="weighted",
        weights=[w / total for w in weights],
        member_cv=member_cv,
    )
    ens.write_cv(summary)


# What the spied-on summary says of a student whose folds were "trained" (no cv.json is written).
TRAINED = CVSummary(
    exp="",
    task="multiclass",
    metric="accuracy",
    higher_is_better=True,
    cv=0.0,
    folds={},
    complete=True,
    folds_missing=[],
    partial=False,
    folds_hash="",
    pred_cols=[],
)


def spy_on_training(monkeypatch) -> dict:
    """Record what each fold's student is given, instead of training it."""
    seen: dict = {}
    monkeypatch.setattr(teachers, "train_one_fold", lambda cfg, fold, data, step, force: seen.setdefault(fold, data))
    monkeypatch.setattr(teachers, "summarize", lambda cfg, **kw: dataclasses.replace(TRAINED, exp=cfg.exp))
    monkeypatch.setattr(teachers, "run_predict", lambda cfg, **kw: ["identity"])
    return seen


def check_fold(cfg: config.Config, k: int, data: fold_data.FoldData, one_hot: bool) -> tuple:
    """Fold k's training rows (and only they) carry labels, the other training part holds none of the training
    images; its validation rows are untouched. `one_hot`: labelled targets are one-hot rows, not class indices.
    Returns the labelled and the unlabelled training parts."""
    problem = fold_data.load_problem(cfg)
    train_rows, valid_rows = problem.rows(k, valid=False), problem.rows(k, valid=True)
    assert data.valid_ids == [problem.ids[i] for i in valid_rows]
    np.testing.assert_array_equal(data.y_valid, problem.y[valid_rows])
    labelled, unlabelled = data.train.datasets
    assert labelled.paths == [problem.paths[i] for i in train_rows]
    np.testing.assert_array_equal(labelled.targets.argmax(1) if one_hot else labelled.targets, problem.y[train_rows])
    assert not set(unlabelled.paths) & set(problem.paths)
    return labelled, unlabelled


# --- wandb offline runs -----------------------------------------------------------------------------------------------


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline run file (run-<id>.wandb): wandb's LevelDB-style log, a 7-byte header
    (':W&B', magic, version), then 32 KiB blocks of chunks, each (crc32 4, length 2, type 1) + data; type 1 is a
    whole record, 2/3/4 its first, middle and last part. wandb 0.31 ships no Python reader of its own."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a chunk header: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_runs(folder: Path) -> list[dict]:
    """Every offline wandb session under `folder`/wandb, oldest first: {"id", "group", "job_type", "name",
    "history": [row, ...], "summary": {key: value}} (values decoded from their JSON). wandb's service process
    writes the files: it is stopped first (wandb.teardown), which flushes them."""
    import wandb

    wandb.teardown()
    sessions = []
    for path in sorted(Path(folder).glob("wandb/offline-run-*/run-*.wandb")):
        run: dict = {"history": [], "summary": {}}
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run.update(id=r.run_id, group=r.run_group, job_type=r.job_type, name=r.display_name)
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})  # fmt: skip
            elif kind == "summary":
                run["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.summary.update})  # fmt: skip
        sessions.append(run)
    return sessions
