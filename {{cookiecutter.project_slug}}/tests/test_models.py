"""The classifier head, and freezing the backbone: one notion of "the head" for freezing and the optimizer."""

import copy
import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from {{ cookiecutter.package_name }} import config
from {{ cookiecutter.package_name }}.config import OptimConfig
from {{ cookiecutter.package_name }}.modeling import deploy, models, optim


def trainable(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("backbone", ["test_resnet", "deit_tiny_distilled_patch16_224"])
def test_freezing_keeps_exactly_the_head_trainable(backbone):
    """deit's get_classifier() is a tuple (head, head_dist): both stay trainable, the rest freezes."""
    model = timm.create_model(backbone, pretrained=False, num_classes=3)
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    head_ids = {id(p) for h in heads for p in h.parameters()}
    assert models.head_parameter_ids(model) == head_ids and head_ids
    models.set_backbone_trainable(model, False)
    assert trainable(model) == head_ids
    models.set_backbone_trainable(model, True)
    assert trainable(model) == {id(p) for p in model.parameters()}
    # The optimizer's head groups hold the same parameters.
    groups = optim.param_groups(model, 0.01, 1e-3, backbone_lr_mult=0.1)
    assert {id(p) for g in groups if g["name"].startswith("head") for p in g["params"]} == head_ids


def test_a_frozen_backbone_keeps_its_batchnorm_statistics():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    model.train()
    models.set_backbone_trainable(model, False)  # after train(): frozen norm layers go back to eval
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(4, 3, 32, 32))
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    model.train()
    models.set_backbone_trainable(model, True)
    model(torch.randn(4, 3, 32, 32))
    assert any(not torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_a_wrapped_model_has_the_same_head():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    compiled_like = nn.Module()
    compiled_like._orig_mod = model  # what torch.compile wraps the model in
    assert models.head_parameter_ids(compiled_like) == models.head_parameter_ids(model)
    groups = optim.param_groups(compiled_like, OptimConfig().weight_decay, 1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# --- model.init: the new layers' initialisation ----------------------------------------------------------------------


@pytest.mark.parametrize("how", models.INITS.names())
def test_each_init_gives_its_weight_statistics_on_the_head(how):
    """The head (512 -> 100, 51,200 weights) of resnet10t: each init's distribution, told by its spread, its
    bound and its shape (uniform or normal); the biases start at zero except with timm's own init."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=100)
    backbone_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    models.init_new_layers(model, how)
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    fan_in, fan_out = w.shape[1], w.shape[0]
    expected = {  # (std, bound or None for a normal distribution)
        "timm": (1 / math.sqrt(3 * fan_in), 1 / math.sqrt(fan_in)),  # torch's Linear: kaiming_uniform(a=sqrt(5))
        "xavier": (math.sqrt(2 / (fan_in + fan_out)), math.sqrt(6 / (fan_in + fan_out))),
        "kaiming": (math.sqrt(2 / fan_in), None),
    }[how]
    std, bound = expected
    assert float(w.std()) == pytest.approx(std, rel=0.03)
    assert abs(float(w.mean())) < 0.03 * std
    if bound is not None:  # uniform: inside the bound, reaching near it; kurtosis of a uniform is 1.8
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    kurtosis = float(((w - w.mean()) ** 4).mean() / w.var(unbiased=False) ** 2)
    assert kurtosis == pytest.approx(1.8 if bound is not None else 3.0, abs=0.15)
    assert (b == 0).all() if how != "timm" else (b != 0).any()
    # Only the head: the backbone keeps its own initialisation.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in backbone_before.items())


def test_init_reaches_the_head_through_build_model(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model:\n  backbone: test_resnet\n  pretrained: false\n")
    torch.manual_seed(0)
    model = models.build_model(config.load(path, ["model.init=kaiming"]), 50, pretrained=False)
    w = model.get_classifier().weight.detach()
    assert float(w.std()) == pytest.approx(math.sqrt(2 / w.shape[1]), rel=0.1)


# --- model.coord_conv ------------------------------------------------------------------------------------------------


def first_conv_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    conv = model.get_submodule(models.first_conv_name(model))
    seen = []
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("backbone", ["test_resnet", "resnet10t", "test_efficientnet", "test_convnext"])
@pytest.mark.parametrize("pretrained_like", [False, True])
def test_coord_conv_makes_the_output_depend_on_position_for_a_constant_image(backbone, pretrained_like):
    """A constant image: without coordinates the first convolution's output is the same at every interior pixel
    (only the zero padding at the border differs); with them it varies across the image, and the model's output
    changes when the coordinate weights are silenced. From pretrained weights the coordinate weights start at zero:
    the model computes exactly what it did, until training moves them."""
    torch.manual_seed(0)
    plain = timm.create_model(backbone, pretrained=False, num_classes=3, in_chans=1).eval()
    coord = models.add_coord_channels(copy.deepcopy(plain), pretrained=pretrained_like).eval()
    x = torch.full((2, 1, 32, 32), 0.7)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    flat = first_conv_output(plain, x)[inner]
    assert torch.allclose(flat, flat[..., :1, :1].expand_as(flat), atol=1e-6)
    conv = coord.get_submodule(models.first_conv_name(coord))
    assert isinstance(conv, models.CoordConv2d) and conv.conv.in_channels == 3
    with torch.no_grad():
        if pretrained_like:  # zero coordinate weights: the pretrained function unchanged ...
            assert torch.allclose(coord(x), plain(x), atol=1e-6)
            conv.conv.weight[:, 1:].normal_(0, 0.5)  # ... until they are learnt
        varied = first_conv_output(coord, x)[inner]
        assert float((varied - varied[..., :1, :1]).abs().amax()) > 1e-3
        out = coord(x)
        conv.conv.weight[:, 1:] = 0
        assert not torch.allclose(out, coord(x), atol=1e-5)
    # Any size and batch: the coordinates follow the input's shape.
    assert coord(torch.zeros(3, 1, 48, 40)).shape == (3, 3)


def test_coord_conv_through_build_model_checkpoint_ema_and_onnx(tmp_path):
    """model.coord_conv=true: the state dict holds the widened convolution, a fresh model of the same config loads
    it and predicts the same, timm's EMA copies it, and the ONNX export predicts what torch does."""
    import onnxruntime as ort
    from timm.utils import ModelEmaV3

    path = tmp_path / "m.yaml"
    path.write_text("model:\n  backbone: test_resnet\n  pretrained: false\n  in_chans: 1\n  coord_conv: true\n")
    cfg = config.load(path)
    torch.manual_seed(0)
    model = models.build_model(cfg, 4).eval()
    state = model.state_dict()
    assert state["conv1.0.conv.weight"].shape[1] == 3
    again = models.build_model(cfg, 4).eval()
    again.load_state_dict(state)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        ema = ModelEmaV3(model, decay=0.9)
        assert torch.equal(ema.module(x), model(x))
        onnx = deploy.export_onnx(model, x, tmp_path / "m.onnx", "torchscript", 17)
        got = ort.InferenceSession(str(onnx)).run(None, {deploy.INPUT: x.numpy()})[0]
        assert np.abs(got - model(x).numpy()).max() < 1e-4
        with pytest.raises(RuntimeError):  # without coordinates the checkpoint does not fit
            models.build_model(config.load(path, ["model.coord_conv=false"]), 4).load_state_dict(state)
