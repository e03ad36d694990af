"""Blending on synthetic experiments over the real demo competition and its real folds."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score

from {{ cookiecutter.package_name }} import ensemble
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import tables

from conftest import encode_truth, fake_experiment, on_other_folds

N_FOLDS = 3


@pytest.fixture(scope="module")
def projects(tmp_path_factory, new_project):
    """One project per task with three members of growing noise (the second written in shuffled row order)."""
    out = {}
    for task in ("multiclass", "binary", "regression"):
        cfg = new_project(tmp_path_factory.mktemp(task), task, images=False, size=8)
        for i, noise in enumerate((0.5, 1.0, 2.0) if task == "regression" else (2.0, 2.5, 3.0)):
            fake_experiment(cfg, f"m{i}", noise, seed=i, shuffle=i == 1)
        out[task] = cfg
    return out


def read_by_id(path: Path, id_col: str = "id") -> pd.DataFrame:
    return pd.read_csv(path, dtype={id_col: str}).set_index(id_col).sort_index()


MEMBERS = ["m0", "m1", "m2"]


def test_mean_is_the_arithmetic_mean_aligned_by_id(projects):
    cfg = projects["multiclass"]
    result = ensemble.blend(cfg, MEMBERS, "mean", "ens_mean", log=lambda s: None)
    run = Path(cfg.output_dir)
    parts = [read_by_id(run / m / "oof.csv").drop(columns="fold") for m in MEMBERS]
    expected = sum(parts) / 3
    got = read_by_id(run / "ens_mean" / "oof.csv")
    np.testing.assert_allclose(got[expected.columns].to_numpy(), expected.to_numpy(), atol=1e-9)
    np.testing.assert_allclose(got[expected.columns].sum(1), 1.0, atol=1e-9)  # rows stay normalised
    tests = [read_by_id(run / m / "test_pred.csv") for m in MEMBERS]
    np.testing.assert_allclose(read_by_id(run / "ens_mean" / "test_pred.csv").to_numpy(), (sum(tests) / 3).to_numpy())
    y = encode_truth(cfg, tables.read_train(cfg).set_index("id").loc[got.index].reset_index())[0]
    assert result["cv"] == pytest.approx(accuracy_score(y, got[expected.columns].to_numpy().argmax(1)))
    assert result["weights"] == pytest.approx([1 / 3] * 3)


def test_weighted_normalises_the_given_weights(projects):
    cfg = projects["regression"]
    result = ensemble.blend(cfg, MEMBERS, "weighted", "ens_w", weights=[1, 3, 0], log=lambda s: None)
    assert result["weights"] == pytest.approx([0.25, 0.75, 0.0])
    run = Path(cfg.output_dir)
    a, b = (read_by_id(run / m / "oof.csv")["label"] for m in ("m0", "m1"))
    got = read_by_id(run / "ens_w" / "oof.csv")["label"]
    np.testing.assert_allclose(got, 0.25 * a + 0.75 * b, atol=1e-9)
    y = tables.read_train(cfg).set_index("id").loc[got.index, "label"]
    assert result["cv"] == pytest.approx(np.sqrt(mean_squared_error(y, got)))
    with pytest.raises(UserError, match="one weight per experiment"):
        ensemble.blend(cfg, MEMBERS, "weighted", "ens_w2", weights=[1, 2], log=lambda s: None)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_hill_climb_never_worse_than_the_best_member(projects, task):
    cfg = projects[task]
    result = ensemble.blend(cfg, MEMBERS, "hill_climb", f"ens_hc_{task}", log=lambda s: None)
    member = result["member_cv"].values()
    best = max(member) if result["higher_is_better"] else min(member)
    assert (result["cv"] >= best - 1e-12) if result["higher_is_better"] else (result["cv"] <= best + 1e-12)
    counts = np.array(result["weights"]) / min(w for w in result["weights"] if w > 0)
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)  # selection counts / total
    assert set(result["folds_nested"]) == {str(k) for k in range(N_FOLDS)}
    assert result["cv_nested"] == pytest.approx(np.mean(list(result["folds_nested"].values())))


def test_optimize_finds_inverse_variance_weights(projects):
    """For independent unbiased errors of sd 0.5, 1, 2 the RMSE-optimal weights are proportional to 1/sd^2."""
    cfg = projects["regression"]
    result = ensemble.blend(cfg, MEMBERS, "optimize", "ens_opt", log=lambda s: None)
    ideal = np.array([4.0, 1.0, 0.25]) / 5.25
    np.testing.assert_allclose(result["weights"], ideal, atol=0.06)
    assert result["cv"] <= min(result["member_cv"].values())
    assert np.isfinite(result["cv_nested"]) and result["cv_nested"] >= result["cv"] - 0.05


def test_optimize_label_metric_uses_the_surrogate(projects):
    cfg = projects["multiclass"]
    result = ensemble.blend(cfg, MEMBERS, "optimize", "ens_opt_mc", log=lambda s: None)
    assert sum(result["weights"]) == pytest.approx(1.0)
    assert result["weights"][0] > result["weights"][2]  # the least noisy member weighs most


@pytest.mark.parametrize("method", ensemble.list_blend_methods())
def test_every_method_writes_a_complete_blendable_experiment(projects, method):
    cfg = projects["binary"]  # roc_auc, so rank is allowed too
    weights = [1.0, 2.0, 1.0] if method == "weighted" else None
    result = ensemble.blend(cfg, MEMBERS, method, f"ens_{method}", weights=weights, log=lambda s: None)
    out = Path(cfg.output_dir) / f"ens_{method}"
    assert {p.name for p in out.iterdir()} == {"oof.csv", "test_pred.csv", "weights.json", "cv.json", "classes.json"}
    cv = json.loads((out / "cv.json").read_text())
    assert cv == result and cv["members"] == MEMBERS and cv["method"] == method and len(cv["weights"]) == 3
    assert cv["pred_cols"] == ["label"] and cv["metric"] == "roc_auc"
    member_classes = json.loads((out.parent / "m0" / "classes.json").read_text())
    assert json.loads((out / "classes.json").read_text()) == member_classes
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == ["id", "fold", "label"]
    y = encode_truth(cfg, tables.read_train(cfg).set_index("id").loc[oof["id"]].reset_index())[0]
    assert roc_auc_score(y, oof["label"]) == pytest.approx(cv["cv"])
    test_ids = pd.read_csv(Path(cfg.data.dir) / "test.csv", dtype=str)["id"]
    assert pd.read_csv(out / "test_pred.csv", dtype={"id": str})["id"].tolist() == test_ids.tolist()
    again = ensemble.blend(cfg, [f"ens_{method}", "m0"], "mean", f"ens2_{method}", log=lambda s: None)
    assert np.isfinite(again["cv"])


def test_rank_refused_for_accuracy(projects):
    with pytest.raises(UserError, match="rank"):
        ensemble.blend(projects["multiclass"], MEMBERS, "rank", "ens_rank", log=lambda s: None)


def test_different_folds_refused_naming_both(projects, tmp_path):
    cfg = projects["multiclass"]
    fake_experiment(cfg, "other_split", 2.0, seed=7)
    on_other_folds(cfg, "other_split")
    h = json.loads((Path(cfg.output_dir) / "m0" / "cv.json").read_text())["folds_hash"]
    with pytest.raises(UserError) as err:
        ensemble.blend(cfg, ["m0", "other_split"], "mean", "ens_bad", log=lambda s: None)
    assert all(s in str(err.value) for s in ("m0", "other_split", h, "0123456789abcdef"))
    assert not (Path(cfg.output_dir) / "ens_bad").exists()


def test_bad_requests_refused(projects):
    cfg = projects["multiclass"]
    with pytest.raises(UserError, match="not an ensemble"):
        ensemble.blend(cfg, MEMBERS, "mean", "m0", log=lambda s: None)
    with pytest.raises(UserError, match="unknown blend method"):
        ensemble.blend(cfg, MEMBERS, "median", "ens_x", log=lambda s: None)
    with pytest.raises(UserError, match="only used by method=weighted"):
        ensemble.blend(cfg, MEMBERS, "mean", "ens_x", weights=[1, 1, 1], log=lambda s: None)
    with pytest.raises(UserError, match=r"cv\.json not found"):
        ensemble.blend(cfg, ["m0", "missing"], "mean", "ens_x", log=lambda s: None)
