"""The head starts at the training fold's prior, so the first loss is the prior's entropy for every task (and for
every kind of head: timm's, a distilled ViT's two, a model without get_classifier); regression learns targets
standardised with the fold's training statistics and predicts in the target's units."""

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn

import synthetic
from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.config import LossConfig
from {{ cookiecutter.package_name }}.core.tasks import TargetScale
from {{ cookiecutter.package_name }}.data import folds
from {{ cookiecutter.package_name }}.data.problem import load_problem
from {{ cookiecutter.package_name }}.engine import inference
from {{ cookiecutter.package_name }}.engine.fold import setup_fold
from {{ cookiecutter.package_name }}.modeling import losses, models

from conftest import TINY, write_config

PROJECT = Path(cli.__file__).parents[2]  # src/<package>/cli.py -> the project, with its configs/


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    """A config per task for its synthetic competition (imbalanced where the task allows), folds written."""
    out = {}
    for task in synthetic.LABEL_SHAPES:
        root = tmp_path_factory.mktemp(task)
        keys = synthetic.write_competition(root / "data", task)
        extra = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(TINY), OmegaConf.create(keys)))
        path = write_config(root, task, synthetic.METRIC[task], n_folds=4, extra=extra)
        folds.write_folds(config.load(path))
        out[task] = path
    return out


def prior_entropy(task: str, counts: np.ndarray | None) -> float:
    """The loss of the best constant prediction: the prior's entropy (mean over labels for sigmoid tasks); the
    variance of standardised targets (1) for regression."""
    if task == "regression":
        return 1.0
    if task == "multiclass":
        p = counts / counts.sum()
        return float(-(p * np.log(p)).sum())
    p = counts[1] / counts.sum(0)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def first_loss(path: Path, overrides: list[str] = ()) -> tuple[float, float]:
    """The loss of the first training batch (no step taken), the batch being the whole training fold, and the
    entropy of the fold's prior."""
    cfg = config.load(path)
    n_train = len(load_problem(cfg).rows(0, valid=False))
    cfg = config.load(path, [f"train.batch_size={n_train}", "train.limit_batches=0", *overrides])
    s = setup_fold(cfg, 0)
    batch = next(iter(s.loader))
    s.model.train()
    with torch.no_grad():
        loss = float(s.criterion(s.model(batch["image"]), batch["target"]))
    return loss, prior_entropy(cfg.task, s.data.class_counts)


@pytest.mark.parametrize("task", synthetic.LABEL_SHAPES)
def test_first_loss_is_the_prior_entropy(shapes, task):
    loss, entropy = first_loss(shapes[task])
    assert loss == pytest.approx(entropy, rel=0.01)
    if task in ("binary", "multilabel"):  # rare positives: a head starting at p = 0.5 is far off
        untouched, _ = first_loss(shapes[task], ["model.init_head=none"])
        assert untouched > 1.2 * entropy


def _bias_grad(criterion: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    bias = logits.clone().requires_grad_(True)
    loss = criterion(bias.expand(len(target), -1), target)
    loss.backward()
    return bias.grad, float(loss.detach())


LOSS_OPTIONS = [
    ("multiclass", {}),
    ("multiclass", {"class_weight": "balanced"}),
    ("multiclass", {"label_smoothing": 0.1}),
    ("multiclass", {"class_weight": "balanced", "label_smoothing": 0.2}),
    ("multilabel", {}),
    ("multilabel", {"pos_weight": 3.0}),
    ("multilabel", {"class_weight": "balanced", "label_smoothing": 0.1}),
    ("binary", {}),
    ("binary", {"pos_weight": 0.5, "label_smoothing": 0.05}),
]


@pytest.mark.parametrize(("task", "options"), LOSS_OPTIONS)
def test_prior_logits_are_the_best_constant_under_the_loss(task, options):
    # Whatever the class weights and smoothing, no constant does better: the gradient at the prior logits is 0.
    rng = np.random.default_rng(0)
    n, k = 400, 5
    if task == "multiclass":
        target = torch.as_tensor(rng.choice(k, n, p=[0.5, 0.25, 0.15, 0.07, 0.03]))
        counts = np.bincount(target.numpy(), minlength=k).astype(float)
    else:
        k = 1 if task == "binary" else k
        target = torch.as_tensor((rng.random((n, k)) < np.linspace(0.05, 0.4, k)).astype(np.float32))
        counts = np.stack([n - target.numpy().sum(0), target.numpy().sum(0)])
        target = target[:, 0] if task == "binary" else target
    cfg_loss = LossConfig(**options)
    criterion = losses.build_loss(cfg_loss, task, k, counts)
    start = losses.prior_logits(cfg_loss, task, k, counts)
    grad, loss = _bias_grad(criterion, start, target)
    assert grad.abs().max() < 1e-5
    for j in range(k):  # ... and a step either way costs
        for d in (-0.3, 0.3):
            moved = start.clone()
            moved[j] += d
            assert _bias_grad(criterion, moved, target)[1] > loss
    if options == {"class_weight": "balanced"} and task == "multiclass":  # balanced classes: a uniform start
        torch.testing.assert_close(start, torch.full((k,), -np.log(k), dtype=torch.float32))


def test_a_class_missing_from_training_gets_a_finite_start():
    start = losses.prior_logits(LossConfig(), "multiclass", 3, np.array([10.0, 0.0, 30.0]))
    assert torch.isfinite(start).all() and start[1] < start[0] < start[2]
    start = losses.prior_logits(LossConfig(), "multilabel", 2, np.array([[40.0, 0.0], [0.0, 40.0]]))
    assert torch.isfinite(start).all() and start[0] < 0 < start[1]


class NoGetClassifier(nn.Module):
    def __init__(self, n_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, n_out)

    def forward(self, x):
        return self.fc(self.body(x))


def timm_model(name: str, **kw):
    return lambda n: timm.create_model(name, pretrained=False, num_classes=n, in_chans=1, **kw)


@pytest.mark.parametrize(
    ("make", "n_layers"),
    [
        (timm_model("test_resnet"), 1),
        (timm_model("test_efficientnet"), 1),
        # a distilled ViT: get_classifier() is a tuple (head, head_dist), averaged at inference
        (timm_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1), 2),
        (NoGetClassifier, 1),
    ],
    ids=["resnet", "efficientnet", "distilled_vit", "no_get_classifier"],
)
def test_init_head_sets_every_output_layer(make, n_layers):
    torch.manual_seed(0)
    model = make(3)
    bias = torch.tensor([-2.0, 0.5, 1.0])
    assert models.init_head(model, bias) == n_layers
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(4, 1, 32, 32))
    torch.testing.assert_close(out, bias.expand(4, 3))


def test_a_head_without_bias_is_left_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    before = model[1].weight.clone()
    assert models.init_head(model, torch.zeros(2)) == 0
    torch.testing.assert_close(model[1].weight, before)


def test_target_scale_round_trip_and_activation():
    y = np.array([3.0, 5.0, 7.0, 9.0])
    scale = TargetScale.fit(y)
    assert (scale.mean, scale.std) == pytest.approx((6.0, np.sqrt(5.0)))
    z = scale.standardize(y)
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    np.testing.assert_allclose(scale.invert(z), y)
    out = torch.tensor([[-1.0], [0.0], [2.0]])
    np.testing.assert_allclose(inference.activate(out, "regression", scale).numpy(), scale.invert(out[:, 0].numpy()))
    assert TargetScale.fit([4.0, 4.0]) == TargetScale(4.0, 1.0)  # a constant target: shifted, not divided by 0
    assert TargetScale.from_dict(scale.to_dict()) == scale and TargetScale.from_dict(None) == TargetScale()


def test_regression_learns_targets_standardised_with_the_training_rows(shapes):
    cfg = config.load(shapes["regression"])
    s = setup_fold(cfg, 0)
    train_y = s.problem.y[s.problem.rows(0, valid=False)]
    assert s.target_scale == TargetScale.fit(train_y) != TargetScale()
    batch = next(iter(s.loader))
    out = torch.zeros(len(batch["target"]), 1)
    expected = torch.mean(((batch["target"] - s.target_scale.mean) / s.target_scale.std) ** 2)
    torch.testing.assert_close(s.criterion(out, batch["target"]), expected.float())


@pytest.mark.e2e
def test_demo_regression_beats_the_mean_in_three_epochs(tmp_path, new_project, capsys):
    # The demo's digit values (0-9) as a number, with the demo's own config: learnt standardised, predicted (OOF,
    # test, submission) in the digit's units, better than predicting the training mean.
    extra = f"base: {PROJECT / 'configs' / 'demo.yaml'}\ntrain:\n  epochs: 3\n"
    cfg = new_project(tmp_path, "regression", "rmse", n_folds=2, size=32, extra=extra)
    path = tmp_path / "configs" / "exp.yaml"
    for args in (["train", "--fold", "0"], ["predict", "--allow-partial"], ["make-submission"]):
        assert cli.main([args[0], "-c", str(path), *args[1:]]) == 0
    cv = json.loads((Path(cfg.output_dir) / "exp" / "cv.json").read_text())
    problem = load_problem(cfg)
    train_y, valid_y = problem.y[problem.rows(0, valid=False)], problem.y[problem.rows(0, valid=True)]
    mean_rmse = float(np.sqrt(np.mean((valid_y - train_y.mean()) ** 2)))
    assert cv["folds"]["0"] < 0.8 * mean_rmse
    capsys.readouterr()
    assert cli.main(["score", "-c", str(path), str(tmp_path / "submissions" / "exp.csv")]) == 0
    test_rmse = float(capsys.readouterr().out.split("rmse = ")[1].split()[0])
    solution = np.loadtxt(tmp_path / "data" / "solution.csv", delimiter=",", skiprows=1, usecols=1)
    assert test_rmse < 0.8 * float(np.sqrt(np.mean((solution - train_y.mean()) ** 2)))
