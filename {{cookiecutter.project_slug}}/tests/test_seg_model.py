"""task=segmentation: the smp model around the timm backbone, its head (decoder + segmentation head) for the prior,
freezing and the parameter groups, its config checks, export, and the augmentations on masks."""

import copy
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn

from {{ cookiecutter.package_name }} import config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import augment
from {{ cookiecutter.package_name }}.engine.trainer import make_optimizer
from {{ cookiecutter.package_name }}.modeling import models

N_CLASSES = 3
SMALL_DECODER = [32, 16, 8, 8, 8]


def seg_config(**model: object) -> config.Config:
    cfg = config.Config()
    cfg.task = "segmentation"
    cfg.model.backbone = "test_resnet"
    cfg.model.pretrained = False
    cfg.model.decoder_channels = list(SMALL_DECODER)
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


@pytest.fixture(scope="module")
def seg_model() -> nn.Module:
    torch.manual_seed(0)
    return models.build_model(seg_config(), N_CLASSES)


def trainable(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("hw", [(64, 64), (64, 96), (96, 32)])
def test_logits_are_one_map_per_class_at_the_input_size(seg_model, hw):
    with torch.no_grad():
        out = seg_model.eval()(torch.randn(2, 3, *hw))
    assert out.shape == (2, N_CLASSES, *hw) and out.dtype == torch.float32


def test_grayscale_input_and_other_architectures():
    for arch, channels in (("fpn", None), ("deeplabv3plus", [16]), ("unetplusplus", [16, 16, 8, 8, 8])):
        model = models.build_model(seg_config(arch=arch, decoder_channels=channels, in_chans=1), 2).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2, 64, 64), arch


def test_init_head_puts_the_prior_in_the_segmentation_head(seg_model):
    """Mean sigmoid of the first output over a random image is the pixel prior, in every class."""
    model = copy.deepcopy(seg_model).eval()
    prior = torch.tensor([0.02, 0.3, 0.7])
    layers = models.output_layers(model, N_CLASSES)
    assert layers == [model.segmentation_head[0]]  # smp's 3x3 conv: the head's last, not a decoder conv
    assert models.init_head(model, torch.logit(prior)) == 1
    with torch.no_grad():
        p = torch.sigmoid(model(torch.rand(2, 3, 64, 64) * 4 - 2)).mean((0, 2, 3))
    torch.testing.assert_close(p, prior, atol=1e-4, rtol=0)


def test_a_decoder_stage_with_as_many_channels_as_classes_is_not_taken_for_the_output():
    model = models.build_model(seg_config(decoder_channels=[16, 8, 8, 8, N_CLASSES]), N_CLASSES)
    assert models.output_layers(model, N_CLASSES) == [model.segmentation_head[0]]


def test_the_head_is_everything_but_the_encoder(seg_model):
    model = copy.deepcopy(seg_model)
    head = models.head_parameter_ids(model)
    assert head == ids(model.decoder) | ids(model.segmentation_head)
    assert head.isdisjoint(ids(model.encoder)) and head | ids(model.encoder) == ids(model)


def test_freezing_freezes_exactly_the_encoder_and_keeps_its_statistics(seg_model):
    model = copy.deepcopy(seg_model).train()
    models.set_backbone_trainable(model, False)
    assert trainable(model) == ids(model.decoder) | ids(model.segmentation_head)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    encoder_norms = {id(m) for m in model.encoder.modules()}
    assert all(m.training == (id(m) not in encoder_norms) for m in norms)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items() if "running" in k}
    model(torch.randn(2, 3, 64, 64))
    assert before and all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in before.items())
    model.train()
    models.set_backbone_trainable(model, True)
    assert trainable(model) == ids(model)


def test_parameter_groups_put_the_encoder_in_the_backbone_groups(seg_model):
    cfg = seg_config(backbone_lr_mult=0.1)
    cfg.optim.lr = 1e-3
    opt = make_optimizer(cfg, seg_model, total_steps=10)
    by_name = {g["name"]: g for g in opt.param_groups}
    backbone = {id(p) for name, g in by_name.items() if name.startswith("backbone") for p in g["params"]}
    head = {id(p) for name, g in by_name.items() if name.startswith("head") for p in g["params"]}
    assert backbone == ids(seg_model.encoder) and head == ids(seg_model) - ids(seg_model.encoder)
    assert by_name["backbone"]["lr"] == pytest.approx(0.1 * by_name["head"]["lr"])


def test_normalisation_comes_from_the_timm_encoder(seg_model):
    """test_resnet's pretrained_cfg says mean = std = 0.5 (not ImageNet's): read through smp's tu- encoder."""
    pcfg = seg_model.encoder.model.pretrained_cfg
    mean, std = augment.resolve_normalization(config.AugmentConfig(), seg_model, 3)
    assert mean == tuple(pcfg["mean"]) and std == tuple(pcfg["std"]) and mean != augment.IMAGENET_MEAN


def test_ema_copies_and_pickles(seg_model):
    model = copy.deepcopy(seg_model)
    ema = ModelEmaV3(model, decay=0.9)
    ema.update(model)
    assert isinstance(pickle.loads(pickle.dumps(model)), type(model))


def test_torchscript_and_onnx_export_match(seg_model):
    """torch.jit.trace and the TorchScript-based ONNX exporter take the smp model; ONNX with dynamic H and W."""
    ort = pytest.importorskip("onnxruntime")
    model = copy.deepcopy(seg_model).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), want)
        f = io.BytesIO()
        axes = {"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}}
        torch.onnx.export(model, x, f, dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes=axes)
    session = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    other = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        want_other = model(other).numpy()
    np.testing.assert_allclose(session.run(None, {"x": other.numpy()})[0], want_other, atol=1e-4, rtol=0)


# --- config checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"arch": "unet3d"}, ["'model.arch'", "'unet3d'", "unet", "fpn", "deeplabv3plus"]),
        ({"arch": "fpn", "decoder_channels": [8]}, ["'model.decoder_channels'", "fpn", "takes no decoder"]),
        ({"decoder_channels": [8, 8]}, ["'model.decoder_channels'", "[8, 8]", "5"]),
        ({"decoder_channels": [8, 8, 0, 8, 8]}, ["'model.decoder_channels'", "positive"]),
        ({"arch": "deeplabv3", "decoder_channels": [8, 8]}, ["'model.decoder_channels'", "one width"]),
    ],
)
def test_bad_architecture_settings_are_refused_in_one_line(model, words):
    with pytest.raises(UserError) as e:
        models.build_model(seg_config(**model), N_CLASSES)
    text = str(e.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_the_architectures_are_smps_own():
    import segmentation_models_pytorch as smp

    assert models.list_archs() == list(smp.MODEL_ARCHITECTURES_MAPPING)


@pytest.mark.parametrize("key", ["mixup_alpha", "cutmix_alpha"])
def test_batch_mixing_is_refused_for_segmentation(key):
    """validate's segmentation checks (run last in config.validate, after the metric and loss checks)."""
    cfg = seg_config()
    config._check_segmentation(cfg)
    setattr(cfg.augment, key, 0.4)
    with pytest.raises(UserError) as e:
        config._check_segmentation(cfg)
    assert f"'augment.{key}'" in str(e.value) and "segmentation" in str(e.value) and "\n" not in str(e.value)


def test_pretrained_weights_offline_is_one_line(tmp_path):
    """smp's tu- encoder downloads through timm: the same one-line error as a classifier without network."""
    pkg = config.__package__  # the package's name, not written here: Python files hold no Jinja
    code = (
        f"from {pkg}.modeling import models\n"
        f"from {pkg}.core.errors import UserError\n"
        f"from {pkg} import config\n"
        "cfg = config.Config(); cfg.task = 'segmentation'; cfg.model.backbone = 'test_resnet'\n"
        "try:\n    models.build_model(cfg, 2, pretrained=True)\nexcept UserError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    line = done.stdout.strip()
    assert done.returncode == 0 and "\n" not in line, done.stderr[-2000:]
    assert all(w in line for w in ("model.pretrained=true", "'test_resnet'", "cannot be downloaded")), line


# --- augmentations on masks ----------------------------------------------------------------------------------------


def _leaves(transforms) -> list:
    out = []
    for t in transforms:
        inner = getattr(t, "transforms", None)
        if isinstance(t, A.BaseCompose) and inner is not None:
            out += _leaves(inner)
        else:
            out.append(t)
    return out


def _without_image_only(transforms) -> list:
    """The preset with every op that changes the image but never the mask replaced by a no-op: pixel ops
    (ImageOnlyTransform) and CoarseDropout, which leaves the mask as it is (fill_mask unset)."""
    out = []
    for t in transforms:
        if isinstance(t, A.BaseCompose):
            t = copy.copy(t)
            t.transforms = _without_image_only(t.transforms)
        elif isinstance(t, A.ImageOnlyTransform) or (isinstance(t, A.CoarseDropout) and t.fill_mask is None):
            t = A.NoOp(p=1.0)
        out.append(t)
    return out


def _shapes(h: int = 80, w: int = 100, c: int = 5) -> np.ndarray:
    """A mask with an L (not symmetric: any flip or turn shows), a block, an empty and a full channel."""
    m = np.zeros((h, w, c), np.uint8)
    m[10:45, 20:32, 0] = 1
    m[10:22, 20:62, 0] = 1
    m[50:72, 60:92, 1] = 1
    m[..., c - 1] = 1
    return m


def _near(a: np.ndarray, b: np.ndarray, r: int = 2) -> np.ndarray:
    """Pixels of `a` within `r` pixels (a square neighbourhood) of a pixel of `b`."""
    p = np.pad(b, r)
    grown = np.zeros_like(b)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            grown |= p[dy : dy + b.shape[0], dx : dx + b.shape[1]]
    return a & grown


@pytest.mark.parametrize("preset", augment.list_presets())
@pytest.mark.parametrize("n_chans", [1, 3])
def test_every_preset_keeps_the_mask_binary_at_the_training_size(preset, n_chans):
    """The full preset, pixel ops included: (size, size, C) uint8 in {0, 1}, nearest-neighbour on the mask."""
    cfg = config.AugmentConfig(image_size=64, preset=preset, hflip=True, vflip=True, rotate90=True)
    pipeline = augment.build_transforms(cfg, True, n_chans)
    pipeline.set_random_seed(0)
    rng = np.random.default_rng(0)
    mask = _shapes()
    for _ in range(30):
        image = rng.integers(0, 256, (80, 100, n_chans), dtype=np.uint8)
        out = pipeline(image=image, mask=mask)
        assert out["image"].shape == (64, 64, n_chans) and out["mask"].shape == (64, 64, mask.shape[2])
        assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"]).tolist()) <= {0, 1}
    every = _leaves(pipeline.transforms)
    assert all(isinstance(t, A.DualTransform | A.ImageOnlyTransform) for t in every), every


@pytest.mark.parametrize("preset", augment.list_presets())
def test_every_preset_moves_the_mask_with_the_image(preset):
    """Geometry alone (the ops that never touch the mask set aside): an image drawn from the mask comes out drawn
    from the mask, but for the seam of bilinear (image) against nearest (mask) interpolation: half a pixel per
    resampling, two resamplings in a row (crop, then affine). A flip or a turn the mask missed moves whole arms."""
    cfg = config.AugmentConfig(image_size=64, preset=preset, hflip=True, vflip=True, rotate90=True)
    pipeline = A.Compose(_without_image_only(augment.build_transforms(cfg, True, 3).transforms), seed=0)
    mask = _shapes()
    image = np.repeat(mask[..., :1] * 255, 3, axis=2)
    still = augment.build_transforms(cfg, False, 3)(image=image, mask=mask)["mask"][..., 0].astype(bool)
    moved = 0
    for _ in range(30):
        out = pipeline(image=image, mask=mask)
        bright = out["image"][..., 0] > 127
        drawn = out["mask"][..., 0].astype(bool)
        assert not (bright & ~_near(bright, drawn)).any() and not (drawn & ~_near(drawn, bright)).any()
        assert (bright != drawn).mean() < 0.05
        moved += not np.array_equal(drawn, still)
    assert moved > 0 or preset == "none"
