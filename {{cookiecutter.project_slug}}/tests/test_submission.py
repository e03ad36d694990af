"""Submission files for every task, from the demo competition's own sample submission and solution."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

from {{ cookiecutter.package_name }} import cli, config, submission
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import Run, read_source, write_derived
from {{ cookiecutter.package_name }}.engine import codec, scoring
from {{ cookiecutter.package_name }}.kaggle import api as kaggle_api
from {{ cookiecutter.package_name }}.modeling import metrics

from conftest import encode_truth, fake_experiment

BEST = {"accuracy": 1.0, "roc_auc": 1.0, "f1_micro": 1.0, "rmse": 0.0}
quiet = lambda s: None  # noqa: E731


@pytest.fixture(scope="module")
def projects(tmp_path_factory, new_project):
    out = {}
    for task in ("multiclass", "binary", "multilabel", "regression"):
        cfg = new_project(tmp_path_factory.mktemp(task), task, images=False, size=8)
        fake_experiment(cfg, "perfect", 0.0, cv=0.12345)
        fake_experiment(cfg, "noisy", 2.5 if task != "regression" else 2.0, seed=1, cv=0.12345)
        out[task] = cfg
    return out


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False)


def solution(cfg: config.Config) -> Path:
    return Path(cfg.data.dir) / "solution.csv"


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_perfect_submission_scores_the_best_value(projects, task):
    cfg = projects[task]
    path = submission.make_submission(cfg, "perfect", log=quiet)
    assert path == Path(cfg.output_dir).parent / "submissions" / "perfect.csv"
    sub, sample = read(path), read(Path(cfg.data.dir) / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and sub["id"].tolist() == sample["id"].tolist()
    truth = read(solution(cfg)).set_index("id").loc[sub["id"], "label"]
    if task in ("multiclass", "regression"):  # labels, values: exactly the solution
        assert sub["label"].astype(str).tolist() == truth.astype(str).tolist()
    if task == "multilabel":  # tags: the same set per row
        assert [set(s.split()) for s in sub["label"]] == [set(s.split()) for s in truth]
    if task == "multiclass":
        assert pd.api.types.is_integer_dtype(sub["label"])  # ints stay ints
    if task == "binary":  # roc_auc: probabilities of the positive class
        assert sub["label"].between(0, 1).all() and set(sub["label"]) - {0, 1}
    name = config.metric_name(cfg)
    assert submission.score_submission(cfg, path, solution(cfg)) == pytest.approx(BEST[name])


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_score_matches_sklearn(projects, task):
    cfg = projects[task]
    path = submission.make_submission(cfg, "noisy", log=quiet)
    sub = read(path)
    truth = read(solution(cfg)).set_index("id").loc[sub["id"], "label"]
    got = submission.score_submission(cfg, path, solution(cfg))
    if task == "multiclass":
        expected = accuracy_score(truth.astype(int), sub["label"])
    elif task == "binary":
        expected = roc_auc_score(truth.astype(int), sub["label"])
    else:
        tags = sorted({t for cell in truth for t in cell.split()})
        hot = lambda col: np.array([[t in cell.split() for t in tags] for cell in col])  # noqa: E731
        expected = f1_score(hot(truth), hot(sub["label"]), average="micro")
    assert got == pytest.approx(expected) and got < BEST[config.metric_name(cfg)]


def test_binary_label_metric_writes_labels_at_a_tuned_threshold(projects):
    base = projects["binary"]
    cfg = config.load(Path(base.output_dir).parent / "configs" / "exp.yaml", ["metric=accuracy"])
    fake_experiment(cfg, "noisy_acc", 2.5, seed=1)  # the noisy model, its decisions made under metric=accuracy
    seen = []
    sub = read(submission.make_submission(cfg, "noisy_acc", log=seen.append))
    assert set(sub["label"]) <= {0, 1} and pd.api.types.is_integer_dtype(sub["label"])
    threshold = Run.named(cfg.output_dir, "noisy_acc").read_decisions().threshold
    assert threshold is not None and any(f"binary threshold {threshold:.4f}" in s for s in seen)
    truth = read(solution(cfg)).set_index("id").loc[sub["id"], "label"]
    path = Path(cfg.output_dir).parent / "submissions" / "noisy_acc.csv"
    assert submission.score_submission(cfg, path, solution(cfg)) == pytest.approx(accuracy_score(truth, sub["label"]))


def test_regression_clip_and_qwk_rounding(projects):
    cfg = projects["regression"]
    sub = read(submission.make_submission(cfg, "noisy", log=quiet))
    pred = read(Path(cfg.output_dir) / "noisy" / "test_pred.csv").set_index("id").loc[sub["id"], "label"]
    np.testing.assert_allclose(sub["label"], np.clip(pred, 0.0, 9.0))
    assert (pred < 0).any() and (pred > 9).any()  # so the clip did something
    qwk_cfg = config.load(Path(cfg.output_dir).parent / "configs" / "exp.yaml", ["metric=qwk"])
    fake_experiment(qwk_cfg, "noisy_qwk", 2.0, seed=1)  # the noisy model, its decisions made under metric=qwk
    path = submission.make_submission(qwk_cfg, "noisy_qwk", log=quiet)
    sub = read(path)
    assert pd.api.types.is_integer_dtype(sub["label"]) and set(sub["label"]) <= set(range(10))
    truth = read(solution(cfg)).set_index("id").loc[sub["id"], "label"].astype(int)
    expected = cohen_kappa_score(truth, sub["label"], weights="quadratic")
    assert submission.score_submission(qwk_cfg, path, solution(cfg)) == pytest.approx(expected)


@pytest.mark.parametrize("metric", ["qwk", "rmse", "mae"])
def test_ordinal_cuts_tuned_on_oof_beat_plain_rounding(metric):
    # Regression models pull grades towards the mean: cuts tuned on OOF undo that, for whatever the metric.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 2000).astype(float)
    p = 2.0 + 0.6 * (y - 2.0) + 0.3 * rng.standard_normal(len(y))
    levels = np.arange(5.0)
    cuts = scoring.tune_cuts(y, p, levels, metric)
    assert np.all(np.diff(cuts) > 0) and len(cuts) == 4
    sign = 1 if metric == "qwk" else -1
    tuned = metrics.score(metric, y, scoring.apply_cuts(p, levels, cuts), "regression")
    rounded = metrics.score(metric, y, scoring.apply_cuts(p, levels, levels[:-1] + 0.5), "regression")
    assert sign * tuned > sign * rounded + 0.02


def test_ordinal_submission_applies_the_cuts_tuned_on_oof(projects):
    base = projects["regression"]
    cfg = config.load(Path(base.output_dir).parent / "configs" / "exp.yaml", ["submit.ordinal=true"])
    assert config.metric_name(cfg) == "rmse"
    fake_experiment(cfg, "noisy_ordinal", 2.0, seed=1)  # the noisy model, its decisions made with submit.ordinal
    seen = []
    sub = read(submission.make_submission(cfg, "noisy_ordinal", log=seen.append))
    assert pd.api.types.is_integer_dtype(sub["label"]) and any("ordinal cuts" in s for s in seen)
    oof = read(Path(cfg.output_dir) / "noisy_ordinal" / "oof.csv")
    y = encode_truth(cfg, read(Path(cfg.data.dir) / "train.csv").set_index("id").loc[oof["id"]].reset_index())[0]
    levels = np.arange(10.0)
    cuts = scoring.tune_cuts(y, np.clip(oof["label"].to_numpy(), 0, 9), levels, "rmse")  # tuned on the clipped OOF
    assert Run.named(cfg.output_dir, "noisy_ordinal").read_decisions().ordinal == {
        "levels": levels.tolist(),
        "cuts": cuts.tolist(),
    }
    pred = read(Path(cfg.output_dir) / "noisy_ordinal" / "test_pred.csv").set_index("id").loc[sub["id"], "label"]
    np.testing.assert_array_equal(sub["label"], scoring.apply_cuts(np.clip(pred.to_numpy(), 0, 9), levels, cuts))


def test_ordinal_levels_are_the_targets_grades(projects):
    base = projects["regression"]
    cfg = config.load(Path(base.output_dir).parent / "configs" / "exp.yaml", ["submit.ordinal=true"])
    assert scoring.target_levels(cfg, np.array([2.0, 0.5, 2.0, 1.0])).tolist() == [0.5, 1.0, 2.0]
    qwk = config.load(Path(base.output_dir).parent / "configs" / "exp.yaml", ["metric=qwk"])
    assert scoring.ordinal(qwk) and not scoring.ordinal(
        config.load(Path(base.output_dir).parent / "configs" / "exp.yaml")
    )
    # QWK scores whole grades
    assert scoring.target_levels(qwk, np.array([2.2, 0.4, 1.0])).tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(UserError, match=r"column 'label' has 150 distinct values.*submit.ordinal=false"):
        scoring.target_levels(cfg, np.linspace(0, 1, 150))


def test_the_decided_cv_is_the_score_of_the_oof_as_submitted(projects):
    """Multilabel tags: the CV recorded (and sent in the submit message) is F1 of the OOF thresholded as the
    submission is, with each label's tuned threshold and no empty row; not the score at 0.5."""
    cfg = projects["multilabel"]
    d = Run.named(cfg.output_dir, "noisy").read_decisions()
    oof = read(Path(cfg.output_dir) / "noisy" / "oof.csv")
    labels = [c for c in oof.columns if c not in ("id", "fold")]
    truth = read(solution(cfg).with_name("train.csv")).set_index("id").loc[oof["id"], "label"]
    hot = np.array([[t in cell.split() for t in labels] for cell in truth])
    p = oof[labels].to_numpy()
    chosen = p >= np.array(d.thresholds)[None, :]
    chosen[np.arange(len(p)), p.argmax(1)] |= ~chosen.any(1)
    assert d.format == "tags" and d.cv == pytest.approx(f1_score(hot, chosen, average="micro"))
    assert d.cv != pytest.approx(f1_score(hot, p >= 0.5, average="micro"))


def test_multilabel_rows_never_empty(projects):
    base = projects["multilabel"]
    cfg = config.load(
        Path(base.output_dir).parent / "configs" / "exp.yaml",
        ["submit.threshold=0.999", "submit.tune_thresholds=false"],
    )
    fake_experiment(cfg, "strict", 2.5, seed=1)  # the noisy model, its decisions made at a threshold of 0.999
    sub = read(submission.make_submission(cfg, "strict", log=quiet))
    pred = read(Path(cfg.output_dir) / "strict" / "test_pred.csv").set_index("id").loc[sub["id"]]
    assert (sub["label"].str.len() > 0).all()
    lonely = ~(pred.to_numpy() >= 0.999).any(1)
    assert lonely.any()
    assert sub["label"][lonely].tolist() == pred.columns[pred.to_numpy()[lonely].argmax(1)].tolist()


def test_probs_columns_follow_the_sample(projects, tmp_path):
    base = projects["multiclass"]
    sample = read(Path(base.data.dir) / "sample_submission.csv")[["id"]]
    for c in reversed(range(10)):
        sample[str(c)] = 0.1
    sample.to_csv(tmp_path / "sample_probs.csv", index=False)
    override = f"data.sample_submission={tmp_path / 'sample_probs.csv'}"
    cfg = config.load(Path(base.output_dir).parent / "configs" / "exp.yaml", [override])
    fake_experiment(cfg, "probs", 2.5, seed=1)  # decided for this sample submission: probability columns
    sub = read(submission.make_submission(cfg, "probs", out_dir=tmp_path, log=quiet))
    assert list(sub.columns) == ["id", *[str(c) for c in reversed(range(10))]]
    pred = read(Path(cfg.output_dir) / "probs" / "test_pred.csv").set_index("id").loc[sub["id"]]
    np.testing.assert_allclose(sub.set_index("id")[pred.columns].to_numpy(), pred.to_numpy())


@pytest.mark.parametrize("fault", ["wrong order", "missing id", "NaN", "extra column"])
def test_validation_errors(projects, fault):
    cfg = projects["multiclass"]
    sample = read(Path(cfg.data.dir) / "sample_submission.csv")
    df = sample.copy()
    df["label"] = 3
    codec.validate_submission(df, sample, "id", kind="label", labels=[str(c) for c in range(10)])  # fine as it is
    if fault == "wrong order":
        df = df.iloc[::-1].reset_index(drop=True)
    elif fault == "missing id":
        df = df.iloc[1:].reset_index(drop=True)
    elif fault == "NaN":
        df.loc[5, "label"] = np.nan
    else:
        df["extra"] = 1
    with pytest.raises(UserError, match=r"sub\.csv"):
        codec.validate_submission(df, sample, "id", kind="label", labels=[str(c) for c in range(10)], where="sub.csv")


def test_unknown_label_and_probability_out_of_range(projects):
    sample = read(Path(projects["multiclass"].data.dir) / "sample_submission.csv")
    df = sample.assign(label=11)
    with pytest.raises(UserError, match="not among the labels"):
        codec.validate_submission(df, sample, "id", kind="label", labels=[str(c) for c in range(10)])
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        codec.validate_submission(sample.assign(label=1.5), sample, "id", kind="probs")


@pytest.mark.parametrize("fault", ["NaN", "missing id"])
def test_bad_predictions_leave_no_file(projects, tmp_path, fault):
    cfg = projects["multiclass"]
    src = Path(cfg.output_dir) / "noisy"
    bad = Path(cfg.output_dir) / f"bad_{fault.replace(' ', '_')}"
    bad.mkdir()
    for name in ("oof.csv", "cv.json", "classes.json", "decisions.json"):
        (bad / name).write_bytes((src / name).read_bytes())
    test = read(src / "test_pred.csv")
    test = test.iloc[1:] if fault == "missing id" else test.assign(**{"3": [np.nan] + [0.1] * (len(test) - 1)})
    write_derived(bad / "test_pred.csv", test, read_source(src / "test_pred.csv"))  # as predicted, rows spoilt
    with pytest.raises(UserError, match="test_pred.csv" if fault == "NaN" else "missing"):
        submission.make_submission(cfg, bad.name, out_dir=tmp_path, log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_score_needs_the_same_ids(projects, tmp_path):
    cfg = projects["multiclass"]
    path = submission.make_submission(cfg, "noisy", log=quiet)
    read(path).iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(UserError, match="different ids"):
        submission.score_submission(cfg, tmp_path / "short.csv", solution(cfg))


def test_submit_message_and_client_call(projects, monkeypatch):
    cfg = projects["multiclass"]
    path = submission.make_submission(cfg, "noisy", log=quiet)

    def no_network():
        raise AssertionError("dry run must not reach Kaggle")

    monkeypatch.setattr(kaggle_api, "_client", no_network)
    message = kaggle_api.submit(cfg, path, dry_run=True, competition="digit-recognizer", log=quiet)
    # the CV of what the file holds (its decisions'), not cv.json's figure (0.12345 here)
    oof = read(Path(cfg.output_dir) / "noisy" / "oof.csv")
    truth = read(Path(cfg.data.dir) / "train.csv").set_index("id").loc[oof["id"], "label"].astype(int)
    cv = accuracy_score(truth, oof[[str(c) for c in range(10)]].to_numpy().argmax(1))
    assert message == f"noisy CV accuracy={cv:.5f}"

    calls = []

    class FakeApi:
        def competition_submit(self, **kwargs):
            calls.append(kwargs)
            return type("Response", (), {"message": "Successfully submitted"})()

    monkeypatch.setattr(kaggle_api, "_client", FakeApi)
    assert kaggle_api.submit(cfg, path, "my note", competition="digit-recognizer", log=quiet) == "my note"
    assert calls == [{"file_name": str(path), "message": "my note", "competition": "digit-recognizer"}]


def test_overrides_after_a_flag_are_overrides():
    """`make submit DRY=1 ARGS="competition=x"` puts the override after --dry-run."""
    args = cli.parse(["submit", "-c", "e.yaml", "sub.csv", "--dry-run", "competition=x", "submit.threshold=0.3"])
    assert (args.file, args.dry_run, args.overrides) == ("sub.csv", True, ["competition=x", "submit.threshold=0.3"])
    with pytest.raises(SystemExit):
        cli.parse(["submit", "-c", "e.yaml", "sub.csv", "--dry-run", "stray"])
    with pytest.raises(SystemExit):
        cli.parse(["submit", "-c", "e.yaml", "sub.csv", "--no-such-flag=1"])
