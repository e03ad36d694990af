"""LR range test on a small real problem: the sweep, early stop, the valley suggestion, exact restoration, the plot."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.runs import stamp
from {{ cookiecutter.package_name }}.engine import lr as lr_range

from conftest import small_config


def _problem(seed: int = 0):
    """3-class softmax regression target on 10 features, learnt by a tiny MLP with BatchNorm and dropout
    (buffers and RNG that lr_find must put back)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g) + 0.5 * torch.randn(512, 3, generator=g)).argmax(1)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 512, 32)]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
    return model, batches, lambda b: nn.functional.cross_entropy(model(b[0]), b[1])


def test_sweep_is_exponential_and_keeps_group_ratios():
    model, batches, loss_fn = _problem()
    opt = torch.optim.SGD(
        [{"params": model[4].parameters(), "lr": 1e-3}, {"params": model[:4].parameters(), "lr": 1e-4}],
        momentum=0.9,
    )
    seen = []

    def compute_loss(b):
        seen.append([g["lr"] for g in opt.param_groups])
        return loss_fn(b)

    res = lr_range.lr_find(model, opt, batches, compute_loss, start_lr=1e-6, end_lr=1e-2, num_iter=40)
    assert not res.diverged and len(res.lrs) == len(res.losses) == 40  # 16 batches, cycled
    lrs = np.array(res.lrs)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-2)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1e-2 / 1e-6) ** (1 / 39), rtol=1e-9)
    seen_arr = np.array(seen)
    np.testing.assert_allclose(seen_arr[:, 0], lrs, rtol=1e-12)  # the sweep drives the largest-LR group
    np.testing.assert_allclose(seen_arr[:, 1] / seen_arr[:, 0], 0.1, rtol=1e-12)  # ... and the ratio holds
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]


def test_losses_are_smoothed_and_bias_corrected():
    model, batches, loss_fn = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    raw = []

    def compute_loss(b):
        loss = loss_fn(b)
        raw.append(loss.item())
        return loss

    res = lr_range.lr_find(model, opt, batches, compute_loss, start_lr=1e-9, end_lr=1e-8, num_iter=10, smooth=0.9)
    # Exponential moving average with weights 0.1 * 0.9**(i-j), divided by the weights' sum 1 - 0.9**(i+1).
    for i in range(10):
        w = np.array([0.1 * 0.9 ** (i - j) for j in range(i + 1)])
        assert res.losses[i] == pytest.approx(np.dot(w, raw[: i + 1]) / w.sum(), rel=1e-6)


@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), torch.optim.AdamW])
def test_stops_on_divergence_and_suggests_a_lr_that_trains(make_opt):
    model, batches, loss_fn = _problem()
    opt = make_opt(model.parameters())
    res = lr_range.lr_find(model, opt, batches, loss_fn, start_lr=1e-7, end_lr=100.0, num_iter=100)
    assert res.diverged and len(res.lrs) < 100
    assert res.losses[-1] > 4.0 * min(res.losses)
    best = res.lrs[int(np.argmin(res.losses))]
    assert 1e-7 <= res.suggestion < best < res.lrs[-1]  # below the minimum, below the blow-up
    # Training at the suggestion actually works: 60 updates cut the loss on the whole set.
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    model.eval()
    start = nn.functional.cross_entropy(model(x), y).item()
    for g in opt.param_groups:
        g["lr"] = res.suggestion
    model.train()
    for i in range(60):
        opt.zero_grad()
        loss_fn(batches[i % len(batches)]).backward()
        opt.step()
    model.eval()
    assert nn.functional.cross_entropy(model(x), y).item() < 0.9 * start


def _train(model, opt, batches, loss_fn, steps):
    for b in batches[:steps]:
        opt.zero_grad()
        loss_fn(b).backward()
        opt.step()


def test_model_optimizer_and_rng_are_restored_exactly():
    # Run A: 3 updates, 3 more. Run B: 3 updates, lr_find, 3 more. Same weights, bit for bit: lr_find put back the
    # weights, BatchNorm buffers, AdamW's moments and step counts, the LRs and the RNG that dropout draws from.
    runs = []
    for with_find in (False, True):
        model, batches, loss_fn = _problem()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _train(model, opt, batches, loss_fn, 3)
        if with_find:
            before = {k: v.clone() for k, v in model.state_dict().items()}
            model.eval()
            res = lr_range.lr_find(model, opt, batches, loss_fn, end_lr=100.0, num_iter=50)
            assert res.diverged  # the sweep really wrecked the weights before they were restored
            assert not model.training
            model.train()
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), k
            assert all(p.grad is None for p in model.parameters())
        _train(model, opt, batches[3:], loss_fn, 3)
        runs.append(model.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_grad_scaler_is_used_and_restored():
    # Loss scaling by a power of two is exact in float32: the sweep is the same as without a scaler.
    results = []
    for use_scaler in (False, True):
        model, batches, loss_fn = _problem()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3) if use_scaler else None
        results.append(lr_range.lr_find(model, opt, batches, loss_fn, end_lr=1.0, num_iter=30, scaler=scaler))
        if scaler is not None:
            assert scaler.get_scale() == 2.0**10 and scaler.state_dict()["_growth_tracker"] == 0
    assert results[1].lrs == results[0].lrs
    np.testing.assert_allclose(results[1].losses, results[0].losses, rtol=1e-6)


def test_restores_even_when_the_loss_raises():
    model, batches, loss_fn = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing(b):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return loss_fn(b)

    with pytest.raises(RuntimeError, match="boom"):
        lr_range.lr_find(model, opt, batches, failing, start_lr=1e-2, end_lr=10.0, num_iter=10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 0.1


def test_batches_that_cannot_be_cycled_fail_clearly():
    model, batches, loss_fn = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no batch"):
        lr_range.lr_find(model, opt, [], loss_fn)
    with pytest.raises(ValueError, match="cannot restart"):
        lr_range.lr_find(model, opt, iter(batches[:2]), loss_fn, num_iter=5)


def test_valley_on_a_known_curve():
    lrs = list(10 ** np.linspace(-6, 0, 61))
    plateau = [1.0] * 30  # equal values: at most one of them is in a strictly decreasing subsequence
    descent = [1.0 - 0.04 * k for k in range(1, 22)]  # points 30..50
    rise = [0.16 + 0.1 * k for k in range(1, 11)]  # points 51..60
    # The valley: one plateau point + the 21 descent points, ending at point 50 -> points 29..50; 2/3 down: point 43.
    assert lr_range.suggest_valley(lrs, plateau + descent + rise) == pytest.approx(lrs[43], rel=1e-9)
    assert lr_range.suggest_valley(lrs[:1], [1.0]) is None


def test_suggestion_is_the_middle_of_the_descent_despite_a_sloped_plateau_and_a_noisy_floor():
    # What a head started at the prior gives: a plateau that decreases smoothly, then the real descent, then a flat
    # noisy floor whose lowest point lies far right, then the blow-up.
    rng = np.random.default_rng(0)
    lrs = list(10 ** np.linspace(-6, 1, 100))
    plateau = [1.0 - 1e-5 * i for i in range(50)]  # points 0..49
    descent = [1.0 - 0.025 * (k + 1) for k in range(20)]  # points 50..69: 0.975 ... 0.5
    floor = list(0.5 + 0.01 * rng.uniform(-1, 1, 20))  # points 70..89
    floor[18] = 0.49  # the lowest point: far right on the floor
    rise = [0.6 + 0.2 * k for k in range(10)]
    losses = plateau + descent + floor + rise
    # plateau ~1.0 (the median of points 10..29), floor 0.49, a fall of ~0.51: 30% of it is covered from point 56
    # (0.825) on, 80% at point 66 (0.575); the middle, on the log scale, is point 61.
    assert lr_range.suggest_lr(lrs, losses) == pytest.approx(lrs[61], rel=1e-9)
    assert lr_range.suggest_lr(lrs, [1.0] * 30) == lr_range.suggest_valley(lrs, [1.0] * 30)  # no descent: the fallback


def test_plot_is_a_png(tmp_path):
    model, batches, loss_fn = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    res = lr_range.lr_find(model, opt, batches, loss_fn, end_lr=100.0, num_iter=60)
    out = lr_range.plot_lr_find(res, tmp_path / "exp" / "lr_find.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        im.verify()
        assert im.format == "PNG" and min(im.size) > 100
    assert [p.name for p in out.parent.iterdir()] == ["lr_find.png"]  # no temporary file left behind
    assert math.isfinite(res.suggestion)


@pytest.mark.e2e
def test_auto_lr_sweeps_once_per_experiment_and_every_fold_trains_at_its_suggestion(small_project, capsys):
    small_config(small_project, "auto")
    path = small_project / "configs" / "auto.yaml"
    run = small_project / "outputs" / "auto"
    assert cli.main(["train", "-c", str(path), "--fold", "0", "optim.lr=auto"]) == 0
    out = capsys.readouterr().out
    assert "running the LR finder on fold 0" in out
    sweep = json.loads((run / "lr_find.json").read_text())
    lr = sweep["suggestion"]
    assert 1e-6 < lr < 10 and len(sweep["lrs"]) == len(sweep["losses"]) <= lr_range.SWEEP["num_iter"]
    assert f"optim.lr=auto -> {lr:.3g}" in out
    assert (run / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert config.load(run / "config.yaml").optim.lr == pytest.approx(lr)  # the run records the LR it used
    before = stamp(run / "lr_find.json")

    assert cli.main(["train", "-c", str(path), "--fold", "1", "optim.lr=auto"]) == 0
    out = capsys.readouterr().out
    assert "running the LR finder" not in out and f"optim.lr=auto -> {lr:.3g}" in out
    assert stamp(run / "lr_find.json") == before
    cv = json.loads((run / "cv.json").read_text())
    assert cv["lr"] == pytest.approx(lr) and cv["lr_auto"] is True

    # The cache holds while only what the sweep ignores changes; anything it depends on makes it sweep again.
    assert lr_range.cached_sweep(config.load(path, ["optim.lr=auto", "train.epochs=9", "tta.views=[hflip]"]))
    assert lr_range.cached_sweep(config.load(path, ["optim.lr=auto", "augment.preset=none"])) is None
    assert lr_range.cached_sweep(config.load(path, ["optim.lr=auto", "model.drop_rate=0.2"])) is None
