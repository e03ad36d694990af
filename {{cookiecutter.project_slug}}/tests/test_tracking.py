"""core/tracking.py without a wandb run: what a cv.json record puts into a summary, and the id a fold's run keeps
across resumes (the offline runs themselves: test_e2e.py, test_ensemble.py, test_export.py, test_leaderboard.py)."""

from types import SimpleNamespace

from {{ cookiecutter.package_name }}.core import tracking


def test_score_summary_takes_every_cv_variant_and_nothing_else():
    result = {
        "exp": "exp", "metric": "qwk", "higher_is_better": True, "complete": True, "partial": False,
        "cv": 0.71, "cv_tta": 0.72, "cv_ordinal": 0.75, "cv_threshold": 0.74,  # cv_threshold: a CV added later
        "cv_nested": None, "tta_views": ["identity", "vflip"],
        "weight_averaging": {"best": 0.70, "swa": 0.73, "folds": {"0": {"best": 0.7}}, "picked": {"0": "best"}},
        "folds": {"0": 0.69, "1": 0.73},
    }  # fmt: skip
    assert tracking.score_summary(result) == {
        "cv": 0.71, "cv_tta": 0.72, "cv_ordinal": 0.75, "cv_threshold": 0.74,
        "weight_averaging/best": 0.70, "weight_averaging/swa": 0.73, "fold0": 0.69, "fold1": 0.73,
    }  # fmt: skip


def test_a_fold_keeps_its_run_id_while_it_resumes(tmp_path):
    cfg = SimpleNamespace(exp="exp001", run_dir=tmp_path / "exp001")
    id_file = tmp_path / "exp001" / "fold0" / "wandb_run_id.txt"
    first = tracking.kept_run_id(cfg, "fold0", id_file, resume=False)
    assert id_file.read_text() == first and first.startswith("exp001-fold0-") and len(first) <= 64
    assert tracking.kept_run_id(cfg, "fold0", id_file, resume=True) == first  # a resume continues it
    again = tracking.kept_run_id(cfg, "fold0", id_file, resume=False)  # trained from scratch: a new run
    assert again != first and id_file.read_text() == again
    id_file.unlink()
    assert tracking.kept_run_id(cfg, "fold0", id_file, resume=True) not in (first, again)  # nothing kept: a new one
