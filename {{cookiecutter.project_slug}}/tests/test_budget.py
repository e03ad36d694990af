"""`ensemble --budget MIN --n-test N`: the members and views that score best on OOF within a code competition's time
limit, from each member's estimate.json (`predict --estimate`)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from {{ cookiecutter.package_name }} import cli, ensemble
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import Estimate, Run
from {{ cookiecutter.package_name }}.kaggle import offline

from conftest import fake_experiment, small_config

quiet = lambda s: None  # noqa: E731
N_TEST = 10000


def config_path_of(root, name: str):
    return root / "configs" / f"{name}.yaml"


def _timed(cfg, exp: str, ms: float) -> None:
    """estimate.json for `exp` as `predict --estimate` writes it: `ms` per image through each of 3 folds."""
    Run.named(cfg.output_dir, exp).write_estimate(Estimate(
        exp=exp, device="cpu", threads=1, runtime="torch", folds=3, views=["identity"], first_load_s=2.0, load_s=0.5,
        ms_per_image=ms, view_ms_per_image={"identity": ms}, decode_ms=0.0, measured_images=32))  # fmt: skip


@pytest.fixture
def members(tmp_path, new_project):
    """Four experiments: better ones slower (ms per image), as bigger models are."""
    cfg = new_project(tmp_path, images=False, size=8)
    for i, (noise, ms) in enumerate(((3.0, 1.0), (2.4, 3.0), (2.0, 6.0), (1.8, 10.0))):
        fake_experiment(cfg, f"m{i}", noise, seed=i)
        _timed(cfg, f"m{i}", ms)
    return cfg, [f"m{i}" for i in range(4)]


def test_the_choice_fits_its_budget_and_a_larger_budget_never_scores_lower(members):
    cfg, exps = members
    seconds = {e: Run.named(cfg.output_dir, e).read_estimate().seconds(N_TEST) for e in exps}
    scores, chosen = [], []
    for budget in (1.0, 2.0, 3.0, 5.0, 8.0):
        result = ensemble.budget_blend(cfg, exps, "mean", f"b{budget:g}", budget, N_TEST, log=quiet)
        record = Run.named(cfg.output_dir, f"b{budget:g}").read_budget()
        assert record.seconds == pytest.approx(sum(seconds[m] for m in record.chosen))
        assert record.seconds <= 60 * budget  # the summed estimate fits
        assert result.members == list(record.chosen) and record.cv == pytest.approx(result.cv)  # mean: the blend
        weights = json.loads((Run.named(cfg.output_dir, f"b{budget:g}").weights).read_text())
        assert weights["views"] == {m: ["identity"] for m in record.chosen}  # the views travel
        scores.append(record.cv)
        chosen.append(list(record.chosen))
    assert scores == sorted(scores)  # accuracy: higher is better, never lower with more time
    assert chosen[0] == ["m0"] and len(chosen[-1]) > 1  # 1 min: the one member that fits; 8: several
    assert scores[-1] >= max(Run.named(cfg.output_dir, e).read_cv().cv for e in exps)  # every one fits in 8 min


def test_a_budget_below_the_cheapest_member_or_an_untimed_member_is_refused(members, capsys):
    cfg, exps = members
    with pytest.raises(UserError, match=r"even the cheapest member, m0 .* takes 0\.55 min"):
        ensemble.budget_blend(cfg, exps, "hill_climb", "none", 0.5, N_TEST, log=quiet)
    Run.named(cfg.output_dir, "m3").estimate.unlink()
    with pytest.raises(UserError, match=r"m3: no timing record .*make estimate EXP=m3 N=10000"):
        ensemble.budget_blend(cfg, exps, "hill_climb", "none", 60.0, N_TEST, log=quiet)
    assert not (cfg.run.path.parent / "none").exists()


def test_ensemble_budget_from_the_command_line(members, tmp_path, capsys):
    cfg, exps = members
    path = tmp_path / "configs" / "exp.yaml"
    argv = ["ensemble", "-c", str(path), "--exps", *exps, "--name", "fast", "--budget", "3", "--n-test", "10000"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    record = Run.named(cfg.output_dir, "fast").read_budget()
    assert record.budget_min == 3 and record.n_test == N_TEST and "<- chosen" in out and "within 3 min" in out
    test = pd.read_csv(Run.named(cfg.output_dir, "fast").test_pred, dtype={cfg.data.id_col: str})
    assert len(test) == len(pd.read_csv(Run.named(cfg.output_dir, "m0").test_pred))
    assert cli.main([*argv[:-4], "--budget", "0.1", "--n-test", "10000"]) == 2
    assert "even the cheapest member" in capsys.readouterr().err
    assert cli.main([*argv[:-4], "--budget", "3", "--n-test", "0"]) == 2
    assert cli.main(["ensemble", "-c", str(path), "--exps", *exps, "--name", "fast"]) == 0  # a plain blend again
    assert not Run.named(cfg.output_dir, "fast").budget.exists()  # its budget choice would not describe it


@pytest.mark.e2e
def test_a_member_chosen_with_fewer_views_is_predicted_again_with_them(small_project, capsys):
    """A member predicted with two views, timed by `predict --estimate` (estimate.json, each view alone too): a budget
    that fits identity alone but not both views takes identity alone, and the blend's test predictions are then that
    member's identity-only predictions, as `predict` with tta.views=[identity] makes them."""
    root = small_project
    two = ["tta.views=[identity,hflip]"]
    path = config_path_of(root, "tta")
    small_config(root, "tta", two)
    assert cli.main(["train", "-c", str(path), *two]) == 0
    assert cli.main(["predict", "-c", str(path), *two]) == 0
    assert cli.main(["predict", "-c", str(path), "--estimate", "50000", *two]) == 0
    cfg = small_config(root, "tta", two)
    est = cfg.run.read_estimate()
    assert est.views == ["identity", "hflip"] and set(est.view_ms_per_image) == {"identity", "hflip"}
    both, alone = est.seconds(50000), est.seconds(50000, ["identity"])
    assert alone < both
    shutil.copytree(cfg.run.path, root / "outputs" / "plain")  # the same checkpoints, predicted with identity only
    small_config(root, "plain")
    assert cli.main(["predict", "-c", str(config_path_of(root, "plain"))]) == 0
    budget = (alone + both) / 2 / 60
    argv = ["ensemble", "-c", str(path), "--exps", "tta", "--method", "mean", "--name", "b", "--budget", str(budget),
            "--n-test", "50000"]  # fmt: skip
    assert cli.main(argv) == 0
    record = Run.named(root / "outputs", "b").read_budget()
    assert record.chosen == {"tta": ["identity"]} and record.seconds <= 60 * budget
    id_col = cfg.data.id_col
    got = pd.read_csv(root / "outputs" / "b" / "test_pred.csv", dtype={id_col: str}).set_index(id_col)
    want = pd.read_csv(root / "outputs" / "plain" / "test_pred.csv", dtype={id_col: str}).set_index(id_col)
    np.testing.assert_allclose(got.loc[want.index, want.columns], want, atol=1e-5)
    assert "predicting the test set again with views ['identity']" in capsys.readouterr().out
    # The offline notebook predicts the packaged blend's member with the views the blend chose (weights.json)
    dataset = offline.package_for_dataset(cfg, ["b"], root / "ds", "me/budget", "Budget")
    offline.predict_packaged(dataset, "b", root / "data", root / "nb", log=quiet)
    ours = pd.read_csv(root / "nb" / "b" / "test_pred.csv", dtype={id_col: str}).set_index(id_col)
    np.testing.assert_allclose(ours.loc[got.index, got.columns], got, atol=1e-6)
