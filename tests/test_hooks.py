"""The pre-gen hook: each bad answer stops generation with FailedHookException, a one-line message on stdout that
names the prompt and the value, and nothing left in the output folder. Good unusual answers still render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, expected_answers, invalid_pairs
from cookiecutter.exceptions import FailedHookException

# (answers, the prompt the error must name, the value it must show). The value differs from the answer only where
# a derived prompt carries it: a competition name with a path in it becomes the competition id.
BAD: list[tuple[dict[str, Any], str, str]] = [
    *[({"package_name": v}, "package_name", v) for v in ("my-pkg", "1abc", "class", "MyPkg", "", "pkg.sub")],
    *[({"package_name": v}, "package_name", v) for v in ("torch", "timm", "json", "test", "os", "sklearn", "kaggle")],
    *[({"competition_id": v}, "competition_id", v) for v in ("My Comp", "a--b", "UPPER", "x/y", "-abc", "abc-", "")],
    *[({"n_folds": v}, "n_folds", v) for v in ("1", "21", "five", "0", "", "5.0", "-3")],
    *[({"image_size": v}, "image_size", v) for v in ("0", "100", "-8", "abc", "", "256px", "12.8")],
    *[({key: v}, key, v) for key in ("competition_name", "author") for v in ('a"b', "a\nb", "a`b`", "$(rm)")],
    *[({key: v}, key, v) for key in ("competition_name", "author") for v in ("a\\b", "a;b", "a|b", "<a>", "{x}", " ")],
    ({"competition_name": "../Evil"}, "competition_id", "../evil"),
    ({"competition_name": "A/B"}, "competition_id", "a/b"),
    ({"project_slug": "My Repo"}, "project_slug", "My Repo"),
    *[({"backbone": v}, "backbone", v) for v in ("efficientnet b0", 'resnet"18', "res'net", "a/b", "")],
    *[({"wandb_project": v}, "wandb_project", v) for v in ("team/proj", "a b", "")],
]
GOOD: list[dict[str, Any]] = [
    {"competition_name": "I'm Something of a Painter Myself", "competition_id": "gan-getting-started"},
    {"competition_name": "HuBMAP + HPA - Hacking the Human Body", "competition_id": "hubmap-organ-segmentation"},
    {"author": "Jean-Luc O'Neil (team: 42%)"},
    {"package_name": "kaggle_pipe", "backbone": "convnext_tiny.fb_in22k", "wandb_project": "team.proj_x-1"},
    {"competition_id": "a1-b2-c3", "n_folds": "20", "image_size": "8"},
    {"n_folds": 3, "image_size": 224},  # ints, as a Python caller may pass them
    {"use_wandb": "no", "code_competition": "y"},  # strings, as typed on the command line
]


def bake(cookies: Any, extra_context: dict[str, Any]) -> Any:
    return cookies.bake(extra_context=extra_context, template=str(ROOT))


def left_behind(tmp_path: Path) -> list[str]:
    """Everything in pytest-cookies' output folders besides the empty bakeNN folders it makes itself."""
    out = tmp_path / "cookies"
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.parent != out)


def assert_rejected(result: Any, capfd: pytest.CaptureFixture[str], tmp_path: Path, key: str, value: str) -> None:
    out = capfd.readouterr().out
    assert isinstance(result.exception, FailedHookException), result.exception
    assert result.exit_code != 0
    errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, f"expected one ERROR line, got:\n{out}"
    assert errors[0].startswith(f"ERROR: {key}={value!r} is not allowed: "), errors[0]
    assert not left_behind(tmp_path), f"left behind after a rejected answer: {left_behind(tmp_path)}"


@pytest.mark.parametrize(("extra", "key", "value"), BAD, ids=[f"{k}={v!r}" for _, k, v in BAD])
def test_bad_answer_is_rejected_naming_it(cookies, capfd, tmp_path, extra, key, value):
    assert_rejected(bake(cookies, extra), capfd, tmp_path, key, value)


@pytest.mark.parametrize(("task", "metric"), invalid_pairs(), ids=[f"{t}-{m}" for t, m in invalid_pairs()])
def test_metric_not_defined_for_the_task_is_rejected(cookies, capfd, tmp_path, task, metric):
    result = bake(cookies, {"task": task, "metric": metric})
    assert_rejected(result, capfd, tmp_path, "metric", metric)


def test_the_named_examples_are_among_the_invalid_pairs():
    assert {("multiclass", "rmse"), ("regression", "accuracy"), ("binary", "map_at_3")} <= set(invalid_pairs())


@pytest.mark.parametrize("extra", GOOD, ids=[",".join(f"{k}={v!r}" for k, v in g.items()) for g in GOOD])
def test_unusual_good_answers_render(cookies, extra):
    result = bake(cookies, extra)
    assert result.exception is None, result.exception
    assert result.exit_code == 0
    answers = expected_answers(extra)
    assert result.project_path.name == answers["project_slug"]
    assert (result.project_path / "src" / answers["package_name"] / "__init__.py").is_file()
    exp001 = (result.project_path / "configs" / "exp001.yaml").read_text(encoding="utf-8")
    assert f"\n  n_folds: {answers['n_folds']}\n" in exp001
    assert f"\n  image_size: {answers['image_size']}\n" in exp001
