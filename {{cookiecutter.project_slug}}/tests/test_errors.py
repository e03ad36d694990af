"""Error analysis (`errors`): the rows listed are exactly the top-N by the task's loss, computed here independently
(planted confident mistakes come first); ECE equals a hand computation, is ~0 for calibrated and large for
over-confident probabilities; one reliability panel per class; PNGs that decode; the wandb table with images; the
multilabel, regression and ensemble paths; the CLI and Makefile target as typed."""

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import log_loss

from {{ cookiecutter.package_name }} import cli, ensemble
from {{ cookiecutter.package_name }} import errors as error_analysis
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import ErrorReport, Run, atomic_write_csv
from {{ cookiecutter.package_name }}.data import demo, tables
from {{ cookiecutter.package_name }}.modeling import calibration as cal

from conftest import fake_experiment, make_project, small_config, small_digits, wandb_runs

PLANTED = 5


# --- the numbers --------------------------------------------------------------------------------------------------


def test_ece_and_mce_equal_a_hand_computation():
    conf = np.array([0.1, 0.2, 0.8, 0.9, 0.95])
    hit = np.array([0, 1, 1, 1, 0])
    r = cal.reliability(conf, hit, n_bins=5)
    # bins of width 0.2: {0.1} gap 0.1, {0.2} gap 0.8, {0.8, 0.9, 0.95} mean 0.8833 vs accuracy 2/3
    gap = (0.8 + 0.9 + 0.95) / 3 - 2 / 3
    assert r.counts == [1, 1, 0, 0, 3]
    assert r.ece == pytest.approx((0.1 + 0.8 + 3 * gap) / 5)
    assert r.mce == pytest.approx(0.8)
    assert r.accuracy[2] is None and r.confidence[4] == pytest.approx((0.8 + 0.9 + 0.95) / 3)


def test_ece_is_near_zero_when_labels_follow_the_probabilities_and_large_when_over_confident():
    rng = np.random.default_rng(0)
    n, c = 40000, 4
    p = rng.dirichlet(np.ones(c) * 0.7, size=n)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)  # each label drawn from its row's probabilities
    calibrated = cal.calibration("multiclass", y, p, list("abcd"))
    assert [r.name for r in calibrated] == [*"abcd", cal.TOP_LABEL]
    assert max(r.ece for r in calibrated) < 0.015
    sharp = p**4 / (p**4).sum(1, keepdims=True)  # the same ranking, over-confident
    over = cal.calibration("multiclass", y, sharp, list("abcd"))
    assert over[-1].ece > 0.1 and min(r.ece for r in over) > 0.04
    t = (rng.random(n) < p[:, 0]).astype(int)  # binary: P(positive) = p[:, 0]
    assert cal.calibration("binary", t, p[:, :1], ["pos"])[-1].ece < 0.015


def test_row_losses_are_the_tasks_own():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, 50)
    assert cal.row_losses("multiclass", y, p).mean() == pytest.approx(log_loss(y, p, labels=[0, 1, 2]))
    q, t = rng.random((50, 4)), rng.integers(0, 2, (50, 4))
    summed = sum(log_loss(t[:, j], q[:, j]) for j in range(4))
    assert cal.row_losses("multilabel", t, q).mean() == pytest.approx(summed)
    assert cal.row_losses("binary", t[:, 0], q[:, :1]).mean() == pytest.approx(log_loss(t[:, 0], q[:, 0]))
    v, w = rng.normal(size=50), rng.normal(size=(50, 1))
    np.testing.assert_allclose(cal.row_losses("regression", v, w, "rmse"), (w[:, 0] - v) ** 2)
    np.testing.assert_allclose(cal.row_losses("regression", v, w, "mae"), np.abs(w[:, 0] - v))


# --- an experiment with planted mistakes --------------------------------------------------------------------------


def truth_by_id(cfg) -> pd.Series:
    train = tables.read_train(cfg)
    return train.set_index(cfg.data.id_col)[cfg.target_cols[0]].astype(str)


@pytest.fixture(scope="module")
def planted(small_project):
    """A fake multiclass experiment (noisy but mostly right) whose PLANTED rows are confidently wrong (0.97 on
    another class): they have the largest cross-entropy by far."""
    cfg = small_config(small_project)
    run = fake_experiment(cfg, "planted", noise=1.0, seed=3)
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    classes = Run(run).read_classes().classes
    truth = truth_by_id(cfg).loc[oof["id"]].to_numpy()
    rows = np.random.default_rng(5).choice(len(oof), PLANTED, replace=False)
    for i in rows:
        wrong = (classes.index(truth[i]) + 1) % len(classes)
        oof.loc[i, classes] = 0.03 / (len(classes) - 1)
        oof.loc[i, classes[wrong]] = 0.97
    atomic_write_csv(run / "oof.csv", oof)
    return cfg, Run(run), set(oof["id"].iloc[rows])


def test_the_rows_listed_are_the_top_n_by_cross_entropy_planted_mistakes_first(planted):
    cfg, run, planted_ids = planted
    found = error_analysis.analyse(cfg, "planted", top=12)
    oof = pd.read_csv(run.oof, dtype={"id": str})
    classes = run.read_classes().classes
    truth = truth_by_id(cfg).loc[oof["id"]].to_numpy()
    own = -np.log(oof[classes].to_numpy()[np.arange(len(oof)), [classes.index(t) for t in truth]])
    expected = oof["id"].iloc[np.argsort(-own, kind="stable")].tolist()
    assert found.rows["id"].tolist() == expected  # every row, in the order of the independently computed loss
    np.testing.assert_allclose(found.rows["loss"], np.sort(own)[::-1], rtol=1e-9)
    assert set(found.rows["id"].head(PLANTED)) == planted_ids
    head = found.rows.head(PLANTED)
    assert (head["true"] != head["pred"]).all() and np.allclose(head["confidence"], 0.97)
    assert found.report.oof == "oof.csv" and "decisions.json" in found.report.why


def test_errors_writes_decodable_pngs_a_panel_per_class_and_a_wandb_table_with_images(planted, monkeypatch, capsys):
    cfg, run, planted_ids = planted
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(run.path / "wandb_data"))  # the staged artifact files: not in ~
    found = error_analysis.run_errors(cfg, "planted", top=8)
    out = capsys.readouterr().out
    assert all(i in out for i in planted_ids) and "top-label ECE" in out
    classes = run.read_classes().classes
    assert found.panels == [*classes, cal.TOP_LABEL]
    for png in (run.errors_grid, run.reliability):
        with Image.open(png) as im:
            im.load()
            assert im.size[0] > 200 and im.size[1] > 150
    table = pd.read_csv(run.errors_table, dtype={"id": str})
    assert table["id"].tolist() == found.rows["id"].head(8).tolist()
    report = run.read_error_report()
    assert report == found.report and set(report.classes) == set(classes)
    assert report.ece == pytest.approx(found.diagrams[-1].ece)
    (tracked,) = wandb_runs(run.path)
    assert [tracked[k] for k in ("job_type", "group")] == ["errors", "planted"]
    assert tracked["summary"]["errors/ece"] == pytest.approx(report.ece)
    logged = {k: v for row in tracked["history"] for k, v in row.items()}
    assert logged["errors/errors_top/_type"] == logged["errors/reliability/_type"] == "image-file"
    assert logged["errors/top_loss/_type"] == "table-file" and logged["errors/top_loss/nrows"] == 8
    assert tracked["summary"][f"errors/ece_class/{classes[0]}"] == pytest.approx(report.classes[classes[0]]["ece"])
    images = Path(cfg.data.dir) / cfg.data.train_images
    (artifact,) = wandb_table_artifacts(run.path)  # wandb 0.31 keeps a logged table in an artifact of the run
    assert artifact["type"] == "run_table" and "top_loss" in artifact["name"]
    (table_json,) = [p for name, p in artifact["files"].items() if name.endswith(".table.json")]
    content = json.loads(table_json.read_text())
    assert content["columns"] == ["id", "image", "true", "pred", "confidence", "loss"]
    assert [r[0] for r in content["data"]] == table["id"].tolist()
    assert [r[2:4] for r in content["data"]] == table[["true", "pred"]].astype(str).to_numpy().tolist()
    for row in content["data"]:
        assert row[1]["_type"] == "image-file"
        with Image.open(artifact["files"][row[1]["path"]]) as im, Image.open(images / f"{row[0]}.png") as original:
            assert im.size == original.size and np.array_equal(np.asarray(im), np.asarray(original))


def wandb_table_artifacts(folder: Path) -> list[dict]:
    """The artifacts an offline run under `folder` logged: {"name", "type", "files": {path in it: staged file}}."""
    from conftest import _wandb_records

    wandb_runs(folder)  # stops wandb's service, which flushes the files
    found = []
    for path in sorted(Path(folder).glob("wandb/offline-run-*/run-*.wandb")):
        for record in _wandb_records(path):
            if record.WhichOneof("record_type") == "artifact":
                a = record.artifact
                files = {e.path: Path(e.local_path) for e in a.manifest.contents}
                found.append({"name": a.name, "type": a.type, "files": files})
    return found


def test_the_oof_read_is_the_one_the_decisions_were_tuned_on(planted):
    """When predict re-predicted the OOF with TTA (decisions.json: cv_from oof_tta.csv), that is what is analysed."""
    cfg, run, _ = planted
    copy = Run(run.path.with_name("planted_tta"))
    copy.path.mkdir(exist_ok=True)
    for name in ("cv.json", "classes.json", "oof.csv"):
        (copy.path / name).write_text((run.path / name).read_text())
    tta = pd.read_csv(run.oof, dtype={"id": str})
    first = tta["id"].iloc[0]
    classes = run.read_classes().classes
    truth = truth_by_id(cfg)[first]
    tta.loc[0, classes] = [0.0 if c == truth else 1.0 / (len(classes) - 1) for c in classes]
    atomic_write_csv(copy.oof_tta, tta)
    copy.write_decisions(dataclasses.replace(run.read_decisions(), cv_from=copy.oof_tta.name))
    found = error_analysis.analyse(cfg, "planted_tta", top=3)
    assert found.report.oof == copy.oof_tta.name and found.rows["id"].iloc[0] == first


def test_an_ensemble_is_analysed_on_its_blend(planted):
    cfg, run, _ = planted
    fake_experiment(cfg, "other", noise=1.0, seed=4)
    ensemble.blend(cfg, ["planted", "other"], "mean", "pair", log=lambda s: None)
    found = error_analysis.analyse(cfg, "pair", top=5)
    blend = pd.read_csv(Run(run.path.with_name("pair")).oof, dtype={"id": str})
    classes = run.read_classes().classes
    truth = truth_by_id(cfg).loc[blend["id"]].to_numpy()
    own = -np.log(blend[classes].to_numpy()[np.arange(len(blend)), [classes.index(t) for t in truth]])
    assert found.rows["id"].head(10).tolist() == blend["id"].iloc[np.argsort(-own, kind="stable")[:10]].tolist()
    assert found.report.exp == "pair"


# --- the CLI and the Makefile target, as typed -----------------------------------------------------------------------


@pytest.mark.e2e
def test_the_cli_as_typed(planted, capsys):
    cfg, run, planted_ids = planted
    config = Path(cfg.output_dir).parent / "configs" / "exp.yaml"
    stale, live = run.path / ".errors_top.png.a1b2.tmp", run.path / ".errors_top.csv.c3d4.tmp"
    for path in (stale, live):
        path.write_text("half-written by a killed run")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    capsys.readouterr()
    assert cli.main(["errors", "-c", str(config), "--exp", "planted", "--top", "5"]) == 0
    assert not stale.exists() and live.exists()  # a temporary a live writer may be writing stays
    live.unlink()
    assert set(pd.read_csv(run.errors_table, dtype={"id": str})["id"]) == planted_ids
    for argv, names in (
        (["--exp", "planted", "--top", "0"], "--top 0"),
        (["--exp", "nothing_here"], "classes.json"),
        (["--exp", "../x"], "'../x'"),
    ):
        capsys.readouterr()
        assert cli.main(["errors", "-c", str(config), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and names in err[0], err


def test_segmentation_is_refused_in_one_line(planted):
    cfg = dataclasses.replace(planted[0], task="segmentation")
    with pytest.raises(UserError, match=r"^errors: task=segmentation is not analysed") as e:
        error_analysis.analyse(cfg, "planted")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_errors_runs_the_command_for_exp():
    makefile = Path(cli.__file__).parents[2] / "Makefile"
    out = subprocess.run(["make", "-n", "-f", str(makefile), "errors", "EXP=exp007", "TOP=9"], capture_output=True,
                         text=True, check=True, cwd=makefile.parent).stdout  # fmt: skip
    assert "errors -c configs/exp007.yaml --exp exp007 --top 9" in out


# --- multilabel and regression -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_tasks(tmp_path_factory):
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "load_digits", small_digits)
        mp.setenv("WANDB_MODE", "disabled")
        for task in ("binary", "multilabel", "regression"):
            cfg = make_project(tmp_path_factory.mktemp(task), task, n_folds=2, size=8)
            fake_experiment(cfg, "exp", noise=1.0, seed=2)
            made[task] = cfg
        yield made


def test_binary_labels_apply_the_submissions_threshold_and_rows_rank_by_bce(other_tasks):
    cfg = other_tasks["binary"]
    run = Run(Path(cfg.output_dir) / "exp")
    threshold, positive = 0.7, run.read_classes().positive  # as a label submission's tuned threshold would be
    run.write_decisions(dataclasses.replace(run.read_decisions(), threshold=threshold))
    found = error_analysis.analyse(cfg, "exp")
    col = cfg.target_cols[0]
    oof = pd.read_csv(run.oof, dtype={"id": str}).set_index("id").loc[found.rows["id"]]
    y = (tables.read_train(cfg).set_index(cfg.data.id_col).loc[oof.index, col].astype(str) == positive).to_numpy()
    p = oof[col].to_numpy()
    np.testing.assert_allclose(found.rows["loss"], -np.log(np.where(y, p, 1 - p)), rtol=1e-9)
    assert np.all(np.diff(found.rows["loss"]) <= 0)
    assert ((found.rows["pred"] == positive).to_numpy() == (p >= threshold)).all()
    assert [d.name for d in found.diagrams] == [f"{col}={positive}", cal.TOP_LABEL]


def test_multilabel_rows_rank_by_summed_bce_with_a_panel_per_label(other_tasks, capsys):
    cfg = other_tasks["multilabel"]
    run = Run(Path(cfg.output_dir) / "exp")
    found = error_analysis.run_errors(cfg, "exp", top=6)
    oof = pd.read_csv(run.oof, dtype={"id": str})
    labels = run.read_classes().classes
    train = tables.read_train(cfg).set_index(cfg.data.id_col).loc[oof["id"]].reset_index()
    y = tables.encode_targets(cfg, train, labels)
    p = np.clip(oof[labels].to_numpy(), 1e-15, 1 - 1e-15)
    own = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)
    assert found.rows["id"].head(6).tolist() == oof["id"].iloc[np.argsort(-own, kind="stable")[:6]].tolist()
    assert found.panels == [*labels, cal.ALL_LABELS] and found.report.overall == cal.ALL_LABELS
    assert run.reliability.is_file() and run.errors_grid.is_file()


def test_regression_ranks_by_squared_error_and_has_no_reliability_diagram(other_tasks, capsys):
    cfg = other_tasks["regression"]
    run = Run(Path(cfg.output_dir) / "exp")
    run.reliability.write_bytes(b"stale")
    found = error_analysis.run_errors(cfg, "exp", top=4)
    oof = pd.read_csv(run.oof, dtype={"id": str})
    col = cfg.target_cols[0]
    y = tables.read_train(cfg).set_index(cfg.data.id_col).loc[oof["id"], col].astype(float).to_numpy()
    own = (oof[col].to_numpy() - y) ** 2
    assert found.rows["id"].head(4).tolist() == oof["id"].iloc[np.argsort(-own, kind="stable")[:4]].tolist()
    assert found.report.ece is None and found.report.loss == "squared error"
    assert not run.reliability.exists() and run.errors_grid.is_file()
    assert ErrorReport.from_dict(json.loads(run.calibration.read_text())) == found.report
