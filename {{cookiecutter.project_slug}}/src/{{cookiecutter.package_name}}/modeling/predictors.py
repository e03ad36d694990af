"""A fold model behind one interface, whatever runs it: `predictor(x) -> logits` on a normalised NCHW batch.

    TorchPredictor   an nn.Module (or a TorchScript module) on a torch device, under the run's autocast
    OnnxPredictor    an ONNX file in an onnxruntime session (fp32 or int8), fed through numpy

Prediction (`predict.predict_loader`: TTA views, merging), export's checks and `predict --estimate` only ever
call a predictor, so a runtime is added here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError
from ..core.runtime import autocast
from ..core.tasks import TargetScale

RUNTIMES = ("torch", "onnx")  # config key predict.runtime
ONNX_MODELS = ("fp32", "int8")  # config key predict.onnx_model


class Predictor:
    """Logits (float32, on `device`) for a batch already on `device`; `where` names what runs it."""

    device: torch.device = torch.device("cpu")
    where: str = "cpu"
    scale: TargetScale | None = None  # regression: the fold's target scale, which turns outputs into values

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchPredictor(Predictor):
    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> None:
        self.model, self.device, self.dtype = model.to(device).eval(), device, dtype
        self.where = f"torch on {device}" + (f" ({dtype})" if dtype else "")

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.model(x).float()


def onnx_session(path: Path, device: torch.device):  # -> onnxruntime.InferenceSession
    """A session on `path`: CUDA when the device is a GPU and this onnxruntime build has it, else CPU, with as many
    threads as torch uses (one thread per core contends on a shared machine: core/runtime.plan_cpu)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(
            "onnxruntime is not installed: pip install onnxruntime (or set predict.runtime=torch)"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the CPU provider's notes about unused GPUs are noise here
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for a missing or corrupt file
        raise UserError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]}); export again") from None


class OnnxPredictor(Predictor):
    """Batches go in through numpy (the views are applied beforehand, in torch); logits come back on the CPU."""

    def __init__(self, path: Path, device: torch.device | None = None) -> None:
        self.path, self.session = Path(path), onnx_session(path, device or torch.device("cpu"))
        self.where = f"onnxruntime {self.session.get_providers()[0]}"
        node = self.session.get_inputs()[0]
        self.input, self.shape = node.name, list(node.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fixed = [(i, d) for i, d in enumerate(self.shape) if isinstance(d, int) and i > 0]
        if len(self.shape) != x.ndim or any(x.shape[i] != d for i, d in fixed):
            raise UserError(
                f"{self.path} takes images of shape {self.shape}, got {list(x.shape)}: a TTA view that resizes "
                "(scale_*) needs a model exported with export.dynamic_size=true"
            )
        out = self.session.run(None, {self.input: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)
