"""The model factory: any timm backbone, its head sized for the task; the classifier head, its initialisation,
and freezing."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import timm
import torch
from timm.models import parse_model_name, split_model_name_tag
from torch import nn

from ..core.errors import UserError

if TYPE_CHECKING:
    from ..core.schema import Config, ModelConfig


def check_backbone(name: str) -> None:
    """`model.backbone` names a timm model (with or without a pretrained tag such as '.a1_in1k'); names from the
    Hugging Face hub ('hf-hub:...') are taken as they are."""
    source, model_name = parse_model_name(name)
    if source is not None:
        return
    arch, tag = split_model_name_tag(model_name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (close: {', '.join(close)})" if close else " (see timm.list_models())"
        raise UserError(f"config key 'model.backbone' is {name!r}, which is not a timm model{hint}")
    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        raise UserError(f"config key 'model.backbone' is {name!r}, but {arch} has no pretrained tag {tag!r}; its tags: "
                        f"{', '.join(tags[:10]) or 'none'}")  # fmt: skip


def build_model(cfg: Config, n_outputs: int, pretrained: bool | None = None) -> nn.Module:
    m = cfg.model
    pretrained = m.pretrained if pretrained is None else pretrained
    check_backbone(m.backbone)
    try:
        model = timm.create_model(
            m.backbone,
            pretrained=pretrained,
            num_classes=n_outputs,
            in_chans=m.in_chans,
            drop_rate=m.drop_rate,
            drop_path_rate=m.drop_path_rate or None,
        )
    except (OSError, ConnectionError) as e:  # the hub is unreachable (offline, HF_HUB_OFFLINE=1) or refuses
        if not pretrained:
            raise
        raise UserError(
            f"model.pretrained=true but the pretrained weights of {m.backbone!r} cannot be downloaded "
            f"({type(e).__name__}); set model.pretrained=false, or place the weights in the Hugging Face cache "
            "(HF_HOME) on a machine with network first"
        ) from None
    return model


# The backbone's LR relative to the head's when model.backbone_lr_mult is unset and the backbone is pretrained: its
# weights already work and want a gentler LR than a new head (or a model trained from scratch, which gets 1).
PRETRAINED_BACKBONE_LR_MULT = 0.1


def backbone_lr_mult(m: ModelConfig) -> float:
    """model.backbone_lr_mult, or its default for the backbone's weights (pretrained or not)."""
    if m.backbone_lr_mult is not None:
        return float(m.backbone_lr_mult)
    return PRETRAINED_BACKBONE_LR_MULT if m.pretrained else 1.0


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside torch.compile / DistributedDataParallel wrappers (their names carry prefixes)."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def head_modules(model: nn.Module) -> list[nn.Module]:
    """timm's classifier head: `get_classifier()`, which distilled ViTs return as a tuple (head, head_dist).
    A model without `get_classifier()` is all head (nothing to freeze, one learning rate)."""
    model = unwrap(model)
    get = getattr(model, "get_classifier", None)
    if get is None:
        return [model]
    heads = get()
    heads = heads if isinstance(heads, tuple | list) else (heads,)
    return [h for h in heads if isinstance(h, nn.Module)]


def output_layers(model: nn.Module, n_outputs: int) -> list[nn.Module]:
    """The layers that produce the logits: in each classifier head, the last Linear (or 1x1 convolution) with
    `n_outputs` outputs (a distilled ViT has two heads, both used at inference)."""
    found = []
    for head in head_modules(model):
        last = None
        for m in head.modules():
            if (isinstance(m, nn.Linear) and m.out_features == n_outputs) or (
                isinstance(m, nn.Conv2d) and m.out_channels == n_outputs and m.kernel_size == (1, 1)
            ):
                last = m
        if last is not None:
            found.append(last)
    return found


# The head's weights are multiplied by this at the start: the logits then start at the bias whatever the image
# (the first loss is the prior's entropy), and adaptive optimizers (Adam, Ranger) still move them at full speed.
HEAD_WEIGHT_SCALE = 0.0


@torch.no_grad()
def init_head(model: nn.Module, bias: torch.Tensor, weight_scale: float = HEAD_WEIGHT_SCALE) -> int:
    """Start every output layer at `bias` (see losses.prior_logits) with its weights scaled by `weight_scale`;
    returns how many layers were set (0: no output layer found, or none has a bias)."""
    n = 0
    for layer in output_layers(model, len(bias)):
        if layer.bias is None:
            continue
        layer.weight.mul_(weight_scale)
        layer.bias.copy_(bias.to(layer.bias))
        n += 1
    return n


def head_parameter_ids(model: nn.Module) -> set[int]:
    """id() of every parameter of the classifier head (freezing and the optimizer's parameter groups share it)."""
    return {id(p) for h in head_modules(model) for p in h.parameters()}


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) everything but the classifier head. A frozen backbone's normalisation layers are put in
    eval mode too, so their running statistics stay as they were; call it after `model.train()`."""
    model = unwrap(model)
    head_ids = head_parameter_ids(model)
    head_module_ids = {id(m) for h in head_modules(model) for m in h.modules()}
    for p in model.parameters():
        if id(p) not in head_ids:
            p.requires_grad_(trainable)
    if not trainable:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and id(m) not in head_module_ids:
                m.eval()


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the underlying model, whatever wraps it (DDP, torch.compile)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
