"""The pre-gen hook: each bad answer stops generation with FailedHookException, a one-line message on stdout that
names the prompt and the value, and nothing left in the output folder. Good unusual answers still render: free text
(competition name, author) with quotes, backslashes or markup characters is escaped into TOML, YAML and Markdown,
not refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, expected_answers, invalid_pairs
from cookiecutter.exceptions import FailedHookException
from markdown_it import MarkdownIt
from omegaconf import OmegaConf

FREE_TEXT = ("competition_name", "author")
NOT_ONE_LINE = ("", " ", "a\nb", "a\tb", "a\x1bb", "a\x7f", "a\x85b", "a\u2028b")  # empty, breaks, tabs, control chars
# (answers, the prompt the error must name, the value it must show). The value differs from the answer only where
# a derived prompt carries it: a competition name with a path in it becomes the competition id.
BAD: list[tuple[dict[str, Any], str, str]] = [
    *[({"package_name": v}, "package_name", v) for v in ("my-pkg", "1abc", "class", "MyPkg", "", "pkg.sub")],
    *[({"package_name": v}, "package_name", v) for v in ("torch", "timm", "json", "test", "os", "sklearn", "kaggle")],
    *[({"competition_id": v}, "competition_id", v) for v in ("My Comp", "a--b", "UPPER", "x/y", "-abc", "abc-", "")],
    *[({"n_folds": v}, "n_folds", v) for v in ("1", "21", "five", "0", "", "5.0", "-3")],
    *[({"image_size": v}, "image_size", v) for v in ("0", "100", "-8", "abc", "", "256px", "12.8")],
    # ASCII digits only: str.isdigit() is also true for these, which YAML would read as text and int() rejects.
    ({"image_size": "\u0662\u0665\u0666"}, "image_size", "\u0662\u0665\u0666"),
    ({"n_folds": "\u00b2"}, "n_folds", "\u00b2"),
    # Free text is escaped where it is rendered; only what one line of text cannot hold is refused. (A carriage return
    # is not among them: cookiecutter's Jinja turns it into a newline before the hook sees it.)
    *[({key: v}, key, v) for key in FREE_TEXT for v in NOT_ONE_LINE],
    # The default competition id is the name as a Kaggle slug: a name with no letter or digit leaves it empty, and
    # the error names it (competition_id must then be given).
    ({"competition_name": "!!!"}, "competition_id", ""),
    ({"competition_name": "\u2014 ? \u2014"}, "competition_id", ""),
    ({"project_slug": "My Repo"}, "project_slug", "My Repo"),
    *[({"backbone": v}, "backbone", v) for v in ("efficientnet b0", 'resnet"18', "res'net", "a/b", "")],
    *[({"wandb_project": v}, "wandb_project", v) for v in ("team/proj", "a b", "")],
]
GOOD: list[dict[str, Any]] = [
    {"competition_name": "I'm Something of a Painter Myself", "competition_id": "gan-getting-started"},
    {"competition_name": "HuBMAP + HPA - Hacking the Human Body", "competition_id": "hubmap-organ-segmentation"},
    # Punctuation, paths and quotes in the name become hyphens in the derived id.
    {"competition_name": 'Say "Hi"'},
    {"competition_name": "../Evil"},
    {"competition_name": "A/B"},
    {"author": "Jean-Luc O'Neil (team: 42%)"},
    {"package_name": "kaggle_pipe", "backbone": "convnext_tiny.fb_in22k", "wandb_project": "team.proj_x-1"},
    {"competition_id": "a1-b2-c3", "n_folds": "20", "image_size": "8"},
    {"n_folds": 3, "image_size": 224},  # ints, as a Python caller may pass them
    {"use_wandb": "no", "code_competition": "y"},  # strings, as typed on the command line
]
# One line of printable text, however it is punctuated, renders as typed: quotes, backslashes, shell and Markdown
# characters, non-ASCII letters, an emoji (beyond the BMP: JSON would write it as a surrogate pair, which TOML rejects).
FREE_TEXT_GOOD = [
    'Zoë O\'Brien "Bob"',
    "a\\b C:\\Users\\me\\",
    'say """hi""" \'\'\'',
    "a`b` $(rm -rf) ${HOME} a;b a|b",
    "<b>bold</b> &amp; *em* _u_ [l](http://x) ![i](y) ~~s~~ $x$",
    "C# #1 ##",
    "{x} {y}} 100%",
    "\u6f22\u5b57 \u0639\u0631\u0628\u064a \U0001f600 team",
]
# Regex-checked answers that YAML would read as something else than the text unless quoted (null, bool, hex int,
# float), and numbers with leading zeros (YAML 1.1 reads 010 as octal 8).
YAML_LOOKALIKES: dict[str, Any] = {
    "competition_id": "0x1f",
    "package_name": "on",
    "wandb_project": "null",
    "backbone": "1e3",
    "n_folds": "010",
    "image_size": "0256",
}


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


def markdown_heading(readme: str) -> str:
    """The text of the README's first heading as a Markdown renderer shows it; any markup inside it fails."""
    tokens = MarkdownIt("commonmark").enable(["strikethrough", "table"]).parse(readme)
    assert tokens[0].type == "heading_open" and tokens[0].tag == "h1", readme[:200]
    children = tokens[1].children or []
    assert [c.type for c in children] == ["text"], f"markup in the title: {[(c.type, c.content) for c in children]}"
    return children[0].content


@pytest.mark.parametrize("key", FREE_TEXT)
@pytest.mark.parametrize("value", FREE_TEXT_GOOD, ids=[repr(v) for v in FREE_TEXT_GOOD])
def test_free_text_renders_exactly_into_toml_yaml_and_markdown(cookies, key, value):
    tomllib = pytest.importorskip("tomllib")
    extra = {key: value, "competition_id": "my-comp"}
    result = bake(cookies, extra)
    assert result.exception is None, result.exception
    project = result.project_path
    answers = expected_answers(extra)
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["authors"] == [{"name": answers["author"]}]
    assert meta["description"] == f"{answers['competition_name']}: Kaggle image-competition pipeline"
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert markdown_heading(readme) == answers["competition_name"].strip()
    makefile = (project / "Makefile").read_text(encoding="utf-8")
    assert makefile.startswith(f"# {answers['competition_name']}: every stage of the pipeline")
    for path in sorted((project / "configs").glob("*.yaml")):
        assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), path.name
    assert yaml.safe_load((project / "configs" / "exp001.yaml").read_text(encoding="utf-8"))["competition"] == "my-comp"


def test_answers_yaml_would_misread_come_back_as_typed(cookies):
    result = bake(cookies, YAML_LOOKALIKES)
    assert result.exception is None, result.exception
    configs = result.project_path / "configs"
    # OmegaConf's loader is the one the generated config.load uses.
    exp001 = OmegaConf.to_container(OmegaConf.load(configs / "exp001.yaml"))
    assert exp001["competition"] == "0x1f"
    assert exp001["model"]["backbone"] == "1e3"
    assert exp001["wandb"]["project"] == "null"
    assert exp001["folds"]["n_folds"] == 10
    assert exp001["augment"]["image_size"] == 256
    demo = OmegaConf.to_container(OmegaConf.load(configs / "demo.yaml"))
    assert (demo["competition"], demo["folds"]["n_folds"], demo["wandb"]["project"]) == ("", 10, "null")  # no submit
    for name in ("demo_pseudo.yaml", "demo_distill.yaml"):  # the rest comes from demo.yaml through `base`
        assert OmegaConf.load(configs / name)["base"] == "demo.yaml"
    sweep = OmegaConf.to_container(OmegaConf.load(configs / "sweep.yaml"))
    assert sweep["command"][sweep["command"].index("-m") + 1] == "on"
