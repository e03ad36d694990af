"""The run folder on the paths users take past the demo, through the CLI as typed: a fold counts only once finished
(a killed fold is never averaged in), a resume continues only the training it was, one live process per fold,
Ctrl-C leaves a resumable state, a checkpoint cannot run code, and files get the user's normal permissions."""

import builtins
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }}.core.runs import FoldLock, atomic_torch_save

from conftest import TINY, fake_experiment, fingerprint_teacher, make_project, small_config, write_config

PKG = cli.__package__
SRC = str(Path(cli.__file__).parents[1])
THREE_EPOCHS = TINY.replace("epochs: 1", "epochs: 3")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}


def main(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def start_train(config: Path, fold: int, *overrides: str) -> subprocess.Popen:
    """`python -m <package> train -c CONFIG --fold FOLD` in another process, as typed in a terminal: in a process
    group of its own (its loader workers join it), which a terminal's Ctrl-C signals as a whole."""
    cmd = [sys.executable, "-m", PKG, "train", "-c", str(config), "--fold", str(fold), *overrides]
    return subprocess.Popen(
        cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else f"no {path}"


# --- a fold counts only when finished ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_killed_fold_is_never_used_and_is_named(tmp_path, capsys):
    make_project(tmp_path, n_folds=3, extra=THREE_EPOCHS)
    exp = tmp_path / "configs" / "exp.yaml"
    run, out = tmp_path / "outputs" / "exp", tmp_path / "outputs"
    assert main(capsys, "train", "-c", exp, "--fold", "0,1")[0] == 0
    proc = start_train(exp, 2)
    wait_for(run / "fold2" / "last.pt", proc)
    proc.kill()  # SIGKILL after fold 2's first checkpoint: best.pt and last.pt, no oof.csv
    proc.communicate()
    assert (run / "fold2" / "best.pt").is_file() and not (run / "fold2" / "oof.csv").exists()

    # Without --allow-partial every use of the experiment stops, naming the unfinished fold.
    student = write_config(tmp_path, n_folds=3, extra=THREE_EPOCHS, name="student")
    for args in (["predict", "-c", exp], ["ensemble", "-c", exp, "--exps", "exp", "--name", "blend"],
                 ["distill", "-c", student, "--teacher", "exp"]):  # fmt: skip
        code, _, err = main(capsys, *args)
        line = one_line(err)
        assert code == 2 and "fold(s) [2]" in line and "--allow-partial" in line, line
    assert not (run / "test_pred.csv").exists() and not (out / "blend").exists() and not (out / "student").exists()

    code, stdout, _ = main(capsys, "predict", "-c", exp, "--allow-partial")
    assert code == 0 and "exp: fold(s) [2] not finished; predict uses fold(s) [0, 1] only" in stdout
    folds = [read(run / f"fold{k}" / "test_pred.csv").set_index("id") for k in (0, 1)]
    expected = (folds[0] + folds[1]) / 2
    pd.testing.assert_frame_equal(read(run / "test_pred.csv").set_index("id"), expected, rtol=1e-6)
    assert not (run / "fold2" / "test_pred.csv").exists()
    cv = json.loads((run / "cv.json").read_text())
    assert set(cv["folds"]) == {"0", "1"} and not cv["complete"] and cv["folds_missing"] == [2] and cv["partial"]

    assert main(capsys, "ensemble", "-c", exp, "--exps", "exp", "--name", "blend", "--allow-partial")[0] == 0
    blend = json.loads((out / "blend" / "cv.json").read_text())
    assert blend["folds_missing"] == [2] and blend["partial"] and not blend["complete"]
    assert len(read(out / "blend" / "oof.csv")) == len(read(run / "oof.csv"))  # folds 0 and 1's rows


def test_folds_n_folds_is_checked_against_folds_csv(tmp_path, capsys):
    make_project(tmp_path, n_folds=3, images=False)
    for command in ("train", "cv"):
        code, _, err = main(capsys, command, "-c", tmp_path / "configs" / "exp.yaml", "folds.n_folds=2")
        line = one_line(err)
        assert code == 2 and "folds.csv holds 3 folds but folds.n_folds=2" in line, line
    assert not (tmp_path / "outputs").exists()


# --- resume only what it can continue ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_resume_under_a_changed_training_key_stops_before_writing_and_force_restarts(tmp_path, capsys):
    make_project(tmp_path, n_folds=2, extra=TINY)
    exp = tmp_path / "configs" / "exp.yaml"
    fold0 = tmp_path / "outputs" / "exp" / "fold0"
    assert main(capsys, "train", "-c", exp, "--fold", "0")[0] == 0
    (fold0 / "oof.csv").unlink()  # as a run killed after its last checkpoint leaves it
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (fold0.parent / "config.yaml", fold0 / "last.pt")}

    code, stdout, err = main(capsys, "train", "-c", exp, "--fold", "0", "optim.lr=0.0001", "optim.name=adamw")
    line = one_line(err)
    assert code == 2 and "-> 0.0001" in line.split("optim.lr ")[1] and "optim.name 'ranger' -> 'adamw'" in line, line
    assert "--force" in line and "resuming" not in stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in saved} == saved  # nothing rewritten
    assert not (fold0 / "oof.csv").exists()

    # Keys that do not alter training (workers, TTA, tracking...) resume as they are.
    code, stdout, _ = main(capsys, "train", "-c", exp, "--fold", "0", "tta.batch_size=16", "data.num_workers=0")
    assert code == 0 and "fold 0: resuming after epoch 1" in stdout and (fold0 / "oof.csv").is_file()

    # --force starts over under the new config.
    code, stdout, _ = main(capsys, "train", "-c", exp, "--fold", "0", "optim.lr=0.0001", "--force")
    assert code == 0 and "resuming" not in stdout and "fold 0 epoch 1/1" in stdout
    assert "lr: 0.0001" in (fold0.parent / "config.yaml").read_text()

    # Another fold under yet another config would mix two trainings in one experiment.
    code, _, err = main(capsys, "train", "-c", exp, "--fold", "1", "optim.lr=0.01")
    line = one_line(err)
    assert code == 2 and "fold 0 was trained" in line and "optim.lr 0.0001 -> 0.01" in line, line
    assert not (fold0.parent / "fold1").exists()  # nothing written: a released lock leaves no empty folder

    # --force on some folds under another config than the other finished folds: refused, naming the keys.
    assert main(capsys, "train", "-c", exp, "--fold", "1", "optim.lr=0.0001")[0] == 0
    run = fold0.parent
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    code, _, err = main(capsys, "train", "-c", exp, "--fold", "1", "--force", "optim.lr=0.05")
    line = one_line(err)
    assert code == 2 and "fold 0 was trained under another config (optim.lr 0.0001 -> 0.05" in line, line
    assert "--fold all --force" in line and "new experiment" in line
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == saved

    # Each fold records its config; cv.json is complete only while they agree (as after a `train --force` killed
    # between two folds).
    assert json.loads((run / "cv.json").read_text())["complete"]
    fold1_config = run / "fold1" / "config.yaml"
    fold1_config.write_text(fold1_config.read_text().replace("lr: 0.0001", "lr: 0.05"))
    code, stdout, _ = main(capsys, "cv", "-c", exp)
    cv = json.loads((run / "cv.json").read_text())
    assert code == 0 and not cv["complete"] and cv["folds_differ"] == {"1": ["optim.lr 0.0001 -> 0.05"]}
    assert "fold(s) [1] were trained under another config than fold 0" in stdout

    # Forcing every fold retrains the experiment under one config.
    assert main(capsys, "train", "-c", exp, "--force", "optim.lr=0.05")[0] == 0
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
    assert main(capsys, "train", "-c", exp, "--fold", "0")[0] == 0
    assert (fold0 / "oof.csv").is_file()


# --- Ctrl-C -----------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_stops_with_one_line_and_the_same_command_resumes(tmp_path, capsys, workers):
    """Ctrl-C reaches the training process and its loader workers (one process group): still one line."""
    make_project(tmp_path, n_folds=2, extra=TINY.replace("epochs: 1", "epochs: 6"))
    exp = tmp_path / "configs" / "exp.yaml"
    last = tmp_path / "outputs" / "exp" / "fold0" / "last.pt"
    proc = start_train(exp, 0, f"data.num_workers={workers}")
    wait_for(last, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    epoch = torch.load(last, weights_only=True)["state"]["epoch"]
    assert proc.returncode == 130, err[-2000:]
    assert one_line(err) == f"interrupted: fold 0 after epoch {epoch}; rerun the same command to resume"
    assert epoch < 6 and not (last.parent / "oof.csv").exists()

    code, stdout, _ = main(capsys, "train", "-c", exp, "--fold", "0")
    assert code == 0 and f"fold 0: resuming after epoch {epoch}" in stdout and (last.parent / "oof.csv").is_file()
    history = json.loads((last.parent / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]


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
    code, _, err = main(capsys, *args)
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
    assert main(capsys, "train", "-c", exp)[0] == 0
    assert main(capsys, "ensemble", "-c", exp, "--exps", "exp", "--name", "blend")[0] == 0

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
        assert main(capsys, stage, "-c", exp, *args.get(stage, []))[0] == 0
        assert not [p for p in left if p.exists()], stage
    assert live.exists()


# --- files get the user's normal permissions --------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_artefacts_get_the_users_normal_permissions(tmp_path, capsys, umask, mode):
    cfg = make_project(tmp_path, n_folds=2, images=False)
    fake_experiment(cfg, "exp", noise=0.5)
    old = os.umask(umask)
    try:
        code = main(capsys, "make-submission", "-c", tmp_path / "configs" / "exp.yaml", "--exp", "exp")[0]
        torch_file = tmp_path / "outputs" / "exp" / "fold0" / "best.pt"
        atomic_torch_save(torch_file, {"w": torch.zeros(1)})
    finally:
        os.umask(old)
    submission = tmp_path / "submissions" / "exp.csv"
    assert code == 0 and submission.is_file()
    for path in (submission, torch_file):
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))
