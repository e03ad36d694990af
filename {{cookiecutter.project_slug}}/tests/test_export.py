"""`export` (TorchScript, ONNX, int8, pruned: each checked against torch, scored on OOF, sized and timed), prediction
from the exported ONNX models (`predict.runtime=onnx`), and `predict --estimate N`, through the CLI on a small demo
competition with a tiny model trained for it (e2e); global pruning and the config checks on their own."""

import dataclasses
import json
import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from {{ cookiecutter.package_name }} import cli, config, export, predict
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import ExportManifest, checksum
from {{ cookiecutter.package_name }}.core.tasks import num_outputs
from {{ cookiecutter.package_name }}.data.problem import build_fold_data, load_problem
from {{ cookiecutter.package_name }}.engine import inference
from {{ cookiecutter.package_name }}.modeling import deploy
from {{ cookiecutter.package_name }}.modeling.models import build_model
from {{ cookiecutter.package_name }}.modeling.predictors import Predictor

from conftest import small_config, wandb_runs

VARIANTS = ["torch", "torchscript", "onnx", "onnx_int8", "dynamic_int8", "pruned"]
FILES = {
    "torchscript": "model.ts",
    "onnx": "model.onnx",
    "onnx_int8": "model_int8.onnx",
    "dynamic_int8": "model_dynamic_int8.onnx",
    "qat_int8": "model_qat_int8.onnx",
    "pruned": "pruned.pt",
}
TTA = ["tta.views=[identity,rot90]"]


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def config_path(root, name: str):
    return root / "configs" / f"{name}.yaml"


@pytest.fixture(scope="module")
def exported(small_project):
    """The small project's experiment `exp` trained (2 folds) and exported with every variant, as a user would:
    `train -c`, then `export -c`. Returns (root, config, export.json's content)."""
    root = small_project
    cfg = small_config(root, "exp")
    assert cli.main(["train", "-c", str(config_path(root, "exp"))]) == 0
    assert cli.main(["export", "-c", str(config_path(root, "exp"))]) == 0
    return root, cfg, json.loads(cfg.run.export_json.read_text())


def copy_experiment(root, name: str, overrides=()) -> config.Config:
    """outputs/exp copied to outputs/<name> with a config of that name: a run a test may spoil."""
    shutil.copytree(root / "outputs" / "exp", root / "outputs" / name)
    return small_config(root, name, overrides)


@pytest.mark.e2e
def test_export_writes_every_variant_checked_scored_sized_and_timed(exported):
    _, cfg, written = exported
    run = cfg.run
    cv = json.loads(run.cv.read_text())
    assert set(written["folds"]) == {"0", "1"} and list(written["overall"]) == VARIANTS
    # The fp32 torch row is the trained model itself: the same OOF score as training reported, fold by fold.
    assert written["overall"]["torch"] == pytest.approx(cv["cv"], abs=1e-12)
    for k, entry in written["folds"].items():
        assert entry["variants"]["torch"]["score"] == pytest.approx(cv["folds"][k], abs=1e-12)
        for name, row in entry["variants"].items():
            path = run.path / row["file"]
            assert path == (run.fold(int(k)).best if name == "torch" else run.path / f"export/fold{k}" / FILES[name])
            assert row["size_mb"] == pytest.approx(path.stat().st_size / 2**20)
            assert row["sha256"] == checksum(path)  # the file export wrote, which predict.runtime=onnx checks
            assert row["zipped_mb"] > 0 and row["images_per_s"] > 0 and 0 <= row["score"] <= 1
        assert entry["checkpoint"] == entry["variants"]["torch"]["sha256"] == checksum(run.fold(int(k)).best)
        files = run.export_fold(int(k))
        assert entry["variants"]["onnx"]["max_abs_diff"] <= 1e-4 and entry["variants"]["onnx"]["parity_ok"]
        assert entry["variants"]["torchscript"]["max_abs_diff"] <= 1e-4
        # int8: quantise/dequantise pairs around int8 weights, about a quarter of the fp32 file.
        ops = {node.op_type for node in onnx.load(str(files.onnx_int8)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert files.onnx_int8.stat().st_size < 0.5 * files.onnx.stat().st_size
        # dynamic int8: integer convolutions whose activations are quantised per batch (no calibration)
        ops = {node.op_type for node in onnx.load(str(files.onnx_dynamic_int8)).graph.node}
        assert {"DynamicQuantizeLinear", "ConvInteger"} <= ops
        assert files.onnx_dynamic_int8.stat().st_size < 0.5 * files.onnx.stat().st_size
        # pruned: half of all conv/linear weights are zero, taken globally (some layers lose more than others).
        weights = torch.load(files.pruned, weights_only=True)["model"]
        model = build_model(cfg, 10, pretrained=False)
        model.load_state_dict(weights)
        shares = [float((m.weight == 0).float().mean()) for m, _ in deploy.prunable(model)]
        assert deploy.sparsity_of(model) == pytest.approx(0.5, abs=1e-3) == entry["variants"]["pruned"]["sparsity"]
        assert max(shares) - min(shares) > 0.05
    table = export.format_table(ExportManifest.from_dict(written))
    for name in VARIANTS:
        assert f"\n  {name}" in table
    assert "pruned (50%)" in table


@pytest.mark.e2e
def test_export_logs_a_wandb_run_with_the_table(exported, monkeypatch):
    """Offline: a run of job_type export in the experiment's group, whose summary holds every figure of the table."""
    root, _, _ = exported
    cfg = copy_experiment(root, "exp_tracked")
    monkeypatch.delenv("WANDB_MODE")  # the config's wandb.mode decides
    args = ["export", "-c", str(config_path(root, "exp_tracked")), "wandb.mode=offline", "export.variants=[onnx]"]
    assert cli.main(args) == 0
    (tracked,) = [r for r in wandb_runs(cfg.run_dir) if r["job_type"] == "export"]
    assert (tracked["group"], tracked["name"]) == ("exp_tracked", "exp_tracked-export")
    rows = export.table_rows(cfg.run.read_export())
    assert set(rows) == {"torch", "onnx"} and rows["onnx"]["parity_ok"] is True
    expected = {f"{variant}/{key}": value for variant, row in rows.items() for key, value in row.items()}
    assert {k: tracked["summary"].get(k) for k in expected} == expected
    assert expected["torch/vs_torch"] == 0.0 and expected["onnx/size_mb"] > 0


@pytest.mark.e2e
def test_onnx_probabilities_match_torch_on_validation_images(exported):
    """Independently of the export's own check: onnxruntime on model.onnx vs the checkpoint in torch, on every
    validation image of each fold, batch sizes other than the one it was traced with."""
    _, cfg, _ = exported
    problem = load_problem(cfg)
    model = build_model(cfg, num_outputs(cfg.task, len(problem.classes)), pretrained=False).eval()
    for k in (0, 1):
        model.load_state_dict(torch.load(cfg.run.fold(k).best, weights_only=True)["model"])
        feed = inference.feeder(cfg, model, torch.device("cpu"), workers=0)  # normalised as in training
        x = torch.cat([batch["image"] for batch in feed(build_fold_data(cfg, problem, k).valid)])
        session = ort.InferenceSession(str(cfg.run.export_fold(k).onnx), providers=["CPUExecutionProvider"])
        for batch in (x[:1], x[1:8], x):
            ours = torch.from_numpy(session.run(None, {"image": batch.numpy()})[0]).softmax(-1)
            with torch.no_grad():
                theirs = model(batch).softmax(-1)
            assert (ours - theirs).abs().max() <= 1e-4


@pytest.mark.e2e
def test_predict_runtime_onnx_matches_torch_with_tta_and_int8_runs(exported):
    """predict.runtime=onnx: test predictions and OOF with TTA views as with torch (within 1e-4); the int8 models
    predict too, close to fp32 but not equal to it."""
    root, cfg, _ = exported
    path = config_path(root, "exp")
    results = []
    for runtime, model in (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")):
        args = ["predict", "-c", str(path), *TTA, f"predict.runtime={runtime}", f"predict.onnx_model={model}"]
        assert cli.main(args) == 0
        results.append((read(cfg.run.test_pred), read(cfg.run.oof_tta)))
        source = json.loads(cfg.run.test_pred.with_name("test_pred.csv.source.json").read_text())["folds"]["0"]
        assert source["views"] == ["identity", "rot90"]
        assert source.get("runtime") == (None if runtime == "torch" else f"onnx {model}")
    (torch_test, torch_oof), (onnx_test, onnx_oof), (int8_test, _) = results
    for ours, theirs in ((onnx_test, torch_test), (onnx_oof, torch_oof)):
        assert ours["id"].tolist() == theirs["id"].tolist()
        assert np.abs(ours.iloc[:, -10:].to_numpy() - theirs.iloc[:, -10:].to_numpy()).max() <= 1e-4
    gap = np.abs(int8_test.iloc[:, 1:].to_numpy() - onnx_test.iloc[:, 1:].to_numpy()).max()
    assert 0 < gap < 0.2


@pytest.mark.e2e
def test_predict_runtime_onnx_refuses_what_export_does_not_vouch_for(exported, capsys):
    root, _, _ = exported
    ran = lambda name, *extra: cli.main(["predict", "-c", str(config_path(root, name)), "predict.runtime=onnx", *extra])  # noqa: E731
    stale = copy_experiment(root, "stale")
    ckpt = stale.run.fold(1).read_best()
    stale.run.fold(1).write_best(dataclasses.replace(ckpt, epoch=ckpt.epoch + 1))  # retrained since the export
    assert ran("stale") == 2
    assert "exported from another best.pt than fold 1 has now" in capsys.readouterr().err
    # A model file replaced after the export (here fold 1's model.onnx copied over fold 0's: a valid ONNX model,
    # of another fold) is refused by its sha256, in one line naming it.
    swapped = copy_experiment(root, "swapped")
    shutil.copyfile(swapped.run.export_fold(1).onnx, swapped.run.export_fold(0).onnx)
    assert ran("swapped") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(swapped.run.export_fold(0).onnx) in err and "sha256" in err and "make export EXP=swapped" in err
    failed = copy_experiment(root, "failed")
    info = json.loads(failed.run.export_json.read_text())
    info["folds"]["0"]["variants"]["onnx"]["parity_ok"] = False
    failed.run.export_json.write_text(json.dumps(info))
    assert ran("failed") == 2
    assert "differs from torch" in capsys.readouterr().err
    bare = copy_experiment(root, "bare")
    shutil.rmtree(bare.run.export_dir)
    assert ran("bare") == 2
    assert "make export EXP=bare" in capsys.readouterr().err
    # The models were exported at 16x16: a resizing view needs them exported with dynamic sizes.
    assert ran("exp", "tta.views=[identity,scale_0.75]") == 2
    assert "export.dynamic_size=true" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_partial_export_with_the_older_exporter_and_dynamic_sizes(small_project, exported, capsys):
    """export.variants=[onnx] with the tracing exporter and dynamic sizes: a resizing TTA view then runs in
    onnxruntime as in torch, and the int8 model, not exported, is refused by name."""
    root, _, _ = exported
    cfg = copy_experiment(root, "dyn", ["export.exporter=torchscript", "export.dynamic_size=true"])
    shutil.rmtree(cfg.run.export_dir)
    path = config_path(root, "dyn")
    overrides = ["export.variants=[onnx]", "export.exporter=torchscript", "export.dynamic_size=true"]
    assert cli.main(["export", "-c", str(path), *overrides]) == 0
    info = json.loads(cfg.run.export_json.read_text())
    assert list(info["overall"]) == ["torch", "onnx"] and info["settings"]["exporter"] == "torchscript"
    assert not cfg.run.export_fold(0).torchscript.exists() and not cfg.run.export_fold(0).onnx_int8.exists()
    views = ["--no-oof-tta", "tta.views=[identity,scale_0.75]"]
    tests = []
    for runtime in ("torch", "onnx"):
        assert cli.main(["predict", "-c", str(path), *views, f"predict.runtime={runtime}"]) == 0
        tests.append(read(cfg.run.test_pred).iloc[:, 1:].to_numpy())
    assert np.abs(tests[0] - tests[1]).max() <= 1e-4
    assert cli.main(["predict", "-c", str(path), "predict.runtime=onnx", "predict.onnx_model=int8"]) == 2
    assert "no exported onnx_int8 model" in capsys.readouterr().err


@pytest.mark.e2e
def test_int8_export_with_dynamic_sizes_and_a_failed_export_leaves_the_previous_one_whole(exported, monkeypatch):
    """export is built aside and swapped in whole: a failure part-way (here the int8 quantiser on fold 1) leaves the
    previous export/ byte for byte, no files of two exports side by side; int8 takes dynamic sizes, and its model
    runs a resizing TTA view."""
    root, _, _ = exported
    cfg = copy_experiment(root, "dyn8")
    path, run = config_path(root, "dyn8"), cfg.run
    overrides = ["export.variants=[onnx,onnx_int8]", "export.dynamic_size=true"]
    files = lambda: {p: p.read_bytes() for p in run.export_dir.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    real, calls = deploy.quantize_int8, []

    def fails_on_fold_1(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise UserError("the quantiser failed")
        return real(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(deploy, "quantize_int8", fails_on_fold_1)
        assert cli.main(["export", "-c", str(path), *overrides]) == 2
    assert len(calls) == 2 and files() == before and not list(run.path.glob(".export*"))

    (run.export_fold(0).path / "stale.onnx").write_bytes(b"from an older export")
    assert cli.main(["export", "-c", str(path), *overrides]) == 0
    info = json.loads(run.export_json.read_text())
    assert list(info["overall"]) == ["torch", "onnx", "onnx_int8"] and info["settings"]["dynamic_size"]
    assert sorted(p.name for p in run.export_fold(0).path.iterdir()) == ["model.onnx", "model_int8.onnx"]
    assert not list(run.path.glob(".export*"))
    views = ["--no-oof-tta", "tta.views=[identity,scale_0.75]", "predict.runtime=onnx", "predict.onnx_model=int8"]
    assert cli.main(["predict", "-c", str(path), *views]) == 0
    assert read(run.test_pred).iloc[:, 1:].notna().all().all()


@pytest.mark.e2e
def test_qat_and_dynamic_int8_of_a_coord_conv_model_with_ema_are_scored_in_export_json(small_project, exported,
                                                                                        capsys):  # fmt: skip
    """model.coord_conv=true trained with EMA, exported with the default (dynamo) exporter: ONNX parity holds
    through the coordinate channels; dynamic_int8 and qat (a quantisation-aware fine-tune of each fold's model, then
    static int8) are each scored on the fold's validation rows (OOF overall too), smaller than the fp32 model, their
    sha256 recorded; the qat fine-tune ran on each fold, and its float model is not left behind."""
    root, _, _ = exported
    extra = ["model.coord_conv=true", "train.ema=true"]
    cfg = small_config(root, "coordqat", extra)
    path = config_path(root, "coordqat")
    assert cli.main(["train", "-c", str(path), *extra]) == 0
    assert cli.main(["export", "-c", str(path), *extra, "export.variants=[onnx,dynamic_int8,qat]"]) == 0
    out = capsys.readouterr().out
    assert all(f"fold {k} qat fine-tune epoch 1/1" in out for k in (0, 1))
    info = json.loads(cfg.run.export_json.read_text())
    assert list(info["overall"]) == ["torch", "onnx", "dynamic_int8", "qat"]
    assert all(np.isfinite(info["overall"][v]) for v in info["overall"])
    for k, entry in info["folds"].items():
        files, rows = cfg.run.export_fold(int(k)), entry["variants"]
        assert rows["onnx"]["parity_ok"] and rows["onnx"]["max_abs_diff"] <= 1e-4
        for name, file in (("dynamic_int8", files.onnx_dynamic_int8), ("qat", files.onnx_qat_int8)):
            row = rows[name]
            assert file.name == FILES["qat_int8" if name == "qat" else name]
            assert row["file"] == file.relative_to(cfg.run.path).as_posix() and row["sha256"] == checksum(file)
            assert np.isfinite(row["score"]) and 0 <= row["score"] <= 1 and row["images_per_s"] > 0
            assert row["size_mb"] < rows["onnx"]["size_mb"] and row["size_mb"] < rows["torch"]["size_mb"]
        qat_ops = {node.op_type for node in onnx.load(str(files.onnx_qat_int8)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= qat_ops and "BatchNormalization" not in qat_ops
        assert sorted(p.name for p in files.path.iterdir()) == sorted(
            ["model.onnx", "model_dynamic_int8.onnx", "model_qat_int8.onnx"]
        )
    table = export.format_table(ExportManifest.from_dict(info))
    assert "\n  dynamic_int8" in table and "\n  qat" in table


def test_qat_weights_train_on_the_int8_grid_and_come_back_as_plain_layers():
    """prepare_qat: the forward pass sees each conv/linear weight rounded to int8 per output channel while the
    optimizer moves the float weight (straight-through gradients); finish_qat leaves plain layers whose weights are
    on that grid, with BatchNorm folded into the convolutions first."""
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(), 4, pretrained=False).eval()
    x = torch.rand(4, 1, 32, 32)
    folded = deploy.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    hooks = deploy.prepare_qat(folded)
    opt = torch.optim.SGD(folded.parameters(), lr=0.01)
    folded.train()
    for _ in range(3):
        opt.zero_grad()
        folded(x).logsumexp(1).mean().backward()
        opt.step()
    quantizers = {id(m): m.parametrizations.weight[0] for m in folded.modules() if isinstance(m, deploy.QUANTIZED)}
    plain = deploy.finish_qat(folded, hooks)
    layers = [m for m in plain.modules() if isinstance(m, deploy.QUANTIZED)]
    assert layers and not any(hasattr(m, "parametrizations") or hasattr(m, "input_fake_quant") for m in layers)
    for layer in layers:
        # symmetric per-channel int8: each output channel's weights are whole multiples of its scale, in -127..127
        scale = quantizers[id(layer)].scale.view(-1, 1)
        steps = layer.weight.detach().flatten(1) / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3) and float(steps.abs().max()) <= 127 + 1e-3


def _tiny_cfg() -> config.Config:
    return dataclasses.replace(
        config.Config(exp="t"), model=config.ModelConfig(backbone="test_resnet", pretrained=False, in_chans=1)
    )


@pytest.mark.e2e
def test_pruning_is_global_magnitude_and_the_fine_tune_keeps_the_zeros(exported):
    """The zeros are the smallest weights of the whole network; a fine-tune trains the other weights and leaves
    the zeros where pruning put them."""
    root, cfg, _ = exported
    problem = load_problem(cfg)
    model = build_model(cfg, num_outputs(cfg.task, len(problem.classes)), pretrained=False)
    model.load_state_dict(torch.load(cfg.run.fold(0).best, weights_only=True)["model"])
    before = {n: w.clone() for n, w in model.state_dict().items()}
    plain, sparsity = export.prune_model(small_config(root, "exp", ["export.sparsity=0.3"]), 0, model)
    tuned_cfg = small_config(root, "exp", ["export.sparsity=0.3", "export.prune_finetune_epochs=1"])
    tuned, tuned_sparsity = export.prune_model(tuned_cfg, 0, model)
    assert all(torch.equal(w, before[n]) for n, w in model.state_dict().items())  # pruned copies, not the model
    assert sparsity == pytest.approx(0.3, abs=1e-3) and tuned_sparsity == pytest.approx(0.3, abs=1e-3)
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m, _ in deploy.prunable(model)])
    threshold = magnitudes.kthvalue(round(0.3 * len(magnitudes))).values  # the largest weight pruned
    moved = False
    for (original, _), (p, _), (t, _) in zip(
        deploy.prunable(model), deploy.prunable(plain), deploy.prunable(tuned), strict=True
    ):
        zero = p.weight == 0
        assert torch.equal(zero, t.weight == 0)  # the fine-tune kept the mask
        assert (original.weight.abs()[zero] <= threshold).all() and (original.weight.abs()[~zero] >= threshold).all()
        assert torch.equal(p.weight[~zero], original.weight[~zero])  # plain pruning touches nothing else
        moved |= not torch.equal(t.weight[~zero], original.weight[~zero])
    assert moved  # the fine-tune trained


class Counting(Predictor):
    """A predictor that records the size of every batch it is given."""

    def __init__(self, inner, calls):
        self.inner, self.device, self.calls = inner, inner.device, calls

    def __call__(self, x):
        self.calls.append(len(x))
        return self.inner(x)


@pytest.mark.e2e
def test_estimate_projects_from_a_timed_pass_over_every_view(exported, capsys, monkeypatch):
    """The printed projection is its own arithmetic, first load + (folds - 1) x load + folds x N x per-image time,
    whatever N, the views and the runtime; the per-image time is measured with every configured view (counted
    here, never timed)."""
    root, _, _ = exported
    path = config_path(root, "exp")
    num, count = r"([\d.]+)", r"(\d+)"
    pattern = (
        rf"projected for {count} images: {num} s \+ {count} x {num} s \+ {count} folds x {count} x {num} ms = {num} s"
    )
    for n, extra in ((1000, []), (250000, TTA), (777, [*TTA, "predict.runtime=onnx"])):
        assert cli.main(["predict", "-c", str(path), "--estimate", str(n), *extra]) == 0
        out = capsys.readouterr().out
        views = 2 if extra else 1
        assert f"2 fold(s) x {views} view(s)" in out and f"all {views} views, decoding included" in out
        n_out, first, others, load, folds, n_again, ms, total = re.search(pattern, out).groups()
        assert int(n_out) == int(n_again) == n and int(folds) == 2 and int(others) == 1
        expected = float(first) + float(load) + 2 * n * float(ms) / 1000
        assert float(total) == pytest.approx(expected, abs=2 * (0.0005 + n * 0.0005 / 1000) + 0.05)  # rounding

    # tta.views: auto estimates the views chosen on OOF (chosen now, as predict would), never the word 'auto'
    assert cli.main(["predict", "-c", str(path), "--estimate", "300", "tta.views=auto", "tta.candidates=[hflip]"]) == 0
    shown = re.search(r"fold\(s\) x \d+ view\(s\) (\[.*?\])", capsys.readouterr().out).group(1)
    assert shown.startswith("['identity'") and "auto" not in shown

    calls, real = [], inference.fold_predictors

    def counting(cfg, n_classes):
        load, feed = real(cfg, n_classes)
        return (lambda k: Counting(load(k), calls)), feed

    monkeypatch.setattr(predict, "fold_predictors", counting)
    tta_cfg = small_config(root, "exp", TTA)
    result = predict.estimate(tta_cfg, 100, batches=1, log=lambda line: None)
    rows = min(len(read(root / "data" / "test.csv")), tta_cfg.tta.batch_size)
    # the warm-up batch, then the timed one, each with both views, then each view alone (estimate.json)
    assert sum(calls) == 2 * rows + 2 * rows + 2 * rows
    assert result["total_s"] == pytest.approx(
        result["first_load_s"] + result["load_s"] + 2 * result["ms_per_image"] / 10
    )
    assert cli.main(["predict", "-c", str(path), "--estimate", "0"]) == 2
    assert "--estimate 0" in capsys.readouterr().err


def test_global_pruning_zeroes_the_smallest_weights_of_the_whole_network():
    """Conv and linear weights compete in one ranking: a layer of small weights loses most of them, one of large
    weights keeps them; biases and BatchNorm are untouched; `make_permanent` leaves plain weights, zeros in place."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8, 4)
    )
    with torch.no_grad():
        net[0].weight.mul_(0.01)  # 216 small weights
        net[3].weight.copy_(torch.linspace(1, 2, 32).reshape(4, 8))  # 32 large ones
    before = {n: t.clone() for n, t in net.state_dict().items()}
    params = deploy.prune_global(net, 0.5)
    assert [m for m, _ in params] == [net[0], net[3]]
    deploy.make_permanent(params)
    assert set(net.state_dict()) == set(before)  # no weight_orig / weight_mask left behind
    assert int((net[0].weight == 0).sum()) == 124 and int((net[3].weight == 0).sum()) == 0  # round(0.5 * 248) = 124
    assert deploy.sparsity_of(net) == pytest.approx(124 / 248)
    kept = net[0].weight != 0
    assert net[0].weight[kept].abs().min() >= before["0.weight"][~kept].abs().max()
    for name in ("0.bias", "1.weight", "1.running_mean", "3.bias", "3.weight"):
        assert torch.equal(net.state_dict()[name], before[name])


def test_torchscript_exporter_takes_opset_17(tmp_path):
    """The bad export and runtime values are in test_config.py's BAD_AT_LOAD; the older exporter takes opset 17."""
    path = tmp_path / "e.yaml"
    path.write_text("seed: 1\n")
    assert config.load(path, ["export.exporter=torchscript", "export.opset=17"]).export.opset == 17
