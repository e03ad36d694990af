"""`train --full`: one model on every training row with the epochs and LR of the CV run, its test predictions made as
the fold ensemble's were (the decisions' views) and compared with them, submitted and blended as `<exp>@full` with
the fold run's OOF, CV, decisions and blend weights. Through the CLI as typed, on one trained small project."""

import contextlib
import dataclasses
import io
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import Run, read_checkpoint, read_json, read_source, write_checkpoint
from {{ cookiecutter.package_name }}.data import demo
from {{ cookiecutter.package_name }}.full_fit import agreement, full_epochs
from {{ cookiecutter.package_name }}.kaggle.submissions import check_submission_file

from conftest import SMALL, cli_main, fake_experiment, make_project, one_line, small_digits, write_config

# SMALL (two folds, 16 px, two batches an epoch) for three epochs, predicted with two TTA views.
CHANGES = {"train": {"epochs": 3}, "tta": {"views": ["identity", "vflip"]}}
FULL = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(SMALL), OmegaConf.create(CHANGES)))
TWO_EPOCHS = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(SMALL), OmegaConf.create({"train": {"epochs": 2}})))


@pytest.fixture(scope="module")
def fitted(small_project):
    """exp trained (2 folds x 3 epochs), `train --full` refused before `predict`, then predicted and fully fitted."""
    root = small_project
    path = write_config(root, n_folds=2, extra=FULL, name="exp")
    assert cli.main(["train", "-c", str(path)]) == 0
    refused = _run(["train", "-c", str(path), "--full"])
    assert cli.main(["predict", "-c", str(path)]) == 0
    fit = _run(["train", "-c", str(path), "--full"])
    return root, path, config.load(path), refused, fit


def _run(argv: list[str]) -> tuple[int, str]:
    """The CLI in this process (capsys is function-scoped): (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


@pytest.mark.e2e
def test_full_fit_takes_epochs_and_lr_from_the_cv_run(fitted):
    root, _, cfg, _, (code, err) = fitted
    assert code == 0, err
    run = cfg.run
    full = run.read_full()
    best = {str(k): read_checkpoint(run.fold(k).best).epoch for k in range(2)}
    assert full.fold_epochs == best
    assert full.epochs == max(1, math.floor(np.mean(list(best.values())) + 0.5)) == full_epochs(best)
    lr = run.read_cv().lr
    assert full.lr == lr and full.optimizer_lr == pytest.approx(lr)  # the schedule's peak: the head's LR
    trained = config.load(run.full.config)
    assert trained.train.epochs == full.epochs and trained.optim.lr == lr
    assert [row["epoch"] for row in read_json(run.full.history)] == list(range(1, full.epochs + 1))
    assert read_checkpoint(run.full.best).epoch == full.epochs
    assert full.n_rows == len(pd.read_csv(root / "data" / "train.csv"))  # every training row, none held out


@pytest.mark.e2e
def test_full_test_predictions_are_made_as_decided_and_compared(fitted):
    root, _, cfg, _, _ = fitted
    run = cfg.run
    pred = pd.read_csv(run.full.test_pred, dtype={"id": str})
    test = pd.read_csv(root / "data" / "test.csv", dtype={"id": str})
    assert pred["id"].tolist() == test["id"].tolist()
    assert list(pred.columns[1:]) == run.read_classes().classes
    decisions = run.read_decisions()
    assert decisions.views == ["identity", "vflip"]
    ways = read_source(run.full.test_pred)["folds"]["full"]
    assert (ways["views"], ways["merge"]) == (decisions.views, decisions.merge)
    agree = run.read_full().agreement
    assert 0.0 <= agree["label_agreement"] <= 1.0 and -1.0 <= agree["pearson_r"] <= 1.0
    folds = pd.read_csv(run.test_pred, dtype={"id": str}).set_index("id").loc[pred["id"]]
    cols = list(pred.columns[1:])
    assert agree == pytest.approx(agreement(pred[cols].to_numpy(), folds[cols].to_numpy(), "multiclass"))
    assert not np.allclose(pred[cols].to_numpy(), folds[cols].to_numpy())  # another model than the folds'


@pytest.mark.e2e
def test_full_submission_holds_the_full_models_rows(fitted, capsys):
    root, path, cfg, _, _ = fitted
    code, out, err = cli_main(capsys, "make-submission", "-c", path, "--exp", "exp@full")
    assert code == 0, err
    sub_path = root / "submissions" / "exp@full.csv"
    sub = check_submission_file(cfg, sub_path)  # validates against sample_submission
    pred = pd.read_csv(cfg.run.full.test_pred, dtype={"id": str}).set_index("id")
    labels = pred.idxmax(axis=1)
    target = next(c for c in sub.columns if c != "id")
    assert sub.set_index("id")[target].astype(str).to_dict() == labels.loc[sub["id"]].to_dict()
    code, out, _ = cli_main(capsys, "score", "-c", path, sub_path)
    assert code == 0 and "OOF CV" in out  # the fold run's CV beside it


@pytest.mark.e2e
def test_a_blend_with_the_full_fit_keeps_the_fold_runs_weights(fitted, capsys):
    _, path, cfg, _, _ = fitted
    fake_experiment(cfg, "other", noise=1.5, seed=3)
    for name, first in (("with_folds", "exp"), ("with_full", "exp@full")):
        code, _, err = cli_main(capsys, "ensemble", "-c", path, "--exps", first, "other", "--name", name)
        assert code == 0, err
    a, b = Run.named(cfg.output_dir, "with_folds"), Run.named(cfg.output_dir, "with_full")
    assert a.read_weights().weights == b.read_weights().weights and a.read_cv().cv == b.read_cv().cv
    ta, tb = (pd.read_csv(r.test_pred, dtype={"id": str}) for r in (a, b))
    assert ta["id"].tolist() == tb["id"].tolist()
    assert not np.allclose(ta.iloc[:, 1:].to_numpy(), tb.iloc[:, 1:].to_numpy())
    code, _, err = cli_main(capsys, "make-submission", "-c", path, "--exp", "with_full")
    assert code == 0, err


@pytest.mark.e2e
def test_refusals_before_predict_with_unfinished_folds_and_on_other_names(fitted, capsys):
    root, path, cfg, (code, err), _ = fitted
    assert code == 2 and "predict" in one_line(err)
    # a copy of the run whose fold 1 never finished
    shutil.copytree(cfg.run.path, root / "outputs" / "part", ignore=shutil.ignore_patterns("full"))
    (root / "outputs" / "part" / "fold1" / "oof.csv").unlink()
    part = write_config(root, n_folds=2, extra=FULL, name="part")
    code, _, err = cli_main(capsys, "train", "-c", part, "--full")
    assert code == 2 and "fold(s) [1]" in one_line(err)
    code, _, err = cli_main(capsys, "make-submission", "-c", part, "--exp", "part@full")
    assert code == 2 and "train --full" in one_line(err)
    # a fold retrained since the full fit: exp@full no longer stands for this run
    shutil.copytree(cfg.run.path, root / "outputs" / "stale")
    best = root / "outputs" / "stale" / "fold0" / "best.pt"
    write_checkpoint(best, dataclasses.replace(read_checkpoint(best), epoch=99))
    write_config(root, n_folds=2, extra=FULL, name="stale")
    code, _, err = cli_main(capsys, "make-submission", "-c", path, "--exp", "stale@full")
    assert code == 2 and "fold checkpoints" in one_line(err) and "--force" in err
    # done already: nothing is refitted
    before = cfg.run.full_json.stat().st_mtime_ns
    code, out, _ = cli_main(capsys, "train", "-c", path, "--full")
    assert code == 0 and "already fitted" in out and cfg.run.full_json.stat().st_mtime_ns == before
    with pytest.raises(UserError, match="not a plain name"):
        Run.named(cfg.output_dir, "../exp@full", full_ok=True)
    with pytest.raises(UserError, match="full-data fit"):
        Run.named(cfg.output_dir, "exp@full")  # upload, teachers...: fold models only


@pytest.mark.e2e
def test_regression_full_fit_predicts_target_values(tmp_path, monkeypatch):
    """Regression: the full model learns standardised targets (its own scale, from every row) and predicts values."""
    monkeypatch.setattr(demo, "load_digits", small_digits)
    cfg = make_project(tmp_path, task="regression", n_folds=2, extra=TWO_EPOCHS)
    path = str(tmp_path / "configs" / "exp.yaml")
    for argv in (["train", "-c", path], ["predict", "-c", path], ["train", "-c", path, "--full"]):
        assert _run(argv)[0] == 0, argv
    run = cfg.run
    full = run.read_full()
    assert full.lr == run.read_cv().lr and full.agreement["label_agreement"] is None
    scale = read_checkpoint(run.full.best).target_scale
    y = pd.read_csv(tmp_path / "data" / "train.csv")[cfg.data.target_col].to_numpy(float)
    assert scale.mean == pytest.approx(y.mean()) and scale.std == pytest.approx(y.std(), rel=1e-3)
    pred = pd.read_csv(run.full.test_pred)
    assert list(pred.columns[1:]) == run.read_classes().classes
    assert -1.0 <= full.agreement["pearson_r"] <= 1.0 and np.isfinite(pred.iloc[:, 1:].to_numpy()).all()


def test_agreement_per_task():
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    b = np.array([[0.7, 0.3], [0.6, 0.4], [0.8, 0.2]])
    assert agreement(a, b, "multiclass")["label_agreement"] == pytest.approx(2 / 3)
    assert agreement(a[:, :1], b[:, :1], "binary", threshold=0.65)["label_agreement"] == pytest.approx(2 / 3)
    tags = agreement(a, b, "multilabel", thresholds=[0.5, 0.5])
    assert tags["label_agreement"] == pytest.approx(4 / 6)
    values = agreement(np.array([[1.0], [2.0], [3.0]]), np.array([[1.5], [2.0], [2.0]]), "regression")
    assert values["label_agreement"] is None and values["mean_abs_diff"] == pytest.approx(0.5)
    assert values["pearson_r"] == pytest.approx(np.corrcoef([1, 2, 3], [1.5, 2, 2])[0, 1])
    assert full_epochs({"0": 2, "1": 3}) == 3 and full_epochs({"0": 1, "1": 1}) == 1 and full_epochs({"0": 0}) == 1
