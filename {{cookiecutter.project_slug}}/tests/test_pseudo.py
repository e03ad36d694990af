"""Pseudo-labelling: selection, targets, batch mix and loss against hand-made references; provenance (fold k's
student only ever sees fold k's teacher); one real round pair end to end on a small demo competition."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from {{ cookiecutter.package_name }} import config, submission, train
from {{ cookiecutter.package_name }}.config import LossConfig
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import read_json, write_derived
from {{ cookiecutter.package_name }}.cv import summarize
from {{ cookiecutter.package_name }}.data import problem as fold_data
from {{ cookiecutter.package_name }}.engine.inference import prediction_source
from {{ cookiecutter.package_name }}.modeling.losses import build_loss
from {{ cookiecutter.package_name }}.students import pseudo, teachers

from conftest import check_fold, fingerprint_teacher, small_config, spy_on_training, weighted_teacher

N_FOLDS, N_CLASSES = 2, 10


# --- selection and targets -------------------------------------------------------------------------------------------


def reference_selection(pred, threshold, top_fraction, cap):
    """Written independently of the module: per argmax class, the ceil(top_fraction * n) most confident rows
    (ties by row), those reaching the threshold, at most `cap` of them."""
    chosen = []
    for c in sorted(set(pred.argmax(1).tolist())):
        rows = sorted((r for r in range(len(pred)) if pred[r].argmax() == c), key=lambda r: (-pred[r].max(), r))
        n_top = math.ceil(round(top_fraction * len(rows), 6))  # 0.3 * 10 is 3.0000000000000004
        kept = [r for r in rows[:n_top] if pred[r].max() >= threshold]
        chosen += kept[:cap] if cap else kept
    return sorted(chosen)


@pytest.mark.parametrize(
    ("threshold", "top_fraction", "cap"),
    [(0.0, 1.0, 0), (0.5, 1.0, 0), (0.0, 0.3, 0), (0.0, 1.0, 2), (0.4, 0.5, 3), (0.99, 1.0, 0)],
)
def test_multiclass_selection_matches_reference(threshold, top_fraction, cap):
    rng = np.random.default_rng(0)
    logits = 2.5 * rng.standard_normal((60, 4))
    pred = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = pseudo.select_pseudo(pred, "multiclass", threshold, top_fraction, cap).tolist()
    assert got == reference_selection(pred, threshold, top_fraction, cap)


def test_threshold_top_fraction_and_cap_by_hand():
    # class 0: confidences .9 .8 .7 .6 .5 (rows 0-4); class 1: .95 .55 (rows 5, 6)
    p0 = [0.9, 0.8, 0.7, 0.6, 0.5]
    pred = np.array([[p, 1 - p] for p in p0] + [[0.05, 0.95], [0.45, 0.55]])
    assert pseudo.select_pseudo(pred, "multiclass", threshold=0.7).tolist() == [0, 1, 2, 5]
    assert pseudo.select_pseudo(pred, "multiclass", top_fraction=0.4).tolist() == [0, 1, 5]  # ceil(2.0), ceil(0.8)
    assert pseudo.select_pseudo(pred, "multiclass", max_per_class=1).tolist() == [0, 5]
    assert pseudo.select_pseudo(pred, "multiclass", threshold=0.75, max_per_class=1).tolist() == [0, 5]
    ten = np.array([[0.5 + i / 100, 0.5 - i / 100] for i in range(1, 11)])
    assert len(pseudo.select_pseudo(ten, "multiclass", top_fraction=0.3)) == 3  # 0.3 * 10 is not 4


def test_binary_multilabel_regression_selection():
    binary = np.array([[0.9], [0.2], [0.55], [0.1]])
    assert pseudo.select_pseudo(binary, "binary", threshold=0.7).tolist() == [0, 1, 3]
    # the positive and the negative class each keep their most confident row
    assert pseudo.select_pseudo(binary, "binary", max_per_class=1).tolist() == [0, 3]
    # multilabel confidence: the least certain label decides
    multi = np.array([[0.9, 0.05], [0.6, 0.99], [0.02, 0.97]])
    assert pseudo.select_pseudo(multi, "multilabel", threshold=0.7).tolist() == [0, 2]
    values = np.array([[3.0], [-1.0], [7.5]])
    assert pseudo.select_pseudo(values, "regression").tolist() == [0, 1, 2]


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_soft_and_hard_targets(task):
    pred = {
        "multiclass": np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]]),
        "binary": np.array([[0.8], [0.3]]),
        "multilabel": np.array([[0.8, 0.1], [0.5, 0.49]]),
        "regression": np.array([[2.5], [-1.0]]),
    }[task]
    hard = {
        "multiclass": [[1, 0, 0], [0, 0, 1]],
        "binary": [1, 0],
        "multilabel": [[1, 0], [1, 0]],
        "regression": [2.5, -1.0],
    }[task]
    soft = pred if task in ("multiclass", "multilabel") else pred[:, 0]
    np.testing.assert_allclose(pseudo.pseudo_targets(pred, task, soft=True), soft, rtol=1e-6)
    np.testing.assert_array_equal(pseudo.pseudo_targets(pred, task, soft=False), np.array(hard, dtype=np.float32))
    assert pseudo.pseudo_targets(pred, task, soft=False).dtype == np.float32


def test_labelled_multiclass_rows_become_one_hot():
    np.testing.assert_array_equal(pseudo.labelled_targets(np.array([2, 0]), "multiclass", 3), [[0, 0, 1], [1, 0, 0]])


# --- batches and the loss --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_lab", "n_ps", "batch", "ratio"), [(50, 7, 8, 0.25), (33, 100, 10, 0.3), (8, 3, 4, 0.5)])
def test_ratio_batch_sampler(n_lab, n_ps, batch, ratio):
    sampler = pseudo.RatioBatchSampler(n_lab, n_ps, batch, ratio, seed=1)
    per_batch = round(batch * ratio)
    assert len(sampler) == math.ceil(n_lab / (batch - per_batch))
    epochs = [list(sampler) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == len(sampler)
        for b in batches:
            assert len(b) == batch
            assert sum(i >= n_lab for i in b) == per_batch
            assert all(0 <= i < n_lab + n_ps for i in b)
        assert {i for b in batches for i in b if i < n_lab} == set(range(n_lab))  # every labelled row, each epoch
    assert epochs[0] != epochs[1]  # a new order each epoch...
    again = pseudo.RatioBatchSampler(n_lab, n_ps, batch, ratio, seed=1)
    assert list(again) == epochs[0]  # ...that depends on the seed and epoch only
    again.set_epoch(1)
    assert list(again) == epochs[1]


def test_batch_ratio_that_leaves_no_room_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"batch_ratio"):
        pseudo.RatioBatchSampler(10, 10, 4, 0.05)
    with pytest.raises(ValueError, match=r"batch_ratio"):
        pseudo.RatioBatchSampler(10, 10, 4, 0.9)
    for ratio in (0.05, 0.9):  # and the config says so when it is loaded
        with pytest.raises(UserError, match=r"pseudo\.batch_ratio"):
            small_config(tmp_path, "exp", ["train.batch_size=4", f"pseudo.batch_ratio={ratio}"])


def test_pseudo_step_is_labelled_loss_plus_weighted_pseudo_loss():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    soft = torch.softmax(torch.randn(6, 3), 1)
    is_pseudo = torch.tensor([0, 0, 0, 1, 1, 0.0])
    batch = {"image": logits, "target": soft, "pseudo": is_pseudo}
    criterion = build_loss(LossConfig(), "multiclass", 3)
    got = pseudo.pseudo_step(0.3)(nn.Identity(), batch, criterion)

    def ce(rows):
        return float(-(soft[rows] * F.log_softmax(logits[rows], 1)).sum(1).mean())

    lab, pse = ce([0, 1, 2, 5]), ce([3, 4])
    assert float(got["labelled"]) == pytest.approx(lab, rel=1e-5)
    assert float(got["pseudo"]) == pytest.approx(pse, rel=1e-5)
    assert float(got["loss"]) == pytest.approx(lab + 0.3 * pse, rel=1e-5)


def test_regression_has_no_confidence_to_rank(tmp_path):
    with pytest.raises(UserError, match="regression"):
        small_config(tmp_path, "exp", ["task=regression", "metric=auto", "pseudo.threshold=0.5"])


# --- provenance ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(small_project):
    """The small demo competition with an extra unlabelled image folder (copies of five test images)."""
    (small_project / "data" / "extra").mkdir()
    for p in sorted((small_project / "data" / "test").glob("*.png"))[:5]:
        (small_project / "data" / "extra" / f"x_{p.name}").write_bytes(p.read_bytes())
    return small_project


def predicting_teacher(cfg: config.Config, name: str, offset: int = 0) -> None:
    """A fake trained teacher whose every artefact names its source: fold j's model predicts class j + offset
    for any image (zero weights, a bias), fold j's test_pred.csv says class j + offset, and the all-fold
    test_pred.csv says class 9. Labels of any other origin than fold k's model show up in fold k."""
    fingerprint_teacher(cfg, name, offset)
    run, problem = Path(cfg.output_dir) / name, fold_data.load_problem(cfg)
    test_ids = list(pd.read_csv(Path(cfg.data.dir) / "test.csv", dtype={"id": str})["id"])

    def frame(cls: int) -> pd.DataFrame:
        probs = np.full((len(test_ids), N_CLASSES), 0.05)
        probs[:, cls] = 0.55
        return fold_data.pred_frame(test_ids, probs, problem.classes, "id")

    tcfg = teachers.teacher_config(cfg, name)
    for j in range(N_FOLDS):  # as `predict` leaves them: with the checkpoint and views they came from
        write_derived(run / f"fold{j}" / "test_pred.csv", frame(j + offset), prediction_source(tcfg, j))
    frame(9).to_csv(run / "test_pred.csv", index=False)


@pytest.mark.parametrize("tta", [True, False])
def test_fold_k_pseudo_labels_come_from_fold_k_teacher_only(project, monkeypatch, tta):
    cfg = small_config(project, "prov_pseudo", [f"pseudo.tta={tta}", "pseudo.extra_images=extra", "pseudo.soft=false"])
    predicting_teacher(cfg, "fp_teacher")
    seen = spy_on_training(monkeypatch)
    pseudo.run_pseudo(cfg, "fp_teacher", log=lambda s: None)
    lineage = read_json(cfg.run_dir / "lineage.json")
    assert sorted(seen) == list(range(N_FOLDS))
    for k, data in seen.items():
        _, rows = check_fold(cfg, k, data, one_hot=True)
        assert len(rows) == 32 + 5  # every test image and every extra image, all labelled ...
        assert (rows.targets.argmax(1) == k).all()  # ... by fold k's model, not the fold average (9) or another fold
        assert lineage["folds"][str(k)]["sources"] == [["fp_teacher", k]]
        assert isinstance(data.batch_sampler, pseudo.RatioBatchSampler)
        table = pd.read_csv(cfg.run_dir / f"fold{k}" / "pseudo_labels.csv", dtype={"id": str, "class": str})
        assert (table["class"] == str(k)).all() and len(table) == len(rows)


def test_ensemble_teacher_blends_the_members_fold_k_predictions(project, monkeypatch):
    cfg = small_config(project, "prov_ens")
    predicting_teacher(cfg, "fp_a", offset=0)
    predicting_teacher(cfg, "fp_b", offset=5)
    weighted_teacher(cfg, "fp_ens", ["fp_a", "fp_b"], [0.25, 0.75])
    seen = spy_on_training(monkeypatch)
    pseudo.run_pseudo(cfg, "fp_ens", log=lambda s: None)
    for k, data in seen.items():
        _, rows = check_fold(cfg, k, data, one_hot=True)
        expected = np.full(N_CLASSES, 0.05)
        expected[k] += 0.25 * 0.5
        expected[k + 5] += 0.75 * 0.5
        np.testing.assert_allclose(rows.targets, np.tile(expected, (len(rows), 1)), rtol=1e-5)
    assert read_json(cfg.run_dir / "lineage.json")["teacher_weights"] == {"fp_a": 0.25, "fp_b": 0.75}


# --- end to end ------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_pseudo_rounds_end_to_end(project, tmp_path):
    teacher = small_config(project, "exp001")
    train.train_folds(teacher, list(range(N_FOLDS)))  # no test predictions yet: pseudo makes them
    summarize(teacher)  # what `train` runs after the folds (cli)
    cfg = small_config(project, "exp002", ["pseudo.rounds=2", "pseudo.top_fraction=0.5", "pseudo.max_per_class=2"])
    result = pseudo.run_pseudo(cfg, "exp001", log=lambda s: None)
    lineage = [(r["round"], r["exp"], r["teacher"]) for r in result["rounds"]]
    assert lineage == [(1, "exp002", "exp001"), (2, "exp002_r2", "exp002")]
    assert (teacher.run_dir / "fold0" / "test_pred.csv").is_file()
    for name, parent, r in (("exp002", "exp001", 1), ("exp002_r2", "exp002", 2)):
        run = Path(cfg.output_dir) / name
        lineage = read_json(run / "lineage.json")
        assert (lineage["round"], lineage["teachers"]) == (r, [parent])
        assert lineage["settings"]["top_fraction"] == 0.5
        for k in range(N_FOLDS):
            record = lineage["folds"][str(k)]
            assert record["sources"] == [[parent, k]]
            assert all(n <= 2 for n in record["pseudo_per_class"].values())
            assert sum(record["pseudo_per_class"].values()) == record["pseudo"] > 0
        cv = read_json(run / "cv.json")
        assert cv["exp"] == name and set(cv["folds"]) == {"0", "1"}
        assert len(pd.read_csv(run / "test_pred.csv")) == 32
        assert (run / "fold1" / "test_pred.csv").is_file()
    r2 = dataclasses.replace(cfg, exp="exp002_r2")
    path = submission.make_submission(r2, "exp002_r2", out_dir=tmp_path, log=lambda s: None)
    assert len(pd.read_csv(path)) == 32
