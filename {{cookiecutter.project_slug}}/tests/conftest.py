"""Shared test set-up: everything offline, and small demo competitions written on demand."""

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from {{ cookiecutter.package_name }} import config, demo, folds  # noqa: E402

# Tiny tensors on a 2-core machine: threads cost more than they bring, and one thread keeps runs bit-exact.
torch.set_num_threads(1)

# A model and settings that train in seconds on a CPU: used by every end-to-end test.
TINY = """
model:
  backbone: test_resnet
  pretrained: false
  in_chans: 1
augment:
  image_size: 16
  preset: light
  hflip: false
train:
  epochs: 1
  batch_size: 32
  limit_batches: 4
  ema: false
data:
  num_workers: 0
"""


def write_config(root: Path, task: str = "multiclass", metric: str = "auto", n_folds: int = 3, extra: str = "",
                 name: str = "exp") -> Path:  # fmt: skip
    """A config for the demo competition in `root`/data, outputs in `root`/outputs. `extra` is appended YAML."""
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {
        "task": task,
        "metric": metric,
        "output_dir": str(root / "outputs"),
        "data": {"dir": str(root / "data")},
        "folds": {"n_folds": n_folds, "path": str(root / "data" / "folds.csv")},
    }
    OmegaConf.save(OmegaConf.merge(base, OmegaConf.create(extra or "{}")), path)
    return path


def make_project(root: Path, task: str = "multiclass", metric: str = "auto", n_folds: int = 3, images: bool = True,
                 size: int = 16, extra: str = "") -> config.Config:  # fmt: skip
    """The demo competition for `task` in `root`/data, its config, and folds.csv written by the folds module.
    `images=False` skips the PNGs (most of the writing time) for tests that never open an image."""
    with pytest.MonkeyPatch.context() as mp:
        if not images:
            mp.setattr(demo, "_to_png", lambda *args: None)
        demo.write_demo(root / "data", task, size=size)
    cfg = config.load(write_config(root, task, metric, n_folds, extra))
    folds.write_folds(cfg)
    return cfg


@pytest.fixture(scope="session")
def new_project():
    """`new_project(root, task, ...)` -> Config of a fresh demo competition (see make_project)."""
    return make_project
