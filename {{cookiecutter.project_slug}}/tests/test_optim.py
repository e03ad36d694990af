"""Optimizers and LR schedules: Ranger against a hand-written reference, schedule shapes, parameter groups."""

import dataclasses
import io
import math
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from {{ cookiecutter.package_name }} import config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.modeling import models, optim


def _cfg(**kw) -> config.OptimConfig:
    return dataclasses.replace(config.OptimConfig(), **kw)


# ---------------------------------------------------------------------------------------------------------------
# Ranger = RAdam + Lookahead(k=6, alpha=0.5) + gradient centralisation


def _ranger_reference(p0: torch.Tensor, grads: list[torch.Tensor], lr: float, wd: float) -> torch.Tensor:
    """The original Ranger (lessw2020), in plain torch, with pytorch-optimizer's conventions:
    - GC subtracts the mean over all but the first dim from gradients of tensors with more than one dim (a Linear's
      weight row-wise, never a bias), before weight decay and the moments;
    - decoupled weight decay p *= 1 - lr * wd, before the update;
    - betas (0.95, 0.99) (optim.py's choice, fastai's ranger; the original has 0.999), eps 1e-5 added to sqrt(v) where
      v is NOT bias-corrected (the sqrt(1 - beta2^t) is folded into the rectification term r_t; torch's RAdam adds
      eps to sqrt(v_hat) instead);
    - rectified (adaptive) step once rho_t >= 5, i.e. from step 6 with beta2=0.99; before that an SGD-with-momentum
      step lr * m_hat (the original Ranger; pytorch-optimizer's degenerated_to_sgd=True, which optim.py sets);
    - Lookahead: slow weights start as a copy of the initial weights; every k=6 steps slow += 0.5 * (fast - slow),
      then fast = slow.
    """
    beta1, beta2, eps, k, alpha = 0.95, 0.99, 1e-5, 6, 0.5
    rho_inf = 2 / (1 - beta2) - 1
    p, slow = p0.clone(), p0.clone()
    m, v = torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        g = g.clone()
        if g.ndim > 1:
            g = g - g.mean(dim=tuple(range(1, g.ndim)), keepdim=True)
        p = p * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        b2t = beta2**t
        rho = rho_inf - 2 * t * b2t / (1 - b2t)
        m_hat = m / (1 - beta1**t)
        if rho >= 5:
            r = math.sqrt((1 - b2t) * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            p = p - lr * r * m_hat / (v.sqrt() + eps)
        else:
            p = p - lr * m_hat
        if t % k == 0:
            slow = slow + alpha * (p - slow)
            p = slow.clone()
    return p


def test_ranger_matches_radam_lookahead_gc_by_hand():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()  # weight 2x3 (GC, decay), bias 2 (no GC, no decay)
    start = {n: p.detach().clone() for n, p in layer.named_parameters()}
    lr, wd, steps = 0.05, 0.1, 14  # unrectified steps 1-5, rectified from 6, Lookahead syncs at 6 and 12
    gen = torch.Generator().manual_seed(1)
    grads = {
        n: [torch.randn(p.shape, generator=gen, dtype=torch.float64) for _ in range(steps)] for n, p in start.items()
    }
    opt = optim.build_optimizer(layer, _cfg(name="ranger", lr=lr, weight_decay=wd))
    assert type(opt).__name__ == "Ranger"
    for t in range(steps):
        for n, p in layer.named_parameters():
            p.grad = grads[n][t].clone()  # Ranger centralises the gradient in place
        opt.step()
    for n, p in layer.named_parameters():
        expected = _ranger_reference(start[n], grads[n], lr, wd if n == "weight" else 0.0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


def test_ranger_first_step_goes_down_the_gradient():
    # pytorch-optimizer's own default (degenerated_to_sgd=False) steps UP the gradient for 5 steps.
    p = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = optim.OPTIMIZERS.get("ranger")([p], _cfg(lr=0.1, weight_decay=0.0))
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 1.2, 0.95], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# every registered optimizer


def _regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + 0.1
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    return model, lambda: ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize("name", optim.list_optimizers())
def test_every_optimizer_reduces_a_regression_loss(name):
    model, loss_fn = _regression()
    cfg = _cfg(name=name, lr=1e-2, weight_decay=1e-2)
    opt = optim.build_optimizer(model, cfg, total_steps=10)
    sched = optim.build_scheduler(opt, cfg, total_steps=10)  # one_cycle cycles betas/momentum where it can
    before = [p.detach().clone() for p in model.parameters()]
    initial = loss_fn().item()
    for _ in range(3):  # ADOPT and SOAP spend their first step on statistics only
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        sched.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert loss_fn().item() < initial


@pytest.mark.parametrize("name", optim.OPTIMIZERS.names())
def test_every_optimizer_steps_a_small_conv_net(name):
    """What `train` builds: a timm conv net (4-D weights, BatchNorm, head and backbone groups) under the schedule.
    Each optimizer offered takes its steps and lowers the loss on a fixed batch (kron, removed, could not: its
    first step asked for 110 GB)."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4, in_chans=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
    cfg = _cfg(name=name, lr=1e-3)
    opt = optim.build_optimizer(model, cfg, total_steps=6)
    sched = optim.build_scheduler(opt, cfg, total_steps=6)
    loss_fn = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    initial = loss_fn().item()
    for _ in range(6):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        sched.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert loss_fn().item() < initial


def test_default_is_ranger_and_unknown_names_fail_clearly():
    assert config.OptimConfig().name == "ranger"
    offered = {"ranger", "adamw", "sgd", "radam", "lamb", "lars", "madgrad", "ranger21", "lion", "rmsprop", "adagrad"}
    assert offered | {"qhadam"} <= set(optim.list_optimizers())
    with pytest.raises(UserError, match="ranger"):
        optim.build_optimizer(nn.Linear(2, 1), _cfg(name="rangerr"))
    with pytest.raises(ValueError, match="total_steps"):
        optim.build_optimizer(nn.Linear(2, 1), _cfg(name="ranger21"))


# ---------------------------------------------------------------------------------------------------------------
# Lookahead around any optimizer (optim.lookahead)


@pytest.mark.parametrize("name", [n for n in optim.list_optimizers() if not optim.has_lookahead(n)])
def test_lookahead_over_every_optimizer_reduces_a_regression_loss(name):
    model, loss_fn = _regression()
    cfg = _cfg(name=name, lr=1e-2, weight_decay=1e-2, lookahead=True, lookahead_k=2)
    opt = optim.build_optimizer(model, cfg, total_steps=10)
    sched = optim.build_scheduler(opt, cfg, total_steps=10)
    assert type(opt).__name__ == "Lookahead"
    initial = loss_fn().item()
    for _ in range(4):  # two syncs of the slow weights
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        sched.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert loss_fn().item() < initial


@pytest.mark.parametrize("name", ["adamw", "qhadam"])
def test_lookahead_moves_the_slow_weights_alpha_of_the_way_every_k_updates(name):
    """Lookahead(k=3, alpha=0.4) over `name`: after 3 updates the weights are w0 + 0.4 (fast_3 - w0), where fast_3 is
    the plain optimizer's weights after the same 3 updates; the schedule sees the inner optimizer's groups."""
    torch.manual_seed(0)
    start = _Tiny()
    grads = [{n: torch.randn_like(p) for n, p in start.named_parameters()} for _ in range(3)]

    def run(lookahead: bool) -> dict:
        model = _Tiny()
        model.load_state_dict(start.state_dict())
        cfg = _cfg(name=name, lr=0.05, schedule="constant", lookahead=lookahead, lookahead_k=3, lookahead_alpha=0.4)
        opt = optim.build_optimizer(model, cfg)
        sched = optim.build_scheduler(opt, cfg, total_steps=3)
        for g in grads:
            for n, p in model.named_parameters():
                p.grad = g[n].clone()
            opt.step()
            sched.step()
        return {n: p.detach().clone() for n, p in model.named_parameters()}, opt

    fast, plain = run(False)
    slow, wrapped = run(True)
    assert wrapped.param_groups is wrapped.optimizer.param_groups and len(wrapped.param_groups) == 4
    for n, w0 in start.named_parameters():
        torch.testing.assert_close(slow[n], w0.detach() + 0.4 * (fast[n] - w0.detach()))
    # last.pt holds it (tensors and containers only: weights_only=True) and a resumed run gets it back
    buffer = io.BytesIO()
    torch.save(wrapped.state_dict(), buffer)
    buffer.seek(0)
    again = optim.build_optimizer(_Tiny(), _cfg(name=name, lookahead=True, lookahead_k=3, lookahead_alpha=0.4))
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(again.state) == len(wrapped.state) and len(again.optimizer.state) == len(plain.state)


def test_lookahead_is_refused_where_the_optimizer_has_one(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("seed: 1\n")
    assert config.load(path, ["optim.name=rmsprop", "optim.lookahead=true"]).optim.lookahead
    for name in ("ranger", "ranger21"):
        assert optim.has_lookahead(name)
        with pytest.raises(UserError, match=r"optim\.lookahead.*Lookahead already"):
            config.load(path, [f"optim.name={name}", "optim.lookahead=true"])
        with pytest.raises(UserError, match="Lookahead already"):
            optim.build_optimizer(nn.Linear(2, 1), _cfg(name=name, lookahead=True), total_steps=5)
    for bad in ("lookahead_k=0", "lookahead_alpha=0", "lookahead_alpha=1.5"):
        with pytest.raises(UserError, match=rf"optim\.{bad.split('=')[0]}"):
            config.load(path, [f"optim.{bad}"])


def test_qhadam_uses_the_papers_recommended_nus_and_betas():
    opt = optim.build_optimizer(nn.Linear(2, 1), _cfg(name="qhadam"))
    assert type(opt).__name__ == "QHAdam" and opt.defaults["nus"] == (0.7, 1.0)
    assert opt.defaults["betas"] == (0.995, 0.999)


def test_sgd_uses_nesterov_momentum_from_config():
    opt = optim.build_optimizer(nn.Linear(2, 1), _cfg(name="sgd", momentum=0.8))
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"] is True


# ---------------------------------------------------------------------------------------------------------------
# parameter groups


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
def test_param_groups_split_decay_and_head(backbone):
    model = timm.create_model(backbone, pretrained=False, num_classes=5)
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    head = {id(p) for p in model.get_classifier().parameters()}
    groups = optim.param_groups(model, weight_decay=0.05, lr=1e-3, backbone_lr_mult=0.1)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    for name, p in model.named_parameters():
        g = next(g for g in groups if any(q is p for q in g["params"]))
        no_decay = p.ndim == 1 or name in skip  # norm scales/shifts, biases; pos_embed & cls_token on ViT
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
        assert g["lr"] == pytest.approx(1e-3 if id(p) in head else 1e-4), name
    if backbone == "test_vit":
        assert {"pos_embed", "cls_token"} <= skip


def test_decay_and_lr_multiplier_act_in_the_optimizer():
    # SGD without momentum: the update is exactly -lr * (grad + coupled L2 decay), easy to check by hand.
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    opt = optim.build_optimizer(model, _cfg(name="sgd", momentum=0.0, lr=0.1, weight_decay=0.5), backbone_lr_mult=0.2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    head = {id(p) for p in model.get_classifier().parameters()}
    for n, p in model.named_parameters():
        lr = 0.1 if id(p) in head else 0.02
        wd = 0.0 if p.ndim == 1 else 0.5
        torch.testing.assert_close(p.detach(), before[n] - lr * (1 + wd * before[n]), msg=n)


def test_no_weight_decay_names_take_timm_wildcards():
    class Net(nn.Module):  # like XCiT: no_weight_decay() returns {'pos_embed.*', 'cls_token'}
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = nn.Linear(2, 2, bias=False)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 2))
            self.proj = nn.Linear(2, 2, bias=False)

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed.*", "cls_token"}

    net = Net()
    groups = {g["name"]: {id(p) for p in g["params"]} for g in optim.param_groups(net, 0.1, 1e-3)}
    assert groups == {"head": {id(net.proj.weight)}, "head_no_decay": {id(net.pos_embed.weight), id(net.cls_token)}}


def test_model_without_classifier_is_all_head():
    groups = optim.param_groups(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), 0.1, 1e-3, backbone_lr_mult=0.1)
    assert [g["name"] for g in groups] == ["head", "head_no_decay"]
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert all(g["lr"] == 1e-3 for g in groups)


# ---------------------------------------------------------------------------------------------------------------
# schedules


class _Tiny(nn.Module):
    """A backbone and a head, with timm's `get_classifier()`: four parameter groups, at no cost."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.fc = nn.Linear(4, 2)

    def get_classifier(self) -> nn.Module:
        return self.fc


def _lr_curve(schedule: str, total: int, lr: float = 1e-2, mult: float = 0.1, name: str = "ranger", **kw):
    """LR of each group at each of the `total` updates, plus the LR after the last scheduler step."""
    model = _Tiny()
    cfg = _cfg(name=name, lr=lr, schedule=schedule, **kw)
    opt = optim.build_optimizer(model, cfg, total_steps=total, backbone_lr_mult=mult)
    sched = optim.build_scheduler(opt, cfg, total)
    lrs, betas = [], []
    for _ in range(total):
        lrs.append([g["lr"] for g in opt.param_groups])
        betas.append(opt.param_groups[0].get("betas", (None,))[0])
        opt.step()  # no gradients: nothing moves, but the scheduler sees a real update
        sched.step()
    return torch.tensor(lrs, dtype=torch.float64), betas, [g["lr"] for g in opt.param_groups], opt


def _monotone(x: torch.Tensor, up: bool) -> bool:
    d = x.diff()
    return bool((d >= -1e-15).all() if up else (d <= 1e-15).all())


def test_one_cycle_shape():
    lrs, betas, _, opt = _lr_curve("one_cycle", 100, pct_start=0.25, div_factor=25.0, final_div_factor=1e4)
    head = lrs[:, 0]
    peak = int(head.argmax())
    assert peak == 24  # OneCycleLR ends its warm-up at step pct_start * total - 1
    assert head[0].item() == pytest.approx(1e-2 / 25)
    assert head[peak].item() == pytest.approx(1e-2)
    assert head[-1].item() == pytest.approx(1e-2 / (25 * 1e4), rel=1e-3)
    assert _monotone(head[: peak + 1], up=True) and _monotone(head[peak:], up=False)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["head", "head_no_decay", "backbone", "backbone_no_decay"]
    for j, name in enumerate(names):  # the backbone follows the same curve at 0.1x
        torch.testing.assert_close(lrs[:, j], head * (1.0 if name.startswith("head") else 0.1))
    # Ranger's beta1 is cycled against the LR: 0.95 at the ends, 0.85 at the peak.
    assert betas[0] == pytest.approx(0.95) and betas[peak] == pytest.approx(0.85) and betas[-1] > 0.94


def test_flat_cos_shape():
    lrs, _, final, _ = _lr_curve("flat_cos", 100, mult=1.0, flat_pct=0.7)
    head = lrs[:, 0]
    assert torch.all(head[:70] == 1e-2)
    assert bool((head[70:].diff() < 0).all())
    assert 0 < head[-1].item() < 1e-2 * 0.01
    assert final[0] == pytest.approx(0.0, abs=1e-15)


def test_cosine_shape():
    lrs, _, final, _ = _lr_curve("cosine", 100, mult=1.0, warmup_pct=0.05)
    head = lrs[:, 0]
    warm = 5
    torch.testing.assert_close(head[: warm + 1], 1e-2 * torch.arange(1, warm + 2, dtype=torch.float64) / (warm + 1))
    assert int(head.argmax()) == warm
    assert bool((head[warm:].diff() < 0).all())
    assert head[-1].item() < 1e-2 * 0.01 and final[0] == pytest.approx(0.0, abs=1e-15)


def test_constant_shape():
    lrs, _, _, _ = _lr_curve("constant", 10, mult=0.5)
    assert torch.all(lrs[:, 0] == 1e-2) and torch.all(lrs.max(dim=1).values == 1e-2)


def _cosine(step: int, start: int, end: int, floor: float) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - start) / (end - start)))


@pytest.mark.parametrize("mult,starts", [(1.0, [0, 30, 60]), (2.0, [0, 13, 39])])
def test_cosine_restarts_shape(mult, starts):
    """SGDR: 3 cycles fill 90 updates (equal, or each twice the one before: 90 * 1/7, 3/7 -> 13, 39), each a cosine
    from the peak lr down towards lr * floor, restarting at the peak; the run ends at the floor."""
    lrs, _, final, opt = _lr_curve("cosine_restarts", 90, restart_cycles=3, restart_mult=mult, restart_floor=0.1)
    head, ends = lrs[:, 0], [*starts[1:], 90]
    restarts = [0] + [i for i in range(1, 90) if head[i] > head[i - 1]]
    assert restarts == starts
    for start, end in zip(starts, ends, strict=True):
        assert head[start].item() == pytest.approx(1e-2)  # the peak at each restart
        assert bool((head[start:end].diff() < 0).all())
        expected = [1e-2 * _cosine(i, start, end, 0.1) for i in range(start, end)]
        torch.testing.assert_close(head[start:end], torch.tensor(expected, dtype=torch.float64))
        assert 1e-3 < head[end - 1].item() < 1e-3 * 1.2  # the last update of a cycle runs just above the floor
    assert final[0] == pytest.approx(1e-3)  # after the last update: the floor
    torch.testing.assert_close(lrs[:, 2], head * 0.1)  # the backbone on the same curve
    cfg = _cfg(schedule="cosine_restarts", restart_cycles=3, restart_mult=mult)
    assert optim.snapshot_steps(cfg, 90) == ends  # one snapshot at each cycle's end, the last at the run's
    assert all(b.get("betas", (0.95,))[0] == 0.95 for b in opt.param_groups)  # momentum is not cycled


def test_snapshots_need_two_cycles_and_one_update_each():
    cfg = _cfg(schedule="cosine_restarts", restart_cycles=4)
    assert optim.snapshot_steps(cfg, 8) == [2, 4, 6, 8]
    assert optim.snapshot_steps(cfg, 2) == [1, 2]  # cycles that round to no update are dropped
    assert optim.snapshot_steps(cfg, 1) == []  # a single cycle: nothing to average
    assert optim.snapshot_steps(_cfg(schedule="cosine_restarts", restart_cycles=1), 50) == []
    others = [s for s in optim.list_schedules() if s != "cosine_restarts"]
    assert all(optim.snapshot_steps(_cfg(schedule=s, restart_cycles=4), 50) == [] for s in others)


def test_step_shape():
    lrs, _, final, _ = _lr_curve("step", 100, step_pct=0.3, step_gamma=0.1)
    head = lrs[:, 0]
    for lo, hi, factor in [(0, 30, 1.0), (30, 60, 0.1), (60, 90, 0.01), (90, 100, 0.001)]:
        torch.testing.assert_close(head[lo:hi], torch.full((hi - lo,), 1e-2 * factor, dtype=torch.float64))
    torch.testing.assert_close(lrs[:, 2], head * 0.1)
    assert final[0] == pytest.approx(1e-5)


def test_restart_and_step_options_are_checked(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("seed: 1\n")
    assert config.load(path, ["optim.schedule=cosine_restarts", "optim.restart_mult=2"]).optim.restart_mult == 2
    bad = ["restart_cycles=0", "restart_mult=0", "restart_floor=1", "restart_floor=-0.1", "step_pct=0", "step_pct=1.5",
           "step_gamma=0", "step_gamma=2"]  # fmt: skip
    for item in bad:
        with pytest.raises(UserError, match=rf"optim\.{item.split('=')[0]}"):
            config.load(path, [f"optim.{item}"])


@pytest.mark.parametrize("schedule", optim.list_schedules())
@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 8, 37])
@pytest.mark.parametrize("pct", [0.25, 1.0])
def test_stepping_exactly_total_steps_never_raises(schedule, total, pct):
    # pct_start=0.25 with 4 or 8 updates puts OneCycleLR's peak on step 0 or 1; pct 1.0 leaves no annealing phase.
    lrs, _, final, _ = _lr_curve(schedule, total, name="sgd", pct_start=pct, flat_pct=pct, warmup_pct=pct)
    assert torch.isfinite(lrs).all() and (lrs >= 0).all() and (lrs <= 1e-2 + 1e-12).all()
    assert all(math.isfinite(x) for x in final)


@pytest.mark.parametrize("registry", ["OPTIMIZERS", "SCHEDULES"])
def test_the_readme_lists_every_choice(registry):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    missing = [name for name in getattr(optim, registry).names() if f"`{name}`" not in readme]
    assert not missing, f"README.md does not name these {registry}: {missing}"


def test_schedule_names_match_the_config_choices():
    assert set(optim.list_schedules()) == set(config.CHOICES["optim.schedule"])


@pytest.mark.parametrize("n_batches,accum", [(10, 1), (10, 3), (9, 3), (1, 4), (7, 7), (8, 5)])
def test_updates_count_the_last_partial_accumulation(n_batches, accum):
    # The training loop's rule, written out: update after every `accum` batches and after the last batch.
    updates = sum(1 for i in range(n_batches) if (i + 1) % accum == 0 or i + 1 == n_batches)
    assert optim.updates_per_epoch(n_batches, accum) == updates
    assert optim.total_updates(n_batches, accum, epochs=3) == 3 * updates


def test_empty_loader_is_a_clear_error():
    opt = optim.build_optimizer(nn.Linear(2, 1), _cfg())
    with pytest.raises(UserError, match="batch_size"):
        optim.build_scheduler(opt, _cfg(), total_steps=0)


def test_a_pretrained_backbone_trains_at_a_tenth_of_the_heads_lr_unless_told():
    # A new head (and a model trained from scratch) needs a bolder LR than weights that already work.
    m = config.ModelConfig
    assert models.backbone_lr_mult(m(pretrained=True)) == 0.1
    assert models.backbone_lr_mult(m(pretrained=False)) == 1.0
    assert models.backbone_lr_mult(m(pretrained=True, backbone_lr_mult=0.5)) == 0.5
    assert models.backbone_lr_mult(m(pretrained=False, backbone_lr_mult=0.0)) == 0.0
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    groups = optim.param_groups(model, 0.01, 0.03, models.backbone_lr_mult(m(pretrained=True)))
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx(
        {"head": 0.03, "head_no_decay": 0.03, "backbone": 0.003, "backbone_no_decay": 0.003}
    )
