"""Each run records the git commit of the code it trained with, and whether the working tree was dirty: git.json
beside the run's config.yaml, per fold. Outside a git repository, or without git, it records nulls and never fails."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }}.core.runs import Run, record_git
from {{ cookiecutter.package_name }}.core.runtime import git_state

from conftest import TINY, make_project

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
PKG_DIR = Path(cli.__file__).parent


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_git_state_of_a_folder(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    assert git_state(repo / "src") is None  # not in a repository (tmp_path lies outside any)
    git(repo, "init", "-q")
    (repo / "src" / "a.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("outputs/\n")
    assert git_state(repo / "src") == {"commit": None, "dirty": True}  # nothing committed yet
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    sha = git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "src") == {"commit": sha, "dirty": False}
    (repo / "outputs").mkdir()
    (repo / "outputs" / "best.pt").write_bytes(b"ignored")  # what git ignores leaves the tree clean
    assert git_state(repo / "src") == {"commit": sha, "dirty": False}
    (repo / "src" / "a.py").write_text("x = 2\n")
    assert git_state(repo) == {"commit": sha, "dirty": True}
    assert git_state(tmp_path / "missing") is None  # never raises


def test_record_git_keeps_each_folds_state(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    first = git(repo, "rev-parse", "HEAD")
    run = Run(tmp_path / "outputs" / "exp")
    record_git(run, 1, repo)
    (repo / "a.py").write_text("x = 2\n")
    git(repo, "commit", "-q", "-am", "second")
    second = git(repo, "rev-parse", "HEAD")
    (repo / "b.py").write_text("new\n")
    record_git(run, 0, repo)
    got = json.loads(run.git.read_text())
    assert got == {
        "commit": second,
        "dirty": True,
        "folds": {"0": {"commit": second, "dirty": True}, "1": {"commit": first, "dirty": False}},
    }
    record_git(run, 2, tmp_path / "elsewhere")  # outside a repository: nulls, the other folds kept
    got = json.loads(run.git.read_text())
    assert (got["commit"], got["dirty"], got["folds"]["2"]) == (None, None, {"commit": None, "dirty": None})
    assert list(got["folds"]) == ["0", "1", "2"]


@pytest.mark.e2e
def test_train_records_the_commit_of_the_code_it_ran(tmp_path):
    # The package's source in a repository of its own, run from there as `make train` runs it.
    repo = tmp_path / "repo"
    shutil.copytree(PKG_DIR, repo / "src" / PKG_DIR.name, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "code")
    sha = git(repo, "rev-parse", "HEAD")
    make_project(tmp_path / "project", n_folds=2, extra=TINY)
    exp = tmp_path / "project" / "configs" / "exp.yaml"
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}

    def train(fold: int, *flags: str, **extra_env: str) -> None:
        cmd = [sys.executable, "-m", PKG_DIR.name, "train", "-c", str(exp), "--fold", str(fold), *flags]
        done = subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]

    train(0)
    with (repo / "src" / PKG_DIR.name / "train.py").open("a") as f:
        f.write("# an edit not committed\n")
    train(1, PATH=str(tmp_path / "no-git-here"))  # git not found: nulls, and the run goes on
    record = json.loads((tmp_path / "project" / "outputs" / "exp" / "git.json").read_text())
    assert record["folds"]["0"] == {"commit": sha, "dirty": False}
    assert record["folds"]["1"] == {"commit": None, "dirty": None}
    assert (tmp_path / "project" / "outputs" / "exp" / "config.yaml").is_file()
    train(1, "--force")  # again, git found: the edited tree
    record = json.loads((tmp_path / "project" / "outputs" / "exp" / "git.json").read_text())
    assert record["folds"]["1"] == {"commit": sha, "dirty": True} == {k: record[k] for k in ("commit", "dirty")}
