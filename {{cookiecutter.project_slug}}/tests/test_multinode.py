"""Past one machine: torchrun across two "nodes" (two launchers meeting through a c10d rendezvous on 127.0.0.1), the
Slurm scripts (their #SBATCH lines, and every command they run, dry-run and parsed by the real parsers), and
`train --fold all` as a work queue that several processes sharing the run folder take folds from."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch.distributed.run import get_args_parser

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.runs import Run, lock_holder

from conftest import SMALL, write_config

PKG = cli.__package__
SRC = str(Path(cli.__file__).parents[1])
PROJECT = Path(cli.__file__).parents[2]
SCRIPTS = PROJECT / "scripts"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


# --- Slurm: the scripts' directives and commands ----------------------------------------------------------------------


def directives(script: Path) -> dict[str, str]:
    """The #SBATCH lines of `script`: {"--array": "0-4", "--nodes": "2", ...}."""
    found = re.findall(r"^#SBATCH\s+(--[\w-]+)(?:=(\S+))?", script.read_text(), flags=re.M)
    return {key: value for key, value in found}


def dry_run(script: Path, args: list[str], slurm: dict[str, str], tmp_path: Path) -> list[list[str]]:
    """`script ARGS` with DRY_RUN=1 under the given SLURM_* variables, and a `scontrol` on PATH that names two
    hosts (srun and sbatch are not there: nothing may run them): each printed command, split as a shell would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\nprintf "gpu-a07\\ngpu-b11\\n"\n')
    scontrol.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environ.update(slurm, DRY_RUN="1", PY="python", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", str(script), *args], env=environ, capture_output=True, text=True, cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def package_command(words: list[str]) -> list[str]:
    """`python -m <package> ARGS...` -> ARGS, parsed by the package's own parser (an unknown command or flag exits)."""
    assert words[:3] == ["python", "-m", PKG], words
    cli.parse(words[3:])
    return words[3:]


def test_slurm_scripts_parse_and_their_commands_are_the_packages(tmp_path):
    for script in ("slurm_folds.sbatch", "slurm_multinode.sbatch"):
        done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    config_path = "configs/exp001.yaml"
    n_folds = config.load(PROJECT / config_path).folds.n_folds

    # The job array: one task per fold of the baseline config.
    folds = directives(SCRIPTS / "slurm_folds.sbatch")
    assert folds["--array"] == f"0-{n_folds - 1}" and folds["--ntasks"] == "1", folds
    array = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_COUNT": str(n_folds),
             "SLURM_JOB_NAME": "exp001-folds"}  # fmt: skip
    for task in range(n_folds):
        commands = dry_run(SCRIPTS / "slurm_folds.sbatch", [config_path, "train.epochs=3"],
                           {**array, "SLURM_ARRAY_TASK_ID": str(task)}, tmp_path)  # fmt: skip
        train = commands[-1]
        assert train[0] == "srun"
        argv = package_command(train[1:])
        assert argv == ["train", "-c", config_path, "--fold", str(task), "train.epochs=3"]
        # Task 0 alone submits the summary, to start once every task of the array has ended well.
        follow_up = commands[:-1]
        assert len(follow_up) == (task == 0)
        if follow_up:
            sbatch = follow_up[0]
            assert sbatch[0] == "sbatch" and "--dependency=afterok:4242" in sbatch
            wrap = next(w.removeprefix("--wrap=") for w in sbatch if w.startswith("--wrap="))
            steps = [package_command(shlex.split(step)) for step in wrap.split("&&")]
            assert [s[0] for s in steps] == ["cv", "predict"]
            assert all(s[1:] == ["-c", config_path, "train.epochs=3"] for s in steps)

    # Several nodes: one torchrun per node, meeting at the first host of the allocation.
    multi = directives(SCRIPTS / "slurm_multinode.sbatch")
    assert multi["--nodes"] == "2" and multi["--ntasks-per-node"] == "1", multi
    slurm = {"SLURM_JOB_NODELIST": "gpu-a07,gpu-b11", "SLURM_NNODES": "2", "SLURM_JOB_ID": "777",
             "SLURM_GPUS_ON_NODE": "4"}  # fmt: skip
    (launch,) = dry_run(SCRIPTS / "slurm_multinode.sbatch", [config_path, "--fold", "1"], slurm, tmp_path)
    assert launch[0] == "srun" and "--ntasks-per-node=1" in launch
    start = launch.index("python")
    assert launch[start + 1 : start + 3] == ["-m", "torch.distributed.run"]
    torchrun = get_args_parser().parse_args(launch[start + 3 :])  # torchrun's own parser
    assert (torchrun.nnodes, torchrun.nproc_per_node) == ("2", "4")
    assert torchrun.rdzv_backend == "c10d" and torchrun.rdzv_endpoint == "gpu-a07:29500"
    assert torchrun.rdzv_id == "777" and torchrun.module
    assert package_command(["python", "-m", torchrun.training_script, *torchrun.training_script_args]) == [
        "train", "-c", config_path, "--fold", "1"]  # fmt: skip


# --- two nodes on one machine against one process ---------------------------------------------------------------------

# test_vit normalises with LayerNorm (BatchNorm would normalise over each process's share of the batch); no random
# augmentation; full epochs: both runs see the same batches, and learn (the comparison is of trained models).
NODES = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(SMALL), OmegaConf.create("""
model: {backbone: test_vit}
augment: {preset: none}
optim: {lr: 0.01}
train: {epochs: 4, limit_batches: 0}
""")))  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_torchrun_on_two_nodes_through_a_c10d_rendezvous_matches_one_process(small_project):
    """Two torchrun launchers, each a "node" of one process, meet through a c10d rendezvous on 127.0.0.1 (as
    scripts/slurm_multinode.sbatch starts them on two machines) and train fold 0 with the global batch split in
    two (each takes half of every batch): as many optimizer updates as one process, the loss of the whole batch
    logged, and OOF probabilities within 0.01 of one process training the same fold (not identical: the gradients
    are summed in another order, and the rounding differences grow over the epochs)."""
    paths = {name: write_config(small_project, n_folds=2, extra=NODES, name=name) for name in ("one", "nodes")}
    assert cli.main(["train", "-c", str(paths["one"]), "--fold", "0"]) == 0

    endpoint, rdzv_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex
    launches = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", rdzv_id,
               "--rdzv_conf", f"is_host={int(node == 0)}",
               "-m", PKG, "train", "-c", str(paths["nodes"]), "--fold", "0"]  # fmt: skip
        launches.append(subprocess.Popen(cmd, env=env(), cwd=small_project, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in launches]  # a hang guard only
    for p, (_, err) in zip(launches, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    printed = "".join(out for out, _ in outputs)
    assert printed.count("fold 0 epoch 4/4") == 1  # one process (rank 0) reports, and writes

    one, nodes = (Run.named(small_project / "outputs", name).fold(0) for name in ("one", "nodes"))
    a, b = (pd.read_csv(f.oof, dtype={"id": str}).set_index("id").sort_index() for f in (one, nodes))
    cols = [c for c in a.columns if c != "fold"]
    folds = pd.read_csv(small_project / "data" / "folds.csv", dtype={"id": str})
    assert list(a.index) == list(b.index)
    gap = np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max()
    learnt = Run.named(small_project / "outputs", "one").read_cv().folds["0"]  # accuracy; chance: 0.1
    print(f"two nodes vs one process: OOF max abs difference {gap:.2e}, accuracy {learnt:.3f}")
    assert gap <= 0.01 and learnt > 0.25, (gap, learnt)
    assert sorted(b.index) == sorted(folds.loc[folds["fold"] == 0, "id"])  # every validation row, once
    updates = [torch.load(f.last, weights_only=True)["scheduler"]["last_epoch"] for f in (one, nodes)]
    assert updates[0] == updates[1] == 4 * ((folds["fold"] != 0).sum() // 16), updates
    losses = [[r["train_loss"] for r in json.loads(f.history.read_text())] for f in (one, nodes)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)  # the loss of the whole batch, as one process sees it


# --- a fold queue on a shared run folder ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_train_all_is_a_fold_queue_for_processes_that_share_the_run_folder(small_project):
    """Two processes run `train --fold all` on one experiment at once (two machines on a shared disk): each fold is
    trained once, by one of them; the other skips it (being trained, or already trained: whichever it met, the fold
    lock decides), waits for it, and both end with the complete CV. Holds whatever the interleaving."""
    path = write_config(small_project, n_folds=2, extra=SMALL, name="queue")
    cmd = [sys.executable, "-m", PKG, "train", "-c", str(path)]
    procs = [subprocess.Popen(cmd, env=env(), cwd=small_project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]  # a hang guard only
    assert [p.returncode for p in procs] == [0, 0], outputs
    host = socket.gethostname()
    for k in (0, 1):
        trained = [f"fold {k} epoch 1/1" in out for out in outputs]
        assert sum(out.count(f"fold {k} epoch 1/1") for out in outputs) == 1, outputs  # once, by one of them
        other = procs[trained.index(True)].pid
        skipped = outputs[trained.index(False)]
        assert (f"fold {k}: being trained by pid {other} on host {host}, skipped" in skipped
                or f"fold {k}: already trained" in skipped), skipped  # fmt: skip
    run = Run.named(small_project / "outputs", "queue")
    cv = run.read_cv()
    assert cv.complete and cv.folds_missing == [] and sorted(cv.folds) == ["0", "1"]
    for out in outputs:  # both summarised every fold
        assert "not finished" not in out
    holder = lock_holder(run.fold(0).lock.read_text())  # the last holder's pid and host
    assert holder in [f"pid {p.pid} on host {host}" for p in procs], holder
