"""Blending on synthetic experiments over the real demo competition and its real folds."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score

from {{ cookiecutter.package_name }} import cli, ensemble
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import BlendWeights, Run
from {{ cookiecutter.package_name }}.data import tables
from {{ cookiecutter.package_name }}.students import teachers

from conftest import encode_truth, fake_experiment, on_other_folds, wandb_runs

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
    assert result.cv == pytest.approx(accuracy_score(y, got[expected.columns].to_numpy().argmax(1)))
    assert result.weights == pytest.approx([1 / 3] * 3)


def test_weighted_normalises_the_given_weights(projects):
    cfg = projects["regression"]
    result = ensemble.blend(cfg, MEMBERS, "weighted", "ens_w", weights=[1, 3, 0], log=lambda s: None)
    assert result.weights == pytest.approx([0.25, 0.75, 0.0])
    run = Path(cfg.output_dir)
    a, b = (read_by_id(run / m / "oof.csv")["label"] for m in ("m0", "m1"))
    got = read_by_id(run / "ens_w" / "oof.csv")["label"]
    np.testing.assert_allclose(got, 0.25 * a + 0.75 * b, atol=1e-9)
    y = tables.read_train(cfg).set_index("id").loc[got.index, "label"]
    assert result.cv == pytest.approx(np.sqrt(mean_squared_error(y, got)))
    with pytest.raises(UserError, match="one weight per experiment"):
        ensemble.blend(cfg, MEMBERS, "weighted", "ens_w2", weights=[1, 2], log=lambda s: None)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_hill_climb_never_worse_than_the_best_member(projects, task):
    cfg = projects[task]
    result = ensemble.blend(cfg, MEMBERS, "hill_climb", f"ens_hc_{task}", log=lambda s: None)
    member = result.member_cv.values()
    best = max(member) if result.higher_is_better else min(member)
    assert (result.cv >= best - 1e-12) if result.higher_is_better else (result.cv <= best + 1e-12)
    counts = np.array(result.weights) / min(w for w in result.weights if w > 0)
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)  # selection counts / total
    assert set(result.folds_nested) == {str(k) for k in range(N_FOLDS)}
    assert result.cv_nested == pytest.approx(np.mean(list(result.folds_nested.values())))


def test_optimize_finds_inverse_variance_weights(projects):
    """For independent unbiased errors of sd 0.5, 1, 2 the RMSE-optimal weights are proportional to 1/sd^2."""
    cfg = projects["regression"]
    result = ensemble.blend(cfg, MEMBERS, "optimize", "ens_opt", log=lambda s: None)
    ideal = np.array([4.0, 1.0, 0.25]) / 5.25
    np.testing.assert_allclose(result.weights, ideal, atol=0.06)
    assert result.cv <= min(result.member_cv.values())
    assert np.isfinite(result.cv_nested) and result.cv_nested >= result.cv - 0.05


def test_optimize_label_metric_uses_the_surrogate(projects):
    cfg = projects["multiclass"]
    result = ensemble.blend(cfg, MEMBERS, "optimize", "ens_opt_mc", log=lambda s: None)
    assert sum(result.weights) == pytest.approx(1.0)
    assert result.weights[0] > result.weights[2]  # the least noisy member weighs most


@pytest.mark.parametrize("method", ensemble.list_blend_methods())
def test_every_method_writes_a_complete_blendable_experiment(projects, method, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the run folder's own files only (a tracked blend adds wandb/)
    cfg = projects["binary"]  # roc_auc, so rank is allowed too
    weights = [1.0, 2.0, 1.0] if method == "weighted" else None
    result = ensemble.blend(cfg, MEMBERS, method, f"ens_{method}", weights=weights, log=lambda s: None)
    out = Path(cfg.output_dir) / f"ens_{method}"
    assert {p.name for p in out.iterdir()} == {
        "oof.csv",
        "test_pred.csv",
        "weights.json",
        "cv.json",
        "classes.json",
        "decisions.json",
    }
    cv = json.loads((out / "cv.json").read_text())
    assert cv == result.to_dict() and cv["members"] == MEMBERS and cv["method"] == method
    info = json.loads((out / "weights.json").read_text())
    if method in ("stacking", "vote"):  # no weighted mean: weights.json holds what it is instead
        assert cv["weights"] is None and info["model"]["kind"] == method
    else:
        assert len(cv["weights"]) == 3 and sum(cv["weights"]) == pytest.approx(1.0) and "model" not in info
    # weights.json alone reproduces the test blend from the members' test predictions (the offline notebook's way)
    tests = np.stack([read_by_id(out.parent / m / "test_pred.csv").to_numpy() for m in MEMBERS])
    blended = ensemble.apply_saved(BlendWeights.from_dict(info), tests)
    np.testing.assert_allclose(blended[:, 0], read_by_id(out / "test_pred.csv")["label"])
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
    assert np.isfinite(again.cv)


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


# ----------------------------------------------------------------------------------------------- stacking and vote


def noise_member(cfg, name: str, seed: int) -> None:
    """outputs/<name>: a member like m0 whose predictions are random probability rows, informative about nothing
    but (several of them together) memorisable by a meta-model scored on the rows it was fitted on."""
    rng, src, out = np.random.default_rng(seed), Path(cfg.output_dir) / "m0", Path(cfg.output_dir) / name
    out.mkdir(exist_ok=True)
    for file in ("oof.csv", "test_pred.csv"):
        df = pd.read_csv(src / file, dtype={"id": str})
        cols = [c for c in df.columns if c not in ("id", "fold")]
        df[cols] = rng.dirichlet(np.ones(len(cols)), len(df))
        df.to_csv(out / file, index=False)
    for file in ("cv.json", "classes.json"):
        (out / file).write_text((src / file).read_text())


def test_stacking_oof_score_is_honest_on_a_planted_leak(projects):
    """Four noise members give a 10-class logistic meta-model 400 weights to memorise the rows it is fitted on:
    scored on those rows it looks much better than the real member; fitted fold by fold it cannot."""
    cfg = projects["multiclass"]
    leaks = [f"leak{i}" for i in range(4)]
    for i, name in enumerate(leaks):
        noise_member(cfg, name, seed=100 + i)
    result = ensemble.blend(cfg, ["m0", *leaks], "stacking", "ens_leak", log=lambda s: None)
    real = result.member_cv["m0"]
    assert result.cv_in_sample > real + 0.02  # the in-sample fit claims a gain from pure noise...
    assert result.cv < result.cv_in_sample - 0.02  # ...the fold-wise OOF score does not
    assert result.cv <= real + 0.005
    oof = read_by_id(Path(cfg.output_dir) / "ens_leak" / "oof.csv")
    y = encode_truth(cfg, tables.read_train(cfg).set_index("id").loc[oof.index].reset_index())[0]
    cols = [c for c in oof.columns if c != "fold"]
    assert result.cv == pytest.approx(accuracy_score(y, oof[cols].to_numpy().argmax(1)))  # cv is that of oof.csv
    np.testing.assert_allclose(oof[cols].sum(1), 1.0, atol=1e-9)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_stacking_oof_rows_never_see_their_own_targets(task):
    """Changing fold k's targets leaves fold k's stacked OOF predictions exactly as they were (and changes the
    others', which were fitted on them)."""
    rng = np.random.default_rng(0)
    n, fold = 240, np.arange(240) % 3
    y = {"multiclass": rng.integers(0, 4, n), "binary": rng.integers(0, 2, n),
         "multilabel": rng.integers(0, 2, (n, 3)), "regression": rng.standard_normal(n)}[task]  # fmt: skip
    c = {"multiclass": 4, "binary": 1, "multilabel": 3, "regression": 1}[task]
    from conftest import noisy_predictions

    preds = np.stack([noisy_predictions(y, task, c, noise, rng) for noise in (1.0, 2.0, 3.0)])
    metric = {"multiclass": "accuracy", "binary": "roc_auc", "multilabel": "f1_micro", "regression": "rmse"}[task]
    method = ensemble.get_blend_method("stacking")

    def oof(targets):
        obj = ensemble.Objective(metric, task, targets)
        return ensemble.out_of_fold(method, preds, obj, fold, None)

    changed = y.copy()
    changed[fold == 0] = {"regression": lambda v: -3 * v}.get(task, lambda v: 1 - v if task != "multiclass" else
                                                               (v + 1) % 4)(y[fold == 0])  # fmt: skip
    before, after = oof(y), oof(changed)
    np.testing.assert_array_equal(before[fold == 0], after[fold == 0])
    assert not np.allclose(before[fold != 0], after[fold != 0])


def test_stacking_learns_what_a_weighted_mean_cannot(projects):
    """A member off by +3 everywhere: a mean keeps part of the bias, the ridge meta-model removes it."""
    cfg = projects["regression"]
    src, out = Path(cfg.output_dir) / "m1", Path(cfg.output_dir) / "m1_biased"
    out.mkdir(exist_ok=True)
    for file in ("oof.csv", "test_pred.csv"):
        df = pd.read_csv(src / file, dtype={"id": str})
        df["label"] += 3.0
        df.to_csv(out / file, index=False)
    for file in ("cv.json", "classes.json"):
        (out / file).write_text((src / file).read_text())
    stacked = ensemble.blend(cfg, ["m1_biased", "m2"], "stacking", "ens_stack_reg", log=lambda s: None)
    mean = ensemble.blend(cfg, ["m1_biased", "m2"], "optimize", "ens_opt_reg", log=lambda s: None)
    assert stacked.cv < min(stacked.member_cv.values()) - 0.5
    assert stacked.cv < mean.cv_nested - 0.3


def test_a_blend_logs_a_wandb_run_with_its_scores(projects, monkeypatch):
    """Offline: a run of job_type ensemble in the ensemble's own group and folder, with every CV of its cv.json (the
    nested one included), each member's CV and weight."""
    cfg = projects["regression"]
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = ensemble.blend(cfg, MEMBERS, "hill_climb", "ens_tracked", log=lambda s: None)
    (tracked,) = wandb_runs(Path(cfg.output_dir) / "ens_tracked")
    assert [tracked[k] for k in ("job_type", "group", "name")] == ["ensemble", "ens_tracked", "ens_tracked-ensemble"]
    summary = tracked["summary"]
    assert summary["cv"] == result.cv and summary["cv_nested"] == result.cv_nested
    assert summary["cv_submission"] == result.cv_submission  # the CV of the blend's submission too
    assert summary["method"] == "hill_climb"
    for member, weight in zip(MEMBERS, result.weights, strict=True):
        assert summary[f"member_cv/{member}"] == result.member_cv[member] and summary[f"weight/{member}"] == weight
    assert {summary[f"fold{k}"] for k in range(N_FOLDS)} == set(result.folds.values())


def test_vote_is_the_majority_with_ties_broken_by_the_soft_vote():
    preds = np.array([
        [[0.40, 0.35, 0.25], [0.50, 0.30, 0.20]],
        [[0.40, 0.30, 0.30], [0.10, 0.60, 0.30]],
        [[0.00, 1.00, 0.00], [0.05, 0.15, 0.80]],
    ])  # fmt: skip
    obj = ensemble.Objective("accuracy", "multiclass", np.array([0, 0]))
    out = ensemble.get_blend_method("vote").fit(preds, obj, None).apply(preds)
    # row 0: two votes for class 0 beat the mean probability, which favours class 1
    assert preds[:, 0].mean(0).argmax() == 1 and out[0].argmax() == 0
    # row 1: one vote each; the soft vote (mean probability) decides: class 2
    assert out[1].argmax() == preds[:, 1].mean(0).argmax() == 2
    np.testing.assert_allclose(out.sum(1), 1.0)
    binary = np.array([[0.9], [0.6], [0.2]])[:, None, :].repeat(2, axis=1)  # (M=3, N=2, 1): two of three vote 1
    binary[:, 1, 0] = [0.55, 0.1, 0.2]  # one of three votes 1
    obj = ensemble.Objective("accuracy", "binary", np.array([1, 0]))
    got = ensemble.get_blend_method("vote").fit(binary, obj, None).apply(binary)[:, 0]
    assert got[0] >= 0.5 > got[1]


def test_vote_on_real_members_matches_an_independent_majority(projects):
    cfg = projects["multiclass"]
    run = Path(cfg.output_dir)
    config_file = run.parent / "configs" / "exp.yaml"
    assert (
        cli.main(["ensemble", "-c", str(config_file), "--exps", *MEMBERS, "--method", "vote", "--name", "ens_vote"])
        == 0
    )
    result = Run(run / "ens_vote").read_cv()
    parts = [read_by_id(run / m / "oof.csv").drop(columns="fold") for m in MEMBERS]
    probs = np.stack([p.to_numpy() for p in parts])
    labels_ = probs.argmax(2)
    majority = []
    for i in range(probs.shape[1]):
        counts = np.bincount(labels_[:, i], minlength=probs.shape[2])
        tied = np.flatnonzero(counts == counts.max())
        majority.append(tied[probs[:, i, tied].mean(0).argmax()])
    y = encode_truth(cfg, tables.read_train(cfg).set_index("id").loc[parts[0].index].reset_index())[0]
    assert result.cv == pytest.approx(accuracy_score(y, majority))
    with pytest.raises(UserError, match="method=vote takes task"):
        ensemble.blend(projects["regression"], MEMBERS, "vote", "ens_vote_reg", log=lambda s: None)


def test_a_stacking_ensemble_is_no_teacher(projects):
    cfg = projects["binary"]
    ensemble.blend(cfg, MEMBERS, "stacking", "ens_teach", log=lambda s: None)
    with pytest.raises(UserError, match="no weighted mean"):
        teachers.teacher_leaves(cfg, ["ens_teach"])
