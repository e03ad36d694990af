"""A trained model in the forms a deployment takes: TorchScript, ONNX, ONNX int8, and globally pruned weights.

Each function takes a model on the CPU in eval mode (or an ONNX file) and writes one file atomically; checking
that the result still predicts what the model did is the `export` stage's job.

- ONNX: torch.onnx.export with a dynamic batch axis (and, with `dynamic_size`, dynamic height and width, for TTA
  views that resize). exporter 'dynamo' is torch's default (torch.export, needs onnxscript); 'torchscript' is the
  older tracing exporter, deprecated by torch but quicker, and a fallback for a model torch.export cannot take.
- int8: onnxruntime's post-training static quantisation (QDQ format, int8 weights per channel, uint8
  activations) with ranges calibrated on batches of real training images.
- dynamic int8: onnxruntime's quantize_dynamic: int8 weights (per channel), activations quantised on the fly from
  each batch's own range (no calibration: nothing to go wrong on images unlike the training set, slower per image).
- quantisation-aware training (qat): BatchNorm folded into the convolutions (torch.fx), then fake quantisation
  (torch.ao.quantization.FakeQuantize: int8 symmetric per-channel weights, uint8 per-tensor activations at each
  conv/linear input, as onnxruntime's static int8 quantises them) during a short fine-tune, so the weights learn to
  live on the int8 grid; the fine-tuned model is then exported and quantised statically like onnx_int8.
- pruning: torch.nn.utils.prune.global_unstructured with L1 magnitude over every conv and linear weight: the
  smallest weights of the whole network are zeroed, so layers that matter less give up more.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from ..core.errors import UserError
from ..core.runs import atomic_write

EXPORTERS = ("dynamo", "torchscript")  # config key export.exporter
INPUT, OUTPUT = "image", "logits"  # the ONNX graph's input and output names


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """torch.jit.trace on `example` (timm CNNs have no data-dependent control flow, so a trace is the model).
    torch marks TorchScript deprecated in favour of torch.export; it still works, and runs without Python."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        return atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))


def load_torchscript(path: Path, device: torch.device) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice, as above
        return torch.jit.load(str(path), map_location=device).eval()


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, exporter: str = "dynamo", opset: int = 18,
    dynamic_size: bool = False,
) -> Path:  # fmt: skip
    """`model` as ONNX: input 'image' (N, C, H, W), output 'logits'; N is dynamic (H and W too with
    `dynamic_size`). One self-contained file: weights are not split off into external data."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    quiet = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")  # the tracing exporter's deprecation notice, shape-inference notes
            if exporter == "dynamo":
                dims = {i: torch.export.Dim.DYNAMIC for i in axes}
                program = torch.onnx.export(model, (example,), None, input_names=[INPUT], output_names=[OUTPUT],
                                            dynamic_shapes=(dims,), opset_version=opset, dynamo=True,
                                            external_data=False, verbose=False)  # fmt: skip
                data = program.model_proto.SerializeToString()
            else:
                buffer = io.BytesIO()
                torch.onnx.export(model, (example,), buffer, input_names=[INPUT], output_names=[OUTPUT],
                                  dynamic_axes={INPUT: axes, OUTPUT: {0: "batch"}}, opset_version=opset,
                                  dynamo=False)  # fmt: skip
                data = buffer.getvalue()
    except ImportError as e:
        raise UserError(f"ONNX export with exporter={exporter!r} needs {e.name}: pip install {e.name} "
                        "(or set export.exporter=torchscript)") from None  # fmt: skip
    except Exception as e:  # torch.export / the tracer refusing the model: name the way out
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise UserError(f"ONNX export of {type(model).__name__} failed with export.exporter={exporter} "
                        f"({type(e).__name__}: {first}); try export.exporter={other}") from e  # fmt: skip
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def quantize_int8(
    onnx_path: Path, path: Path, batches: Iterable[np.ndarray], per_channel: bool = True, dynamic_size: bool = False
) -> Path:
    """Static int8 quantisation of the ONNX model at `onnx_path`: activation ranges from `batches` (normalised
    float32 NCHW arrays of training images, never validation ones: the int8 model is scored on those).
    `dynamic_size` (a model exported with dynamic height and width): onnxruntime's symbolic shape inference stops
    there ("Incomplete symbolic shape inference"), so only ONNX's own shape inference runs before quantising."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    def write(tmp: str) -> None:
        prepared = Path(tmp).with_name(Path(tmp).name + ".pre.onnx")
        try:  # shape inference and graph fusions first: onnxruntime's advice, and more nodes get quantised
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=dynamic_size)
            quantize_static(str(prepared), tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)  # fmt: skip
        finally:
            prepared.unlink(missing_ok=True)

    return atomic_write(path, write)


def quantize_dynamic_int8(onnx_path: Path, path: Path, per_channel: bool = True, dynamic_size: bool = False) -> Path:
    """Dynamic int8 quantisation of the ONNX model at `onnx_path`: int8 weights, activation ranges computed per
    batch at run time (onnxruntime's ConvInteger / MatMulInteger), so no calibration images."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    def write(tmp: str) -> None:
        prepared = Path(tmp).with_name(Path(tmp).name + ".pre.onnx")
        try:
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=dynamic_size)
            quantize_dynamic(str(prepared), tmp, weight_type=QuantType.QInt8, per_channel=per_channel)
        finally:
            prepared.unlink(missing_ok=True)

    return atomic_write(path, write)


QUANTIZED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # the layers int8 quantisation rewrites


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """`model` (eval mode) with every BatchNorm that follows a convolution folded into it (torch.fx), as onnxruntime
    does before quantising: fake quantisation must see the weights that will be int8. A model torch.fx cannot
    trace is returned as it is (its BatchNorm is then folded only at export, after the fine-tune)."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval())
    except Exception as e:  # torch.fx's symbolic tracing refuses data-dependent Python control flow
        print(f"note: qat: BatchNorm not folded before fine-tuning ({type(e).__name__}: {str(e)[:120]})")
        return model


def prepare_qat(model: nn.Module) -> list:
    """Fake quantisation on `model` in place: each conv/linear weight through an int8 symmetric per-channel
    FakeQuantize (a parametrisation: the optimizer keeps updating the float weight, the forward pass sees it
    rounded; gradients pass straight through), each conv/linear input through a uint8 per-tensor one (moving
    min/max). Returns the handles `finish_qat` removes."""
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torch.nn.utils import parametrize

    hooks = []
    for layer in [m for m in model.modules() if isinstance(m, QUANTIZED)]:
        weight_fq = FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                                 dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)  # fmt: skip
        parametrize.register_parametrization(layer, "weight", weight_fq.to(layer.weight.device))
        act_fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                              qscheme=torch.per_tensor_affine).to(layer.weight.device)  # fmt: skip
        layer.add_module("input_fake_quant", act_fq)
        hooks.append(layer.register_forward_pre_hook(lambda m, args: (m.input_fake_quant(args[0]), *args[1:])))
    return hooks


def finish_qat(model: nn.Module, hooks: list) -> nn.Module:
    """The fine-tuned model as plain float layers again, its weights left on the int8 grid they were trained on."""
    from torch.nn.utils import parametrize

    for h in hooks:
        h.remove()
    for layer in [m for m in model.modules() if isinstance(m, QUANTIZED)]:
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        if hasattr(layer, "input_fake_quant"):
            del layer.input_fake_quant
    return model.eval()


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every conv and linear weight: where (nearly) all of a CNN's parameters are."""
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)]


def prune_global(model: nn.Module, sparsity: float) -> list[tuple[nn.Module, str]]:
    """Zero the `sparsity` share of smallest-magnitude weights over all prunable layers together. The pruning
    stays a mask (weight = weight_orig * mask), so a fine-tune keeps the zeros at zero; `make_permanent` bakes
    it into plain weights."""
    params = prunable(model)
    if not params:
        raise UserError(f"{type(model).__name__} has no conv or linear layer to prune")
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    return params


def make_permanent(params: list[tuple[nn.Module, str]]) -> None:
    for module, name in params:
        prune.remove(module, name)


def sparsity_of(model: nn.Module) -> float:
    """Share of zeros among the prunable weights."""
    weights = [getattr(m, name).detach() for m, name in prunable(model)]
    total = sum(w.numel() for w in weights)
    return float(sum((w == 0).sum().item() for w in weights) / max(total, 1))
