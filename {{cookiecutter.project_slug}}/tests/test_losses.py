"""Every loss against a formula written out here (plain-Python sums), on every task it supports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from {{ cookiecutter.package_name }}.config import LossConfig
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import tables
from {{ cookiecutter.package_name }}.modeling import losses

N, C, L = 8, 5, 3
M, H, W = 2, 6, 5  # segmentation: classes, height, width
TASKS = ("multiclass", "binary", "multilabel", "regression", "segmentation")
OUTPUTS = {"multiclass": C, "binary": 1, "multilabel": L, "regression": 1, "segmentation": M}
EXPECTED_TASKS = {
    "ce": {"multiclass"},
    "soft_ce": {"multiclass"},
    "bce": {"binary", "multilabel", "segmentation"},
    "focal": {"multiclass", "binary", "multilabel", "segmentation"},
    "soft_f1": {"binary", "multilabel"},
    "mse": {"regression"},
    "l1": {"regression"},
    "huber": {"regression"},
    "bce_dice": {"segmentation"},
    "dice": {"segmentation"},
    "jaccard": {"segmentation"},
    "lovasz": {"segmentation"},
}


def make_batch(task: str, soft: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits in the model's shape and targets in the task's format (float64, so references compare tightly).
    Segmentation masks are 0/1 whatever `soft` says, with an empty mask (image 0, class 1) among them."""
    g = torch.Generator().manual_seed(seed)
    if task == "segmentation":
        logits = (2 * torch.randn(N, M, H, W, generator=g, dtype=torch.float64)).requires_grad_()
        masks = (
            torch.rand(N, M, H, W, generator=g, dtype=torch.float64) < torch.rand(N, M, 1, 1, generator=g)
        ).double()
        masks[0, 1] = 0
        return logits, masks
    logits = (2 * torch.randn(N, OUTPUTS[task], generator=g, dtype=torch.float64)).requires_grad_()
    if task == "multiclass":
        soft_t = torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64), 1)
        return logits, soft_t if soft else torch.randint(0, C, (N,), generator=g)
    shape = (N,) if task in ("binary", "regression") else (N, L)
    if task == "regression":
        return logits, torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    return logits, t if soft else (t > 0.5).double()


# --- references: loops over plain floats -----------------------------------------------------------------------------


def _rows(logits: torch.Tensor) -> list[list[float]]:
    return logits.detach().reshape(len(logits), -1).tolist()


def _soft_rows(target: torch.Tensor, task: str, width: int) -> list[list[float]]:
    if task == "multiclass" and target.ndim == 1:
        return [[1.0 if c == k else 0.0 for c in range(width)] for k in target.tolist()]
    return target.detach().reshape(len(target), -1).tolist()


def log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_softmax(logits, target, eps=0.0, w=None, gamma=0.0, s=None) -> float:
    z = _rows(logits)
    t = _soft_rows(target, "multiclass", len(z[0]))
    k = len(z[0])
    w = w or [1.0] * k
    num = den = 0.0
    for i, (zi, ti) in enumerate(zip(z, t, strict=True)):
        si = 1.0 if s is None else s[i]
        lp = log_softmax(zi)
        for c in range(k):
            smoothed = ti[c] * (1 - eps) + eps / k
            num += si * w[c] * smoothed * (1 - math.exp(lp[c])) ** gamma * -lp[c]
            den += si * w[c] * ti[c]
    return num / den


def ref_sigmoid(logits, target, eps=0.0, a=None, b=None, gamma=0.0) -> float:
    z, t = _rows(logits), _soft_rows(target, "binary", 0)
    total = 0.0
    for zi, ti in zip(z, t, strict=True):
        for j, (x, y0) in enumerate(zip(zi, ti, strict=True)):
            y = y0 * (1 - eps) + eps / 2
            p = 1 / (1 + math.exp(-x))
            loss = -((a[j] if a else 1.0) * y * log_sigmoid(x) + (b[j] if b else 1.0) * (1 - y) * log_sigmoid(-x))
            pt = p * y + (1 - p) * (1 - y)
            total += loss * (1 - pt) ** gamma
    return total / (len(z) * len(z[0]))


def ref_regression(kind: str, delta: float = 1.0):
    def per(d: float) -> float:
        if kind == "mse":
            return d * d
        if kind == "l1":
            return abs(d)
        return 0.5 * d * d if abs(d) <= delta else delta * (abs(d) - 0.5 * delta)

    def ref(logits, target, task, cfg) -> float:
        x, t = [r[0] for r in _rows(logits)], target.tolist()
        return sum(per(a - b) for a, b in zip(x, t, strict=True)) / len(x)

    return ref


def ref_soft_f1(logits, target, task, cfg) -> float:
    z, t = _rows(logits), _soft_rows(target, task, 0)
    f1s = []
    for j in range(len(z[0])):
        p = [1 / (1 + math.exp(-row[j])) for row in z]
        y = [row[j] for row in t]
        tp = sum(pi * yi for pi, yi in zip(p, y, strict=True))
        fp = sum(pi * (1 - yi) for pi, yi in zip(p, y, strict=True))
        fn = sum((1 - pi) * yi for pi, yi in zip(p, y, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn + 1e-7))
    return 1 - sum(f1s) / len(f1s)


def ref_focal(logits, target, task, cfg) -> float:
    if task == "multiclass":
        return ref_softmax(logits, target, gamma=cfg.focal_gamma)
    return ref_sigmoid(logits, target, gamma=cfg.focal_gamma)


def ref_mask(kind: str):
    """Per image and class over plain floats: soft Dice / Jaccard with smoothing 1, or the Lovasz hinge written from
    its definition (errors sorted in decreasing order, each weighted by the step in Jaccard loss it causes)."""

    def pair(z: list[float], t: list[float]) -> float:
        p = [1 / (1 + math.exp(-v)) for v in z]
        inter, size = sum(a * b for a, b in zip(p, t, strict=True)), sum(p) + sum(t)
        if kind == "dice":
            return 1 - (2 * inter + 1) / (size + 1)
        if kind == "jaccard":
            return 1 - (inter + 1) / (size - inter + 1)
        errors = sorted(((1 - v * (2 * y - 1), y) for v, y in zip(z, t, strict=True)), key=lambda e: -e[0])
        loss, prev, positives = 0.0, 0.0, sum(t)
        for k in range(1, len(errors) + 1):
            hits = sum(y for _, y in errors[:k])
            jaccard_loss = 1 - (positives - hits) / (positives + k - hits)
            loss += max(errors[k - 1][0], 0.0) * (jaccard_loss - prev)
            prev = jaccard_loss
        return loss

    def ref(logits, target, task, cfg) -> float:
        z, t = logits.detach().tolist(), target.detach().tolist()
        per_image = []
        for zi, ti in zip(z, t, strict=True):
            flat = [
                ([v for row in zc for v in row], [v for row in tc for v in row]) for zc, tc in zip(zi, ti, strict=True)
            ]
            per_image.append(sum(pair(a, b) for a, b in flat) / len(flat))
        return sum(per_image) / len(per_image)

    return ref


REFERENCE = {
    "bce_dice": lambda z, t, task, cfg: ref_sigmoid(z, t) + ref_mask("dice")(z, t, task, cfg),
    "dice": ref_mask("dice"),
    "jaccard": ref_mask("jaccard"),
    "lovasz": ref_mask("lovasz"),
    "ce": lambda z, t, task, cfg: ref_softmax(z, t),
    "soft_ce": lambda z, t, task, cfg: ref_softmax(z, t),
    "bce": lambda z, t, task, cfg: ref_sigmoid(z, t),
    "focal": ref_focal,
    "soft_f1": ref_soft_f1,
    "mse": ref_regression("mse"),
    "l1": ref_regression("l1"),
    "huber": ref_regression("huber", 1.0),
}

PAIRS = [(n, t) for n in losses.list_losses() for t in losses.LOSSES.meta(n)["tasks"]]
CASES = [
    (n, t, soft) for n, t in PAIRS for soft in ((False,) if t in ("regression", "segmentation") else (False, True))
]


def build(task: str, counts=None, **kw) -> torch.nn.Module:
    return losses.build_loss(LossConfig(**kw), task, OUTPUTS[task], counts)


# --- the registry ----------------------------------------------------------------------------------------------------


def test_every_loss_has_a_reference_and_tasks():
    assert set(losses.list_losses()) == set(REFERENCE) == set(EXPECTED_TASKS)
    for name in losses.list_losses():
        assert set(losses.LOSSES.meta(name)["tasks"]) == EXPECTED_TASKS[name]
    assert losses.list_losses("regression") == ["huber", "l1", "mse"]


@pytest.mark.parametrize(("name", "task", "soft"), CASES)
def test_matches_reference_with_finite_gradients(name, task, soft):
    logits, target = make_batch(task, soft)
    cfg = LossConfig(name=name, focal_gamma=2.0, huber_delta=1.0)
    loss = losses.build_loss(cfg, task, OUTPUTS[task])(logits, target)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(REFERENCE[name](logits, target, task, cfg), rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


WRONG_PAIRS = [(n, t) for n in losses.list_losses() for t in TASKS if t not in losses.LOSSES.meta(n)["tasks"]]


@pytest.mark.parametrize(("name", "task"), WRONG_PAIRS)
def test_unsupported_task_is_a_user_error(name, task):
    with pytest.raises(UserError, match=rf"loss '{name}' does not support task '{task}'"):
        build(task, name=name)


@pytest.mark.parametrize(("name", "task"), PAIRS)
def test_zero_sample_weight_drops_the_row(name, task):
    logits, target = make_batch(task, soft=task != "multiclass", seed=1)
    loss_fn = build(task, name=name)
    weight = torch.ones(N, dtype=torch.float64)
    weight[:3] = 0
    assert loss_fn(logits, target, weight).item() == pytest.approx(loss_fn(logits[3:], target[3:]).item(), rel=1e-6)


@pytest.mark.parametrize(("name", "task"), PAIRS)
def test_extreme_logits_give_finite_gradients(name, task):
    logits, target = make_batch(task)
    logits = (logits.detach() * 40).float().requires_grad_()  # |logit| up to ~200: p is exactly 0 or 1 in fp32
    loss = build(task, name=name, focal_gamma=0.5)(logits, target.float() if target.is_floating_point() else target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(("name", "task"), PAIRS)
def test_half_precision_logits_are_computed_in_float32(name, task):
    logits, target = make_batch(task)
    loss_fn = build(task, name=name)
    half = loss_fn(logits.detach().bfloat16(), target)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(loss_fn(logits.detach().bfloat16().double(), target).item(), rel=1e-5)


def test_default_loss_and_auto():
    assert [losses.default_loss(t) for t in TASKS] == ["ce", "bce", "bce", "mse", "bce_dice"]
    logits, target = make_batch("multilabel")
    auto = build("multilabel")(logits, target)
    assert auto.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item())
    with pytest.raises(UserError, match="unknown task 'ranking'"):
        losses.default_loss("ranking")
    with pytest.raises(UserError, match="unknown loss 'tversky'"):
        build("binary", name="tversky")


# --- options ---------------------------------------------------------------------------------------------------------


def test_label_smoothing():
    logits, target = make_batch("multiclass")
    loss = build("multiclass", name="ce", label_smoothing=0.2)(logits, target)
    assert loss.item() == pytest.approx(ref_softmax(logits, target, eps=0.2))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.2).item())
    logits, target = make_batch("multilabel")
    loss = build("multilabel", name="bce", label_smoothing=0.2)(logits, target)
    assert loss.item() == pytest.approx(ref_sigmoid(logits, target, eps=0.2))


def test_balanced_class_weights_multiclass():
    logits, target = make_batch("multiclass")
    counts = np.array([10.0, 30.0, 5.0, 50.0, 5.0])
    w = [100 / (5 * c) for c in counts]  # n / (k * count)
    loss_fn = build("multiclass", counts, name="ce", class_weight="balanced", label_smoothing=0.1)
    assert loss_fn.class_weight.tolist() == pytest.approx(w)
    loss = loss_fn(logits, target)
    assert loss.item() == pytest.approx(ref_softmax(logits, target, eps=0.1, w=w), rel=1e-6)
    torch_ref = F.cross_entropy(logits, target, weight=torch.tensor(w, dtype=torch.float64), label_smoothing=0.1)
    assert loss.item() == pytest.approx(torch_ref.item(), rel=1e-6)


def test_balanced_class_weights_and_pos_weight_sigmoid():
    logits, target = make_batch("multilabel")
    counts = tables.class_counts(np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]]), "multilabel", L)
    assert counts.tolist() == [[1, 3, 3], [3, 1, 1]]  # negatives, positives
    neg, pos = [4 / (2 * c) for c in counts[0]], [4 / (2 * c) for c in counts[1]]
    loss = build("multilabel", counts, name="bce", class_weight="balanced", pos_weight=3.0)(logits, target)
    assert loss.item() == pytest.approx(ref_sigmoid(logits, target, a=[3 * p for p in pos], b=neg), rel=1e-6)


def test_pos_weight_matches_torch():
    logits, target = make_batch("binary", soft=True)
    loss = build("binary", name="bce", pos_weight=2.5)(logits, target)
    torch_ref = F.binary_cross_entropy_with_logits(logits[:, 0], target, pos_weight=torch.tensor(2.5))
    assert loss.item() == pytest.approx(torch_ref.item())
    assert loss.item() == pytest.approx(ref_sigmoid(logits, target, a=[2.5]))


def test_class_counts():
    assert tables.class_counts(np.array([0, 2, 2, 1, 2]), "multiclass", 4).tolist() == [1, 1, 3, 0]
    assert tables.class_counts(np.eye(3)[[0, 0, 2]], "multiclass", 3).tolist() == [2, 0, 1]
    assert tables.class_counts(np.array([0, 1, 1, 1]), "binary", 1).tolist() == [[1], [3]]
    assert tables.class_counts(np.zeros(3), "regression", 1) is None


@pytest.mark.parametrize(
    ("task", "kw", "match"),
    [
        ("regression", {"name": "mse", "label_smoothing": 0.1}, "'loss.label_smoothing' is not used by loss 'mse'"),
        ("binary", {"name": "soft_f1", "class_weight": "balanced"}, "'loss.class_weight' is not used by loss"),
        ("multiclass", {"name": "focal", "pos_weight": 2.0}, "'loss.pos_weight'.*binary/multilabel"),
        ("binary", {"name": "bce", "pos_weight": -1.0}, "'loss.pos_weight' is -1.0"),
        ("multiclass", {"name": "ce", "label_smoothing": 1.0}, "'loss.label_smoothing' is 1.0"),
        ("multiclass", {"name": "focal", "focal_gamma": -1.0}, "'loss.focal_gamma'"),
        ("regression", {"name": "huber", "huber_delta": 0.0}, "'loss.huber_delta'"),
        (
            "segmentation",
            {"name": "bce", "class_weight": "balanced"},
            "'loss.class_weight' is not used by loss 'bce' for",
        ),
        (
            "segmentation",
            {"name": "focal", "pos_weight": 2.0},
            "'loss.pos_weight' is not used by loss 'focal' for task",
        ),
        ("segmentation", {"name": "bce_dice", "label_smoothing": 0.1}, "'loss.label_smoothing' is not used by loss"),
    ],
)
def test_bad_options_are_user_errors(task, kw, match):
    with pytest.raises(UserError, match=match):
        build(task, np.ones(OUTPUTS[task]), **kw)


def test_balanced_without_counts_is_a_programming_error():
    with pytest.raises(ValueError, match="class_counts"):
        build("multiclass", name="ce", class_weight="balanced")
    with pytest.raises(ValueError, match="expected 5 outputs"):
        build("multiclass", np.ones(3), name="ce", class_weight="balanced")


# --- equivalences ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_focal_with_gamma_zero_is_ce_or_bce(task):
    logits, target = make_batch(task, soft=task != "multiclass")
    counts = np.arange(1.0, C + 1) if task == "multiclass" else np.ones((2, OUTPUTS[task])) + np.arange(2)[:, None]
    kw = {"label_smoothing": 0.1, "class_weight": "balanced"}
    plain = build(task, counts, name="ce" if task == "multiclass" else "bce", **kw)(logits, target)
    focal = build(task, counts, name="focal", focal_gamma=0.0, **kw)(logits, target)
    assert focal.item() == pytest.approx(plain.item(), rel=1e-9)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_sigmoid_focal_matches_torchvision(task):
    logits, target = make_batch(task)
    loss = build(task, name="focal", focal_gamma=2.0)(logits, target)
    ref = sigmoid_focal_loss(logits, target.reshape(logits.shape), alpha=-1, gamma=2.0, reduction="mean")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "soft_ce", "focal"])
def test_one_hot_soft_targets_equal_hard_targets(name):
    logits, target = make_batch("multiclass")
    loss_fn = build("multiclass", np.arange(1.0, C + 1), name=name, label_smoothing=0.1, class_weight="balanced")
    one_hot = F.one_hot(target, C).double()
    assert loss_fn(logits, one_hot).item() == pytest.approx(loss_fn(logits, target).item(), rel=1e-9)


def test_sigmoid_targets_accept_ints_and_columns():
    logits, target = make_batch("binary")
    loss_fn = build("binary", name="bce")
    expected = loss_fn(logits, target).item()
    assert loss_fn(logits, target.long()).item() == pytest.approx(expected)
    assert loss_fn(logits, target[:, None]).item() == pytest.approx(expected)
    assert loss_fn(logits[:, 0], target).item() == pytest.approx(expected)


def test_shape_mismatch_is_an_error():
    logits, _ = make_batch("multilabel")
    with pytest.raises(ValueError, match="do not match"):
        build("multilabel", name="bce")(logits, torch.zeros(N, L + 1))
    with pytest.raises(ValueError, match="class ids"):
        build("multiclass", name="ce")(torch.zeros(N, C), torch.zeros(N))


# --- distillation ----------------------------------------------------------------------------------------------------


def ref_distill(student, teacher, task, temp) -> float:
    s, t = _rows(student), _rows(teacher)
    total = 0.0
    if task == "multiclass":
        for si, ti in zip(s, t, strict=True):
            ls, lt = log_softmax([v / temp for v in si]), log_softmax([v / temp for v in ti])
            total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt, strict=True))  # KL(p_t || p_s)
        return temp**2 * total / len(s)
    if task == "regression":
        return sum((a[0] - b[0]) ** 2 for a, b in zip(s, t, strict=True)) / len(s)
    for si, ti in zip(s, t, strict=True):
        for x, y in zip(si, ti, strict=True):
            q = 1 / (1 + math.exp(-y / temp))
            total -= q * log_sigmoid(x / temp) + (1 - q) * log_sigmoid(-x / temp)
    return temp**2 * total / (len(s) * len(s[0]))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_distillation_loss_matches_formula(task, temp):
    student, _ = make_batch(task, seed=0)
    teacher, _ = make_batch(task, seed=1)
    loss = losses.distillation_loss(student, teacher, task, temp)
    assert loss.item() == pytest.approx(ref_distill(student, teacher, task, temp), rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all() and teacher.grad is None  # the teacher is not trained


def test_distillation_is_zero_for_an_identical_multiclass_student():
    student, _ = make_batch("multiclass")
    assert losses.distillation_loss(student, student + 3.0, "multiclass", 2.0).item() == pytest.approx(0, abs=1e-12)
    with pytest.raises(UserError, match=r"distill\.temperature"):
        losses.distillation_loss(student, student, "multiclass", 0.0)


# --- segmentation ----------------------------------------------------------------------------------------------------

SEG_LOSSES = losses.list_losses("segmentation")


def _hard_dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    pred = (logits > 0).double()
    inter, size = (pred * masks).sum((2, 3)), (pred + masks).sum((2, 3))
    return torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(size)).mean().item()


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_segmentation_loss_fits_a_mask(name):
    """A free logits tensor, 50 Adam steps towards fixed masks (one empty): the loss falls, stays finite, and the
    Dice of the thresholded result rises."""
    _, masks = make_batch("segmentation", seed=3)
    logits = torch.zeros(N, M, H, W, dtype=torch.float64).normal_(generator=torch.Generator().manual_seed(4))
    logits.requires_grad_()
    loss_fn, opt = build("segmentation", name=name), torch.optim.Adam([logits], lr=0.1)
    before_dice, seen = _hard_dice(logits.detach(), masks), []
    for _ in range(50):
        opt.zero_grad()
        loss = loss_fn(logits, masks.to(torch.uint8))
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        seen.append(loss.item())
    assert seen[-1] < 0.5 * seen[0]
    assert _hard_dice(logits.detach(), masks) > max(before_dice, 0.9)


@pytest.mark.parametrize("name", ["dice", "jaccard", "lovasz", "bce_dice"])
def test_perfect_masks_cost_nothing(name):
    _, masks = make_batch("segmentation")
    assert build("segmentation", name=name)(30 * (2 * masks - 1), masks).item() == pytest.approx(0, abs=1e-6)


def test_soft_dice_of_empty_masks():
    """An empty mask predicted empty costs ~0 (Kaggle's empty-on-empty = 1), one predicted full costs about all."""
    empty = torch.zeros(1, 1, 4, 4)
    dice = build("segmentation", name="dice")
    assert dice(torch.full_like(empty, -30.0), empty).item() == pytest.approx(0, abs=1e-6)
    assert dice(torch.full_like(empty, 30.0), empty).item() == pytest.approx(1 - 1 / 17)


def test_lovasz_matches_smp_per_image_and_class():
    lovasz = pytest.importorskip("segmentation_models_pytorch.losses.lovasz")
    logits, masks = make_batch("segmentation")
    x, t = logits.detach().float(), masks.float()
    ref = [lovasz._lovasz_hinge_flat(x[i, c].reshape(-1), t[i, c].reshape(-1)) for i in range(N) for c in range(M)]
    assert build("segmentation", name="lovasz")(x, t).item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-5)


def test_segmentation_shapes_must_match():
    logits, masks = make_batch("segmentation")
    with pytest.raises(ValueError, match="do not match"):
        build("segmentation", name="dice")(logits, masks[:, :1])
    with pytest.raises(ValueError, match="do not match"):
        build("segmentation", name="lovasz")(logits[:, :, 0], masks[:, :, 0])


def test_segmentation_prior_logits():
    """Losses with a BCE term start at each class's pixel log-odds (clipped for a class without pixels), smoothed as
    they smooth; the region losses at 0."""
    frac = np.array([0.2, 0.0])
    got = losses.prior_logits(LossConfig(), "segmentation", M, frac)
    assert got.tolist() == pytest.approx([math.log(0.2 / 0.8), math.log(1e-4 / (1 - 1e-4))], rel=1e-5)
    smoothed = losses.prior_logits(LossConfig(name="bce", label_smoothing=0.2), "segmentation", M, frac)
    assert smoothed.tolist() == pytest.approx([math.log(0.26 / 0.74), math.log(0.1 / 0.9)], rel=1e-5)
    for name in ("dice", "jaccard", "lovasz"):
        assert losses.prior_logits(LossConfig(name=name), "segmentation", M, frac).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="pixel fractions"):
        losses.prior_logits(LossConfig(), "segmentation", M, np.array([3.0, 1.0]))
