"""The run folder on the paths users take past the demo, through the CLI as typed: a fold counts only once finished
(a killed fold is never averaged in), a resume continues only the training it was, one live process per fold,
Ctrl-C leaves a resumable state, a checkpoint cannot run code, and files get the user's normal permissions; and each
artefact has one typed record in core/runs.py, its only writer and reader (read from the package's source)."""

import ast
import builtins
import dataclasses
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }}.core import runs
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import FoldLock, atomic_torch_save
from {{ cookiecutter.package_name }}.core.tasks import TargetScale

from conftest import (
    TINY,
    cli_main,
    cli_stopped_after,
    fake_experiment,
    fingerprint_teacher,
    make_project,
    one_line,
    small_config,
    write_config,
)

PKG = cli.__package__
SRC = str(Path(cli.__file__).parents[1])
THREE_EPOCHS = TINY.replace("epochs: 1", "epochs: 3")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def start_train(config: Path, fold: int) -> subprocess.Popen:
    """`python -m <package> train -c CONFIG --fold FOLD` in another process, as typed in a terminal."""
    cmd = [sys.executable, "-m", PKG, "train", "-c", str(config), "--fold", str(fold)]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- a fold counts only when finished ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_killed_fold_is_never_used_and_is_named(tmp_path, capsys):
    make_project(tmp_path, n_folds=3, extra=THREE_EPOCHS)
    exp = tmp_path / "configs" / "exp.yaml"
    run, out = tmp_path / "outputs" / "exp", tmp_path / "outputs"
    assert cli_main(capsys, "train", "-c", exp, "--fold", "0,1")[0] == 0
    proc = cli_stopped_after(1, "SIGKILL", ["train", "-c", exp, "--fold", "2"], env())
    proc.communicate(timeout=300)  # SIGKILL after fold 2's first checkpoint: best.pt and last.pt, no oof.csv
    assert proc.returncode == -9
    assert (run / "fold2" / "best.pt").is_file() and not (run / "fold2" / "oof.csv").exists()

    # Without --allow-partial every use of the experiment stops, naming the unfinished fold.
    student = write_config(tmp_path, n_folds=3, extra=THREE_EPOCHS, name="student")
    for args in (["predict", "-c", exp], ["ensemble", "-c", exp, "--exps", "exp", "--name", "blend"],
                 ["distill", "-c", student, "--teacher", "exp"]):  # fmt: skip
        code, _, err = cli_main(capsys, *args)
        line = one_line(err)
        assert code == 2 and "fold(s) [2]" in line and "--allow-partial" in line, line
    assert not (run / "test_pred.csv").exists() and not (out / "blend").exists() and not (out / "student").exists()

    code, stdout, _ = cli_main(capsys, "predict", "-c", exp, "--allow-partial")
    assert code == 0 and "exp: fold(s) [2] not finished; predict uses fold(s) [0, 1] only" in stdout
    folds = [read(run / f"fold{k}" / "test_pred.csv").set_index("id") for k in (0, 1)]
    expected = (folds[0] + folds[1]) / 2
    pd.testing.assert_frame_equal(read(run / "test_pred.csv").set_index("id"), expected, rtol=1e-6)
    assert not (run / "fold2" / "test_pred.csv").exists()
    cv = json.loads((run / "cv.json").read_text())
    assert set(cv["folds"]) == {"0", "1"} and not cv["complete"] and cv["folds_missing"] == [2] and cv["partial"]

    assert cli_main(capsys, "ensemble", "-c", exp, "--exps", "exp", "--name", "blend", "--allow-partial")[0] == 0
    blend = json.loads((out / "blend" / "cv.json").read_text())
    assert blend["folds_missing"] == [2] and blend["partial"] and not blend["complete"]
    assert len(read(out / "blend" / "oof.csv")) == len(read(run / "oof.csv"))  # folds 0 and 1's rows


def test_folds_n_folds_is_checked_against_folds_csv(tmp_path, capsys):
    make_project(tmp_path, n_folds=3, images=False)
    for command in ("train", "cv"):
        code, _, err = cli_main(capsys, command, "-c", tmp_path / "configs" / "exp.yaml", "folds.n_folds=2")
        line = one_line(err)
        assert code == 2 and "folds.csv holds 3 folds but folds.n_folds=2" in line, line
    assert not (tmp_path / "outputs").exists()


# --- resume only what it can continue ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_resume_under_a_changed_training_key_stops_before_writing_and_force_restarts(tmp_path, capsys):
    make_project(tmp_path, n_folds=2, extra=TINY)
    exp = tmp_path / "configs" / "exp.yaml"
    fold0 = tmp_path / "outputs" / "exp" / "fold0"
    assert cli_main(capsys, "train", "-c", exp, "--fold", "0")[0] == 0
    (fold0 / "oof.csv").unlink()  # as a run killed after its last checkpoint leaves it
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (fold0.parent / "config.yaml", fold0 / "last.pt")}

    code, stdout, err = cli_main(capsys, "train", "-c", exp, "--fold", "0", "optim.lr=0.0001", "optim.name=adamw")
    line = one_line(err)
    assert code == 2 and "-> 0.0001" in line.split("optim.lr ")[1] and "optim.name 'ranger' -> 'adamw'" in line, line
    assert "--force" in line and "resuming" not in stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in saved} == saved  # nothing rewritten
    assert not (fold0 / "oof.csv").exists()

    # Keys that do not alter training (workers, TTA, tracking...) resume as they are.
    code, stdout, _ = cli_main(capsys, "train", "-c", exp, "--fold", "0", "tta.batch_size=16", "data.num_workers=0")
    assert code == 0 and "fold 0: resuming after epoch 1" in stdout and (fold0 / "oof.csv").is_file()

    # --force starts over under the new config.
    code, stdout, _ = cli_main(capsys, "train", "-c", exp, "--fold", "0", "optim.lr=0.0001", "--force")
    assert code == 0 and "resuming" not in stdout and "fold 0 epoch 1/1" in stdout
    assert "lr: 0.0001" in (fold0.parent / "config.yaml").read_text()

    # Another fold under yet another config would mix two trainings in one experiment.
    code, _, err = cli_main(capsys, "train", "-c", exp, "--fold", "1", "optim.lr=0.01")
    line = one_line(err)
    assert code == 2 and "fold 0 was trained" in line and "optim.lr 0.0001 -> 0.01" in line, line
    assert not (fold0.parent / "fold1").exists()  # nothing written: a released lock leaves no empty folder

    # --force on some folds under another config than the other finished folds: refused, naming the keys.
    assert cli_main(capsys, "train", "-c", exp, "--fold", "1", "optim.lr=0.0001")[0] == 0
    run = fold0.parent
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    code, _, err = cli_main(capsys, "train", "-c", exp, "--fold", "1", "--force", "optim.lr=0.05")
    line = one_line(err)
    assert code == 2 and "fold 0 was trained under another config (optim.lr 0.0001 -> 0.05" in line, line
    assert "--fold all --force" in line and "new experiment" in line
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == saved

    # Each fold records its config; cv.json is complete only while they agree (as after a `train --force` killed
    # between two folds).
    assert json.loads((run / "cv.json").read_text())["complete"]
    fold1_config = run / "fold1" / "config.yaml"
    fold1_config.write_text(fold1_config.read_text().replace("lr: 0.0001", "lr: 0.05"))
    code, stdout, _ = cli_main(capsys, "cv", "-c", exp)
    cv = json.loads((run / "cv.json").read_text())
    assert code == 0 and not cv["complete"] and cv["folds_differ"] == {"1": ["optim.lr 0.0001 -> 0.05"]}
    assert "fold(s) [1] were trained under another config than fold 0" in stdout

    # Forcing every fold retrains the experiment under one config.
    assert cli_main(capsys, "train", "-c", exp, "--force", "optim.lr=0.05")[0] == 0
    cv = json.loads((run / "cv.json").read_text())
    assert cv["complete"] and cv["folds_differ"] == {} and "lr: 0.05" in (run / "fold0" / "config.yaml").read_text()


@pytest.mark.e2e
def test_a_second_live_process_on_a_fold_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
    make_project(tmp_path, n_folds=2, extra=TINY)
    exp = tmp_path / "configs" / "exp.yaml"
    fold0 = tmp_path / "outputs" / "exp" / "fold0"
    with FoldLock(fold0 / "train.lock"):  # this process trains fold 0
        proc = start_train(exp, 0)
        _, err = proc.communicate(timeout=300)
        line = one_line(err)
        assert proc.returncode == 2 and f"pid {os.getpid()}" in line and "train.lock" in line, line
        assert sorted(p.name for p in fold0.iterdir()) == ["train.lock"]  # nothing written
        assert not (fold0.parent / "config.yaml").exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    fold0.mkdir(parents=True, exist_ok=True)  # an empty fold folder is not kept when its lock is released
    (fold0 / "train.lock").write_text(dead.stdout)  # left behind by a process that is gone
    assert cli_main(capsys, "train", "-c", exp, "--fold", "0")[0] == 0
    assert (fold0 / "oof.csv").is_file()


# --- Ctrl-C -----------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_stops_with_one_line_and_the_same_command_resumes(tmp_path, capsys, workers):
    """Ctrl-C reaches the training process and its loader workers (one process group): still one line. The Ctrl-C
    comes right after epoch 1's checkpoint, from within the run: no race against the end of the training."""
    make_project(tmp_path, n_folds=2, extra=THREE_EPOCHS)
    exp = tmp_path / "configs" / "exp.yaml"
    last = tmp_path / "outputs" / "exp" / "fold0" / "last.pt"
    proc = cli_stopped_after(1, "SIGINT", ["train", "-c", exp, "--fold", "0", f"data.num_workers={workers}"], env())
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert one_line(err) == "interrupted: fold 0 after epoch 1; rerun the same command to resume"
    assert torch.load(last, weights_only=True)["state"]["epoch"] == 1 and not (last.parent / "oof.csv").exists()

    code, stdout, _ = cli_main(capsys, "train", "-c", exp, "--fold", "0")
    assert code == 0 and "fold 0: resuming after epoch 1" in stdout and (last.parent / "oof.csv").is_file()
    history = json.loads((last.parent / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]


# --- checkpoints cannot run code --------------------------------------------------------------------------------------


class Payload:
    """Unpickled without weights_only, this creates `marker`: what a planted checkpoint would do."""

    def __init__(self, marker: Path, shell: bool = False) -> None:
        self.marker, self.shell = marker, shell

    def __reduce__(self):
        if self.shell:  # torch words this refusal differently ("unsupported GLOBAL posix.system ... blocked")
            return os.system, (f"touch {str(self.marker)!r}",)
        return builtins.exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


@pytest.mark.parametrize(("command", "shell"), [("predict", False), ("predict", True), ("distill", True),
                                              ("pseudo", False)])  # fmt: skip
def test_a_planted_checkpoint_runs_nothing_and_stops_with_one_line(small_project, tmp_path, capsys, command, shell):
    cfg = small_config(small_project, f"planted_{command}_{shell}")
    teacher = f"teacher_{command}_{shell}"
    fingerprint_teacher(cfg, teacher)
    best = Path(cfg.output_dir) / teacher / "fold0" / "best.pt"
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker, shell)}, best)
    torch.load(best, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    if command == "predict":
        args = ["predict", "-c", Path(cfg.output_dir) / teacher / "config.yaml"]
    else:
        args = [command, "-c", small_project / "configs" / f"planted_{command}_{shell}.yaml", "--teacher", teacher]
    code, _, err = cli_main(capsys, *args)
    line = one_line(err)
    called = "system" if shell else "exec"
    assert code == 2 and f"{best}: refused, it would run code (" in line and called in line, line
    assert "weights_only" not in line
    assert not marker.exists()


# --- what a killed stage left ----------------------------------------------------------------------------------------


def test_every_stage_removes_the_temporaries_a_killed_run_of_it_left(tmp_path, capsys):
    """A temporary file (.<name>.<random>.tmp) that a killed writer left is removed by the next run of the stage
    that writes into its folder; one that a live writer may be writing right now (touched within a minute) stays."""
    make_project(tmp_path, n_folds=2, extra=TINY)
    exp, out = tmp_path / "configs" / "exp.yaml", tmp_path / "outputs"
    assert cli_main(capsys, "train", "-c", exp)[0] == 0
    assert cli_main(capsys, "ensemble", "-c", exp, "--exps", "exp", "--name", "blend")[0] == 0

    def plant(folder: Path, name: str, age: float = 3600) -> Path:
        path = folder / f".{name}.x1y2z3.tmp"
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("half-written")
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    stages = {
        "predict": [plant(out / "exp", "test_pred.csv"), plant(out / "exp" / "fold1", "test_pred.csv")],
        "cv": [plant(out / "exp", "cv.json")],
        "ensemble": [plant(out / "blend", "oof.csv")],
        "make-submission": [plant(tmp_path / "submissions", "exp.csv")],
    }
    live = plant(out / "exp", "config.yaml", age=0)
    args = {"ensemble": ["--exps", "exp", "--name", "blend"]}
    for stage, left in stages.items():
        assert cli_main(capsys, stage, "-c", exp, *args.get(stage, []))[0] == 0
        assert not [p for p in left if p.exists()], stage
    assert live.exists()


# --- files get the user's normal permissions --------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_artefacts_get_the_users_normal_permissions(tmp_path, capsys, umask, mode):
    cfg = make_project(tmp_path, n_folds=2, images=False)
    fake_experiment(cfg, "exp", noise=0.5)
    old = os.umask(umask)
    try:
        code = cli_main(capsys, "make-submission", "-c", tmp_path / "configs" / "exp.yaml", "--exp", "exp")[0]
        torch_file = tmp_path / "outputs" / "exp" / "fold0" / "best.pt"
        atomic_torch_save(torch_file, {"w": torch.zeros(1)})
    finally:
        os.umask(old)
    submission = tmp_path / "submissions" / "exp.csv"
    assert code == 0 and submission.is_file()
    for path in (submission, torch_file):
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))


# --- one typed record per artefact: one writer, one reader --------------------------------------------------------

PACKAGE = Path(cli.__file__).parent
RUNS = PACKAGE / "core" / "runs.py"
# Each artefact's file-name constant (spelled only in core/runs.py), and the Run / FoldFiles property of its path.
ARTEFACTS = {
    "CV": "cv",
    "CLASSES": "classes",
    "WEIGHTS": "weights",
    "EXPORT_JSON": "export_json",
    "LINEAGE": "lineage",
    "TTA_AUTO": "tta_auto",
    "BEST": "best",
    "INIT_FROM": "init_from",
}
FILE_NAMES = {getattr(runs, name) for name in ARTEFACTS}
# Calls that parse or write a file's content by hand (read_text / write_text ... on the path object itself).
BY_HAND = {
    "loads",
    "load",
    "read_json",
    "load_checkpoint",
    "read_text",
    "read_bytes",
    "open",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_write_text",
    "atomic_write",
    "save",
    "dump",
    "write_text",
    "write_bytes",
}
METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "open"}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (their text may name the files)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def hand_made(source: str, where: str) -> list[str]:
    """Where `source` spells an artefact's file name or reads / writes one of those files by hand, instead of through
    its record's writer and reader in core/runs.py."""
    tree, bad = ast.parse(source), []
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("runs"):
            bad += [f"{line} imports runs.{a.name}" for a in node.names if a.name in ARTEFACTS]
        elif isinstance(node, ast.Attribute) and node.attr in ARTEFACTS and getattr(node.value, "id", "") == "runs":
            bad.append(f"{line} uses runs.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value.strip()
            if any(text == name or text.endswith("/" + name) for name in FILE_NAMES):
                bad.append(f"{line} spells {text!r}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name not in BY_HAND:
                continue
            where_path = node.args[1:2] if name in ("save", "dump") else node.args[:1]  # torch.save(obj, path)
            paths = [*where_path, *([func.value] if isinstance(func, ast.Attribute) and name in METHODS else [])]
            for part in (n for p in paths for n in ast.walk(p)):
                if isinstance(part, ast.Attribute) and part.attr in ARTEFACTS.values():
                    bad.append(f"{line} {name}() on .{part.attr} by hand: {ast.unparse(node)[:80]}")
    return bad


def test_each_artefact_is_written_and_read_only_through_its_record_in_core_runs():
    """The package's source, read: outside core/runs.py no module spells cv.json, classes.json, weights.json,
    export.json, lineage.json, tta_auto.json or best.pt, nor uses their constants, nor json.loads / torch.load /
    atomic_write_json ... on those paths: each artefact has one writer and one reader, its record's."""
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if p != RUNS and "__pycache__" not in p.parts]
    assert len(files) > 40  # the whole package, not an empty glob
    bad = [b for p in files for b in hand_made(p.read_text(), str(p.relative_to(PACKAGE)))]
    assert bad == []
    # The same reading catches each way of doing it by hand.
    planted = """
from ..core.runs import CV, atomic_write_json
def f(run, out, cfg, state, torch, json, runs):
    atomic_write_json(run.cv, {})
    info = json.loads(run.classes.read_text())
    torch.save(state, out.fold(0).best)
    torch.load(cfg.run.fold(1).best)
    run.export_json.write_text("{}")
    return read_json(run.lineage), run.path / "tta_auto.json", runs.WEIGHTS, run.tta_auto.open()
"""
    found = hand_made(planted, "planted")
    assert len(found) == 11, found
    for text in (
        "runs.CV",
        "atomic_write_json() on .cv",
        "loads() on .classes",
        "read_text() on .classes",
        "save() on .best",
        "load() on .best",
        "write_text() on .export_json",
        "read_json() on .lineage",
        "'tta_auto.json'",
        "runs.WEIGHTS",
        "open() on .tta_auto",
    ):
        assert any(text in f for f in found), (text, found)


def _records() -> dict:
    """One of each record with every field set (None-able ones too), as JSON-shaped as the files hold them."""
    cv = runs.CVSummary(
        exp="exp",
        task="multiclass",
        metric="accuracy",
        higher_is_better=True,
        cv=0.5,
        folds={"0": 0.4, "1": 0.6},
        complete=False,
        folds_missing=[2],
        partial=True,
        folds_hash="abc",
        pred_cols=["a", "b"],
        lr=0.01,
        lr_auto=True,
        cv_tta=0.55,
        tta_views=["identity", "hflip"],
        tta_auto={"views": ["identity"]},
        weight_averaging={"best": 0.5, "folds": {}, "picked": {}},
        ordinal={"levels": [0, 1], "cuts": [0.5]},
        cv_ordinal=0.5,
    )
    ensemble = dataclasses.replace(
        cv,
        lr=None,
        lr_auto=None,
        members=["m0", "m1"],
        method="optimize",
        weights=[0.25, 0.75],
        member_cv={"m0": 0.4, "m1": 0.5},
        cv_in_sample=0.7,
        folds_nested={"0": 0.5},
        cv_nested=0.5,
        seed_bag=runs.SeedBag([42, 7], ["m0", "m1"], {"42": 0.4, "7": 0.5}, 0.45, 0.07, 0.5),
    )
    variant = runs.ExportedVariant(
        file="export/fold0/model.onnx",
        sha256="f" * 64,
        score=0.5,
        max_abs_diff=1e-6,
        size_mb=1.0,
        zipped_mb=0.9,
        images_per_s=100.0,
        parity_ok=True,
        tolerance=1e-4,
        sparsity=0.5,
    )
    export = runs.ExportManifest(
        exp="exp",
        metric="accuracy",
        higher_is_better=True,
        threads=1,
        settings={"opset": 17},
        overall={"onnx": 0.5},
        folds={"0": runs.ExportedFold("e" * 64, {"onnx": variant})},
    )
    lineage = runs.Lineage(
        kind="pseudo",
        exp="s",
        teachers=["t"],
        teacher_weights={"t": 1.0},
        settings={"soft": True},
        backbone="test_resnet",
        folds_hash="abc",
        round=2,
        folds={"0": {"sources": [["t", 0]]}},
    )
    choice = runs.TTAChoice(
        candidates=["identity", "hflip"],
        merge="mean",
        metric="accuracy",
        views=["identity"],
        identity=0.5,
        chosen=0.5,
        steps=[{"view": "identity", "score": 0.5}],
        checkpoints={"0": "d" * 64},
    )
    return {
        "classes": runs.Classes("binary", ["neg", "pos"], "pos"),
        "cv": cv,
        "ensemble cv": ensemble,
        "weights": runs.BlendWeights("stacking", ["m0", "m1"], None, True, {"kind": "stacking", "heads": []}),
        "export": export,
        "lineage": lineage,
        "tta choice": choice,
        "estimate": runs.Estimate(
            "exp", "cpu", 2, "torch", 2, ["identity", "hflip"], 1.5, 0.5, 3.0, {"identity": 2.0, "hflip": 2.1}, 1.1, 32
        ),
        "budget": runs.BudgetChoice(
            9.0,
            10000,
            "accuracy",
            {"m0": [{"views": ["identity"], "seconds": 60.0, "cv": 0.5}]},
            {"m0": ["identity"]},
            60.0,
            0.5,
        ),
        "budget weights": runs.BlendWeights("mean", ["m0"], [1.0], views={"m0": ["identity"]}),
        "final two": runs.FinalTwo("accuracy", "a", "b", "why", [{"name": "a", "cv": 0.5, "submitted": False}]),
    }


@pytest.mark.parametrize("kind", list(_records()))
def test_each_record_round_trips_through_its_file(tmp_path, kind):
    record = _records()[kind]
    assert type(record).from_dict(json.loads(json.dumps(record.to_dict()))) == record
    run = runs.Run(tmp_path / "exp")
    write, read = {
        runs.Classes: (run.write_classes, run.read_classes),
        runs.CVSummary: (run.write_cv, run.read_cv),
        runs.BlendWeights: (run.write_weights, run.read_weights),
        runs.ExportManifest: (run.write_export, run.read_export),
        runs.Lineage: (run.write_lineage, run.read_lineage),
        runs.TTAChoice: (run.write_tta_choice, run.read_tta_choice),
        runs.Estimate: (run.write_estimate, run.read_estimate),
        runs.BudgetChoice: (run.write_budget, run.read_budget),
        runs.FinalTwo: (lambda r: runs.write_final_two(run.path, r), lambda: runs.read_final_two(run.path)),
    }[type(record)]
    path = write(record)
    assert path.parent.is_relative_to(run.path) and read() == record
    assert not list(path.parent.glob(f"*{runs.TMP_SUFFIX}"))  # written through a temporary file, replaced


def test_files_keep_the_keys_the_stages_always_wrote():
    """cv.json: an experiment's always holds lr, lr_auto and folds_differ (each may be null), an ensemble's members,
    method, weights (null for stacking) and member_cv; the optional keys only when set. weights.json keeps `weights`
    even when null."""
    common = [
        "exp",
        "task",
        "metric",
        "higher_is_better",
        "cv",
        "folds",
        "complete",
        "folds_missing",
        "partial",
        "folds_hash",
        "pred_cols",
    ]
    bare = runs.CVSummary(*["x"] * 4, 0.5, {}, True, [], False, "h", ["a"])
    assert list(bare.to_dict()) == [*common, "lr", "lr_auto", "folds_differ"]
    ensemble = dataclasses.replace(bare, members=["m"], method="vote", member_cv={"m": 0.5})
    assert list(ensemble.to_dict()) == [*common, "members", "method", "weights", "member_cv"]
    assert ensemble.to_dict()["weights"] is None
    assert runs.BlendWeights("vote", ["m"]).to_dict() == {
        "method": "vote",
        "members": ["m"],
        "weights": None,
        "rank": False,
    }
    assert "round" not in runs.Lineage("distill", "s", ["t"], {"t": 1.0}, {}, "b", "h").to_dict()
    assert list(runs.Classes("multiclass", ["a"]).to_dict()) == ["task", "classes", "positive"]


def test_a_checkpoint_round_trips_and_loads_without_pickled_code(tmp_path):
    files = runs.FoldFiles(tmp_path / "fold0")
    ckpt = runs.Checkpoint({"w": torch.arange(3.0)}, 4, 0.75, "ema", ["a", "b"], TargetScale(2.0, 3.0))
    files.write_best(ckpt)
    back = files.read_best()
    torch.testing.assert_close(back.model["w"], ckpt.model["w"])
    assert (back.epoch, back.score, back.source, back.classes, back.target_scale) == (
        4,
        0.75,
        "ema",
        ["a", "b"],
        TargetScale(2.0, 3.0),
    )
    raw = torch.load(files.best, weights_only=True)  # plain tensors, numbers, strings: the safe load takes it
    assert set(raw) == {"model", "epoch", "score", "source", "classes", "target_scale"}
    averaged = runs.Checkpoint({"w": torch.zeros(1)}, source="swa")  # the averages: no epoch, score, scale
    runs.write_checkpoint(files.averaged("swa"), averaged)
    assert set(torch.load(files.averaged("swa"), weights_only=True)) == {"model", "source"}
    assert runs.read_checkpoint(files.averaged("swa")).scale == TargetScale()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"task": "binary"}', "missing key(s) ['classes']"),
        ('{"task": "binary", "classes": [], "positive": null, "colour": 1}', "unknown key(s) ['colour']"),
    ],
)
def test_a_foreign_artefact_stops_with_one_line_naming_it(tmp_path, content, message):
    run = runs.Run(tmp_path / "exp")
    run.path.mkdir()
    run.classes.write_text(content)
    with pytest.raises(UserError) as e:
        run.read_classes()
    assert str(run.classes) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)
    files = run.fold(0)
    runs.atomic_torch_save(files.best, {"weights": torch.zeros(1)})  # a checkpoint of something else
    with pytest.raises(UserError, match=r"best\.pt: not a checkpoint as this version writes it"):
        files.read_best()
