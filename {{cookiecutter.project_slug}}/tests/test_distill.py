"""Distillation: the loss against Hinton's formula for every task; provenance (fold k's student only ever sees
fold k's teachers' logits), the on-disk cache; one real teacher -> student run end to end on a small demo."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit, log_softmax
from torch import nn

from {{ cookiecutter.package_name }} import config, submission, train
from {{ cookiecutter.package_name }}.config import LossConfig
from {{ cookiecutter.package_name }}.core.runs import read_json
from {{ cookiecutter.package_name }}.cv import summarize
from {{ cookiecutter.package_name }}.data import problem as fold_data
from {{ cookiecutter.package_name }}.modeling.losses import build_loss
from {{ cookiecutter.package_name }}.students import distill, teachers

from conftest import (
    SMALL,
    check_fold,
    fingerprint_teacher,
    small_config,
    spy_on_training,
    weighted_teacher,
)

N_FOLDS, N_CLASSES, N_TEST = 2, 10, 32


# --- the loss --------------------------------------------------------------------------------------------------------


def bce(x: np.ndarray, q: np.ndarray) -> float:
    """Mean binary cross-entropy of logits x against probabilities q."""
    return float(np.mean(-(q * np.log(expit(x)) + (1 - q) * np.log(expit(-x)))))


def reference(task, s, t, y, labelled, alpha, temp):
    """alpha * (T^2 KL(p_t,T || p_s,T) | T^2 BCE(s/T, sigmoid(t/T)) | MSE(s, t)) + (1 - alpha) * task loss, the
    distillation term averaged over all rows, the task loss over the labelled rows."""
    if task == "multiclass":
        lt, ls = log_softmax(t / temp, axis=1), log_softmax(s / temp, axis=1)
        kd = temp**2 * np.mean((np.exp(lt) * (lt - ls)).sum(1))
        task_loss = -np.mean(log_softmax(s[labelled], axis=1)[np.arange(labelled.sum()), y[labelled]])
    elif task in ("binary", "multilabel"):
        kd = temp**2 * bce(s / temp, expit(t / temp))
        task_loss = bce(s[labelled], y[labelled].reshape(s[labelled].shape))
    else:
        kd = np.mean((s - t) ** 2)
        task_loss = np.mean((s[labelled, 0] - y[labelled]) ** 2)
    return alpha * kd + (1 - alpha) * task_loss, kd, task_loss


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
@pytest.mark.parametrize(("alpha", "temp"), [(0.5, 4.0), (0.9, 1.0), (0.0, 2.0), (1.0, 3.0)])
def test_distillation_step_equals_the_formula(task, alpha, temp):
    rng = np.random.default_rng(1)
    n_out = {"multiclass": 4, "multilabel": 3}.get(task, 1)
    s, t = 2 * rng.standard_normal((8, n_out)), 3 * rng.standard_normal((8, n_out))
    y = {
        "multiclass": rng.integers(0, n_out, 8),
        "binary": rng.integers(0, 2, 8).astype(np.float32),
        "multilabel": rng.integers(0, 2, (8, n_out)).astype(np.float32),
        "regression": rng.standard_normal(8).astype(np.float32),
    }[task]
    labelled = np.array([1, 1, 0, 1, 0, 1, 1, 1], dtype=bool)  # two test rows: distillation only
    batch = {
        "image": torch.tensor(s, dtype=torch.float32),  # an identity "model": the image is the student's logits
        "teacher": torch.tensor(t, dtype=torch.float32),
        "target": torch.as_tensor(y),
        "labelled": torch.as_tensor(labelled.astype(np.float32)),
    }
    criterion = build_loss(LossConfig(), task, n_out)
    got = distill.distill_step(task, alpha, temp)(nn.Identity(), batch, criterion)
    loss, kd, task_loss = reference(task, s, t, y, labelled, alpha, temp)
    assert float(got["kd"]) == pytest.approx(kd, rel=1e-4)
    assert float(got["task"]) == pytest.approx(task_loss, rel=1e-4)
    assert float(got["loss"]) == pytest.approx(loss, rel=1e-4)


def test_distillation_gradient_vanishes_when_the_student_matches_the_teacher():
    t = torch.randn(5, 4)
    s = t.clone().requires_grad_(True)
    batch = {"image": s, "teacher": t, "target": torch.zeros(5, dtype=torch.long), "labelled": torch.zeros(5)}
    out = distill.distill_step("multiclass", 1.0, 4.0)(nn.Identity(), batch, build_loss(LossConfig(), "multiclass", 4))
    out["loss"].backward()
    assert float(out["loss"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert s.grad.abs().max() < 1e-6


# --- provenance ------------------------------------------------------------------------------------------------------


def fold_parts(cfg: config.Config, k: int, data) -> tuple:
    """Fold k's labelled training rows carry class indices, every test image comes along without a label."""
    labelled, test_rows = check_fold(cfg, k, data, one_hot=False)
    assert (labelled.extras["labelled"] == 1).all() and (test_rows.extras["labelled"] == 0).all()
    assert len(test_rows) == N_TEST
    return labelled, test_rows


def test_fold_k_student_gets_fold_k_teacher_logits_only(small_project, monkeypatch):
    cfg = small_config(small_project, "prov_distill", ["distill.use_test=true"])
    fingerprint_teacher(cfg, "fp_teacher")
    seen = spy_on_training(monkeypatch)
    distill.run_distill(cfg, ["fp_teacher"], log=lambda s: None)
    lineage = read_json(cfg.run_dir / "lineage.json")
    assert sorted(seen) == list(range(N_FOLDS))
    for k, data in seen.items():
        for part in fold_parts(cfg, k, data):
            np.testing.assert_allclose(part.extras["teacher"], np.tile(5.0 * np.eye(N_CLASSES)[k], (len(part), 1)))
        assert lineage["folds"][str(k)]["sources"] == [["fp_teacher", k]]
        assert lineage["folds"][str(k)]["test_sources"] == [["fp_teacher", k]]
        with np.load(cfg.run_dir / "teacher" / f"fold{k}.npz") as cache:  # the cache holds fold k's rows
            problem = fold_data.load_problem(cfg)
            assert cache["ids"].tolist() == [problem.ids[i] for i in problem.rows(k, valid=False)]


def test_ensemble_of_teachers_averages_fold_k_logits(small_project, monkeypatch):
    cfg = small_config(small_project, "prov_ens")
    fingerprint_teacher(cfg, "fp_a", offset=0)
    fingerprint_teacher(cfg, "fp_b", offset=5)
    fingerprint_teacher(cfg, "fp_c", offset=3)
    weighted_teacher(cfg, "fp_ens", ["fp_a", "fp_b"], [0.25, 0.75])
    seen = spy_on_training(monkeypatch)
    distill.run_distill(cfg, ["fp_ens", "fp_c"], log=lambda s: None)  # two teachers: half each
    for k, data in seen.items():
        expected = 5.0 * (0.125 * np.eye(N_CLASSES)[k] + 0.375 * np.eye(N_CLASSES)[k + 5] + 0.5 * np.eye(10)[k + 3])
        np.testing.assert_allclose(data.train.extras["teacher"], np.tile(expected, (len(data.train), 1)), atol=1e-5)
    assert read_json(cfg.run_dir / "lineage.json")["teacher_weights"] == {"fp_a": 0.125, "fp_b": 0.375, "fp_c": 0.5}


def test_teacher_logits_are_cached_until_the_teacher_changes(small_project, monkeypatch):
    cfg = small_config(small_project, "cache_student")
    fingerprint_teacher(cfg, "fp_cached")
    spy_on_training(monkeypatch)
    distill.run_distill(cfg, ["fp_cached"], log=lambda s: None)

    def no_predictions(*args, **kwargs):
        raise AssertionError("teacher outputs predicted again")

    monkeypatch.setattr(teachers, "predict_fold", no_predictions)
    distill.run_distill(cfg, ["fp_cached"], log=lambda s: None, force=True)  # reused from the cache
    best = Path(cfg.output_dir) / "fp_cached" / "fold1" / "best.pt"
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))  # fold 1 retrained
    with pytest.raises(AssertionError, match="predicted again"):
        distill.run_distill(cfg, ["fp_cached"], log=lambda s: None, force=True)


# --- end to end ------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_distillation_end_to_end(small_project, tmp_path):
    teacher = small_config(small_project, "exp001")
    train.train_folds(teacher, list(range(N_FOLDS)))
    summarize(teacher)  # what `train` runs after the folds (cli)
    cfg = small_config(small_project, "exp003", ["model.backbone=test_efficientnet", "distill.use_test=true"])
    result = distill.run_distill(cfg, ["exp001"], log=lambda s: None)
    assert result.exp == "exp003" and set(result.folds) == {"0", "1"}
    assert read_json(cfg.run_dir / "cv.json") == result.to_dict()
    lineage = read_json(cfg.run_dir / "lineage.json")
    assert lineage["teachers"] == ["exp001"] and lineage["backbone"] == "test_efficientnet"
    assert [lineage["folds"][str(k)]["sources"] for k in range(N_FOLDS)] == [[["exp001", k]] for k in range(N_FOLDS)]
    assert len(pd.read_csv(cfg.run_dir / "test_pred.csv")) == N_TEST
    history = read_json(cfg.run_dir / "fold0" / "history.json")
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    path = submission.make_submission(cfg, "exp003", out_dir=tmp_path, log=lambda s: None)
    assert len(pd.read_csv(path)) == N_TEST


def test_regression_teacher_reaches_the_student_in_the_students_units(tmp_path, new_project):
    # A regression teacher learns standardised targets; what it hands the student must be in the student's units
    # (its own fold's standardisation), which here, on the same folds, is exactly the teacher's raw output.
    new_project(tmp_path, "regression", n_folds=2, extra=SMALL)
    path = tmp_path / "configs" / "exp.yaml"
    tcfg = config.load(path)
    train.train_one_fold(tcfg, 0)
    cfg = config.load(path, ["exp=student"])
    problem = fold_data.load_problem(cfg)
    data, _ = distill.build_distill_fold(cfg, problem, 0, {"exp": 1.0})
    paths = [problem.paths[i] for i in problem.rows(0, valid=False)]
    raw = teachers.predict_fold(cfg, teachers.teacher_config(cfg, "exp"), 0, paths).ravel()
    values = teachers.predict_fold(cfg, teachers.teacher_config(cfg, "exp"), 0, paths, activation=True).ravel()
    np.testing.assert_allclose(data.train.extras["teacher"].ravel(), raw, rtol=1e-4, atol=1e-5)
    scale = problem.target_scale(0, "regression")
    assert abs(values.mean() - scale.mean) < abs(raw.mean() - scale.mean)  # values: the digits' units
    np.testing.assert_allclose(values, scale.invert(raw), rtol=1e-4, atol=1e-4)
