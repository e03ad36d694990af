"""CV against the leaderboard: every submit is logged, `lb` joins the log to Kaggle's submission history (the only
faked part: the client behind kaggle/api._client) and reports the correlation."""

import dataclasses
import enum
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wandb
from scipy.stats import pearsonr, rankdata, spearmanr

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }} import submission as submit
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import Run
from {{ cookiecutter.package_name }}.kaggle import api as kaggle_api
from {{ cookiecutter.package_name }}.kaggle import leaderboard
from {{ cookiecutter.package_name }}.kaggle import submissions as kaggle_submissions
from {{ cookiecutter.package_name }}.modeling import metrics

from conftest import fake_experiment

quiet = lambda s: None  # noqa: E731
COMPETITION = "competition=digit-recognizer"


class Status(enum.Enum):  # kaggle 2 reports the status as an enum
    COMPLETE = 1
    PENDING = 2


class Submission:
    """kaggle 2's ApiSubmission: snake_case fields, scores as strings ("" while not scored), naive UTC dates."""

    def __init__(self, ref, file_name, date, description, public_score, total_bytes, status=Status.COMPLETE):
        self.ref, self.file_name, self.date, self.description = ref, file_name, date, description
        self.public_score, self.private_score, self.total_bytes, self.status = public_score, "", total_bytes, status


class FakeKaggle:
    """Accepts submissions and lists them back, newest first, `page_size` at a time, with public scores from
    `public` (file name -> score; missing = still pending)."""

    def __init__(self, public: dict[str, float]):
        self.public, self.history, self.pages = public, [], []
        self.clock = datetime(2026, 11, 29, 12, 0, 0)

    def add(self, file_name: str, description: str, size: int) -> None:
        self.clock += timedelta(minutes=5)
        score = self.public.get(file_name)
        status = Status.COMPLETE if score is not None else Status.PENDING
        sub = Submission(len(self.history) + 1, file_name, self.clock, description,
                         "" if score is None else f"{score:.5f}", size, status)  # fmt: skip
        self.history.insert(0, sub)

    def competition_submit(self, file_name, message, competition):
        self.add(Path(file_name).name, message, Path(file_name).stat().st_size)
        return type("Response", (), {"message": "Successfully submitted"})()

    def competition_submissions(self, competition, page_number=1, page_size=20):
        self.pages.append(page_number)
        return self.history[(page_number - 1) * page_size : page_number * page_size]


@pytest.fixture
def project(tmp_path, new_project, monkeypatch):
    """A demo competition with five experiments of distinct CV (the best is exp3), each made into a submission file."""
    cfg = new_project(tmp_path, images=False, size=8)
    for i, noise in enumerate((3.0, 2.6, 2.0, 1.4, 2.3)):
        fake_experiment(cfg, f"exp{i}", noise, seed=i)
        submit.make_submission(cfg, f"exp{i}", log=quiet)
    return cfg, tmp_path / "configs" / "exp.yaml"


def test_submit_appends_to_the_log_and_lb_joins_it_to_kaggle(project, monkeypatch, capsys):
    cfg, config_file = project
    subs = Path(cfg.output_dir).parent / "submissions"
    public = {"exp0.csv": 0.899, "exp1.csv": 0.925, "exp2.csv": 0.941, "exp3.csv": 0.962}  # exp4 still pending
    fake = FakeKaggle(public)
    monkeypatch.setattr(kaggle_api, "_client", lambda: fake)
    monkeypatch.setattr(kaggle_submissions, "datetime", _Clock(fake))

    assert cli.main(["submit", "-c", str(config_file), str(subs / "exp0.csv"), "--dry-run", COMPETITION]) == 0
    assert not (subs / "log.csv").exists()  # a dry run sends nothing and logs nothing
    for i in range(5):
        assert cli.main(["submit", "-c", str(config_file), str(subs / f"exp{i}.csv"), COMPETITION]) == 0
    fake.add("blend_from_the_website.csv", "made elsewhere", 123)  # on Kaggle, not in the log

    log = pd.read_csv(subs / "log.csv", dtype=str)
    assert log["experiment"].tolist() == [f"exp{i}" for i in range(5)]
    cvs = [Run.named(cfg.output_dir, f"exp{i}").read_decisions().cv for i in range(5)]  # what each file holds
    assert log["cv"].astype(float).tolist() == pytest.approx(cvs, abs=1e-12)
    for _, row in log.iterrows():
        data = (subs / row["file"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and int(row["bytes"]) == len(data)
        assert row["message"] == f"{row['experiment']} CV accuracy={float(row['cv']):.5f}"
        assert datetime.fromisoformat(row["time"]).tzinfo is not None
    assert not list(subs.glob(".*.tmp"))

    capsys.readouterr()
    assert cli.main(["lb", "-c", str(config_file), COMPETITION]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(subs / "cv_vs_lb.csv")
    assert table["experiment"].tolist() == [f"exp{i}" for i in range(5)]
    expected_public = [public.get(f"exp{i}.csv", np.nan) for i in range(5)]
    np.testing.assert_allclose(table["public"], expected_public)
    assert table["rank_cv"].tolist() == rankdata([-c for c in cvs]).astype(int).tolist()  # accuracy: higher is better
    assert table["rank_lb"].iloc[:4].tolist() == [4, 3, 2, 1] and pd.isna(table["rank_lb"].iloc[4])
    cv, lb = cvs[:4], expected_public[:4]
    assert f"Pearson r = {pearsonr(cv, lb)[0]:.3f}" in out and f"Spearman rho = {spearmanr(cv, lb)[0]:.3f}" in out
    assert "exp3" in out and "0.96200" in out and "1 Kaggle submission(s) were not sent from here" in out
    assert (subs / "cv_vs_lb.png").read_bytes()[:4] == b"\x89PNG"


class _Clock:
    """datetime for kaggle/submissions.py whose now() is the fake Kaggle's clock (+ 2 s: the log is written after)."""

    def __init__(self, fake: FakeKaggle):
        self.fake = fake

    def now(self, tz=None):
        return (self.fake.clock + timedelta(seconds=2)).replace(tzinfo=timezone.utc)


def test_a_file_sent_twice_is_matched_by_its_message(project, monkeypatch):
    cfg, _ = project
    subs = Path(cfg.output_dir).parent / "submissions"
    fake = FakeKaggle({"exp1.csv": 0.9})
    monkeypatch.setattr(kaggle_api, "_client", lambda: fake)
    monkeypatch.setattr(kaggle_submissions, "datetime", _Clock(fake))
    kaggle_api.submit(cfg, subs / "exp1.csv", "first try", competition="c", log=quiet)
    fake.public["exp1.csv"] = 0.8  # the second submission of the same file scored differently (another split)
    kaggle_api.submit(cfg, subs / "exp1.csv", "second try", competition="c", log=quiet)
    table = leaderboard.join(leaderboard.read_log(cfg), kaggle_api.competition_submissions("c"))
    assert table["message"].tolist() == ["first try", "second try"] and table["public"].tolist() == [0.9, 0.8]
    assert table.attrs["unlogged"] == 0


def test_history_is_read_page_by_page(monkeypatch):
    fake = FakeKaggle({})
    for i in range(5):
        fake.add(f"f{i}.csv", f"m{i}", 10)
    monkeypatch.setattr(kaggle_api, "_client", lambda: fake)
    rows = kaggle_api.competition_submissions("c", page_size=2)
    assert [r["file_name"] for r in rows] == [f"f{i}.csv" for i in range(4, -1, -1)] and fake.pages == [1, 2, 3]
    assert rows[0]["status"] == "PENDING" and rows[0]["public_score"] is None
    assert rows[0]["date"].endswith("+00:00") and json.dumps(rows)  # plain values only


@pytest.mark.parametrize(("metric", "expected"), [("rmse", [2, 0, 1, 2]), ("accuracy", [1, 0, 3, 1])])
def test_ranks_follow_the_metric_direction(metric, expected):
    table = pd.DataFrame({"cv": [0.3, None, 0.1, 0.3], "public": ["0.2", "", None, "0.1"]})
    ranked = leaderboard.add_ranks(table, metrics.get_metric(metric))
    assert ranked["rank_cv"].fillna(0).tolist() == expected  # ties share the best rank; no score, no rank (0 here)
    assert ranked["rank_lb"].fillna(0).tolist() == ([2, 0, 0, 1] if metric == "rmse" else [1, 0, 0, 2])


def test_lb_needs_a_log_and_a_competition(project, monkeypatch):
    cfg, config_file = project
    monkeypatch.setattr(kaggle_api, "_client", lambda: FakeKaggle({}))
    assert cli.main(["lb", "-c", str(config_file)]) == 2  # no competition set
    with pytest.raises(UserError, match=r"log\.csv not found"):
        leaderboard.run_lb(dataclasses.replace(cfg, competition="c"), log=quiet)
    with pytest.raises(UserError, match="taken by"):
        submit.make_submission(cfg, "exp0", name="log", log=quiet)


def test_lb_summary_reaches_wandb(project, monkeypatch):
    cfg, config_file = project
    subs = Path(cfg.output_dir).parent / "submissions"
    fake = FakeKaggle({f"exp{i}.csv": 0.9 + i / 100 for i in range(3)})
    monkeypatch.setattr(kaggle_api, "_client", lambda: fake)
    monkeypatch.setattr(kaggle_submissions, "datetime", _Clock(fake))
    for i in range(3):
        kaggle_api.submit(cfg, subs / f"exp{i}.csv", competition="c", log=quiet)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert cli.main(["lb", "-c", str(config_file), COMPETITION]) == 0
    wandb.teardown()  # the offline run file is written by wandb's service process: flushed when it stops
    runs = sorted((Path(cfg.output_dir) / "exp" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    record = runs[0].read_bytes()
    for key in (b"lb_pearson", b"lb_spearman", b"cv_vs_lb"):
        assert key in record, key
