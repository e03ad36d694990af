"""End to end through the CLI on the demo competition: every task type from folds to a validated submission,
resume after a real interruption, wandb offline logging (torchrun with two processes: tests/test_multinode.py)."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from {{ cookiecutter.package_name }} import cli, train
from {{ cookiecutter.package_name }}.data import samplers

from conftest import TINY, cli_stopped_after, wandb_runs, write_config

PKG = cli.__package__
SRC = str(Path(cli.__file__).parents[1])
pytestmark = pytest.mark.e2e


def run(*args) -> None:
    assert cli.main([str(a) for a in args]) == 0


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_each_task_from_folds_to_a_validated_submission(tmp_path, new_project, task, capsys):
    tta = "tta:\n  views: [identity, vflip]\n"
    cfg = new_project(tmp_path, task, n_folds=2, extra=TINY + tta)
    exp = tmp_path / "configs" / "exp.yaml"
    exp2 = write_config(tmp_path, task, n_folds=2, extra=TINY + tta + "seed: 7\n", name="exp2")
    for path in (exp, exp2):
        run("train", "-c", path)
        run("predict", "-c", path)
    out = Path(cfg.output_dir)

    # OOF covers every training id exactly once, and CV is reported with and without TTA.
    oof, train = read(out / "exp" / "oof.csv"), read(tmp_path / "data" / "train.csv")
    assert sorted(oof["id"]) == sorted(train["id"]) and oof["id"].is_unique
    cv = json.loads((out / "exp" / "cv.json").read_text())
    assert set(cv["folds"]) == {"0", "1"} and cv["complete"] and "cv_tta" in cv
    test_pred = read(out / "exp" / "test_pred.csv")
    assert test_pred["id"].tolist() == read(tmp_path / "data" / "test.csv")["id"].tolist()
    for png in ("learning_curves.png", "fold_scores.png"):
        assert (out / "exp" / png).read_bytes()[:4] == b"\x89PNG"

    run("ensemble", "-c", exp, "--exps", "exp", "exp2", "--method", "mean", "--name", "blend")
    run("make-submission", "-c", exp, "--exp", "blend")
    sub = tmp_path / "submissions" / "blend.csv"
    sample = read(tmp_path / "data" / "sample_submission.csv")
    assert read(sub).columns.tolist() == sample.columns.tolist() and len(read(sub)) == len(sample)
    capsys.readouterr()
    run("score", "-c", exp, sub)
    assert f"{cv['metric']} = " in capsys.readouterr().out


def test_wandb_offline_run_per_fold_grouped_by_experiment(tmp_path, new_project, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    new_project(tmp_path, "multiclass", n_folds=2, extra=TINY)
    exp = tmp_path / "configs" / "exp.yaml"
    run("train", "-c", exp, "--fold", "0")
    wandb_dir = tmp_path / "outputs" / "exp" / "wandb"
    runs = [p.read_bytes() for p in wandb_dir.glob("offline-run-*/run-*.wandb")]
    assert len(runs) == 2  # fold 0, then the CV summary (both may start within one second: found by name)
    (fold_run,) = [r for r in runs if b"exp-fold0" in r]  # protobuf records: keys and names are plain strings
    for key in (b"train_loss", b"valid_loss", b"score", b"lr", b"images_per_s", b"fold0", b"exp"):
        assert key in fold_run, key

    # Every later cv / predict updates the experiment's one cv run: offline, each session gets a folder, all of
    # them under the same run id (its .wandb file name), which `wandb sync` merges into one run.
    run("train", "-c", exp, "--fold", "1")
    run("cv", "-c", exp)
    run("predict", "-c", exp)
    ids = [p.name for p in wandb_dir.glob("offline-run-*/run-*.wandb")]
    assert len(ids) == 6  # fold 0, cv, fold 1, cv, cv, cv
    assert len(set(ids)) == 3  # fold 0, fold 1 and the one cv run
    cv_ids = {i for i in ids if "-cv-" in i}
    assert len(cv_ids) == 1 and ids.count(cv_ids.pop()) == 4


def test_a_resumed_fold_logs_on_in_its_one_wandb_run(tmp_path, new_project, monkeypatch):
    """Ctrl-C after epoch 1, the same command resumes epoch 2: both epochs reach the fold's one wandb run (offline, one
    session folder each, under one run id); a fold trained again from scratch (--force) is a new run."""
    monkeypatch.delenv("WANDB_MODE")  # the config's wandb.mode decides
    new_project(tmp_path, "multiclass", n_folds=2, extra=TINY.replace("epochs: 1", "epochs: 2"))
    args = ["train", "-c", tmp_path / "configs" / "exp.yaml", "--fold", "0", "wandb.mode=offline"]
    start_epoch = train.start_epoch

    def ctrl_c_in_epoch_2(cfg, s, fold, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        start_epoch(cfg, s, fold, epoch)

    with monkeypatch.context() as m:
        m.setattr(train, "start_epoch", ctrl_c_in_epoch_2)
        assert cli.main([str(a) for a in args]) == 130
    run(*args)
    run_dir = tmp_path / "outputs" / "exp"
    folds = [r for r in wandb_runs(run_dir) if r["job_type"] == "fold0"]
    assert len(folds) == 2 and folds[0]["id"] == folds[1]["id"]  # two sessions, one run
    assert folds[0]["id"] == (run_dir / "fold0" / "wandb_run_id.txt").read_text()
    assert all(r["group"] == "exp" and r["name"] == "exp-fold0" for r in folds)
    assert [[row["epoch"] for row in r["history"]] for r in folds] == [[1], [2]]
    assert [row["_step"] for r in folds for row in r["history"]] == [1, 2]
    assert "best_score" in folds[1]["summary"] and "best_score" not in folds[0]["summary"]

    run("train", "-c", tmp_path / "configs" / "exp.yaml", "--fold", "0", "--force", "wandb.mode=offline")
    again = [r for r in wandb_runs(run_dir) if r["job_type"] == "fold0"][2:]
    assert len(again) == 1 and again[0]["id"] != folds[0]["id"]  # a new training, a new run
    assert [row["epoch"] for row in again[0]["history"]] == [1, 2]


def test_the_cv_run_records_every_cv_variant(tmp_path, new_project, monkeypatch):
    """The experiment's cv run holds every CV that cv.json holds: plain, with TTA, of each weight average, rounded
    at ordinal cuts (and any cv_* added later: score_summary takes every one), and each fold's score."""
    monkeypatch.delenv("WANDB_MODE")
    extra = TINY.replace("ema: false", "ema: false\n  swa: true") + "tta:\n  views: [identity, vflip]\n"
    new_project(tmp_path, "regression", n_folds=2, extra=extra + "submit:\n  ordinal: true\nwandb:\n  mode: offline\n")
    exp = tmp_path / "configs" / "exp.yaml"
    run("train", "-c", exp)
    run("predict", "-c", exp)
    run_dir = tmp_path / "outputs" / "exp"
    cv = json.loads((run_dir / "cv.json").read_text())
    assert {"cv", "cv_tta", "cv_ordinal"} <= set(cv) and {"best", "swa"} <= set(cv["weight_averaging"])
    expected = {k: v for k, v in cv.items() if k == "cv" or k.startswith("cv_")}
    expected |= {f"weight_averaging/{k}": v for k, v in cv["weight_averaging"].items() if k not in ("folds", "picked")}
    expected |= {f"fold{k}": v for k, v in cv["folds"].items()}
    sessions = [r for r in wandb_runs(run_dir) if r["job_type"] == "cv"]
    assert len({r["id"] for r in sessions}) == 1  # one cv run, updated by train's summary and predict's
    last = sessions[-1]["summary"]  # predict's: the one that wrote cv.json
    assert {k: last.get(k) for k in expected} == pytest.approx(expected, rel=1e-12)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


@pytest.mark.parametrize("sampler", samplers.list_samplers())
def test_resume_after_a_killed_run_gives_the_uninterrupted_result(tmp_path, new_project, sampler):
    """Every train.sampler: a fold killed after epoch 1 and resumed trains exactly what the uninterrupted run does
    (the sampler draws epoch k from (seed, fold, k), not from how many epochs the process ran)."""
    train = f"epochs: 3\n  deterministic: true\n  sampler: {sampler}"
    extra = TINY.replace("epochs: 1", train).replace("ema: false", "ema: true")
    a, b = tmp_path / "a", tmp_path / "b"
    new_project(a, "multiclass", n_folds=2, extra=extra)
    new_project(b, "multiclass", n_folds=2, extra=extra)
    run("train", "-c", a / "configs" / "exp.yaml", "--fold", "0")

    args = ["train", "-c", str(b / "configs" / "exp.yaml"), "--fold", "0"]
    proc = cli_stopped_after(1, "SIGKILL", args, env())  # a real interruption, right after the first checkpoint
    proc.communicate(timeout=300)
    assert proc.returncode == -9
    last = b / "outputs" / "exp" / "fold0" / "last.pt"
    stopped_after = torch.load(last, weights_only=True)["state"]["epoch"]  # plain data: loads without pickle code
    assert stopped_after == 1 and not (last.parent / "oof.csv").exists()

    done = subprocess.run([sys.executable, "-m", PKG, *args], env=env(), capture_output=True, text=True, check=True)
    assert f"resuming after epoch {stopped_after}" in done.stdout
    best_a = torch.load(a / "outputs/exp/fold0/best.pt", weights_only=True)
    best_b = torch.load(last.parent / "best.pt", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"] and best_a["score"] == best_b["score"]
    for key, value in best_a["model"].items():
        assert torch.equal(value, best_b["model"][key]), key
    hist_a = json.loads((a / "outputs/exp/fold0/history.json").read_text())
    hist_b = json.loads((last.parent / "history.json").read_text())
    assert [r["train_loss"] for r in hist_a] == [r["train_loss"] for r in hist_b]
    assert (a / "outputs/exp/fold0/oof.csv").read_bytes() == (last.parent / "oof.csv").read_bytes()


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_balanced_class_weights_train_every_classification_task(tmp_path, new_project, task):
    new_project(tmp_path, task, n_folds=2, extra=TINY + "loss:\n  class_weight: balanced\n")
    run("train", "-c", tmp_path / "configs" / "exp.yaml", "--fold", "0")
    history = json.loads((tmp_path / "outputs" / "exp" / "fold0" / "history.json").read_text())
    assert all(row["train_loss"] > 0 and row["valid_loss"] > 0 for row in history)


def test_oof_with_tta_follows_the_views_it_was_made_with(tmp_path, new_project):
    """cv.json's cv_tta is that of the OOF predicted as test_pred.csv was: `cv` under other configured views still
    describes the test predictions (a decision is made by predict, never re-derived from the config), and a new
    predict replaces both together."""
    new_project(tmp_path, "multiclass", n_folds=2, extra=TINY)
    path = tmp_path / "configs" / "exp.yaml"
    run("train", "-c", path)
    cv_json, decisions = tmp_path / "outputs" / "exp" / "cv.json", tmp_path / "outputs" / "exp" / "decisions.json"
    run("predict", "-c", path, "tta.views=[identity,vflip]")
    first = json.loads(cv_json.read_text())
    assert (
        first["tta_views"] == ["identity", "vflip"] and json.loads(decisions.read_text())["views"] == first["tta_views"]
    )
    run("cv", "-c", path, "tta.views=[identity,hflip]")  # the config says hflip; test_pred.csv holds vflip
    again = json.loads(cv_json.read_text())
    assert again["tta_views"] == ["identity", "vflip"] and again["cv_tta"] == first["cv_tta"]
    run("predict", "-c", path, "tta.views=[identity,hflip]")
    cv = json.loads(cv_json.read_text())
    assert cv["tta_views"] == ["identity", "hflip"] and "cv_tta" in cv
    assert json.loads(decisions.read_text())["views"] == ["identity", "hflip"]


def test_lr_find_from_the_command_line(tmp_path, new_project, capsys):
    new_project(tmp_path, "binary", n_folds=2, extra=TINY)
    run("lr-find", "-c", tmp_path / "configs" / "exp.yaml")
    out = capsys.readouterr().out
    assert "suggested optim.lr=" in out
    assert (tmp_path / "outputs" / "exp" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "outputs" / "exp" / "fold0" / "best.pt").exists()  # a range test trains nothing


def test_compiled_model_trains_on_cpu(tmp_path, new_project, monkeypatch):
    """model.compile=true: torch.compile traces the training model (dynamo + AOT autograd) and a fold finishes.
    The backend is aot_eager: inductor's C++ code generation alone takes minutes on a shared 2-core machine."""
    import torch._dynamo

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    new_project(tmp_path, "multiclass", n_folds=2, extra=TINY.replace("limit_batches: 4", "limit_batches: 2"))
    torch._dynamo.reset()
    run("train", "-c", tmp_path / "configs" / "exp.yaml", "--fold", "0", "model.compile=true")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # compiled, not silently run eagerly
    history = json.loads((tmp_path / "outputs" / "exp" / "fold0" / "history.json").read_text())
    assert history[0]["train_loss"] > 0 and (tmp_path / "outputs" / "exp" / "fold0" / "oof.csv").is_file()
    torch._dynamo.reset()
