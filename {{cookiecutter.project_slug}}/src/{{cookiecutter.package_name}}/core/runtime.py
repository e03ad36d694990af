"""Where and how the math runs: seeding, device, threads and loader workers, memory format, mixed precision, and
torchrun's process group (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

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


def from_main(value: object) -> object:
    """Rank 0's `value` on every rank (itself in a single process): a decision that rank 0 alone takes (a fold's
    lock, whether a fold is finished) is then followed alike by every process."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank the same BatchNorm statistics, so that all ranks evaluate (and early-stop) alike: the mean
    over the ranks of their running statistics (each rank kept its own, from its share of every batch: DDP runs
    with broadcast_buffers=False), which for the running mean is what one process would have kept."""
    if dist.is_initialized():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer.data)
                buffer.data /= world_size()
            else:
                dist.broadcast(buffer.data, src=0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but no CUDA device is visible; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device={name!r} but {torch.cuda.device_count()} CUDA device(s) are visible; use device=auto")
    return device


def parse_device(name: str) -> torch.device:
    """A torch device name ('cpu', 'cuda', 'cuda:1', 'mps'...), checked for its form only (config load)."""
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"config key 'device' is {name!r}; expected auto, cpu, cuda or cuda:<index>") from None


def available_cores() -> int:
    """Cores this process may use (its CPU affinity: a container's or `taskset`'s share, not the machine's count),
    divided among torchrun's processes on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


MAX_AUTO_WORKERS = 16  # more loader workers than this per process rarely feed a GPU faster


def plan_cpu(device: torch.device, threads: int | str = "auto", num_workers: int | str = "auto") -> tuple[int, int]:
    """(torch threads, loader workers), each 'auto' chosen from the cores so that together they do not oversubscribe
    them.

    cuda: the GPU computes, the cores decode and augment: every core but one is a loader worker (at most
          MAX_AUTO_WORKERS), and the training process keeps the cores the workers leave (at least one thread).
    cpu:  the model computes in the training process: a quarter of the cores decode (at least one, none on a
          single core), the training process takes the rest as torch threads. More threads than free cores do not run in
          parallel, they wait for each other: on a 2-core machine shared with another busy process, two torch
          threads trained ~12x slower than one (measured: 7.7 against 95 img/s).
    'auto' threads come from the cores alone, never from data.num_workers: CPU convolutions reduce in another order
    under another thread count, so a thread count that followed the workers would make the workers change the model.
    An explicit number wins; 'auto' workers take the cores the threads leave.
    """
    cores = available_cores()
    if device.type == "cuda":
        auto_workers = min(cores - 1, MAX_AUTO_WORKERS)
    else:
        auto_workers = 0 if cores == 1 else max(1, cores // 4)
    if threads == "auto":
        threads = max(1, cores - auto_workers)
    if num_workers == "auto":
        num_workers = min(auto_workers, max(0, cores - int(threads)))
    return int(threads), int(num_workers)


def set_threads(threads: int) -> None:
    """Torch's intra-op threads in this process (OpenCV's: data.images.make_loader)."""
    torch.set_num_threads(threads)


def compute_setup(device: str, threads: int | str = "auto", workers: int | str = "auto") -> tuple[torch.device, int]:
    """Resolve the device, set this process's threads (plan_cpu), and return the device and the loader workers."""
    dev = resolve_device(device)
    n_threads, n_workers = plan_cpu(dev, threads, workers)
    set_threads(n_threads)
    return dev, n_workers


def use_channels_last(setting: bool | str, device: torch.device) -> bool:
    """model.channels_last: 'auto' is on for CUDA (tensor cores read NHWC; measured 1.4-1.8x for convnets in
    bf16), off on CPU (no gain measured there); true / false force it."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


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


def per_rank_batch(batch_size: int) -> int:
    """`train.batch_size` is the global batch: under torchrun each of the N processes takes batch_size / N rows, so
    one process and N processes make the same number of optimizer updates per epoch at the same learning rate."""
    world = world_size()
    if batch_size % world:
        raise UserError(
            f"config key 'train.batch_size' is {batch_size}: under torchrun it is the global batch, split across "
            f"{world} processes; use a multiple of {world}"
        )
    return batch_size // world


def reduce_mean(value: float) -> float:
    """The mean of `value` over the ranks (itself in a single process)."""
    return reduce_sum(value) / world_size()


def reduce_sum(value: float) -> float:
    """The sum of `value` over the ranks (itself in a single process)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


class ShardedSampler(Sampler[int]):
    """Every rank draws the same order from `base` (seeded alike), then keeps its own stride of it: rank r takes
    positions r, r + N, r + 2N... So with a per-rank batch of B / N, batch b of the N ranks together holds exactly
    the rows of batch b of one process with batch B (positions bB .. bB + B - 1). `set_epoch` reaches `base`, whose
    order must depend on (seed, epoch) only."""

    def __init__(self, base: Sampler) -> None:
        super().__init__()
        if not callable(getattr(base, "set_epoch", None)):  # its order would not follow the epoch on resume
            raise TypeError(f"ShardedSampler needs a base sampler with set_epoch(epoch), got {type(base).__name__}")
        self.base = base
        self.rank, self.world = rank(), world_size()

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.base) // self.world  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)  # the same on every rank: the base order depends on (seed, epoch) only
        yield from order[self.rank : len(self) * self.world : self.world]


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


def git_state(path: str | Path | None = None) -> dict | None:
    """The git commit of the repository that holds `path` (default: this package's source, i.e. the code that runs)
    and whether the working tree differs from it: `{"commit": sha (None before the first commit), "dirty": changes to
    tracked files or files neither tracked nor ignored}`. None outside a git repository or where git cannot run
    (not installed, too slow); it never raises, so a missing git never stops a run."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # no outer repository's settings
        command = ["git", "-C", str(where), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False, env=env)

    try:
        inside = git("rev-parse", "--is-inside-work-tree")
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        head, status = git("rev-parse", "--verify", "--quiet", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    if status.returncode != 0:
        return None
    commit = head.stdout.strip() if head.returncode == 0 else ""
    return {"commit": commit or None, "dirty": bool(status.stdout)}
