"""The run folder on the paths users take past the demo, through the CLI as typed: a fold counts only once finished
(a killed fold is never averaged in), a resume continues only the training it was, one live process per fold,
Ctrl-C leaves a resumable state, a checkpoint cannot run code, and files get the user's normal permissions."""

import builtins
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }}.core.runs import FoldLock, atomic_torch_save

from conftest import (
    TINY,
    cli_stopped_after,
    fake_experiment,
    fingerprint_teacher,
    make_project,
    small_config,
    write_config,
)

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
    assert main(capsys, "train", "-c", exp, "--fold", "0,1")[0] == 0
    proc = cli_stopped_after(1, "SIGKILL", ["train", "-c", exp, "--fold", "2"], env())
    proc.communicate(timeout=300)  # SIGKILL after fold 2's first checkpoint: best.pt and last.pt, no oof.csv
    assert proc.returncode == -9
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
    assert code == 2 and "fold(s) [0] were trained" in line and "optim.lr 0.0001 -> 0.01" in line, line
    assert not (fold0.parent / "fold1").exists()  # nothing written: a released lock leaves no empty folder


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

    code, stdout, _ = main(capsys, "train", "-c", exp, "--fold", "0")
    assert code == 0 and "fold 0: resuming after epoch 1" in stdout and (last.parent / "oof.csv").is_file()
    history = json.loads((last.parent / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]


# --- checkpoints cannot run code --------------------------------------------------------------------------------------


class Payload:
    """Unpickled without weights_only, this creates `marker`: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


@pytest.mark.parametrize("command", ["predict", "distill", "pseudo"])
def test_a_planted_checkpoint_runs_nothing_and_stops_with_one_line(small_project, tmp_path, capsys, command):
    cfg = small_config(small_project, f"planted_{command}")
    teacher = f"teacher_{command}"
    fingerprint_teacher(cfg, teacher)
    best = Path(cfg.output_dir) / teacher / "fold0" / "best.pt"
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker)}, best)
    torch.load(best, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    if command == "predict":
        args = ["predict", "-c", Path(cfg.output_dir) / teacher / "config.yaml"]
    else:
        args = [command, "-c", small_project / "configs" / f"planted_{command}.yaml", "--teacher", teacher]
    code, _, err = main(capsys, *args)
    line = one_line(err)
    assert code == 2 and str(best) in line and "calls code" in line, line
    assert not marker.exists()


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
