"""Augmentation presets (shapes, normalisation, flips only when allowed) and mixup / cutmix targets."""

from dataclasses import replace
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import timm
import torch

from {{ cookiecutter.package_name }} import aug_preview, cli, config
from {{ cookiecutter.package_name }}.config import AugmentConfig
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import augment
from {{ cookiecutter.package_name }}.data.images import ImageDataset, set_epoch

from conftest import TINY

SIZE = 24


def _cfg(**kw) -> AugmentConfig:
    return replace(AugmentConfig(image_size=SIZE), **kw)


def _image(chans: int, h: int = 30, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, chans), dtype=np.uint8)


@pytest.mark.parametrize("preset", augment.list_presets())
@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("train", [True, False])
def test_every_preset_gives_uint8_hwc_of_the_training_size(preset, chans, train):
    cfg = _cfg(preset=preset, hflip=True, vflip=True, rotate90=True)
    tf = augment.build_transforms(cfg, train, chans)
    for seed in range(8):  # several draws so that the random branches run
        out = tf(image=_image(chans, seed=seed))["image"]
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8
        assert out.reshape(SIZE, SIZE, -1).shape == (SIZE, SIZE, chans)


@pytest.mark.parametrize("preset", augment.list_presets())
def test_eval_is_deterministic_and_ignores_preset(preset):
    img = _image(3)
    a = augment.build_transforms(_cfg(preset=preset), False, 3)(image=img)["image"]
    b = augment.build_transforms(_cfg(preset="none"), False, 3)(image=img)["image"]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_normalize_exact_and_keeps_the_memory_format(chans, memory_format):
    mean = (0.1, 0.5, 0.9)[:chans]
    std = (0.2, 0.25, 0.5)[:chans]
    values = torch.tensor([30, 128, 250][:chans], dtype=torch.uint8)
    x = values.view(1, chans, 1, 1).expand(2, chans, 5, 4).contiguous(memory_format=memory_format)
    out = augment.Normalize(mean, std)(x)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=memory_format)
    expected = (values.double() / 255.0 - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(
        std, dtype=torch.float64
    )
    for c in range(chans):
        torch.testing.assert_close(out[:, c].double(), expected[c].expand(2, 5, 4), rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="2 mean values but 1 std"):
        augment.Normalize((0.1, 0.2), (0.5,))


def _applied_ops(preset: str, chans: int, draws: int, **kw) -> list[list[tuple[str, dict]]]:
    """The ops (leaf transforms after the resize, flips off) that each of `draws` images went through."""
    steps = augment.PRESETS.get(preset)(_cfg(preset=preset, hflip=False, **kw), chans)
    compose = A.Compose(steps, save_applied_params=True, seed=0)
    applied = [compose(image=_image(chans, seed=i))["applied_transforms"] for i in range(draws)]
    assert all(a[0][0] == "Resize" for a in applied)
    return [a[1:] for a in applied]


@pytest.mark.parametrize("chans", [1, 3])
def test_trivial_applies_exactly_one_op_per_image_drawn_from_every_op(chans):
    applied = _applied_ops("trivial", chans, 400)
    assert [len(a) for a in applied] == [1] * 400
    seen = {a[0][0] for a in applied}
    expected = {"NoOp", "Affine", "RandomBrightnessContrast", "Sharpen", "Posterize", "Solarize", "Equalize",
                "AutoContrast"} | ({"ColorJitter"} if chans == 3 else set())  # fmt: skip
    assert seen == expected  # colour ops only for RGB
    # random magnitude: the rotation angles spread over (-30, 30) instead of sitting at one value
    angles = [p["rotate"] for a in applied for name, p in a if name == "Affine" and p["rotate"] != 0]
    assert len(angles) > 5 and max(angles) > 5 and min(angles) < -5 and len(set(angles)) == len(angles)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("chans", [1, 3])
def test_randaugment_applies_n_ops_at_magnitude_m(n, chans):
    applied = _applied_ops("randaugment", chans, 200, randaugment_n=n, randaugment_m=5)
    assert [len(a) for a in applied] == [n] * 200
    # magnitude 5 of 10: every rotation is +-15 degrees (half of the 30 at the strongest level), either way
    angles = {round(p["rotate"], 6) for a in applied for name, p in a if name == "Affine" and p["rotate"] != 0}
    assert angles == {-15.0, 15.0}
    if chans == 1:
        assert not any(name == "ColorJitter" for a in applied for name, _ in a)


def test_randaugment_n_is_checked_against_the_ops_for_the_channels(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("model:\n  in_chans: 1\n")
    n_gray = len(augment.aug_ops(1))
    assert n_gray < len(augment.aug_ops(3))
    assert config.load(path, [f"augment.randaugment_n={n_gray}"]).augment.randaugment_n == n_gray
    with pytest.raises(UserError, match=r"augment\.randaugment_n"):
        config.load(path, [f"augment.randaugment_n={n_gray + 1}"])
    with pytest.raises(UserError, match=r"augment\.randaugment_m"):
        config.load(path, ["augment.randaugment_m=11"])


def test_aug_preview_command_writes_the_grid(tmp_path, new_project, capsys):
    cfg = new_project(tmp_path, extra=TINY)
    path = tmp_path / "configs" / "exp.yaml"
    assert cli.main(["aug-preview", "-c", str(path), "--images", "3", "--draws", "4", "augment.preset=trivial"]) == 0
    png = cfg.run.aug_preview
    assert png.read_bytes()[:4] == b"\x89PNG" and "3 training images x 4 draws" in capsys.readouterr().out
    # the grid's content: per image the resized original, then draws that the preset changed; the same every time
    trivial = config.load(path, ["augment.preset=trivial"])
    images = [np.asarray(np.random.default_rng(i).integers(0, 256, (20, 20, 1)), dtype=np.uint8) for i in range(3)]
    rows = aug_preview.preview_rows(images, trivial, 6)
    assert [len(r) for r in rows] == [7, 7, 7] and all(a.shape == (16, 16, 1) for r in rows for a in r)
    assert all(np.array_equal(r[0], A.Resize(16, 16)(image=img)["image"]) for r, img in zip(rows, images, strict=True))
    assert all(any(not np.array_equal(d, r[0]) for d in r[1:]) for r in rows)
    again = aug_preview.preview_rows(images, trivial, 6)
    assert all(np.array_equal(a, b) for r, q in zip(rows, again, strict=True) for a, b in zip(r, q, strict=True))
    assert cli.main(["aug-preview", "-c", str(path), "--draws", "0"]) == 2


# ----------------------------------------------------------------------------------------------- augmix / autoaugment


def _leaves(t) -> list:
    """The leaf transforms under a composition (OneOf, Sequential, AugMix's ops)."""
    inner = t.ops if isinstance(t, augment.AugMix) else t.transforms if isinstance(t, A.BaseCompose) else None
    return [leaf for child in inner for leaf in _leaves(child)] if inner else [t]


@pytest.mark.parametrize("chans", [1, 3])
def test_augmix_mixes_chains_of_every_searched_op_but_identity(chans):
    steps = augment.PRESETS.get("augmix")(_cfg(preset="augmix", hflip=False, augmix_severity=5), chans)
    assert isinstance(steps[0], A.Resize) and isinstance(steps[-1], augment.AugMix) and len(steps) == 2
    kinds = {type(t).__name__ for op in steps[-1].ops for t in _leaves(op)}
    expected = {"Affine", "RandomBrightnessContrast", "Sharpen", "Posterize", "Solarize", "Equalize", "AutoContrast"}
    assert kinds == expected | ({"ColorJitter"} if chans == 3 else set())  # no colour op for grayscale, no NoOp
    # severity 5 of 10: a rotation is drawn in [0, 15] degrees either way
    rotations = [t for op in steps[-1].ops for t in _leaves(op) if type(t).__name__ == "Affine" and t.rotate != (0, 0)]
    assert sorted(t.rotate for t in rotations) == [(-15.0, 0.0), (0.0, 15.0)]


def test_augmix_is_the_blend_of_the_original_with_a_weighted_mixture_of_chains():
    img = _image(3, 8, 8)
    # the mixture of chains of identities is the image itself, whatever the weights
    assert np.array_equal(augment.AugMix([A.NoOp(p=1.0)], width=3)(image=img)["image"], img)
    mix = augment.AugMix([A.InvertImg(p=1.0), A.NoOp(p=1.0)], width=2, depth=1)
    # chain 0 inverts, chain 1 keeps: out = (1 - m) img + m (w0 (255 - img) + w1 img)
    weights, m = np.array([0.3, 0.7], dtype=np.float32), 0.4
    out = mix.apply(img, weights=weights, m=m, chains=[[0], [1]])
    expected = (1 - m) * img + m * (0.3 * (255.0 - img) + 0.7 * img)
    assert out.dtype == np.uint8 and np.abs(out.astype(float) - expected).max() <= 0.5 + 1e-4
    # two inversions in one chain cancel
    np.testing.assert_array_equal(mix.apply(img, weights=weights, m=1.0, chains=[[0, 0], [1]]), img)
    # the draws: weights on the simplex, m in [0, 1], `depth` ops per chain (0: 1 to 3)
    params = [augment.AugMix([A.NoOp(p=1.0)] * 4, width=3).get_params() for _ in range(200)]
    assert all(p["weights"].shape == (3,) and abs(p["weights"].sum() - 1) < 1e-5 and 0 <= p["m"] <= 1 for p in params)
    assert {len(c) for p in params for c in p["chains"]} == {1, 2, 3}
    assert {len(c) for c in augment.AugMix([A.NoOp(p=1.0)], width=4, depth=2).get_params()["chains"]} == {2}


def test_autoaugment_is_the_imagenet_policy_on_the_op_table():
    assert len(augment.AUTOAUGMENT_IMAGENET) == 25
    rgb, gray = augment.autoaugment_policy(3), augment.autoaugment_policy(1)
    assert all(len(sub) == 2 for sub in rgb) and all(1 <= len(sub) <= 2 for sub in gray)
    assert not any(op == "color" for sub in gray for op, _, _ in sub)
    assert sum(len(sub) for sub in rgb) - sum(len(sub) for sub in gray) == 6  # the six colour steps
    # magnitude bin 9 of 0..9 is the table's strongest level; posterize 8 keeps 4 bits (torchvision's value)
    assert rgb[0] == [("posterize", 0.4, 8 / 9), ("rotate", 0.6, 1.0)]
    assert augment.AUG_OPS.get("posterize")(8 / 9, 8 / 9).num_bits == (4, 4)
    assert "invert" in augment.AUG_OPS and "invert" not in augment.aug_ops(3)  # not among the searched ops


@pytest.mark.parametrize("chans", [1, 3])
def test_autoaugment_applies_one_sub_policy_per_image(chans):
    applied = _applied_ops("autoaugment", chans, 400)
    assert all(len(a) <= 2 for a in applied) and any(len(a) == 2 for a in applied) and any(not a for a in applied)
    names = {name for a in applied for name, _ in a}
    assert names <= {"Affine", "Posterize", "Solarize", "Equalize", "AutoContrast", "InvertImg", "ColorJitter",
                     "RandomBrightnessContrast", "Sharpen", "NoOp"}  # fmt: skip
    assert ("ColorJitter" in names) == (chans == 3)
    # rotations come at the policy's magnitudes 3, 8 and 9 of 9 (10, 26.7 and 30 degrees), either way (3 is rare)
    angles = {round(p["rotate"], 4) for a in applied for name, p in a if name == "Affine" and p["rotate"]}
    strong = {round(30 * 8 / 9, 4), 30.0}
    assert strong | {-a for a in strong} <= angles <= strong | {-a for a in strong} | {10.0, -10.0}


class _Arrays:
    """A decode cache stand-in: path -> its image."""

    def __init__(self, images: dict) -> None:
        self.images = images

    def read(self, path):
        return self.images[path]


@pytest.mark.parametrize("preset", ["augmix", "autoaugment"])
@pytest.mark.parametrize("chans", [1, 3])
def test_new_presets_are_deterministic_under_the_datasets_seeding(preset, chans):
    images = {f"{i}.png": _image(chans, seed=i) for i in range(6)}

    def epoch(n: int, order) -> list[np.ndarray]:
        tf = augment.build_transforms(_cfg(preset=preset), True, chans)  # a fresh worker's copy
        ds = ImageDataset(list(images), None, tf, in_chans=chans, cache=_Arrays(images))
        set_epoch(ds, seed=7, fold=0, epoch=n)
        out = {i: ds[i]["image"].numpy() for i in order}
        return [out[i] for i in range(len(images))]

    first = epoch(0, range(6))
    assert all(a.dtype == np.uint8 and a.shape == (SIZE, SIZE, chans) for a in first)
    again = epoch(0, reversed(range(6)))  # another worker, another order: the same images
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    later = epoch(1, range(6))
    assert any(not np.array_equal(a, b) for a, b in zip(first, later, strict=True))


@pytest.mark.parametrize("preset", ["augmix", "autoaugment"])
@pytest.mark.parametrize("chans", [1, 3])
def test_aug_preview_shows_the_new_presets(tmp_path, new_project, capsys, preset, chans):
    cfg = new_project(tmp_path, extra=TINY)
    path = tmp_path / "configs" / "exp.yaml"
    keys = [f"augment.preset={preset}", f"model.in_chans={chans}"]
    assert cli.main(["aug-preview", "-c", str(path), "--images", "2", "--draws", "3", *keys]) == 0
    assert cfg.run.aug_preview.read_bytes()[:4] == b"\x89PNG"
    assert f"augment.preset={preset}" in capsys.readouterr().out
    loaded = config.load(path, keys)
    images = [_image(chans, 20, 20, seed=i) for i in range(3)]
    rows = aug_preview.preview_rows(images, loaded, 6)
    assert all(a.dtype == np.uint8 and a.shape == (16, 16, chans) for r in rows for a in r)
    assert all(any(not np.array_equal(d, r[0]) for d in r[1:]) for r in rows)
    again = aug_preview.preview_rows(images, loaded, 6)
    assert all(np.array_equal(a, b) for r, q in zip(rows, again, strict=True) for a, b in zip(r, q, strict=True))


def test_the_readme_lists_every_preset():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert [name for name in augment.list_presets() if f"`{name}`" not in readme] == []


def test_augmix_options_are_checked(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("seed: 1\n")
    assert config.load(path, ["augment.preset=augmix", "augment.augmix_depth=2"]).augment.augmix_depth == 2
    for bad in ("augmix_severity=0", "augmix_severity=11", "augmix_width=0", "augmix_depth=-1", "augmix_alpha=0"):
        with pytest.raises(UserError, match=rf"augment\.{bad.split('=')[0]}"):
            config.load(path, [f"augment.{bad}"])
    # a blend of differently warped copies fits no one mask; autoaugment moves the mask with the image
    with pytest.raises(UserError, match=r"augmix.*segmentation"):
        config.load(path, ["task=segmentation", "augment.preset=augmix"])
    assert config.load(path, ["task=segmentation", "augment.preset=autoaugment"]).augment.preset == "autoaugment"


@pytest.mark.parametrize("preset", augment.list_presets())
def test_source_size_loses_nothing(preset):
    """An image shrunk to source_size (a decode cache) still feeds every crop at least SIZE pixels a side: the
    first step is a resize to SIZE, or random crops that are then resized to SIZE, none of them smaller."""
    size = augment.source_size(_cfg(preset=preset), 3)
    first = augment.build_transforms(_cfg(preset=preset), True, 3).transforms[0]
    if isinstance(first, A.Resize):
        assert size == SIZE
        return
    assert isinstance(first, A.RandomResizedCrop)
    first.set_random_seed(0)
    sides = []
    for _ in range(3000):
        x1, y1, x2, y2 = first.get_params_dependent_on_data({"shape": (size, size)}, {})["crop_coords"]
        sides.append(min(x2 - x1, y2 - y1))
    assert SIZE <= min(sides) < SIZE * 1.15  # covered, and not much more than needed (the cache stays small)


def _left_minus_right(out: np.ndarray) -> float:
    half = out.shape[1] // 2
    return float(out[:, :half].mean()) - float(out[:, half:].mean())


@pytest.mark.parametrize("preset", [p for p in augment.list_presets() if p != "none"])
def test_flips_only_when_allowed(preset):
    flip_types = (A.HorizontalFlip, A.VerticalFlip, A.RandomRotate90)
    off = augment.build_transforms(_cfg(preset=preset, hflip=False), True, 1)
    on = augment.build_transforms(_cfg(preset=preset, hflip=True, vflip=True, rotate90=True), True, 1)
    assert not any(isinstance(t, flip_types) for t in off.transforms)
    assert {type(t) for t in on.transforms} >= set(flip_types)


def test_light_never_mirrors_when_hflip_off():
    # bright left half, dark right half: small shifts / rotations keep the left brighter; only a mirror swaps them
    img = np.zeros((SIZE, SIZE, 1), dtype=np.uint8)
    img[:, : SIZE // 2] = 255
    off = augment.build_transforms(_cfg(preset="light", hflip=False), True, 1)
    on = augment.build_transforms(_cfg(preset="light", hflip=True), True, 1)
    assert all(_left_minus_right(off(image=img)["image"]) > 0 for _ in range(100))
    # the same check does see mirrors when they are allowed (P(no flip in 100 draws) = 2**-100)
    assert any(_left_minus_right(on(image=img)["image"]) < 0 for _ in range(100))


def test_resolve_normalization_sources():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    expected = (tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"]))
    assert augment.resolve_normalization(_cfg(), model, 3) == expected
    pc = {"mean": (0.2, 0.4, 0.6), "std": (0.1, 0.2, 0.3)}
    assert augment.resolve_normalization(_cfg(), pc, 3) == ((0.2, 0.4, 0.6), (0.1, 0.2, 0.3))
    mean, std = augment.resolve_normalization(_cfg(), pc, 1)  # grayscale: channel average
    assert mean == pytest.approx((0.4,)) and std == pytest.approx((0.2,))
    mean, _ = augment.resolve_normalization(_cfg(), pc, 4)  # extra channels: R, G, B repeated
    assert mean == (0.2, 0.4, 0.6, 0.2)
    explicit = _cfg(mean=[0.5], std=[0.25])
    assert augment.resolve_normalization(explicit, pc, 1) == ((0.5,), (0.25,))
    assert augment.resolve_normalization(explicit, pc, 3) == ((0.5,) * 3, (0.25,) * 3)
    assert augment.resolve_normalization(_cfg(), None, 3) == (augment.IMAGENET_MEAN, augment.IMAGENET_STD)
    with pytest.raises(UserError, match=r"augment\.mean"):
        augment.resolve_normalization(_cfg(mean=[0.1, 0.2]), None, 3)


# ----------------------------------------------------------------------------------------------- mixup / cutmix


def test_build_mixup_none_when_off():
    assert augment.build_mixup(_cfg(), "multiclass", 10) is None
    assert augment.build_mixup(_cfg(mixup_alpha=0.4), "multiclass", 10) is not None


def _batch(n: int = 8, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_multiclass_targets_and_pairing(smoothing):
    np.random.seed(0)  # timm draws lam from numpy's global generator
    n_classes = 5
    mix = augment.build_mixup(_cfg(mixup_alpha=0.4), "multiclass", n_classes, label_smoothing=smoothing)
    x = _batch()
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    original = x.clone()
    # timm's defaults (1000 classes, smoothing 0.1) must not leak in
    assert (mix.mixup.num_classes, mix.mixup.label_smoothing) == (n_classes, smoothing)
    xm, soft = mix(x, y)
    lam = mix.last_lam
    assert 0.0 < lam < 1.0
    assert soft.shape == (8, n_classes)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert ((soft >= 0) & (soft <= 1)).all()
    torch.testing.assert_close(xm, lam * original + (1 - lam) * original.flip(0))
    off = smoothing / n_classes
    onehot = torch.nn.functional.one_hot(y, n_classes).float() * (1 - smoothing) + off
    torch.testing.assert_close(soft, lam * onehot + (1 - lam) * onehot.flip(0))


@pytest.mark.parametrize("task", ["binary", "multilabel", "regression"])
def test_mixup_other_tasks_mix_targets_with_same_lam(task):
    np.random.seed(1)
    mix = augment.build_mixup(_cfg(mixup_alpha=1.0), task, 3)
    x = _batch()
    g = torch.Generator().manual_seed(1)
    y = {
        "binary": torch.randint(0, 2, (8,), generator=g).float(),
        "multilabel": torch.randint(0, 2, (8, 3), generator=g).float(),
        "regression": torch.randn(8, generator=g) * 10,
    }[task]
    original = x.clone()
    xm, ym = mix(x, y)
    lam = mix.last_lam
    assert 0.0 < lam < 1.0
    assert ym.shape == y.shape
    torch.testing.assert_close(xm, lam * original + (1 - lam) * original.flip(0))
    torch.testing.assert_close(ym, lam * y + (1 - lam) * y.flip(0))
    if task != "regression":
        assert ((ym >= 0) & (ym <= 1)).all()


def test_cutmix_box_area_matches_lam():
    np.random.seed(2)
    n, size, n_classes = 6, 32, 6
    mix = augment.build_mixup(_cfg(cutmix_alpha=1.0), "multiclass", n_classes)
    # sample i is the constant i: after cutmix, pixels still equal to i are outside the pasted box
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    y = torch.arange(n)
    for _ in range(5):
        xm, soft = mix(x.clone(), y)
        kept = (xm == x).float().mean(dim=(1, 2, 3))  # share of each image left untouched
        pasted = xm != x
        assert (xm[pasted.nonzero(as_tuple=True)] == x.flip(0)[pasted.nonzero(as_tuple=True)]).all()
        torch.testing.assert_close(kept, torch.full((n,), mix.last_lam))
        torch.testing.assert_close(soft[torch.arange(n), y], kept)  # target weight of own class == area kept
        torch.testing.assert_close(soft.sum(1), torch.ones(n))


def test_mix_prob_zero_leaves_batch_alone():
    mix = augment.build_mixup(_cfg(mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.0), "multiclass", 3)
    x = _batch(n=4)
    y = torch.tensor([0, 1, 2, 0])
    xm, soft = mix(x.clone(), y)
    assert torch.equal(xm, x)
    assert torch.equal(soft, torch.nn.functional.one_hot(y, 3).float())


def test_soft_multiclass_targets_are_mixed_too():
    np.random.seed(3)
    mix = augment.build_mixup(_cfg(mixup_alpha=0.4), "multiclass", 3)
    y = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])
    _, soft = mix(_batch(n=4), y)
    lam = mix.last_lam
    torch.testing.assert_close(soft, lam * y + (1 - lam) * y.flip(0))
    torch.testing.assert_close(soft.sum(1), torch.ones(4))


def test_odd_batch_is_refused():
    mix = augment.build_mixup(_cfg(mixup_alpha=0.4), "multiclass", 3)
    with pytest.raises(ValueError, match="even"):
        mix(_batch(n=5), torch.zeros(5, dtype=torch.long))
