"""The model factory: any timm backbone, its head sized for the task; the classifier head, its initialisation,
and freezing.

task=segmentation builds a segmentation-models-pytorch model (model.arch) around the same timm backbone, as smp's
timm-universal encoder (`tu-<backbone>`). Its "head" is everything the backbone did not bring, the decoder and the
segmentation head (new weights: full LR, trained while the backbone is frozen); its "backbone" is `model.encoder`.
Every helper below (output layers, head parameters, freezing) sees it that way, so the trainer's parameter groups,
model.freeze_backbone_epochs and model.init_head work unchanged.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
from timm.models import parse_model_name, split_model_name_tag
from torch import nn

from ..core.errors import UserError
from ..core.registry import Registry
from ..core.tasks import PIXEL_TASKS

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


def _smp_architectures() -> dict[str, type]:
    """smp's own table of architectures (name -> class), imported lazily: classification runs never load smp."""
    import segmentation_models_pytorch as smp

    return dict(smp.MODEL_ARCHITECTURES_MAPPING)


def list_archs() -> list[str]:
    """The values model.arch accepts: every architecture segmentation-models-pytorch knows."""
    return list(_smp_architectures())


def _decoder_kwargs(m: ModelConfig) -> dict[str, Any]:
    """model.decoder_channels as the architecture takes it, read from its signature: a sequence with one width per
    decoder stage (unet, unetplusplus, manet: as long as the encoder is deep), or one width (deeplabv3(plus), pan,
    upernet: a one-value list). Architectures without the argument (fpn, linknet, ...) refuse it."""
    if m.decoder_channels is None:
        return {}
    cls = _smp_architectures()[m.arch.lower()]
    params = inspect.signature(cls.__init__).parameters
    channels = list(m.decoder_channels)
    if "decoder_channels" not in params:
        raise UserError(f"config key 'model.decoder_channels' is set, but model.arch={m.arch} takes no decoder "
                        "channels; leave it unset (null)")  # fmt: skip
    if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
        raise UserError(f"config key 'model.decoder_channels' is {channels}; expected positive integers")
    default = params["decoder_channels"].default
    if isinstance(default, int):
        if len(channels) != 1:
            raise UserError(f"config key 'model.decoder_channels' is {channels}; model.arch={m.arch} takes one "
                            f"width, e.g. [{default}]")  # fmt: skip
        return {"decoder_channels": channels[0]}
    depth = params["encoder_depth"].default if "encoder_depth" in params else len(default)
    if len(channels) != depth:
        raise UserError(f"config key 'model.decoder_channels' is {channels}; model.arch={m.arch} takes one width "
                        f"per decoder stage ({depth}), e.g. {list(default)}")  # fmt: skip
    return {"decoder_channels": tuple(channels)}


def check_segmentation_model(m: ModelConfig) -> None:
    """model.arch names an smp architecture and model.decoder_channels fits it (config load runs this too)."""
    archs = _smp_architectures()
    if not isinstance(m.arch, str) or m.arch.lower() not in archs:
        raise UserError(f"config key 'model.arch' is {m.arch!r}; allowed: {', '.join(archs)}")
    _decoder_kwargs(m)


# The files model.weights may name: state dicts in the formats timm's loader reads (safetensors; torch.save's .pth /
# .bin, also a checkpoint dict holding the state dict under 'state_dict' or 'model').
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def weights_file(m: ModelConfig) -> Path:
    """model.weights as a path (relative ones from the working directory, the project, like data.dir), refused in
    one line when it is no file or not a state dict's suffix."""
    path = Path(m.weights or "")
    if not path.is_file():
        raise UserError(f"config key 'model.weights' is {m.weights!r}: no such file (from {Path.cwd()}); expected "
                        "the backbone's weights, e.g. /kaggle/input/<dataset>/model.safetensors")  # fmt: skip
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UserError(f"config key 'model.weights' is {m.weights!r}; expected a state dict file "
                        f"({', '.join(WEIGHT_SUFFIXES)})")  # fmt: skip
    return path


def _pretrained_source(m: ModelConfig, pretrained: bool) -> dict[str, Any]:
    """timm's keyword for model.weights: the pretrained config's `file` (timm loads it instead of the hub, drops the
    classifier when the class count differs and adapts the first convolution to in_chans); an `hf-hub:` backbone's
    config says source=hf-hub, which would win over the file, so the source is overridden too."""
    if not (pretrained and m.weights):
        return {}
    overlay: dict[str, Any] = {"file": str(weights_file(m))}
    if parse_model_name(m.backbone)[0] is not None:
        overlay["source"] = "file"
    return {"pretrained_cfg_overlay": overlay}


def _create(cfg: Config, n_outputs: int, pretrained: bool) -> nn.Module:
    m = cfg.model
    source = _pretrained_source(m, pretrained)
    if cfg.task not in PIXEL_TASKS:
        return timm.create_model(
            m.backbone,
            pretrained=pretrained,
            num_classes=n_outputs,
            in_chans=m.in_chans,
            drop_rate=m.drop_rate,
            drop_path_rate=m.drop_path_rate or None,
            **source,
        )
    check_segmentation_model(m)
    import segmentation_models_pytorch as smp

    try:
        # encoder_weights=True (not "imagenet"): for tu- encoders the pretrained tag is in the backbone's name, and
        # smp 0.6 warns about any other value. drop_path_rate reaches timm through smp's encoder kwargs.
        return smp.create_model(
            m.arch.lower(),
            encoder_name=f"tu-{m.backbone}",
            encoder_weights=True if pretrained else None,
            in_channels=m.in_chans,
            classes=n_outputs,
            drop_path_rate=m.drop_path_rate or None,
            **_decoder_kwargs(m),
            **source,  # smp hands it to timm.create_model with its other encoder kwargs
        )
    except (ValueError, RuntimeError) as e:  # the backbone's feature maps do not fit the architecture
        if source:  # or model.weights does not fit the encoder: build_model says so
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model.arch={m.arch} cannot be built on model.backbone={m.backbone!r}: {first}") from None


def _unloadable(m: ModelConfig, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UserError(f"config key 'model.weights' is {m.weights!r}, which model.backbone={m.backbone!r} cannot load: "
                     f"{first[:300]}")  # fmt: skip


def build_model(cfg: Config, n_outputs: int, pretrained: bool | None = None) -> nn.Module:
    """A timm classifier with `n_outputs` logits, or for task=segmentation an smp model with `n_outputs` logit maps
    (N, n_outputs, H, W) at the input's size."""
    m = cfg.model
    pretrained = m.pretrained if pretrained is None else pretrained
    check_backbone(m.backbone)
    try:
        model = _create(cfg, n_outputs, pretrained)
    except (RuntimeError, KeyError, ValueError) as e:  # a weights file whose tensors do not fit, or not a state dict
        if not (pretrained and m.weights):
            raise
        raise _unloadable(m, e) from None
    except (OSError, ConnectionError) as e:  # the hub is unreachable (offline, HF_HUB_OFFLINE=1) or refuses
        if not pretrained:
            raise
        if m.weights:
            raise _unloadable(m, e) from None
        raise UserError(
            f"model.pretrained=true but the pretrained weights of {m.backbone!r} cannot be downloaded "
            f"({type(e).__name__}); set model.pretrained=false, or place the weights in the Hugging Face cache "
            "(HF_HOME) on a machine with network first"
        ) from None
    if m.coord_conv:
        add_coord_channels(model, pretrained)
    init_new_layers(model, m.init)
    return model


# ----------------------------------------------------------------------------------------------- CoordConv


class CoordConv2d(nn.Module):
    """A convolution that sees two more input channels than it is given: the pixel's x and y, each from -1 (left,
    top) to 1 (right, bottom) (Liu et al. 2018, "An intriguing failing of convolutional neural networks and the
    CoordConv solution"). Built from the model's first convolution, whose weights it keeps for the image channels;
    the coordinate channels start at zero for pretrained weights (the model computes what it did, and learns how
    much position matters), else like the other channels. The coordinates are made from the input's own shape in
    the forward pass: any batch and image size, and nothing to save in a checkpoint or an ONNX graph but the ops."""

    def __init__(self, conv: nn.Conv2d, zero: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels + 2, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)  # fmt: skip
        if conv.groups != 1:
            raise UserError("model.coord_conv: the first convolution is grouped; CoordConv needs an ordinary one")
        with torch.no_grad():
            w = self.conv.weight.to(conv.weight)
            w[:, : conv.in_channels] = conv.weight
            w[:, conv.in_channels :] = 0.0 if zero else torch.randn_like(w[:, conv.in_channels :]) * conv.weight.std()
            self.conv.weight = nn.Parameter(w)
            if conv.bias is not None:
                self.conv.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w = x.shape[0], x.shape[2], x.shape[3]  # indexed, not unpacked: torch.fx traces it (qat export)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
        return self.conv(torch.cat([x, xs, ys], dim=1))


def first_conv_name(model: nn.Module) -> str:
    """The qualified name of the convolution that takes the image: timm's pretrained_cfg names it (`conv1.0`,
    `conv_stem`, `patch_embed.proj`...; inside an smp model under `encoder.model.`), else the first Conv2d."""
    for prefix, holder in (("", model), ("encoder.model.", getattr(getattr(model, "encoder", None), "model", None))):
        name = (getattr(holder, "pretrained_cfg", None) or {}).get("first_conv")
        if isinstance(name, str) and isinstance(model.get_submodule(prefix + name), nn.Conv2d | CoordConv2d):
            return prefix + name
    name = next((n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d)), None)
    if name is None:
        raise UserError(f"model.coord_conv: {type(model).__name__} has no convolution to add coordinates to")
    return name


def add_coord_channels(model: nn.Module, pretrained: bool) -> nn.Module:
    """model.coord_conv: the first convolution replaced by a CoordConv2d (in place)."""
    name = first_conv_name(model)
    model.set_submodule(name, CoordConv2d(model.get_submodule(name), zero=pretrained))
    return model


# ----------------------------------------------------------------------------------------------- new layers' init

# model.init: how the layers the backbone did not bring (the classifier head; an smp model's decoder and
# segmentation head) start. timm: as timm (or smp) built them; xavier: Glorot uniform; kaiming: He normal (fan_in,
# ReLU gain). Biases start at zero except with timm. model.init_head=prior then moves each output layer to the
# label prior (its weights scaled to zero): with the prior on, model.init decides the head's hidden layers only.
INITS: Registry = Registry("model init")


@INITS.register("timm")
def _init_timm(weight: torch.Tensor) -> None:
    pass


@INITS.register("xavier")
def _init_xavier(weight: torch.Tensor) -> None:
    nn.init.xavier_uniform_(weight)


@INITS.register("kaiming")
def _init_kaiming(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")


@torch.no_grad()
def init_new_layers(model: nn.Module, how: str) -> int:
    """Every Linear and convolution of the head (head_modules) initialised by `how` (INITS); returns how many."""
    init, n = INITS.get(how), 0
    if how == "timm":
        return 0
    for head in head_modules(model):
        if head is unwrap(model) and not is_segmentation_model(model):
            continue  # a model without a classifier head is all head: its backbone keeps its own init
        for layer in head.modules():
            if isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                init(layer.weight)
                if layer.bias is not None:
                    layer.bias.zero_()
                n += 1
    return n


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


def is_segmentation_model(model: nn.Module) -> bool:
    """An smp model (encoder + decoder + segmentation_head), told by its parts so that smp need not be imported."""
    model = unwrap(model)
    return all(
        isinstance(getattr(model, part, None), nn.Module) for part in ("encoder", "decoder", "segmentation_head")
    )


def head_modules(model: nn.Module) -> list[nn.Module]:
    """timm's classifier head: `get_classifier()`, which distilled ViTs return as a tuple (head, head_dist); for an
    smp model every part but the encoder (decoder, segmentation head, an auxiliary classification head if any).
    A model without either is all head (nothing to freeze, one learning rate)."""
    model = unwrap(model)
    if is_segmentation_model(model):
        return [child for name, child in model.named_children() if name != "encoder"]
    get = getattr(model, "get_classifier", None)
    if get is None:
        return [model]
    heads = get()
    heads = heads if isinstance(heads, tuple | list) else (heads,)
    return [h for h in heads if isinstance(h, nn.Module)]


def output_layers(model: nn.Module, n_outputs: int) -> list[nn.Module]:
    """The layers that produce the logits: in each classifier head, the last Linear (or 1x1 convolution) with
    `n_outputs` outputs (a distilled ViT has two heads, both used at inference). For an smp model, the last
    convolution of the segmentation head (3x3 in smp), whatever its kernel: only there, since a decoder stage may
    happen to have `n_outputs` channels too."""
    if is_segmentation_model(model):
        convs = [m for m in unwrap(model).segmentation_head.modules()
                 if isinstance(m, nn.Conv2d) and m.out_channels == n_outputs]  # fmt: skip
        return convs[-1:]
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
