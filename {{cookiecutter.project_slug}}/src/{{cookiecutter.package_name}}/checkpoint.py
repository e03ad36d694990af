"""Checkpoints: `best.pt` holds the weights to predict with; `last.pt` everything needed to resume a fold exactly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artefacts import atomic_torch_save


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "loader": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["loader"])


def save_last(path: Path, **parts: Any) -> None:
    """`parts` holds objects with state_dict() (model, optimizer, ...) and plain values (epoch, history, ...)."""
    state = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in parts.items()}
    atomic_torch_save(path, state)


def load_last(path: Path, **stateful: Any) -> dict[str, Any]:
    """Load `last.pt` into the given objects; return the plain values."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    for name, obj in stateful.items():
        if obj is not None and state.get(name) is not None:
            obj.load_state_dict(state[name])
    return {k: v for k, v in state.items() if k not in stateful}


def load_best(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
