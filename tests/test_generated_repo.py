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


SWEEP_PROBE = """
import os
import yaml
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps import utils as sweep_utils

cli = importlib.import_module(PKG + ".cli")
sweep = yaml.safe_load(open("configs/sweep.yaml", encoding="utf-8"))
params = sweep["parameters"]
# One trial: the top of every range (a value wandb could send).
trial = {key: p["max"] if "max" in p else p["values"][-1] for key, p in params.items()}
# The command as wandb's agent builds it (wandb_agent.Agent._command_run): macros first, then each ${...} element
# replaced by its list; WANDB_RUN_ID is set in the trial's environment.
sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in trial.items()}})
sweep_vars.update(env=["/usr/bin/env"], interpreter=["python"], program=[""])
command = []
for c in sweep_utils.create_sweep_command([str(c) for c in sweep["command"]]):
    command += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
argv = command[command.index("-m") + 2 :]
trials = {}
for run_id in ("abc12345", "xyz67890"):
    os.environ["WANDB_RUN_ID"] = run_id
    args = cli.parse(argv)
    cfg = cli.config_of(args)
    node = OmegaConf.structured(cfg)
    trials[run_id] = {"command": args.command, "fold": args.fold, "exp": cfg.exp, "run": str(cfg.run.path),
                      "values": {k: OmegaConf.select(node, k) for k in trial}}
exp001 = OmegaConf.structured(cli.config_of(cli.parse(["train", "-c", "configs/exp001.yaml"])))
print(json.dumps({"params": params, "trial": trial, "trials": trials, "module": command[command.index("-m") + 1],
                  "defaults": {k: OmegaConf.select(exp001, k) for k in params}}))
"""


def test_sweep_trials_search_around_the_defaults_each_in_its_own_folder(rendered):
    got = probe(rendered(), SWEEP_PROBE)
    for key, param in got["params"].items():
        default = got["defaults"][key]
        if "values" in param:
            assert default in param["values"], f"{key}: the default {default} is not among {param['values']}"
        else:
            assert param["min"] < default < param["max"], f"{key}: the default {default} is outside {param}"
    a, b = got["trials"]["abc12345"], got["trials"]["xyz67890"]
    assert got["module"] == "digit_recognizer" and a["command"] == "train" and a["fold"] == "0"
    assert (a["exp"], b["exp"]) == ("sweep-abc12345", "sweep-xyz67890")
    assert a["run"] != b["run"] and a["run"].endswith("sweep-abc12345")
    assert a["values"] == b["values"] == got["trial"]  # every swept key reaches the config
