"""Where and how the math runs: seeding, device, mixed precision, and torchrun's process group (gloo on CPU, nccl on
GPU)."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import UserError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init_distributed() -> None:
    """Join torchrun's process group once; a no-op when started as a plain process."""
    if world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics, so that all ranks evaluate (and early-stop) alike."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 where the GPU has it (no loss scaling needed), else fp16; off on CPU, where autocast is slower."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class ShardedSampler(Sampler[int]):
    """Every rank draws the same order from `base` (seeded alike), then keeps its own stride of it."""

    def __init__(self, base: Sampler, n_rows: int) -> None:
        super().__init__()
        self.base, self.n_rows = base, n_rows
        self.rank, self.world = rank(), world_size()

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) // self.world  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        order = list(self.base) if self.base is not None else torch.randperm(self.n_rows).tolist()
        return iter(order[self.rank : len(self) * self.world : self.world])


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
