"""Image augmentation: albumentations presets (none / light / medium / heavy / trivial / randaugment / augmix /
autoaugment), normalisation, mixup / cutmix on batches.

Transforms take a numpy HWC uint8 image with 1 or 3 channels (grayscale is HxWx1) and return an HWC uint8 image of
the training size: the loader's workers send uint8 (a quarter of float32's bytes), and `Normalize` turns a batch
into normalised float32 on the device, right after the copy (data.images.DeviceLoader), for training, evaluation,
prediction and TTA alike. Flips and 90-degree rotations are only added when the config allows them: a mirrored
digit is another class. Colour transforms that need RGB are skipped for grayscale.

`trivial` (TrivialAugment, Muller & Hutter 2021) and `randaugment` (Cubuk et al. 2020) draw from one table of ops,
AUG_OPS, each built from albumentations' own transforms at a level in [-1, 1] (signed ops) or [0, 1]: trivial
applies one op per image at a level drawn uniformly (the sign at random), randaugment applies
`augment.randaugment_n` different ops at the fixed level `augment.randaugment_m` / 10 (the sign at random).
albumentations 2.0.8 has neither AugMix nor AutoAugment; both are built here on the same table: `augmix` (Hendrycks
et al. 2020) blends the image with a Dirichlet-weighted mixture of `augment.augmix_width` chains of random ops
(AugMix below; the JSD consistency loss of the paper is not part of it), `autoaugment` (Cubuk et al. 2019) applies
one sub-policy of the ImageNet policy, two (op, probability, magnitude) steps, per image. Colour ops are left out
for grayscale (a grayscale sub-policy keeps its other step).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for a newer version on import

import albumentations as A
from timm.data.mixup import Mixup, mixup_target

from ..core.errors import UserError
from ..core.registry import Registry
from ..core.tasks import SIGMOID_TASKS

if TYPE_CHECKING:
    from ..core.schema import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A preset maps (config, number of channels) to the training transforms (uint8 in, uint8 out).
PresetFn = Callable[["AugmentConfig", int], list[Any]]
PRESETS: Registry[PresetFn] = Registry("augment preset")
# An op of trivial / randaugment maps a level range (lo, hi) to one albumentations transform that always applies.
OpFn = Callable[[float, float], Any]
AUG_OPS: Registry[OpFn] = Registry("augment op")
RANDAUGMENT_MAX_M = 10  # randaugment_m runs 0..10 as in the paper (and timm's rand-m9)


def list_presets() -> list[str]:
    return PRESETS.names()


# ----------------------------------------------------------------------------------------------- normalisation


FOLD = "fold"  # augment.mean / augment.std: the fold's own training images' statistics


def resolve_normalization(
    cfg_aug: AugmentConfig, model_or_pretrained_cfg: Any, in_chans: int,
    fold_stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:  # fmt: skip
    """(mean, std) with one value per input channel, on the 0..1 pixel scale.

    `augment.mean/std: fold`: `fold_stats`, the fold's (mean, std) (data.problem.fold_normalization computes them
    at training, the run folder keeps them for every later stage). Explicit `augment.mean` / `augment.std` win;
    else the timm model's `pretrained_cfg` (a model, an smp model whose timm encoder holds it, or the dict itself);
    else ImageNet's. Three values are averaged into one for grayscale
    (timm sums the RGB stem weights for in_chans=1, so the grey input should look like the mean of the channels) and
    repeated for more channels.
    """
    if cfg_aug.mean == FOLD:
        if fold_stats is None:
            raise ValueError("augment.mean/std: fold: the fold's statistics must be given (fold_stats)")
        return _adapt_channels(fold_stats[0], in_chans, "augment.mean"), _adapt_channels(fold_stats[1], in_chans,
                                                                                        "augment.std")  # fmt: skip
    pcfg = _pretrained_cfg(model_or_pretrained_cfg)
    mean = cfg_aug.mean if cfg_aug.mean is not None else pcfg.get("mean", IMAGENET_MEAN)
    std = cfg_aug.std if cfg_aug.std is not None else pcfg.get("std", IMAGENET_STD)
    mean_out = _adapt_channels(mean, in_chans, "augment.mean")
    std_out = _adapt_channels(std, in_chans, "augment.std")
    if any(s <= 0 for s in std_out):
        raise UserError(f"config key 'augment.std' must be > 0 for every channel, got {list(std_out)}")
    return mean_out, std_out


def _pretrained_cfg(obj: Any) -> dict:
    """The timm pretrained_cfg of a timm model, of an smp model (its `tu-` encoder wraps the timm model:
    model.encoder.model), or the dict itself; {} when there is none. Read by attribute, so data/ needs no smp."""
    if isinstance(obj, dict):
        return obj
    for holder in (obj, getattr(obj, "encoder", None), getattr(getattr(obj, "encoder", None), "model", None)):
        pcfg = getattr(holder, "pretrained_cfg", None)
        if isinstance(pcfg, dict):
            return pcfg
    return {}


def check_normalization(cfg_aug: AugmentConfig, in_chans: int) -> None:
    """Explicit `augment.mean` / `augment.std` fit `in_chans` (run at config load, before any model is built);
    `fold` is given to both or neither."""
    if (cfg_aug.mean == FOLD) != (cfg_aug.std == FOLD):
        raise UserError(f"config keys 'augment.mean' and 'augment.std' are {cfg_aug.mean!r} and {cfg_aug.std!r}; "
                        "'fold' goes to both (the fold's own mean and std) or neither")  # fmt: skip
    if cfg_aug.mean == FOLD:
        return
    for key, values in (("augment.mean", cfg_aug.mean), ("augment.std", cfg_aug.std)):
        if values is not None:
            adapted = _adapt_channels(values, in_chans, key)
            if key == "augment.std" and any(s <= 0 for s in adapted):
                raise UserError(f"config key 'augment.std' must be > 0 for every channel, got {list(values)}")


def _adapt_channels(values: Sequence[float], in_chans: int, key: str) -> tuple[float, ...]:
    if isinstance(values, str | int | float) or not all(isinstance(v, int | float) for v in values):
        raise UserError(f"config key '{key}' is {values!r}; expected numbers (one, three or model.in_chans), or "
                        "fold")  # fmt: skip
    vals = [float(v) for v in values]
    if in_chans < 1:
        raise UserError(f"config key 'model.in_chans' must be >= 1, got {in_chans}")
    if len(vals) == in_chans:
        return tuple(vals)
    if len(vals) == 1:
        return tuple(vals * in_chans)
    if in_chans == 1:
        return (sum(vals) / len(vals),)
    if len(vals) == 3 and in_chans > 3:
        reps = -(-in_chans // 3)  # ceil: cycle R, G, B like timm's adapt_input_conv repeats the stem weights
        return tuple((vals * reps)[:in_chans])
    raise UserError(f"config key '{key}' has {len(vals)} values; expected 1, 3 or model.in_chans={in_chans}")


# ----------------------------------------------------------------------------------------------- transforms


class Normalize(nn.Module):
    """uint8 images (N, C, H, W), 0..255 -> float32 (x / 255 - mean) / std, on the batch's device.

    The one place where images are normalised (train, evaluate, predict, TTA, lr-find, teachers): build it from
    resolve_normalization. The memory format of the input (channels_last) is kept."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, len(mean), 1, 1), persistent=False)
        self.register_buffer("inv_std", torch.zeros(1, len(std), 1, 1), persistent=False)
        self.load_(mean, std)

    @torch.no_grad()
    def load_(self, mean: Sequence[float], std: Sequence[float]) -> Normalize:
        """Other statistics, in place (augment.mean/std: fold: each fold's own, in the loaders already built)."""
        if len(mean) != len(std) or len(mean) != self.mean.shape[1]:
            raise UserError(f"normalisation has {len(mean)} mean values but {len(std)} std values")
        self.mean.copy_(torch.tensor([255.0 * m for m in mean]).view(1, -1, 1, 1))
        self.inv_std.copy_(torch.tensor([1 / (255.0 * s) for s in std]).view(1, -1, 1, 1))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One new tensor, then in place (a batch of 128 images at 224 px is 77 MB in float32), with the arithmetic
        # of albumentations' Normalize: (x - 255 mean) * (1 / (255 std)).
        return x.to(torch.float32, copy=True).sub_(self.mean).mul_(self.inv_std)


def build_transforms(cfg_aug: AugmentConfig, train: bool, in_chans: int) -> A.Compose:
    """uint8 HWC in, uint8 HWC of cfg_aug.image_size out: the train preset, or a deterministic resize.
    `in_chans` decides whether RGB-only colour transforms are used."""
    size = cfg_aug.image_size
    steps = PRESETS.get(cfg_aug.preset)(cfg_aug, in_chans) if train else [A.Resize(size, size)]
    return A.Compose(steps)


def source_size(cfg_aug: AugmentConfig, in_chans: int) -> int | None:
    """The shorter image side the transforms need so that they lose nothing: a decode cache may shrink images to it
    (never beyond). Read from the first step of the training and the evaluation pipelines, which take the image
    from the file: Resize(h, w) needs max(h, w); RandomResizedCrop needs its size / sqrt(smallest area share),
    times sqrt of the most elongated aspect ratio (the crop's short side must still cover the output). None when a
    pipeline starts with another step (a custom preset): then images are kept at full size."""
    needed = []
    for train in (True, False):
        first = next(iter(build_transforms(cfg_aug, train, in_chans).transforms), None)
        if isinstance(first, A.RandomResizedCrop):
            elongation = max(first.ratio[1], 1.0 / first.ratio[0], 1.0)
            needed.append(max(first.size) * math.sqrt(elongation / first.scale[0]))
        elif isinstance(first, A.Resize):
            needed.append(max(first.height, first.width))
        else:
            return None
    return math.ceil(max(needed))


def _flips(cfg_aug: AugmentConfig) -> list[Any]:
    out: list[Any] = []
    if cfg_aug.hflip:
        out.append(A.HorizontalFlip(p=0.5))
    if cfg_aug.vflip:
        out.append(A.VerticalFlip(p=0.5))
    if cfg_aug.rotate90:
        out.append(A.RandomRotate90(p=1.0))  # k drawn in 0..3, so the identity is one of the four outcomes
    return out


@PRESETS.register("none")
def _preset_none(cfg_aug: AugmentConfig, n_chans: int) -> list[Any]:
    return [A.Resize(cfg_aug.image_size, cfg_aug.image_size)]


@PRESETS.register("light")
def _preset_light(cfg_aug: AugmentConfig, n_chans: int) -> list[Any]:
    s = cfg_aug.image_size
    affine = A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), p=0.5)
    return [A.Resize(s, s), affine, *_flips(cfg_aug)]


@PRESETS.register("medium")
def _preset_medium(cfg_aug: AugmentConfig, n_chans: int) -> list[Any]:
    s = cfg_aug.image_size
    return [
        A.RandomResizedCrop(size=(s, s), scale=(0.7, 1.0), ratio=(0.85, 1.18)),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-15, 15), p=0.5),
        *_flips(cfg_aug),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.06))], p=0.3),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.1), hole_width_range=(0.05, 0.1), p=0.3),
    ]


@PRESETS.register("heavy")
def _preset_heavy(cfg_aug: AugmentConfig, n_chans: int) -> list[Any]:
    s = cfg_aug.image_size
    color: list[Any] = [A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.7)]
    if n_chans == 3:  # hue / saturation only exist for RGB
        color.append(A.HueSaturationValue(hue_shift_limit=15, sat_shift_limit=25, val_shift_limit=15, p=0.5))
    return [
        A.RandomResizedCrop(size=(s, s), scale=(0.5, 1.0), ratio=(0.75, 1.33)),
        A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), rotate=(-30, 30), shear=(-10, 10), p=0.7),
        *_flips(cfg_aug),
        *color,
        A.OneOf(
            [A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 7)), A.GaussNoise(std_range=(0.03, 0.1))],
            p=0.5,
        ),
        A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.5),
    ]


# ----------------------------------------------------------------------------------------------- trivial / randaugment
# Level 1 is the strongest setting (torchvision's RandAugment ranges where albumentations has the same op), level 0
# the weakest (identity, equalize and autocontrast have no strength). signed=True: the level's sign is the direction
# (left / right, darker / brighter).


def _affine(**kw: Any) -> Any:
    return A.Affine(**kw, p=1.0)


def _xy(lo: float, hi: float, scale: float, axis: str) -> dict:
    return {axis: (scale * lo, scale * hi), "yx"[axis == "y"]: (0.0, 0.0)}


AUG_OPS.register("identity", lambda lo, hi: A.NoOp(p=1.0))
AUG_OPS.register("rotate", lambda lo, hi: _affine(rotate=(30 * lo, 30 * hi)), signed=True)
AUG_OPS.register("shear_x", lambda lo, hi: _affine(shear=_xy(lo, hi, 17, "x")), signed=True)
AUG_OPS.register("shear_y", lambda lo, hi: _affine(shear=_xy(lo, hi, 17, "y")), signed=True)
AUG_OPS.register("translate_x", lambda lo, hi: _affine(translate_percent=_xy(lo, hi, 0.3, "x")), signed=True)
AUG_OPS.register("translate_y", lambda lo, hi: _affine(translate_percent=_xy(lo, hi, 0.3, "y")), signed=True)
AUG_OPS.register(
    "brightness",
    lambda lo, hi: A.RandomBrightnessContrast(brightness_limit=(0.4 * lo, 0.4 * hi), contrast_limit=0.0, p=1.0),
    signed=True,
)
AUG_OPS.register(
    "contrast",
    lambda lo, hi: A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(0.9 * lo, 0.9 * hi), p=1.0),
    signed=True,
)
AUG_OPS.register("sharpness", lambda lo, hi: A.Sharpen(alpha=(lo, hi), lightness=(1.0, 1.0), p=1.0))
AUG_OPS.register("posterize", lambda lo, hi: A.Posterize(num_bits=(8 - round(4 * hi), 8 - round(4 * lo)), p=1.0))
AUG_OPS.register("solarize", lambda lo, hi: A.Solarize(threshold_range=(1.0 - hi, 1.0 - lo), p=1.0))
AUG_OPS.register("equalize", lambda lo, hi: A.Equalize(p=1.0))
AUG_OPS.register("autocontrast", lambda lo, hi: A.AutoContrast(p=1.0))
# AutoAugment's policy uses it; RandAugment, TrivialAugment and AugMix leave it out of their search space
AUG_OPS.register("invert", lambda lo, hi: A.InvertImg(p=1.0), searched=False)


def _saturation(lo: float, hi: float) -> Any:
    return A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(1 + 0.9 * lo, 1 + 0.9 * hi), hue=(0, 0), p=1.0)


AUG_OPS.register("color", _saturation, signed=True, rgb_only=True)  # saturation: an RGB notion


def aug_ops(n_chans: int) -> list[str]:
    """The ops that the random presets draw from for images of `n_chans` channels (colour ops need RGB)."""
    return AUG_OPS.names(lambda meta: _fits(meta, n_chans) and meta.get("searched", True))


def _fits(meta: Any, n_chans: int) -> bool:
    return n_chans == 3 or not meta.get("rgb_only", False)


def _random_level(name: str) -> Any:
    """TrivialAugment: the level drawn uniformly in [0, 1] (in [-1, 1] for a signed op) each time it applies."""
    return AUG_OPS.get(name)(-1.0 if AUG_OPS.meta(name).get("signed") else 0.0, 1.0)


def _fixed_level(name: str, level: float) -> Any:
    """RandAugment: the level fixed; a signed op goes either way with equal odds (still one op)."""
    make = AUG_OPS.get(name)
    if AUG_OPS.meta(name).get("signed") and level > 0:
        return A.OneOf([make(level, level), make(-level, -level)], p=1.0)
    return make(level, level)


@PRESETS.register("trivial")
def _preset_trivial(cfg_aug: AugmentConfig, n_chans: int) -> list[Any]:
    """One op per image, drawn uniformly, at a level drawn uniformly: no magnitude to tune."""
    s = cfg_aug.image_size
    ops = [_random_level(name) for name in aug_ops(n_chans)]
    return [A.Resize(s, s), *_flips(cfg_aug), A.OneOf(ops, p=1.0)]


@PRESETS.register("randaugment")
def _preset_randaugment(cfg_aug: AugmentConfig, n_chans: int) -> list[Any]:
    """`randaugment_n` different ops per image, each at the level randaugment_m / 10."""
    s, level = cfg_aug.image_size, cfg_aug.randaugment_m / RANDAUGMENT_MAX_M
    ops = [_fixed_level(name, level) for name in aug_ops(n_chans)]
    n = min(cfg_aug.randaugment_n, len(ops))
    return [A.Resize(s, s), *_flips(cfg_aug), A.SomeOf(ops, n=n, replace=False, p=1.0)]


# ----------------------------------------------------------------------------------------------- augmix / autoaugment
AUGMIX_MAX_SEVERITY = 10  # augmix_severity runs 1..10 like randaugment_m (the paper's default is 3)


def _level_range(name: str, hi: float) -> Any:
    """The op at a level drawn uniformly in [0, hi] each time it applies (a signed op: either way, equal odds)."""
    make = AUG_OPS.get(name)
    if AUG_OPS.meta(name).get("signed") and hi > 0:
        return A.OneOf([make(0.0, hi), make(-hi, 0.0)], p=1.0)
    return make(0.0, hi)


class AugMix(A.ImageOnlyTransform):
    """AugMix (Hendrycks et al. 2020) on uint8 HWC images of any channel count:
    out = (1 - m) * image + m * sum_i w_i * chain_i(image), w ~ Dirichlet(alpha, ..., alpha) over `width` chains,
    m ~ Beta(alpha, alpha); chain i applies `depth` ops (0: 1 to 3, drawn per chain) drawn with replacement from
    `ops`, each an albumentations transform that always applies and draws its own level.

    Every draw (weights, depths, ops, and the ops' own parameters) comes from this transform's generators, which
    it shares with its ops: a Compose's set_random_state / set_random_seed (the dataset's per-sample seeding,
    aug-preview's seed) makes the result reproducible."""

    def __init__(self, ops: Sequence[Any], width: int = 3, depth: int = 0, alpha: float = 1.0, p: float = 1.0) -> None:
        self.ops = list(ops)
        super().__init__(p=p)
        self.width, self.depth, self.alpha = width, depth, alpha

    def set_random_state(self, random_generator: np.random.Generator, py_random: random.Random) -> None:
        super().set_random_state(random_generator, py_random)
        for op in getattr(self, "ops", []):
            op.set_random_state(random_generator, py_random)

    def set_random_seed(self, seed: int | None) -> None:
        super().set_random_seed(seed)
        for op in getattr(self, "ops", []):  # one stream for the mixture and its ops
            op.set_random_state(self.random_generator, self.py_random)

    def get_params(self) -> dict[str, Any]:
        rng = self.random_generator
        weights = rng.dirichlet([self.alpha] * self.width).astype(np.float32)
        m = float(rng.beta(self.alpha, self.alpha))
        depths = [self.depth or int(rng.integers(1, 4)) for _ in range(self.width)]
        chains = [rng.integers(0, len(self.ops), d).tolist() for d in depths]
        return {"weights": weights, "m": m, "chains": chains}

    def apply(self, img: np.ndarray, weights: np.ndarray, m: float, chains: list[list[int]], **params: Any) -> Any:
        mix = np.zeros(img.shape, dtype=np.float32)
        for w, chain in zip(weights, chains, strict=True):
            out = img
            for i in chain:
                out = self.ops[i](image=out)["image"]
            mix += w * out.reshape(img.shape).astype(np.float32)
        blended = (1.0 - m) * img.astype(np.float32) + m * mix
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("width", "depth", "alpha")


@PRESETS.register("augmix")
def _preset_augmix(cfg_aug: AugmentConfig, n_chans: int) -> list[Any]:
    """AugMix over every op of the table but identity, each at a level up to augmix_severity / 10."""
    s, hi = cfg_aug.image_size, cfg_aug.augmix_severity / AUGMIX_MAX_SEVERITY
    ops = [_level_range(name, hi) for name in aug_ops(n_chans) if name != "identity"]
    mix = AugMix(ops, width=cfg_aug.augmix_width, depth=cfg_aug.augmix_depth, alpha=cfg_aug.augmix_alpha)
    return [A.Resize(s, s), *_flips(cfg_aug), mix]


# The ImageNet policy of AutoAugment (Cubuk et al. 2019), as torchvision lists it: 25 sub-policies of two
# (op, probability, magnitude) steps; magnitudes are bins 0..9 over the ops' ranges, which are torchvision's and
# this table's (level 1 = the strongest), so level = magnitude / 9; None: an op without strength.
AUTOAUGMENT_IMAGENET: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
    (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
    (("equalize", 0.8, None), ("equalize", 0.6, None)),
    (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
    (("equalize", 0.4, None), ("solarize", 0.2, 4)),
    (("equalize", 0.4, None), ("rotate", 0.8, 8)),
    (("solarize", 0.6, 3), ("equalize", 0.6, None)),
    (("posterize", 0.8, 5), ("equalize", 1.0, None)),
    (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
    (("equalize", 0.6, None), ("posterize", 0.4, 6)),
    (("rotate", 0.8, 8), ("color", 0.4, 0)),
    (("rotate", 0.4, 9), ("equalize", 0.6, None)),
    (("equalize", 0.0, None), ("equalize", 0.8, None)),
    (("invert", 0.6, None), ("equalize", 1.0, None)),
    (("color", 0.6, 4), ("contrast", 1.0, 8)),
    (("rotate", 0.8, 8), ("color", 1.0, 2)),
    (("color", 0.8, 8), ("solarize", 0.8, 7)),
    (("sharpness", 0.4, 7), ("invert", 0.6, None)),
    (("shear_x", 0.6, 5), ("equalize", 1.0, None)),
    (("color", 0.4, 0), ("equalize", 0.6, None)),
    (("equalize", 0.4, None), ("solarize", 0.2, 4)),
    (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
    (("invert", 0.6, None), ("equalize", 1.0, None)),
    (("color", 0.6, 4), ("contrast", 1.0, 8)),
    (("equalize", 0.8, None), ("equalize", 0.6, None)),
)
AUTOAUGMENT_MAX_MAGNITUDE = 9


def autoaugment_policy(n_chans: int) -> list[list[tuple[str, float, float]]]:
    """The ImageNet sub-policies as (op, probability, level) steps for images of `n_chans` channels: colour steps
    are dropped for grayscale (the sub-policy keeps its other step)."""
    return [
        [
            (op, prob, (mag or 0) / AUTOAUGMENT_MAX_MAGNITUDE)
            for op, prob, mag in sub
            if _fits(AUG_OPS.meta(op), n_chans)
        ]
        for sub in AUTOAUGMENT_IMAGENET
    ]


@PRESETS.register("autoaugment")
def _preset_autoaugment(cfg_aug: AugmentConfig, n_chans: int) -> list[Any]:
    """One sub-policy per image, drawn uniformly; each of its steps applies with its probability at its level."""
    s = cfg_aug.image_size
    subs = [
        A.Sequential([A.Sequential([_fixed_level(op, level)], p=prob) for op, prob, level in sub], p=1.0)
        for sub in autoaugment_policy(n_chans)
    ]
    return [A.Resize(s, s), *_flips(cfg_aug), A.OneOf(subs, p=1.0)]


# ----------------------------------------------------------------------------------------------- mixup / cutmix


class MixBatch:
    """Mixup / cutmix of a training batch, for every task type, on top of one `timm.data.Mixup`.

    `__call__(x, target) -> (x, soft_target)`; `x` (N,C,H,W) is mixed IN PLACE. The batch size must be even
    (timm asserts it): build the training loader with `drop_last=True`.
      multiclass: int targets (N,) -> (N,C) smoothed soft targets from timm; already-soft (N,C) float targets
                  (pseudo labels) are smoothed and mixed with the same pairing.
      binary / multilabel / regression: the images are mixed by timm's batch mode (sample i with sample N-1-i,
                  one lam per batch) and the float targets linearly with that lam and pairing. Label smoothing
                  pulls binary / multilabel targets towards 0.5 (as timm's multi_label does); regression has none.
    The loss must take soft targets and must not smooth them again.
    `last_lam` holds the lam of the last call (cutmix: corrected for the clipped box area).
    """

    def __init__(self, cfg_aug: AugmentConfig, task: str, num_classes: int, label_smoothing: float = 0.0) -> None:
        self.task = task
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.last_lam = 1.0
        self.mixup = Mixup(
            mixup_alpha=cfg_aug.mixup_alpha,
            cutmix_alpha=cfg_aug.cutmix_alpha,
            prob=cfg_aug.mix_prob,
            switch_prob=cfg_aug.switch_prob,
            mode="batch",
            label_smoothing=label_smoothing,  # timm's default is 0.1
            num_classes=num_classes,  # timm's default is 1000
        )

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {len(x)}: use drop_last=True")
        # timm's batch mode, as Mixup.__call__ runs it, but keeping lam: x = lam * x + (1 - lam) * x.flip(0),
        # or (cutmix) a box of x.flip(0) pasted in, lam corrected to the box's true area.
        lam = float(self.mixup._mix_batch(x))
        self.last_lam = lam
        ls = self.label_smoothing
        if self.task == "multiclass" and not torch.is_floating_point(target):
            return x, mixup_target(target, self.num_classes, lam, ls)  # one-hot, smoothed, mixed: (N, C)
        t = target.float()
        if self.task == "multiclass":  # already soft (N, C): smooth like timm's one-hot would be
            t = t * (1.0 - ls) + ls / self.num_classes
        elif self.task in SIGMOID_TASKS:
            t = t * (1.0 - ls) + 0.5 * ls
        return x, t * lam + t.flip(0) * (1.0 - lam)


def build_mixup(cfg_aug: AugmentConfig, task: str, num_classes: int, label_smoothing: float = 0.0) -> MixBatch | None:
    """A MixBatch when mixup or cutmix is on (alpha > 0), else None. (config.validate checks the ranges.)"""
    if cfg_aug.mixup_alpha <= 0 and cfg_aug.cutmix_alpha <= 0:
        return None
    return MixBatch(cfg_aug, task, num_classes, label_smoothing)
