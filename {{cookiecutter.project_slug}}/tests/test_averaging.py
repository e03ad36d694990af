"""Weight averaging: SWA and the average of the best K epochs, against hand-computed means, their BatchNorm
statistics, and on the demo through `train`: reported beside the best epoch in cv.json, picked only when asked."""

import dataclasses
import io
import json

import pandas as pd
import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import read_checkpoint
from {{ cookiecutter.package_name }}.data.problem import build_fold_data, load_problem
from {{ cookiecutter.package_name }}.engine import inference
from {{ cookiecutter.package_name }}.modeling import averaging, metrics, optim
from {{ cookiecutter.package_name }}.modeling.models import build_model

from conftest import TINY


def _set(model: nn.Module, value: float) -> dict:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_swa_start_epoch():
    assert averaging.swa_start_epoch(0.75, 8) == 6  # epochs 7 and 8 (1-based) are averaged
    assert averaging.swa_start_epoch(0.0, 5) == 0
    assert averaging.swa_start_epoch(0.99, 3) == 2  # at least the last epoch


def test_swa_is_the_mean_of_the_epochs_from_its_start():
    model = nn.Linear(3, 2)
    avg = averaging.WeightAveraging(model, swa_from=2, best_k=0, metric=metrics.get_metric("accuracy"))
    for epoch, value in enumerate([10.0, 20.0, 1.0, 2.0, 6.0]):
        avg.after_epoch(epoch, model, _set(model, value), score=0.0)
    swa = avg.averaged()["swa"]
    assert set(swa) == set(model.state_dict())
    for tensor in swa.values():
        torch.testing.assert_close(tensor, torch.full_like(tensor, 3.0))  # (1 + 2 + 6) / 3: not epochs 0 and 1
    assert avg.describe()["swa"] == {"from_epoch": 3, "n_averaged": 3}


@pytest.mark.parametrize("higher", [True, False])
def test_best_k_averages_the_k_best_scored_epochs(higher):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    metric = metrics.get_metric("accuracy" if higher else "log_loss")
    avg = averaging.WeightAveraging(model, swa_from=None, best_k=2, metric=metric)
    scores = [0.5, 0.9, float("nan"), 0.1, 0.7]
    for epoch, (value, score) in enumerate(zip([1.0, 2.0, 100.0, 3.0, 4.0], scores, strict=True)):
        avg.after_epoch(epoch, model, _set(model, value), score)
    # higher is better: epochs 2 (0.9) and 5 (0.7) -> values 2 and 4; lower: epochs 4 (0.1) and 1 (0.5) -> 3 and 1
    expected, epochs = (3.0, [2, 5]) if higher else (2.0, [4, 1])
    out = avg.averaged()
    assert "swa" not in out and avg.describe()["avg_best_k"]["epochs"] == epochs
    torch.testing.assert_close(out["avg_best_k"]["0.weight"], torch.full((2, 2), expected))
    assert out["avg_best_k"]["1.num_batches_tracked"].dtype == torch.long  # integer buffers are not averaged
    # what last.pt holds brings it back exactly (loadable with weights_only=True)
    buffer = io.BytesIO()
    torch.save(avg.state_dict(), buffer)
    buffer.seek(0)
    again = averaging.WeightAveraging(model, swa_from=None, best_k=2, metric=metric)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(again.averaged()["avg_best_k"], out["avg_best_k"])


def test_snapshots_are_the_mean_of_the_weights_at_each_cycle_end():
    """cosine_restarts' cycle ends (optim.snapshot_steps) drive the snapshots: one per cycle, their running mean
    equal to the plain mean of the weights there; nothing before two; last.pt brings them back."""
    cfg = dataclasses.replace(config.OptimConfig(), schedule="cosine_restarts", restart_cycles=3, restart_mult=2.0)
    ends = optim.snapshot_steps(cfg, 70)
    assert ends == [10, 30, 70]
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    avg = averaging.WeightAveraging(model, swa_from=None, best_k=0, metric=metrics.get_metric("accuracy"),
                                    snapshot_at=ends)  # fmt: skip
    assert avg.active
    for update in range(1, 71):
        _set(model, float(update))
        avg.after_update(update, model)
        if update == 10:
            assert "snapshot" not in avg.averaged()  # one snapshot is no average
    out = avg.averaged()["snapshot"]
    torch.testing.assert_close(out["0.weight"], torch.full((2, 3), (10 + 30 + 70) / 3))
    assert out["1.num_batches_tracked"].dtype == torch.long
    assert avg.describe()["snapshot"] == {"cycle_ends": [10, 30, 70], "taken_at": [10, 30, 70], "n_averaged": 3}
    buffer = io.BytesIO()
    torch.save(avg.state_dict(), buffer)
    buffer.seek(0)
    again = averaging.WeightAveraging(model, None, 0, metrics.get_metric("accuracy"), snapshot_at=ends)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    again.after_update(70, model)  # a resumed run that replays an update already taken does not count it twice
    torch.testing.assert_close(again.averaged()["snapshot"], out)
    assert not averaging.WeightAveraging(model, None, 0, metrics.get_metric("accuracy")).active


def test_recomputed_batchnorm_statistics_are_those_of_the_data():
    bn = nn.BatchNorm2d(3)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 4, 4, generator=g) * 2 + torch.tensor([1.0, -2.0, 5.0]).view(1, 3, 1, 1)
               for _ in range(5)]  # fmt: skip
    averaging.recompute_batchnorm(bn, iter(batches))
    data = torch.cat(batches)
    torch.testing.assert_close(bn.running_mean, data.mean((0, 2, 3)))  # the cumulative mean, not a momentum one
    assert bn.momentum == 0.1 and bn.training  # both restored


def test_config_checks(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("seed: 1\n")
    assert config.load(path, ["train.swa=true", "train.pick_averaged=true"]).train.pick_averaged
    with pytest.raises(UserError, match=r"train\.pick_averaged"):
        config.load(path, ["train.pick_averaged=true"])
    snapshots = ["optim.schedule=cosine_restarts", "train.pick_averaged=true"]
    assert config.load(path, snapshots).train.pick_averaged  # the snapshots are one more average to pick
    with pytest.raises(UserError, match=r"train\.pick_averaged"):
        config.load(path, [*snapshots, "optim.restart_cycles=1"])
    with pytest.raises(UserError, match=r"train\.avg_best_k"):
        config.load(path, ["train.avg_best_k=1"])
    with pytest.raises(UserError, match=r"train\.swa_start"):
        config.load(path, ["train.swa_start=1.0"])


@pytest.mark.e2e
def test_averages_reported_beside_the_best_epoch_and_picked_only_when_asked(tmp_path, new_project):
    extra = TINY.replace("epochs: 1", "epochs: 4").replace("limit_batches: 4", "limit_batches: 8")
    new_project(tmp_path, n_folds=2, extra=extra + "optim:\n  lr: 0.01\n")
    path = str(tmp_path / "configs" / "exp.yaml")
    on = ["train.swa=true", "train.swa_start=0.5", "train.avg_best_k=3"]
    assert cli.main(["train", "-c", path, *on]) == 0
    cfg = config.load(path, on)
    cv = json.loads(cfg.run.cv.read_text())
    wa = cv["weight_averaging"]
    assert set(wa) == {"best", "swa", "avg_best_k", "folds", "picked"} and wa["picked"] == {"0": "best", "1": "best"}
    assert wa["best"] == pytest.approx(cv["cv"])  # default: best.pt keeps the best epoch; the others are reported
    assert wa["folds"]["0"]["best"] == pytest.approx(cv["folds"]["0"])
    for k in (0, 1):
        files = cfg.run.fold(k)
        assert files.read_best().source in ("model", "ema") and not files.best_epoch.exists()
        info = json.loads(files.averaging.read_text())
        assert info["swa"] == {"from_epoch": 3, "n_averaged": 2} and len(info["avg_best_k"]["epochs"]) == 3
        # swa.pt, BatchNorm statistics included, predicts the fold's validation rows as oof_swa.csv says
        model = build_model(cfg, 10, pretrained=False)
        model.load_state_dict(read_checkpoint(files.averaged("swa")).model)
        data = build_fold_data(cfg, load_problem(cfg), k)
        feed = inference.feeder(cfg, model, torch.device("cpu"), workers=0)
        probs = inference.predict_loader(model, feed(data.valid), cfg.task)
        saved = pd.read_csv(files.variant_oof("swa"), dtype={"id": str})
        torch.testing.assert_close(torch.from_numpy(probs), torch.tensor(saved.iloc[:, 2:].to_numpy()).float())

    # fold 0 again from last.pt (its epochs done), now picking: best.pt holds the best scoring of the three
    cfg.run.fold(0).oof.unlink()
    assert cli.main(["train", "-c", path, "--fold", "0", *on, "train.pick_averaged=true"]) == 0
    files, cv = cfg.run.fold(0), json.loads(cfg.run.cv.read_text())
    scores = json.loads(files.averaging.read_text())["scores"]
    picked = max(scores, key=scores.get)
    assert cv["weight_averaging"]["picked"]["0"] == picked and cv["folds"]["0"] == pytest.approx(scores[picked])
    if picked != "best":
        assert files.read_best().source == picked and files.best_epoch.is_file()
        assert read_checkpoint(files.best_epoch).source in ("model", "ema")
    else:
        assert files.read_best().source in ("model", "ema") and not files.best_epoch.exists()


@pytest.mark.e2e
def test_snapshots_of_cosine_restarts_reported_beside_the_best_epoch(tmp_path, new_project):
    """optim.schedule=cosine_restarts with 3 cycles over 2 epochs of 3 updates: snapshots after updates 2, 4 and 6
    (one in the middle of epoch 2), averaged into snapshot.pt, scored in cv.json beside the best epoch, pickable."""
    extra = TINY.replace("epochs: 1", "epochs: 2").replace("limit_batches: 4", "limit_batches: 3")
    new_project(tmp_path, n_folds=2, extra=extra + "optim:\n  lr: 0.01\n")
    path = str(tmp_path / "configs" / "exp.yaml")
    on = ["optim.schedule=cosine_restarts", "optim.restart_cycles=3", "train.pick_averaged=true"]
    assert cli.main(["train", "-c", path, *on]) == 0
    cfg = config.load(path, on)
    wa = json.loads(cfg.run.cv.read_text())["weight_averaging"]
    assert set(wa) == {"best", "snapshot", "folds", "picked"}
    for k in (0, 1):
        files = cfg.run.fold(k)
        info = json.loads(files.averaging.read_text())
        assert info["snapshot"] == {"cycle_ends": [2, 4, 6], "taken_at": [2, 4, 6], "n_averaged": 3}
        assert files.averaged("snapshot").is_file() and files.variant_oof("snapshot").is_file()
        picked = max(info["scores"], key=info["scores"].get)
        assert wa["picked"][str(k)] == info["picked"] == picked
        if picked == "best":
            assert files.read_best().source in ("model", "ema") and not files.best_epoch.exists()
        else:
            assert files.read_best().source == "snapshot" and files.best_epoch.is_file()
