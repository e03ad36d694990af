"""Seed everything once per run; DataLoader workers get their own derived seeds."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed python, numpy, torch (CPU and CUDA); return a generator for DataLoader shuffling.

    `deterministic` trades speed for bit-exact reruns: cuDNN autotuning off, deterministic kernels on.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)  # affects subprocesses (workers spawned later), not this interpreter
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: torch already seeds each worker; carry that seed to numpy and random."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
