"""Leaderboard sense: bootstrap intervals of the CV and of a public-leaderboard-sized sample, `lb`'s noise verdict,
and `final-two` (the best CV and the most different run within its noise). Only Kaggle's network call is faked."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }} import submission as submit
from {{ cookiecutter.package_name }}.core.runs import Run, read_final_two
from {{ cookiecutter.package_name }}.engine import bootstrap
from {{ cookiecutter.package_name }}.kaggle import api as kaggle_api
from {{ cookiecutter.package_name }}.kaggle import lb_sense
from {{ cookiecutter.package_name }}.kaggle import submissions as kaggle_submissions
from test_leaderboard import COMPETITION, FakeKaggle, _Clock

from conftest import fake_experiment

quiet = lambda s: None  # noqa: E731


def _labels(n: int, error: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows of a 3-class problem, a share `error` of them predicted wrong (probability rows)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    label = np.where(rng.random(n) < error, (y + 1) % 3, y)
    return y, np.eye(3)[label] * 0.8 + 0.2 / 3


def test_cv_interval_contains_the_cv_and_narrows_with_more_rows():
    widths = []
    for n in (200, 3200):
        y, pred = _labels(n, 0.2, seed=n)
        iv = bootstrap.interval("accuracy", "multiclass", y, pred, draws=400, seed=0)
        assert iv.low < iv.score < iv.high and iv.rows == n
        assert iv.score == pytest.approx(np.mean(pred.argmax(1) == y))
        widths.append(iv.width)
    assert widths[1] < widths[0] / 2  # 16x the rows: about a quarter of the width
    public = bootstrap.interval("accuracy", "multiclass", y, pred, rows=300, draws=400, seed=0)
    assert public.width > 2 * widths[1] and public.contains(public.score)  # a public LB's few rows: wider


def test_paired_gap_reaches_zero_for_a_twin_and_not_for_a_much_worse_run():
    y, good = _labels(1000, 0.1, seed=1)
    _, bad = _labels(1000, 0.4, seed=2)
    assert bootstrap.paired_gap("accuracy", "multiclass", y, good, good, draws=200) == (0.0, 0.0)
    low, high = bootstrap.paired_gap("accuracy", "multiclass", y, good, bad, draws=200)
    assert 0 < low < high  # the good one leads beyond noise
    assert bootstrap.public_rows(1000, 0, 0.3) == 300 and bootstrap.public_rows(1000, 120, 0.3) == 120


@pytest.fixture
def project(tmp_path, new_project):
    cfg = new_project(tmp_path, images=False, size=8)
    return cfg, tmp_path / "configs" / "exp.yaml"


def test_lb_calls_a_tiny_gap_noise_and_a_planted_gap_beyond_noise(project, monkeypatch, capsys):
    cfg, config_file = project
    for i, noise in enumerate((1.4, 2.0)):
        fake_experiment(cfg, f"exp{i}", noise, seed=i)
        submit.make_submission(cfg, f"exp{i}", log=quiet)
    cvs = [Run.named(cfg.output_dir, f"exp{i}").read_decisions().cv for i in range(2)]
    public = {"exp0.csv": cvs[0] + 0.002, "exp1.csv": cvs[1] - 0.25}  # a tiny gap; a planted one
    fake = FakeKaggle(public)
    monkeypatch.setattr(kaggle_api, "_client", lambda: fake)
    monkeypatch.setattr(kaggle_submissions, "datetime", _Clock(fake))
    subs = Path(cfg.output_dir).parent / "submissions"
    for i in range(2):
        kaggle_api.submit(cfg, subs / f"exp{i}.csv", competition="c", log=quiet)
    capsys.readouterr()
    assert cli.main(["lb", "-c", str(config_file), COMPETITION, "lb.draws=300"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(subs / "cv_vs_lb.csv")
    assert table["verdict"].tolist() == ["noise", "beyond noise"]
    n_test = len(pd.read_csv(Path(cfg.data.dir) / "test.csv"))
    assert table["public_rows"].tolist() == [round(0.3 * n_test)] * 2
    for _, r in table.iterrows():
        assert r["cv_low"] < r["cv"] < r["cv_high"] and r["public_low"] < r["cv"] < r["public_high"]
        assert r["public_high"] - r["public_low"] > r["cv_high"] - r["cv_low"]  # fewer rows, wider
        assert r["gap"] == pytest.approx(r["public"] - r["cv"])
    assert "beyond noise" in out and "public by chance" in out


def _perturbed_copy(cfg, source: str, name: str, scale: float, seed: int) -> None:
    """`name`: `source`'s run folder with its test predictions nudged by `scale` (OOF and CV the same)."""
    src, dst = Path(cfg.output_dir) / source, Path(cfg.output_dir) / name
    shutil.copytree(src, dst)
    test = pd.read_csv(dst / "test_pred.csv", dtype={cfg.data.id_col: str})
    cols = [c for c in test.columns if c != cfg.data.id_col]
    rng = np.random.default_rng(seed)
    values = np.clip(test[cols].to_numpy() + scale * rng.standard_normal((len(test), len(cols))), 1e-6, None)
    test[cols] = values / values.sum(1, keepdims=True)
    test.to_csv(dst / "test_pred.csv", index=False)


def test_final_two_is_the_best_cv_and_the_most_different_run_within_its_noise(project, capsys):
    cfg, config_file = project
    fake_experiment(cfg, "best", 1.4, seed=0)
    fake_experiment(cfg, "hedge", 1.45, seed=3)  # as good, its own errors: within noise, other predictions
    _perturbed_copy(cfg, "best", "twin", 0.01, seed=1)  # within noise, nearly the best's predictions
    fake_experiment(cfg, "weak", 8.0, seed=4)  # the most different of all, but beyond noise
    preds = {n: lb_sense.load_run(cfg, n) for n in ("best", "hedge", "weak")}
    assert preds["best"].cv >= preds["hedge"].cv > preds["weak"].cv  # the planted order
    capsys.readouterr()
    assert cli.main(["final-two", "-c", str(config_file), "lb.draws=300"]) == 0
    out = capsys.readouterr().out
    record = read_final_two(Path(cfg.output_dir).parent / "submissions")
    assert record.best == "best" and record.hedge == "hedge"
    rows = {r["name"]: r for r in record.candidates}
    assert rows["twin"]["within_noise"] and rows["hedge"]["within_noise"] and not rows["weak"]["within_noise"]
    assert rows["weak"]["test_correlation"] < rows["hedge"]["test_correlation"] < rows["twin"]["test_correlation"]
    assert "final 1: best" in out and "final 2: hedge" in out
    saved = json.loads((Path(cfg.output_dir).parent / "submissions" / "final_two.json").read_text())
    assert saved["best"] == "best"
    assert (
        cli.main(["final-two", "-c", str(config_file), "--exps", "best", "weak", "lb.draws=300"]) == 0
    )  # none within noise
    assert read_final_two(Path(cfg.output_dir).parent / "submissions").hedge == "weak"
