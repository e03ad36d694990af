"""The generated project's requirements.lock holds the exact versions its tests ran with: every package `make setup`
installs, at the version this environment has (the one the template's tests run each render's suite in), agreeing
with the template's own pins and the generated pyproject's ranges; `make setup` installs with it, `make lock`
rewrites it, and pip resolves `make setup`'s install to exactly the locked versions."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run
from lockfile import LOCK, closure, project_requirements, read_lock
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")
PIP_FREEZE_SKIPS = {"pip", "setuptools", "wheel", "distribute"}  # what `pip freeze` leaves out unless --all
REFRESH = "run `make lock` at the template's root (python tests/lockfile.py) to lock what the tests now run with"


def test_lock_holds_every_package_setup_installs_at_the_tested_version():
    tested = {name: dist.version for name, dist in closure(project_requirements()).items()}
    locked = read_lock()
    assert sorted(set(tested) - set(locked)) == [], f"installed for the project but not locked; {REFRESH}"
    assert sorted(set(locked) - set(tested)) == [], f"locked but not needed by the project; {REFRESH}"
    differ = {name: (locked[name], tested[name]) for name in tested if locked[name] != tested[name]}
    assert not differ, f"(locked, tested) versions differ: {differ}; {REFRESH}"


def test_lock_agrees_with_the_template_pins_and_the_generated_ranges():
    locked = read_lock()
    root = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for req in map(Requirement, root):
        name, pins = canonicalize_name(req.name), [s.version for s in req.specifier if s.operator == "=="]
        if pins and name in locked:
            assert locked[name] == pins[0], f"{req}: the template pins {pins[0]}, the lock has {locked[name]}"
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name}, a dependency of the generated project, is not locked"
        assert req.specifier.contains(locked[name], prereleases=True), f"locked {locked[name]} is outside {req}"
    for name in ("torch", "torchvision"):  # installable from pip's index as CPU or CUDA builds alike
        assert "+" not in locked[name], locked[name]


def test_setup_installs_with_the_lock_and_make_lock_rewrites_it(rendered, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    project = Path(shutil.copytree(rendered(), tmp_path / "project"))
    assert read_lock(project / "requirements.lock") == read_lock(LOCK)
    dry = run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}"], cwd=project)
    installs = [line for line in dry.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert len(installs) == 2 and all("-c requirements.lock" in line for line in installs), dry.stdout
    unlocked = run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}", "LOCK="], cwd=project)
    assert "-c " not in unlocked.stdout, unlocked.stdout

    done = run(["make", "lock", f"PY={sys.executable}"], cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    frozen = read_lock(project / "requirements.lock")  # pins only: no URL, no editable, no build tag
    assert "digit-recognizer" not in frozen
    tested = {name: d.version for name, d in closure(project_requirements()).items() if name not in PIP_FREEZE_SKIPS}
    assert {name: frozen.get(name) for name in tested} == tested
    assert not list(project.glob("requirements.lock.*")), "make lock left a temporary file"


@pytest.mark.e2e
def test_pip_resolves_setup_to_exactly_the_locked_versions(rendered, tmp_path):
    """`make setup`'s install as pip resolves it on a fresh environment (--ignore-installed; a dry run: nothing is
    installed), from whatever index pip is configured with: every package at its locked version, none besides. In a
    copy: pip's editable build writes its metadata (src/*.egg-info) into the project, which other tests read."""
    project = Path(shutil.copytree(rendered(), tmp_path / "project"))
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report", str(report),
               "-c", "requirements.lock", "-e", ".[dev]"]  # fmt: skip
    done = run(command, cwd=project, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resolved = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text(encoding="utf-8"))["install"]
    }
    resolved.pop("digit-recognizer")
    assert resolved == read_lock(LOCK)
