"""TTA views: exact inverses, distinct pixel permutations of D4, independent formulas, and merging."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from {{ cookiecutter.package_name }} import cli, config, predict
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data.problem import load_problem
from {{ cookiecutter.package_name }}.engine import scoring, views
from {{ cookiecutter.package_name }}.modeling import tta

from conftest import TINY


def _image(h: int = 5, w: int = 7) -> torch.Tensor:
    # every pixel distinct, so any change of position is visible; non-square catches H/W mix-ups
    return torch.arange(2 * 3 * h * w, dtype=torch.float32).view(2, 3, h, w)


def test_fixed_views_are_the_eight_symmetries_of_the_square():
    x = _image(6, 6)
    outs = {tuple(tta.get_view(name).apply(x).flatten().tolist()) for name in tta.list_tta_views()}
    assert len(tta.list_tta_views()) == 8 and len(outs) == 8


@pytest.mark.parametrize("name", tta.list_tta_views())
def test_invert_apply_is_exact(name):
    view = tta.get_view(name)
    for x in (_image(5, 7), _image(6, 6)):
        assert torch.equal(view.invert(view.apply(x)), x)
        # and the other way round, as used to map a spatial output back
        assert torch.equal(view.apply(view.invert(x)), x)


@pytest.mark.parametrize("name", tta.list_tta_views())
def test_views_permute_pixels(name):
    x = _image(6, 6)
    y = tta.get_view(name).apply(x)
    assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)  # same values, moved
    # the same permutation for every sample and channel: offsets to the first channel map stay constant
    assert torch.equal(y - y[:1, :1], x - x[:1, :1])


def test_d4_views_are_distinct():
    x = _image(6, 6)
    outs = {name: tta.get_view(name).apply(x) for name in tta.list_tta_views()}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.equal(outs[a], outs[b]), (a, b)


def test_views_match_numpy():
    x = _image(5, 7)
    a = x.numpy()
    h, w = a.shape[-2:]
    transverse = np.empty((2, 3, w, h), dtype=a.dtype)  # reflection about the anti-diagonal, pixel by pixel
    for i in range(w):
        for j in range(h):
            transverse[..., i, j] = a[..., h - 1 - j, w - 1 - i]
    expected = {
        "identity": a,
        "hflip": a[..., ::-1],
        "vflip": a[..., ::-1, :],
        "transpose": a.swapaxes(-1, -2),
        "rot90": np.rot90(a, 1, axes=(-2, -1)),
        "rot180": a[..., ::-1, ::-1],
        "rot270": np.rot90(a, -1, axes=(-2, -1)),
        "transverse": transverse,
    }
    for name, exp in expected.items():
        out = tta.get_view(name).apply(x)
        assert torch.equal(out, torch.from_numpy(exp.copy())), name
    assert torch.equal(tta.get_view("hflip").apply(x), torch.flip(x, [-1]))


def test_hflip_of_flipped_image_is_original():
    x = _image()
    assert torch.equal(tta.get_view("hflip").apply(torch.flip(x, [-1])), x)


def test_invariant_model_same_output_on_every_d4_view():
    # per-channel sum of pixels is invariant to any permutation of positions; integer values keep sums exact
    x = torch.randint(0, 100, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    ref = model(x)
    for name in tta.list_tta_views():
        assert torch.equal(model(tta.get_view(name).apply(x)), ref), name


def test_d4_views_are_spatially_consistent_for_segmentation():
    # a per-pixel model commutes with every view: invert(model(apply(x))) == model(x)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    conv = torch.nn.Conv2d(3, 2, kernel_size=1)
    with torch.no_grad():
        ref = conv(x)
        for name in tta.list_tta_views():
            view = tta.get_view(name)
            torch.testing.assert_close(view.invert(conv(view.apply(x))), ref)


def test_scale_views_shapes_and_inverse():
    x = _image(32, 32)
    v = tta.get_view("scale_0.875")
    assert v.apply(x).shape[-2:] == (28, 28)
    assert v.invert(v.apply(x)).shape[-2:] == (32, 32)
    up = tta.get_view("scale_1.125")
    assert up.apply(x).shape[-2:] == (36, 36)
    odd = torch.rand(1, 1, 33, 30)
    assert v.invert(v.apply(odd), size=(33, 30)).shape[-2:] == (33, 30)
    # constant images stay constant; a smooth ramp survives an up-then-down round trip in the interior
    const = torch.full((1, 2, 16, 16), 0.3)
    torch.testing.assert_close(v.apply(const), torch.full((1, 2, 14, 14), 0.3))
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()
    two = tta.get_view("scale_2")
    back = two.invert(two.apply(ramp))
    torch.testing.assert_close(back[..., 1:-1], ramp[..., 1:-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", ["scale_", "scale_x", "scale_0", "scale_-1", "scale_nan", "flip"])
def test_bad_view_names(bad):
    with pytest.raises(UserError):
        tta.get_view(bad)


# ----------------------------------------------------------------------------------------------- merging


P1 = np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
P2 = np.array([[0.8, 0.2], [0.1, 0.9], [0.0, 1.0]])


def test_merge_mean_max():
    np.testing.assert_allclose(tta.merge([P1, P2], "mean"), [[0.5, 0.5], [0.3, 0.7], [0.5, 0.5]])
    np.testing.assert_allclose(tta.merge([P1, P2], "max"), [[0.8, 0.8], [0.5, 0.9], [1.0, 1.0]])


def test_merge_gmean():
    out = tta.merge([P1[:2], P2[:2]], "gmean")
    np.testing.assert_allclose(out, [[0.4, 0.4], [np.sqrt(0.05), np.sqrt(0.45)]], rtol=1e-6)
    norm = tta.merge([P1[:2], P2[:2]], "gmean", normalize_rows=True)
    np.testing.assert_allclose(norm.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(norm[1], np.array([np.sqrt(0.05), np.sqrt(0.45)]) / (np.sqrt(0.05) + np.sqrt(0.45)))


def test_merge_gmean_on_zeros_is_finite():
    out = tta.merge([P1, P2, np.zeros_like(P1)], "gmean", normalize_rows=True)
    assert np.isfinite(out).all()
    out = tta.merge([np.zeros((2, 3)), np.zeros((2, 3))], "gmean", normalize_rows=True)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 1 / 3, rtol=1e-5)


def test_merge_types_and_errors():
    t = tta.merge([torch.tensor(P1), torch.tensor(P2)], "mean")
    assert isinstance(t, torch.Tensor)
    assert isinstance(tta.merge([P1], "max"), np.ndarray)
    np.testing.assert_allclose(tta.merge([P1], "gmean"), np.clip(P1, 1e-7, None), rtol=1e-6)
    with pytest.raises(UserError, match=r"tta\.merge"):
        tta.merge([P1], "median")
    with pytest.raises(ValueError, match="shape"):
        tta.merge([P1, P1[:2]])


# ----------------------------------------------------------------------------------------------- tta.views: auto


def test_greedy_keeps_only_views_that_raise_the_score():
    """Accuracy on 4 rows: 'good' fixes row 2 when merged with identity, 'bad' breaks rows 0 and 1, 'same' repeats
    identity (no gain, so not kept), 'later' helps only once 'good' is in."""
    y = np.array([0, 1, 1, 0])
    preds = {
        "identity": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]]),
        "good": np.array([[0.8, 0.2], [0.3, 0.7], [0.0, 1.0], [0.5, 0.5]]),
        "bad": np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]),
        "same": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]]),
    }

    def accuracy(p):
        return float((p.argmax(1) == y).mean())

    chosen, steps = tta.greedy_views(preds, accuracy)
    assert chosen == ["identity", "good"] and [s["gain"] for s in steps] == [0.75, 1.0]
    only_bad = {k: preds[k] for k in ("identity", "bad", "same")}
    assert tta.greedy_views(only_bad, accuracy)[0] == ["identity"]  # nothing raises the score: identity alone


def test_tta_views_auto_in_the_config(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("tta:\n  views: auto\n  candidates: [hflip, scale_0.9]\n")
    assert config.load(path).tta.views == ["auto"]  # a bare word reads as the one-element list
    assert config.load(tmp_path / "e.yaml", ["tta.views=auto"]).tta.views == ["auto"]
    with pytest.raises(UserError, match="stands alone"):
        config.load(path, ["tta.views=[auto,hflip]"])
    with pytest.raises(UserError, match="flop"):
        config.load(path, ["tta.candidates=[hflip,flop]"])
    assert config.TTAConfig().candidates == []  # empty: tta.default_candidates, every registered view among them
    assert set(tta.list_tta_views()) <= set(tta.default_candidates())


@pytest.mark.e2e
def test_tta_views_auto_never_lowers_the_oof_score_on_the_demo(tmp_path, new_project, monkeypatch):
    extra = TINY.replace("epochs: 1", "epochs: 3").replace("limit_batches: 4", "limit_batches: 12")  # learns a bit
    new_project(tmp_path, n_folds=2, extra=extra + "optim:\n  lr: 0.01\n")
    path = tmp_path / "configs" / "exp.yaml"
    assert cli.main(["train", "-c", str(path)]) == 0
    assert cli.main(["predict", "-c", str(path), "tta.views=auto"]) == 0
    cfg = config.load(path, ["tta.views=auto"])
    cv = json.loads(cfg.run.cv.read_text())
    auto = cv["tta_auto"]
    assert auto["candidates"][0] == "identity" and auto["views"][0] == "identity"
    assert auto["chosen"] >= auto["identity"]  # accuracy: higher is better
    assert auto["identity"] == pytest.approx(cv["cv"])  # the identity view is the training-time OOF prediction
    assert cv["tta_views"] == auto["views"] and cv["cv_tta"] == pytest.approx(auto["chosen"], abs=1e-12)
    scores = [s["score"] for s in auto["steps"]]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)  # each kept view raised it
    # the test predictions were made with the chosen views, and are those of an explicit run with them
    source = json.loads((cfg.run_dir / "test_pred.csv.source.json").read_text())
    assert all(f["views"] == auto["views"] for f in source["folds"].values())
    auto_test = pd.read_csv(cfg.run.test_pred)
    # merging every candidate would have lowered the score: the choice mattered
    every = views.with_views(cfg, auto["candidates"])
    merged = predict.predict_oof_tta(every)
    assert scoring.score_oof(every, load_problem(every), merged)[1] < auto["identity"]
    explicit = predict.predict_test(views.with_views(cfg, auto["views"]))
    np.testing.assert_allclose(explicit.iloc[:, 1:].to_numpy(), auto_test.iloc[:, 1:].to_numpy(), atol=1e-6)
    # a second predict reuses the choice (same checkpoints, same candidates) and the OOF score it was chosen with

    def no_new_choice(cfg):
        raise AssertionError("the views were chosen already")

    monkeypatch.setattr(views, "choose_views", no_new_choice)
    assert cli.main(["predict", "-c", str(path), "tta.views=auto"]) == 0
    again = json.loads(cfg.run.cv.read_text())
    assert again["tta_auto"] == auto and again.get("cv_tta", again["cv"]) == pytest.approx(auto["chosen"], abs=1e-12)
    # whatever was chosen is what the test set is predicted with: here a choice of two views, as if made on OOF
    cfg.run.write_tta_choice(dataclasses.replace(cfg.run.read_tta_choice(), views=["identity", "vflip"]))
    assert cli.main(["predict", "-c", str(path), "tta.views=auto"]) == 0
    source = json.loads((cfg.run_dir / "test_pred.csv.source.json").read_text())
    assert all(f["views"] == ["identity", "vflip"] for f in source["folds"].values())
    two = predict.predict_test(views.with_views(cfg, ["identity", "vflip"]))
    np.testing.assert_allclose(pd.read_csv(cfg.run.test_pred).iloc[:, 1:].to_numpy(), two.iloc[:, 1:].to_numpy())
    assert json.loads(cfg.run.cv.read_text())["tta_views"] == ["identity", "vflip"]
