"""Seed bagging (config key `seeds`): each seed trains the experiment `<exp>-seed<s>`, and outputs/<exp>/ is their
mean, with the per-seed CVs, their spread and the bag's CV in cv.json; every later stage takes it as a mean ensemble."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from {{ cookiecutter.package_name }} import cli, config, submission
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import CVSummary, Run, SeedBag, read_id_csv, seed_member
from {{ cookiecutter.package_name }}.students import teachers

from conftest import small_config, write_config

SEEDS = [42, 7]
COLS = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def bag(small_project):
    """`make train` then `make predict` of the two-seed bag `bag` (2 folds, 1 epoch): the CLI, as a user runs it."""
    small_config(small_project, "bag")
    path = str(small_project / "configs" / "bag.yaml")
    seeds = f"seeds=[{','.join(map(str, SEEDS))}]"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["train", "-c", path, seeds]) == 0
    assert cli.main(["predict", "-c", path, seeds]) == 0
    cfg = config.load(path, [seeds])
    cfg.printed = printed.getvalue()  # what `train` printed
    return cfg


def _table(cfg: config.Config, exp: str, name: str) -> pd.DataFrame:
    return read_id_csv(Run.named(cfg.output_dir, exp).path / name, cfg.data.id_col).set_index(cfg.data.id_col)


@pytest.mark.e2e
@pytest.mark.parametrize("table", ["oof.csv", "test_pred.csv"])
def test_the_bags_predictions_are_the_mean_of_its_seeds(bag, table):
    members = [seed_member("bag", s) for s in SEEDS]
    got = _table(bag, "bag", table)
    seeds = [_table(bag, m, table).loc[got.index] for m in members]  # row-aligned by id
    assert len(got) == len(seeds[0]) and set(got.index) == set(seeds[0].index)
    np.testing.assert_allclose(got[COLS].to_numpy(), np.mean([s[COLS].to_numpy() for s in seeds], axis=0), atol=1e-6)
    if table == "oof.csv":
        assert (got["fold"] == seeds[0]["fold"]).all()
    # the seeds are two trainings: another seed, other predictions (a one-epoch model stays near its prior: small
    # differences, yet a hundred times the 1e-7 the tables are written to)
    assert np.abs(seeds[0][COLS].to_numpy() - seeds[1][COLS].to_numpy()).max() > 1e-5


@pytest.mark.e2e
def test_cv_json_holds_each_seeds_cv_their_spread_and_the_bags(bag):
    out = Run.named(bag.output_dir, "bag")
    cv = out.read_cv()
    members = [seed_member("bag", s) for s in SEEDS]
    assert out.read_weights().method == "mean" and out.members() == members
    per_seed = [Run.named(bag.output_dir, m).read_cv().cv for m in members]
    assert cv.seed_bag == SeedBag(SEEDS, members, dict(zip(map(str, SEEDS), per_seed, strict=True)),
                                  cv.seed_bag.mean, cv.seed_bag.std, cv.cv)  # fmt: skip
    assert cv.seed_bag.mean == pytest.approx(np.mean(per_seed)) and cv.seed_bag.std == pytest.approx(
        np.std(per_seed, ddof=1)
    )
    assert json.loads(out.cv.read_text())["seed_bag"]["bag"] == cv.cv
    for m, s in zip(members, SEEDS, strict=True):  # each member is the experiment under its seed, no bag of its own
        saved = config.load(Run.named(bag.output_dir, m).config)
        assert (saved.seed, saved.seeds, saved.exp) == (s, None, m)
    # printed after training: each seed's CV, their spread, the bag's CV (before predict: the same plain OOF)
    trained = Run.named(bag.output_dir, "bag-seed42").read_cv().cv, Run.named(bag.output_dir, "bag-seed7").read_cv().cv
    assert f"bag: seed bag of 2 (accuracy): seed 42 {trained[0]:.5f} | seed 7 {trained[1]:.5f}" in bag.printed
    assert f"+- {np.std(trained, ddof=1):.5f} (mean +- std over seeds) -> bag " in bag.printed


@pytest.mark.e2e
def test_the_bag_is_submitted_and_taught_from_as_a_mean_ensemble(bag, tmp_path):
    path = submission.make_submission(bag, "bag", out_dir=tmp_path, log=lambda s: None)  # validated against the sample
    assert len(pd.read_csv(path)) == len(_table(bag, "bag", "test_pred.csv"))
    leaves = teachers.teacher_leaves(small_config(bag.run_dir.parent.parent, "student"), ["bag"])
    assert leaves == {seed_member("bag", s): 0.5 for s in SEEDS}


@pytest.mark.e2e
def test_one_fold_trains_that_fold_of_every_seed_and_blends_nothing_yet(small_project, capsys):
    small_config(small_project, "bag_fold")
    path = str(small_project / "configs" / "bag_fold.yaml")
    assert cli.main(["train", "-c", path, "--fold", "1", "seeds=[3,4]", "train.limit_batches=1"]) == 0
    out = small_project / "outputs"
    assert [Run(out / f"bag_fold-seed{s}").finished_folds() for s in (3, 4)] == [[1], [1]]
    assert not (out / "bag_fold").exists() and "seed bag not blended yet" in capsys.readouterr().out


@pytest.mark.parametrize("seeds", ["[7,7]", "[7]", "[3,-1]"])
def test_seeds_are_at_least_two_distinct_integers(tmp_path, seeds):
    with pytest.raises(UserError, match=r"config key 'seeds' is \["):
        config.load(write_config(tmp_path, name="exp001"), [f"seeds={seeds}"])


def test_members_are_the_experiment_under_each_seed(tmp_path):
    cfg = config.load(write_config(tmp_path, name="exp001"), ["seeds=[42,7,1]", "seed=5"])
    members = config.seed_members(cfg)
    assert [(m.exp, m.seed, m.seeds) for m in members] == [("exp001-seed42", 42, None), ("exp001-seed7", 7, None),
                                                           ("exp001-seed1", 1, None)]  # fmt: skip
    assert all(m.train == cfg.train and m.model == cfg.model for m in members)
    plain = config.load(write_config(tmp_path, name="exp002"))
    assert config.seed_members(plain) == [plain]
    record = SeedBag([1, 2], ["b-seed1", "b-seed2"], {"1": 0.4, "2": 0.5}, 0.45, 0.07, 0.5)
    summary = CVSummary("b", "multiclass", "accuracy", True, 0.5, {}, True, [], False, "h", ["a"], members=["m"],
                        seed_bag=record)  # fmt: skip
    assert CVSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary


def test_a_bag_refuses_what_takes_one_seed_and_a_one_seed_run_in_its_folder(tmp_path, capsys):
    path = str(write_config(tmp_path, name="exp001"))
    assert cli.main(["pseudo", "-c", path, "--teacher", "exp000", "seeds=[1,2]"]) == 2
    assert "config key 'seeds' is [1, 2]: pseudo takes one seed" in capsys.readouterr().err
    (tmp_path / "outputs" / "exp001").mkdir(parents=True)
    (tmp_path / "outputs" / "exp001" / "config.yaml").write_text("exp: exp001\n")  # a one-seed run of exp001
    assert cli.main(["train", "-c", path, "seeds=[1,2]"]) == 2
    assert "holds a one-seed training of 'exp001'" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "exp001-seed1").exists()
