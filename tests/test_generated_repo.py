"""The generated repository as a git repository and a set of files a user works with: what git ignores, the lock of the
tested versions, the sweep file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import probe

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

UPLOAD_DEST = """
import argparse
cli = importlib.import_module(PKG + ".cli")
parser = cli.build_parser()
sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
print(json.dumps(sub.choices["upload"].get_default("dest")))
"""


def git(project: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=True)
    return done.stdout


def test_gitignore_keeps_artefacts_and_the_upload_folder_out_and_the_code_in(rendered, tmp_path):
    project = Path(shutil.copytree(rendered(), tmp_path / "project"))
    upload = probe(project, UPLOAD_DEST)  # where `make upload` assembles the dataset: checkpoints included
    assert not Path(upload).is_absolute()
    written = {
        f"{upload}/exp001/fold0/best.pt": True,
        f"{upload}/src/pkg/train.py": True,
        f"{upload}/dataset-metadata.json": True,
        "outputs/exp001/fold0/last.pt": True,
        "submissions/exp001.csv": True,
        "wandb/offline-run-1/run.wandb": True,
        "data/digit-recognizer/train.csv": True,
        "data/digit-recognizer/train/a.png": True,
        "data/digit-recognizer/folds.csv": False,  # the folds are written once and shared: tracked
        "data/digit-recognizer/folds.json": False,
        "configs/exp002.yaml": False,
        "src/build/helper.py": False,  # only the top-level build/ is the upload folder
    }
    for rel in written:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x\n")
    git(project, "init", "-q")
    ignored = set(git(project, "ls-files", "--others", "--ignored", "--exclude-standard").splitlines())
    wrong = {rel: should for rel, should in written.items() if (rel in ignored) != should}
    assert not wrong, f"ignored (True) or tracked (False) the wrong way round: {wrong}"
    tracked = set(git(project, "ls-files", "--others", "--exclude-standard").splitlines())
    assert {"Makefile", "README.md", ".cookiecutter.json", "configs/exp001.yaml"} <= tracked
