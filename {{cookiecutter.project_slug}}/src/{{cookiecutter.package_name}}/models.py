"""The model factory: any timm backbone, its head sized for the task, plus freezing helpers."""

from __future__ import annotations

import timm
import torch
from torch import nn

from .config import Config
from .errors import UserError


def num_outputs(task: str, n_classes: int) -> int:
    """Logits per image: one per class (multiclass) or label (multilabel), one for binary and regression."""
    return n_classes if task in ("multiclass", "multilabel") else 1


def build_model(cfg: Config, n_outputs: int, pretrained: bool | None = None) -> nn.Module:
    m = cfg.model
    try:
        model = timm.create_model(
            m.backbone,
            pretrained=m.pretrained if pretrained is None else pretrained,
            num_classes=n_outputs,
            in_chans=m.in_chans,
            drop_rate=m.drop_rate,
            drop_path_rate=m.drop_path_rate or None,
        )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise UserError(f"model.backbone={m.backbone!r} is not a timm model (see timm.list_models())") from None
        raise
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return list(head.parameters()) if isinstance(head, nn.Module) else []


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) everything but the classifier head; BatchNorm statistics freeze with it."""
    head_ids = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        if id(p) not in head_ids:
            p.requires_grad_(trainable)


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the underlying model, whatever wraps it (DDP, torch.compile)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
