"""Render the template for every answer that changes what is generated, and check each render.

Cheap checks run on every render of CASES: no Jinja left, the answers recorded in .cookiecutter.json, the rendered
file set (template files minus the optional ones post-gen removes), configs/exp001.yaml through the generated
package's own config loader, pyproject/Makefile sanity, `ruff check` and `ruff format --check` with the render's
own ruff config. The product of task x metric is rendered in full and each exp001.yaml loaded.

The generated project's own test suite runs on SUITE_CASES only: the renders whose code paths differ. Python in the
template has no Jinja except the package name in test imports, so what can change the suite's outcome is the package
name, the task/metric/n_folds rendered into configs/*.yaml (the generated tests load the shipped configs), and the
optional files (notebook, sweep) being there or not. Each of those is varied in some suite render, combined rather
than one by one to keep `make test` within its 15-minute budget on 2 cores:
- the whole suite, its own e2e runs included: the defaults (as three items: the unit tests, and the e2e runs of
  every other test file in each of two halves, so that both workers share it);
- a render with every other answer non-default that the e2e runs can see: its unit tests and the e2e runs that
  depend on the package's name (`python -m <package>` under torchrun, the offline notebook's import);
- the generated tests that read what the answers render (RENDERED: the shipped configs, README, Makefile, notebook,
  the package's name and layering), without their e2e runs: binary without wandb, multilabel without wandb with the
  code-competition files, segmentation. The rest of the suite writes its own configs and data and runs the same
  Jinja-free code in every render (~1,400 tests, ~2 min a render): the defaults' full run covers it. The generated
  e2e tests parametrise over every task themselves, so they do not read these answers either.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from conftest import (
    DEFAULT_METRIC,
    METRICS,
    PROMPTS,
    TASKS,
    TEMPLATE_DIR,
    effective_metric,
    expected_answers,
    hook_metric_tasks,
    probe,
    python_env,
    rendered_files,
    run,
    skip_caches,
    valid_pairs,
)

NAMES = {
    "competition_name": "Cassava Leaf Disease: it's back & #1 (2020)",
    "competition_id": "cassava-leaf-disease-2020",
    "package_name": "cassava",
    "author": "Jean-Luc O'Neil",
}
EXPLICIT_METRIC = {
    "multiclass": "map_at_3",
    "binary": "log_loss",
    "multilabel": "f1_macro",
    "regression": "mae",
    "segmentation": "miou",
}

# One answer varied at a time from the defaults, plus the 2x2 product of the two options that remove files.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    **{f"task={t}": {"task": t} for t in TASKS[1:]},
    **{f"task={t},metric={m}": {"task": t, "metric": m} for t, m in EXPLICIT_METRIC.items()},
    "no_wandb": {"use_wandb": False},
    "code_competition": {"code_competition": True},
    "no_wandb,code_competition": {"use_wandb": False, "code_competition": True},
    "cli_strings": {"use_wandb": "no", "code_competition": "yes"},  # as typed on the command line: key=no
    "names": NAMES,
    "competition_id": {"competition_id": "my-comp"},  # slug, package and wandb project derive from it
    "project_slug": {"project_slug": "cassava-v2"},  # package and wandb project derive from it
    "package_name": {"package_name": "kaggle_pipe"},
    "wandb_project": {"wandb_project": "team.proj_x-1"},
    "image_size=8": {"image_size": "8"},
    "image_size=384": {"image_size": "384"},
    "n_folds=2": {"n_folds": "2"},
    "n_folds=20": {"n_folds": "20"},
    "backbone": {"backbone": "convnext_tiny.fb_in22k"},
    "ints_from_python_api": {"n_folds": 3, "image_size": 224},
}
# The generated test files: the defaults' whole suite runs as three items that `pytest -n 2` hands to both workers (its
# unit tests, and its e2e runs split file by file in two halves), rather than one item of 15-20 min on one worker.
GENERATED_TESTS = sorted(p.name for p in (TEMPLATE_DIR / "tests").glob("test_*.py"))
E2E_HALVES = [["-m", "e2e", *(f"tests/{name}" for name in GENERATED_TESTS[i::2])] for i in (0, 1)]
UNIT = ["-m", "not e2e"]
# The generated test files whose outcome can depend on the answers: they read configs/*.yaml, README.md, the Makefile,
# the notebook (when the render has it) or the package's name; their e2e tests left out.
RENDER_READERS = ["test_config", "test_kaggle", "test_heads", "test_layering", "test_cli", "test_augment", "test_optim",
                  "test_notebook", "test_multinode"]  # fmt: skip
RENDERED = ["-m", "not e2e", "-k", " or ".join(RENDER_READERS)]
# All but the e2e runs, plus those whose outcome depends on the package's name: `python -m <package>` under
# torchrun, and the offline notebook importing the package from an upload (-k matches markers and test names).
NAMED = ["-k", "not e2e or torchrun or notebook"]
SUITE_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "defaults": ({}, UNIT),
    "defaults,e2e_a": ({}, E2E_HALVES[0]),
    "defaults,e2e_b": ({}, E2E_HALVES[1]),
    "regression,code_competition,names": (
        {
            "task": "regression",
            "metric": "mae",
            "code_competition": True,
            "n_folds": "3",
            "image_size": "128",
            "backbone": "resnet10t",
            **NAMES,
        },
        NAMED,
    ),
    "binary,no_wandb": ({"task": "binary", "use_wandb": False}, RENDERED),
    # its configs (exp001, demo: run-length encoded masks, the U-Net) under its suite; its demo in tests/test_demo.py
    "segmentation": ({"task": "segmentation"}, RENDERED),
    "multilabel,no_wandb,code_competition": (
        {"task": "multilabel", "use_wandb": False, "code_competition": True},
        RENDERED,
    ),
}
# A hung generated test (a distributed run waiting for a peer...) fails instead of blocking CI; the longest item
# (half of the defaults' e2e runs) takes well under it beside the other worker's tests under `make test` (pytest -n 2).
SUITE_TIMEOUT_S = 1700
# Files post-gen removes when their option is off, and the cases that vary those options.
OPTIONAL = {
    "notebooks": "code_competition",
    "tests/test_notebook.py": "code_competition",
    "configs/sweep.yaml": "use_wandb",
}
POST_GEN_CASES = ["defaults", "no_wandb", "code_competition", "no_wandb,code_competition", "cli_strings"]
JINJA_OPENERS = ("{{", "{%", "{#")
# In Python (and notebook cells), `}}` closes nested dict/set literals and `%}` ends an f-string percent format
# ({x:.1%}); an unrendered Jinja construct always leaves its opener, which is checked in every file.
JINJA_CLOSERS = ("}}", "%}", "#}")
PYTHON_SUFFIXES = {".py", ".ipynb"}
COOKIECUTTER_VAR = re.compile(r"\bcookiecutter\.\w")  # a template variable outside braces: a Jinja mistake

case_params = pytest.mark.parametrize("ctx", list(CASES.values()), ids=list(CASES))


def answers_of(project: Path) -> dict[str, Any]:
    return json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))["cookiecutter"]


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@case_params
def test_no_jinja_left(rendered, ctx):
    project = rendered(**ctx)
    leftovers = []
    for path in skip_caches(sorted(project.rglob("*")), project):
        rel = path.relative_to(project).as_posix()
        if any(t in rel for t in JINJA_OPENERS + JINJA_CLOSERS):
            leftovers.append(f"{rel}: Jinja in the file name")
        text = read_text(path) if path.is_file() else None
        if text is None:
            continue
        tokens = JINJA_OPENERS if path.suffix in PYTHON_SUFFIXES else JINJA_OPENERS + JINJA_CLOSERS
        for n, line in enumerate(text.splitlines(), 1):
            if any(t in line for t in tokens) or COOKIECUTTER_VAR.search(line):
                leftovers.append(f"{rel}:{n}: {line.strip()}")
    assert not leftovers, "unrendered Jinja:\n" + "\n".join(leftovers)


@case_params
def test_cookiecutter_json_holds_the_answers(rendered, ctx):
    project = rendered(**ctx)
    recorded = answers_of(project)
    expected = expected_answers(ctx)
    assert {k: recorded.get(k) for k in PROMPTS} == expected
    assert project.name == expected["project_slug"]
    assert (project / "src" / expected["package_name"] / "__init__.py").is_file()


def expected_files(answers: dict[str, Any]) -> set[str]:
    """The template's files with their names rendered, minus the optional files of options that are off."""
    files = set()
    for path in skip_caches(TEMPLATE_DIR.rglob("*"), TEMPLATE_DIR):
        if path.is_file():
            rel = path.relative_to(TEMPLATE_DIR).as_posix()
            files.add(jinja2.Template(rel).render(cookiecutter=answers))
    for optional, option in OPTIONAL.items():
        if not answers[option]:
            files = {f for f in files if f != optional and not f.startswith(optional + "/")}
    return files


@case_params
def test_rendered_files_are_the_template_minus_options_that_are_off(rendered, ctx):
    project = rendered(**ctx)
    answers = expected_answers(ctx)
    got, want = rendered_files(project), expected_files(answers)
    assert not want - got, f"template files missing from the render: {sorted(want - got)}"
    assert not got - want, f"files in the render that the template does not have: {sorted(got - want)}"


@pytest.mark.parametrize("ctx", [CASES[k] for k in POST_GEN_CASES], ids=POST_GEN_CASES)
@pytest.mark.parametrize("optional", list(OPTIONAL))
def test_post_gen_keeps_optional_files_only_when_their_option_is_on(rendered, ctx, optional):
    answers = expected_answers(ctx)
    present = (rendered(**ctx) / optional).exists()
    if not answers[OPTIONAL[optional]]:
        assert not present, f"{optional} should be removed when {OPTIONAL[optional]} is off"
        return
    if not (TEMPLATE_DIR / optional).exists():
        pytest.xfail(f"the template has no {optional} yet; this asserts it is kept once added")
    assert present, f"{optional} should be kept when {OPTIONAL[optional]} is on"


# Loads a render's configs/exp001.yaml with that render's own package (imported from its src/, as the generated
# pyproject's pythonpath does): one long-lived process serves every render of the session, one request per line
# (the project and its package name) and one JSON answer per line, so torch and timm are imported once, not once per
# render (60 renders x ~10 s of imports was a third of `make test`). Each request drops the previous render's
# modules, so each render's config is loaded by its own code.
EXP001_LOADER = """
import contextlib, importlib, json, os, sys
previous = None
for request in sys.stdin:
    project, package = json.loads(request)
    if previous is not None:
        sys.path.remove(previous)
        for name in [m for m in sys.modules if m == package or m.startswith(package + '.')]:
            del sys.modules[name]
    previous = os.path.join(project, 'src')
    sys.path.insert(0, previous)
    importlib.invalidate_caches()
    os.chdir(project)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            config = importlib.import_module(package + '.config')
            cfg = config.load('configs/exp001.yaml')
            answer = {
                'exp': cfg.exp, 'task': cfg.task, 'metric': cfg.metric, 'metric_name': config.metric_name(cfg),
                'competition': cfg.competition, 'data_dir': cfg.data.dir, 'folds_path': cfg.folds.path,
                'n_folds': cfg.folds.n_folds, 'image_size': cfg.augment.image_size, 'backbone': cfg.model.backbone,
                'wandb_mode': cfg.wandb.mode, 'wandb_project': cfg.wandb.project,
                'module': os.path.relpath(config.__file__, project),
            }
    except Exception as e:
        answer = {'error': f'{type(e).__name__}: {e}'}
    print(json.dumps(answer), flush=True)
"""


@pytest.fixture(scope="session")
def load_exp001(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], dict[str, Any]]]:
    """`load_exp001(project)` -> what the render's own config loader reads from its configs/exp001.yaml."""
    log = tmp_path_factory.mktemp("exp001_loader") / "stderr.txt"
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-c", EXP001_LOADER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, text=True, env=python_env())  # fmt: skip

        def load(project: Path) -> dict[str, Any]:
            package = json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps([str(project), package["cookiecutter"]["package_name"]]) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
            assert answer, f"the config loader process ended:\n{log.read_text(encoding='utf-8')[-3000:]}"
            return json.loads(answer)

        try:
            yield load
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=120)


def check_exp001(got: dict[str, Any], answers: dict[str, Any]) -> None:
    slug = answers["competition_id"]
    assert got == {
        "exp": "exp001",
        "task": answers["task"],
        "metric": effective_metric(answers),
        "metric_name": effective_metric(answers),
        "competition": slug,
        "data_dir": f"data/{slug}",
        "folds_path": f"data/{slug}/folds.csv",
        "n_folds": int(answers["n_folds"]),
        "image_size": int(answers["image_size"]),
        "backbone": answers["backbone"],
        "wandb_mode": "online" if answers["use_wandb"] else "disabled",
        "wandb_project": answers["wandb_project"],
        "module": f"src/{answers['package_name']}/config.py",  # the render's own code, not an earlier render's
    }


@case_params
def test_exp001_loads_with_the_generated_config_loader(rendered, load_exp001, ctx):
    check_exp001(load_exp001(rendered(**ctx)), expected_answers(ctx))


@pytest.mark.parametrize(("task", "metric"), valid_pairs(), ids=[f"{t}-{m}" for t, m in valid_pairs()])
def test_every_valid_task_metric_pair_renders_a_loadable_config(rendered, load_exp001, task, metric):
    ctx = {"task": task, "metric": metric}
    check_exp001(load_exp001(rendered(**ctx)), expected_answers(ctx))


@case_params
def test_pyproject_and_makefile_name_the_project(rendered, ctx):
    tomllib = pytest.importorskip("tomllib")
    project = rendered(**ctx)
    answers = expected_answers(ctx)
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["name"] == answers["project_slug"]
    assert meta["description"].startswith(answers["competition_name"])
    assert meta["authors"] == [{"name": answers["author"]}]
    assert meta["scripts"] == {answers["project_slug"]: f"{answers['package_name']}.cli:main"}
    makefile = (project / "Makefile").read_text(encoding="utf-8")
    assert re.search(rf"^PKG := {re.escape(answers['package_name'])}$", makefile, re.M)
    if shutil.which("make"):
        proc = run(["make", "--no-print-directory", "help"], cwd=project)
        assert proc.returncode == 0 and "train" in proc.stdout, proc.stdout + proc.stderr


@case_params
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean_in_the_render(rendered, ctx, command):
    project = rendered(**ctx)
    proc = run([sys.executable, "-m", "ruff", *command, "--no-cache", "."], cwd=project)
    assert proc.returncode == 0, f"ruff {' '.join(command)} in {project}:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"


@pytest.mark.e2e
@pytest.mark.parametrize(("ctx", "selection"), list(SUITE_CASES.values()), ids=list(SUITE_CASES))
def test_generated_test_suite_passes(rendered, ctx, selection, tmp_path):
    # A copy, so that what the suite writes (data, outputs, wandb runs) never reaches the renders other tests check.
    project = Path(shutil.copytree(rendered(**ctx), tmp_path / rendered(**ctx).name))
    # a test file named in the selection that post-gen removed for these answers (test_notebook.py) is left out
    selection = [a for a in selection if not a.startswith("tests/") or (project / a).is_file()]
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *selection]
    proc = run(command, cwd=project, timeout=SUITE_TIMEOUT_S)
    assert proc.returncode == 0, f"generated tests failed in {project}:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"


REGISTRY_PROBE = """
metrics = importlib.import_module(PKG + ".modeling.metrics")
config = importlib.import_module(PKG + ".config")
schema = importlib.import_module(PKG + ".core.schema")
offered = json.loads(sys.argv[1])
print(json.dumps({
    "tasks_of": {m: sorted(metrics.get_metric(m).tasks) for m in offered if m in metrics.list_metrics()},
    "listed": {t: sorted(set(metrics.list_metrics(t)) & set(offered)) for t in config.CHOICES["task"]},
    "all_tasks": list(config.TASKS),
    "default_metric": schema.DEFAULT_METRIC,
}))
"""


def test_hook_metric_table_matches_the_generated_metrics_registry(rendered):
    project = rendered()
    offered = [m for m in METRICS if m != "auto"]
    code = REGISTRY_PROBE.replace("sys.argv[1]", repr(json.dumps(offered)))
    got = probe(project, code)
    hook = hook_metric_tasks()
    assert set(hook) == set(METRICS), "the hook's METRIC_TASKS and cookiecutter.json's metric choices differ"
    assert sorted(got["all_tasks"]) == sorted(TASKS) == sorted(hook["auto"])
    assert got["default_metric"] == DEFAULT_METRIC, "cookiecutter.json _default_metric != core/schema.DEFAULT_METRIC"
    missing = [m for m in offered if m not in got["tasks_of"]]
    assert not missing, f"metrics offered by cookiecutter.json but not in the generated registry: {missing}"
    mismatch = {m: {"hook": sorted(hook[m]), "registry": got["tasks_of"][m]} for m in offered}
    mismatch = {m: v for m, v in mismatch.items() if v["hook"] != v["registry"]}
    assert not mismatch, f"hook METRIC_TASKS != metrics registry tasks: {mismatch}"
    for task in TASKS:
        assert got["listed"][task] == sorted(m for m in offered if task in hook[m]), task
        assert task in got["tasks_of"].get(DEFAULT_METRIC[task], []), f"default metric of {task} is not valid for it"


def test_cases_cover_every_prompt_and_choice():
    """The matrix must grow with cookiecutter.json: every prompt is varied in some case, every task and metric and
    both values of each yes/no answer are rendered."""
    varied = {k for ctx in CASES.values() for k in ctx}
    assert varied >= set(PROMPTS), sorted(set(PROMPTS) - varied)
    assert {t for t, _ in valid_pairs()} == set(TASKS)
    assert {m for _, m in valid_pairs()} == set(METRICS)
    for option in OPTIONAL.values():
        assert {expected_answers(ctx)[option] for ctx in CASES.values()} == {True, False}
    suite = [(expected_answers(ctx), selection) for ctx, selection in SUITE_CASES.values()]
    assert {a["task"] for a, _ in suite} == set(TASKS)
    for option in OPTIONAL.values():
        assert {a[option] for a, _ in suite} == {True, False}
    defaults = expected_answers({})
    # the e2e runs that depend on the package's name (python -m <package>, torchrun, the notebook) see another name
    assert any(a["package_name"] != defaults["package_name"] and sel == NAMED for a, sel in suite)
    assert any(a["code_competition"] and sel == NAMED for a, sel in suite)  # the notebook e2e runs
    # the defaults' three items together are its whole suite: every unit test, every test file's e2e runs
    whole = [sel for ctx, sel in SUITE_CASES.values() if ctx == {}]
    assert UNIT in whole and all(half in whole for half in E2E_HALVES)
    assert sorted(f for half in E2E_HALVES for f in half[2:]) == [f"tests/{name}" for name in GENERATED_TESTS]
