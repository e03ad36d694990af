"""Helpers shared by the template's tests: real cookiecutter renders (each rendered once per session), the answers a
render should hold, and subprocesses that run inside a render with the venv's python."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "{{cookiecutter.project_slug}}"
HOOKS_DIR = ROOT / "hooks"
COOKIECUTTER_JSON: dict[str, Any] = json.loads((ROOT / "cookiecutter.json").read_text(encoding="utf-8"))
PROMPTS = [k for k in COOKIECUTTER_JSON if not k.startswith("_")]
TASKS: list[str] = COOKIECUTTER_JSON["task"]
METRICS: list[str] = COOKIECUTTER_JSON["metric"]
DEFAULT_METRIC: dict[str, str] = COOKIECUTTER_JSON["_default_metric"]
# Tool caches are never part of a template or a render (a stray one in the template folder would be rendered too).
CACHE_DIRS = {"__pycache__", ".ruff_cache", ".pytest_cache"}
YES, NO = {"1", "true", "t", "yes", "y", "on"}, {"0", "false", "f", "no", "n", "off"}
# What the generated project's conftest also sets: offline hub, no albumentations update check, no wandb upload.
PROJECT_ENV = {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline"}


def hook_metric_tasks() -> dict[str, set[str]]:
    """The METRIC_TASKS table of the pre-gen hook, read without running it (the file holds one Jinja expression,
    which happens to parse as Python: a set literal)."""
    tree = ast.parse((HOOKS_DIR / "pre_gen_project.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "METRIC_TASKS" for t in node.targets):
            return {k: set(v) for k, v in ast.literal_eval(node.value).items()}
    raise AssertionError("hooks/pre_gen_project.py has no METRIC_TASKS = {...} table")


def valid_pairs() -> list[tuple[str, str]]:
    """Every (task, metric) answer pair the hook accepts."""
    table = hook_metric_tasks()
    return [(t, m) for t in TASKS for m in METRICS if t in table.get(m, set())]


def invalid_pairs() -> list[tuple[str, str]]:
    ok = set(valid_pairs())
    return [(t, m) for t in TASKS for m in METRICS if (t, m) not in ok]


def as_bool(value: Any) -> bool:
    """How cookiecutter reads a yes/no answer given as a string on the command line (`use_wandb=no`)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in YES | NO:
        raise ValueError(f"not a yes/no answer: {value!r}")
    return text in YES


def kaggle_slug(name: str, max_length: int = 60) -> str:
    """A competition's URL slug from its title, as cookiecutter.json derives the default competition_id: lowercase
    ASCII (accents dropped after NFKD), every run of other characters one hyphen, none at either end, cut at a word
    boundary to `max_length`. (Written here without python-slugify, which the template uses, to check it.)"""
    unaccented = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    words = re.findall(r"[a-z0-9]+", unaccented.lower())
    slug = ""
    for word in words:
        if len(slug) + len(word) + bool(slug) > max_length:
            break
        slug = f"{slug}-{word}" if slug else word
    return slug


def package_of(slug: str) -> str:
    """The default package name of a project slug: hyphens and dots as underscores, a leading digit prefixed."""
    name = slug.replace("-", "_").replace(".", "_")
    return f"c_{name}" if name[:1].isdigit() else name


def expected_answers(extra_context: dict[str, Any]) -> dict[str, Any]:
    """The answers a --no-input render with `extra_context` must record, derived here independently of cookiecutter:
    first choice of each list, the derived defaults as cookiecutter.json documents them, then the overrides."""
    ctx = dict(extra_context)
    answers: dict[str, Any] = {}
    for key in PROMPTS:
        default = COOKIECUTTER_JSON[key]
        if key in ctx:
            value = ctx[key]
            answers[key] = as_bool(value) if isinstance(default, bool) else str(value)
        elif isinstance(default, list):
            answers[key] = default[0]
        elif isinstance(default, bool) or "{{" not in default:
            answers[key] = default
    derived = {
        "competition_id": lambda a: kaggle_slug(a["competition_name"]),
        "project_slug": lambda a: a["competition_id"],
        "package_name": lambda a: package_of(a["project_slug"]),
        "wandb_project": lambda a: a["project_slug"],
    }
    for key in PROMPTS:  # in prompt order, as cookiecutter renders them
        if key not in answers:
            answers[key] = derived[key](answers)
    return answers


def effective_metric(answers: dict[str, Any]) -> str:
    return DEFAULT_METRIC[answers["task"]] if answers["metric"] == "auto" else answers["metric"]


def skip_caches(paths: Iterable[Path], base: Path) -> list[Path]:
    return [p for p in paths if not CACHE_DIRS & set(p.relative_to(base).parts)]


def rendered_files(project: Path) -> set[str]:
    """Every file of a render, as a posix path relative to it, caches left out."""
    return {p.relative_to(project).as_posix() for p in skip_caches(project.rglob("*"), project) if p.is_file()}


def write_cookiecutter_config(directory: Path) -> Path:
    """A cookiecutter user config that keeps clones and replay files in `directory`, never in the home folder."""
    config = {
        "cookiecutters_dir": str(directory / "cookiecutters"),
        "replay_dir": str(directory / "replay"),
        "default_context": {},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def render(template: str, output_dir: Path, extra_context: dict[str, Any], config_file: Path, **kwargs: Any) -> Path:
    """Render `template` (a folder or a git URL) non-interactively, as `cookiecutter --no-input` does."""
    output_dir.mkdir(parents=True, exist_ok=True)
    project = cookiecutter(
        template,
        no_input=True,
        extra_context=dict(extra_context),
        output_dir=str(output_dir),
        config_file=str(config_file),
        **kwargs,
    )
    return Path(project)


def python_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses in a render: offline, no bytecode written into the render, and none of the
    outer pytest's options (PYTEST_ADDOPTS would filter the generated suite too)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTEST_ADDOPTS", "PYTHONPATH"}}
    env.update(PROJECT_ENV, PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; empty elsewhere). torchrun puts its workers in their own sessions,
    so killing the process group alone would leave them running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    below = descendants(pid)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    for p in [pid, *below]:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


def run(
    args: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command in a render (`env`: added to python_env()); past `timeout` it is killed with everything it
    started, and the test fails."""
    pipe = subprocess.PIPE
    with subprocess.Popen(
        args, cwd=cwd, env=python_env(**(env or {})), stdout=pipe, stderr=pipe, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out, err = "", "(no output: a process that was not killed still holds the pipes)"
            pytest.fail(f"{' '.join(args)} ran past {timeout:.0f} s in {cwd}; killed it\n{out[-6000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def probe(project: Path, code: str) -> Any:
    """Run `code` with the venv's python inside a render, its package importable from src/ (as the generated
    pyproject's pythonpath does), and return what it printed as JSON on its last line. `PKG` names the package."""
    package = json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))["cookiecutter"]["package_name"]
    prelude = f"import importlib, json, sys\nsys.path.insert(0, 'src')\nPKG = {package!r}\n"
    proc = run([sys.executable, "-c", prelude + code], cwd=project)
    assert proc.returncode == 0, f"probe failed in {project}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The e2e runs of renders (each generated suite, each `make demo`) take minutes where the other tests take seconds:
# under `pytest -n 2` they are collected first, so the workers start on them and the short tests fill in around them
# (collected last, the defaults' whole suite would start after everything else and double the wall time).
# the two halves of the defaults' e2e runs, then its unit tests
LONGEST = tuple(f"test_generated_test_suite_passes[defaults{part}]" for part in (",e2e_a", ",e2e_b", ""))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        if item.name in LONGEST:
            return LONGEST.index(item.name)
        return len(LONGEST) + (0 if item.get_closest_marker("e2e") else 1)

    items.sort(key=rank)  # stable: the order within each part stays


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cookiecutter_config(tmp_path_factory.mktemp("cookiecutter_user"))


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path) -> Callable[..., Path]:
    """`rendered(**answers)` -> the project folder of a render of the working-tree template with those answers.
    Each distinct set of answers is rendered once per session; tests must not write into a render."""
    cache: dict[tuple[tuple[str, str], ...], Path] = {}

    def get(**extra_context: Any) -> Path:
        key = tuple(sorted((k, repr(v)) for k, v in extra_context.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("render")
            cache[key] = render(str(ROOT), out, extra_context, cookiecutter_config)
        return cache[key]

    return get
