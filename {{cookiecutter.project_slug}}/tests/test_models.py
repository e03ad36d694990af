"""The classifier head, and freezing the backbone: one notion of "the head" for freezing and the optimizer."""

import pytest
import timm
import torch
from torch import nn

from {{ cookiecutter.package_name }}.config import OptimConfig
from {{ cookiecutter.package_name }}.modeling import models, optim


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
