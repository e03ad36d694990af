"""Render from a git clone of this repository, as `cookiecutter gh:<org>/<repo>` does, and compare with a render of
the working tree: a template file that is not committed, or that a .gitignore hides (the generated project's own
.gitignore applies inside the template folder too), is missing from what users get.

Until the working tree is committed this fails, listing the files that a clone does not have."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import CACHE_DIRS, ROOT, render, rendered_files
from cookiecutter.exceptions import FailedHookException

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a git checkout of the template"
)
# The most files (every optional file kept), and the fewest (post-gen removes them: the hooks must be committed too).
CONTEXTS = {"all_options_on": {"use_wandb": True, "code_competition": True}, "all_options_off": {"use_wandb": False}}


def template_status() -> list[str]:
    """`git status` of what a clone must carry, caches left out."""
    paths = ["cookiecutter.json", "hooks", "{{cookiecutter.project_slug}}"]
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--ignored", "--", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [f"  {line}" for line in proc.stdout.splitlines() if not CACHE_DIRS & set(Path(line[3:]).parts)]
    return lines or ["  (nothing uncommitted)"]


def render_from_git(out: Path, extra_context: dict[str, Any], config_file: Path) -> tuple[set[str], str]:
    """Files of a render from `git+file://` at HEAD (cookiecutter clones it), and why it failed if it did."""
    try:
        project = render(f"git+file://{ROOT}", out, extra_context, config_file, checkout="HEAD")
    except Exception as e:  # no commit yet, or the committed template does not render
        return set(), f"rendering from git failed: {type(e).__name__}: {e}"
    return rendered_files(project), ""


@pytest.mark.parametrize("ctx", list(CONTEXTS.values()), ids=list(CONTEXTS))
def test_git_render_has_every_file_of_the_working_tree_render(tmp_path, cookiecutter_config, ctx):
    local = rendered_files(render(str(ROOT), tmp_path / "local", ctx, cookiecutter_config))
    from_git, error = render_from_git(tmp_path / "git", ctx, cookiecutter_config)
    missing, extra = sorted(local - from_git), sorted(from_git - local)
    lines = [error] if error else []
    if missing:
        lines.append(f"{len(missing)} rendered file(s) missing from a render of the git HEAD (not committed, or")
        lines.append("ignored by a .gitignore):")
        lines += [f"  {f}" for f in missing]
    if extra:
        lines.append("rendered only from git HEAD (deleted or changed in the working tree, or post-gen differs):")
        lines += [f"  {f}" for f in extra]
    if lines:
        lines += ["git status of the template's files (?? untracked, !! ignored):", *template_status()]
    assert not lines, "\n".join(lines)


def test_git_render_runs_the_committed_pre_gen_hook(tmp_path, cookiecutter_config):
    with pytest.raises(FailedHookException):
        render(f"git+file://{ROOT}", tmp_path, {"n_folds": "1"}, cookiecutter_config, checkout="HEAD")
