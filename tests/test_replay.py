"""The generated `.cookiecutter.json` is a cookiecutter replay file: `cookiecutter --replay-file
<render>/.cookiecutter.json <template>` renders the very same project again (file tree, contents and modes), and the
file holds the answers only, nothing about the machine that rendered it."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, python_env, rendered_files, write_cookiecutter_config

# Non-default answers of every kind: free text with an accent, choices, yes/no as typed, numbers as text.
ANSWERS = {
    "competition_name": "Corporación Favorita Grocery Sales Forecasting",
    "task": "multilabel",
    "metric": "f1_macro",
    "use_wandb": "no",
    "code_competition": "yes",
    "n_folds": "3",
    "image_size": "128",
}
MACHINE_KEYS = {"_template", "_output_dir", "_repo_dir", "_checkout"}


def cookiecutter_cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """The cookiecutter command line, with a home folder and user config of its own (replays and clones stay there)."""
    home.mkdir(parents=True, exist_ok=True)
    config = write_cookiecutter_config(home)
    env = python_env(HOME=str(home))
    env.pop("COOKIECUTTER_CONFIG", None)
    command = [sys.executable, "-m", "cookiecutter", "--config-file", str(config), *args]
    return subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, timeout=300, check=False)


def tree(project: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a render: its bytes and its permission bits."""
    return {
        rel: ((project / rel).read_bytes(), stat.S_IMODE((project / rel).stat().st_mode))
        for rel in sorted(rendered_files(project))
    }


def test_replay_file_renders_the_same_project(tmp_path):
    first_out, second_out = tmp_path / "first", tmp_path / "second"
    answers = [f"{k}={v}" for k, v in ANSWERS.items()]
    done = cookiecutter_cli(["--no-input", "-o", str(first_out), str(ROOT), *answers], tmp_path / "home1")
    assert done.returncode == 0, done.stdout + done.stderr
    (first,) = first_out.iterdir()
    replay = first / ".cookiecutter.json"

    recorded = json.loads(replay.read_text(encoding="utf-8"))
    assert set(recorded) == {"cookiecutter"}, "cookiecutter --replay-file wants {'cookiecutter': {...answers...}}"
    context = recorded["cookiecutter"]
    assert not MACHINE_KEYS & set(context), sorted(MACHINE_KEYS & set(context))
    assert context["task"] == "multilabel" and context["use_wandb"] is False and context["code_competition"] is True
    assert context["competition_id"] == "corporacion-favorita-grocery-sales-forecasting"

    # Another machine, another folder: from a copy of the replay file elsewhere, into another output folder.
    copy = tmp_path / "elsewhere" / "answers.json"
    copy.parent.mkdir()
    copy.write_bytes(replay.read_bytes())
    done = cookiecutter_cli(["--replay-file", str(copy), "-o", str(second_out), str(ROOT)], tmp_path / "home2")
    assert done.returncode == 0, done.stdout + done.stderr
    (second,) = second_out.iterdir()
    assert second.name == first.name
    a, b = tree(first), tree(second)
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    differ = [rel for rel in a if a[rel] != b[rel]]
    assert not differ, f"files that differ between the render and its replay: {differ}"


def test_no_file_of_a_render_names_the_machine_that_rendered_it(rendered):
    project = rendered()
    paths = {str(project.parent), str(ROOT)}  # the output folder, the template's clone or folder
    found = []
    for rel in sorted(rendered_files(project)):
        text = (project / rel).read_bytes().decode("utf-8", errors="replace")
        found += [f"{rel}: {p}" for p in paths if p in text]
    assert not found, found
