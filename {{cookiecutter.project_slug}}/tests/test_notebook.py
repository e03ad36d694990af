"""The code-competition notebook (notebooks/inference.py) run as Kaggle runs it: a separate Python that imports the
package from the upload dataset only, reads the competition folder and writes submission.csv in a working folder,
the dataset left untouched. And push-notebook: kernel-metadata.json filled in, pushed unless --dry-run."""

import json
import os
import runpy
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from {{ cookiecutter.package_name }} import cli, config, ensemble, submission
from {{ cookiecutter.package_name }}.core import errors
from {{ cookiecutter.package_name }}.core.runs import BlendWeights, Classes, Decisions, Run, read_masks
from {{ cookiecutter.package_name }}.data import demo
from {{ cookiecutter.package_name }}.kaggle import api as kaggle_api
from {{ cookiecutter.package_name }}.kaggle import offline
from {{ cookiecutter.package_name }}.kaggle import submissions as kaggle_submissions

from conftest import TINY, TINY_SEGMENTATION, write_config

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
COMPETITION = "digit-recognizer"
EXTRA = TINY + f"tta:\n  views: [identity, vflip]\ncompetition: {COMPETITION}\n"
QUIET = {"log": lambda line: None}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def project(tmp_path_factory, new_project):
    """Two trained experiments (2 folds x 1 epoch), their test predictions, their mean blend and its submission,
    made locally by the package as a user would."""
    root = tmp_path_factory.mktemp("project")
    cfg = new_project(root, "multiclass", n_folds=2, extra=EXTRA)
    exp2 = write_config(root, "multiclass", n_folds=2, extra=EXTRA + "seed: 7\n", name="exp2")
    for path in (root / "configs" / "exp.yaml", exp2):
        assert cli.main(["train", "-c", str(path)]) == 0
        assert cli.main(["predict", "-c", str(path)]) == 0  # test predictions, and the decisions a submission applies
    ensemble.blend(cfg, ["exp", "exp2"], "mean", "blend", **QUIET)
    local = submission.make_submission(cfg, "blend", name="local", out_dir=root / "local", **QUIET)
    return root, cfg, local


def notebook_env(work: Path, env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the project's src must not be importable
    return base | {"INFER_WORK_DIR": str(work), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"} | env


def run_notebook(tmp_path: Path, dataset: Path, data: Path, **env: str) -> tuple[Path, subprocess.CompletedProcess]:
    """notebooks/inference.py in a separate Python, as Kaggle runs it, over the packaged `dataset` and the competition
    `data`, in a fresh working folder (returned with the finished process); `env`: more INFER_* variables."""
    work = tmp_path / "working"
    work.mkdir()
    env = {"INFER_DATASET_DIR": str(dataset), "INFER_DATA_DIR": str(data), "KAGGLE_INPUT": str(tmp_path), **env}
    cmd = [sys.executable, str(NOTEBOOKS / "inference.py")]
    done = subprocess.run(cmd, cwd=work, env=notebook_env(work, env), capture_output=True, text=True, timeout=600)
    return work, done


def check_submission(root: Path, cfg, local: Path, work: Path, final: str) -> None:
    """work/submission.csv has the sample's ids and columns, and is the local submission: same predictions, score."""
    sub, sample = read(work / "submission.csv"), read(root / "data" / "sample_submission.csv")
    assert sub.columns.tolist() == sample.columns.tolist() and sub["id"].tolist() == sample["id"].tolist()
    pd.testing.assert_frame_equal(sub, read(local))
    ours, theirs = read(work / "outputs" / final / "test_pred.csv"), read(root / "outputs" / "blend" / "test_pred.csv")
    assert ours["id"].tolist() == theirs["id"].tolist()
    np.testing.assert_allclose(ours.iloc[:, 1:].to_numpy(), theirs.iloc[:, 1:].to_numpy(), rtol=0, atol=1e-6)
    solution = root / "data" / "solution.csv"
    assert submission.score_submission(cfg, work / "submission.csv", solution) == submission.score_submission(
        cfg, local, solution
    )
    assert not list(work.rglob("*.pt"))  # checkpoint links are dropped once used: the kernel's output stays small


@pytest.mark.e2e
def test_notebook_averages_the_packaged_experiments_offline(project, tmp_path):
    """A separate Python, as on Kaggle: the package comes from the dataset's src/ only, the dataset stays untouched,
    and the mean of the two packaged experiments gives the submission `make-submission` wrote for their mean blend."""
    root, cfg, local = project
    dataset = offline.package_for_dataset(cfg, ["exp", "exp2"], tmp_path / "ds", "me/digit-models", "Digit models")
    before = snapshot(dataset)
    work, done = run_notebook(tmp_path, dataset, root / "data")
    assert done.returncode == 0, done.stderr[-3000:]
    package = offline.__package__.split(".")[0]
    assert f"package {package} from {dataset / 'src' / package}\n" in done.stdout
    assert snapshot(dataset) == before  # read-only on Kaggle: nothing may be written there
    check_submission(root, cfg, local, work, offline.MEAN_NAME)


@pytest.mark.e2e
def test_notebook_finds_kaggle_inputs_and_recomputes_a_packaged_ensemble(project, tmp_path, monkeypatch):
    """In this process (the import from src/ is checked above): with no settings, the dataset and the competition
    are found where Kaggle mounts them, /kaggle/input/<dataset-slug> and /kaggle/input/<competition>, and a
    packaged ensemble is recomputed from its packaged members and recorded weights."""
    root, cfg, local = project
    kaggle_input, work = tmp_path / "input", tmp_path / "working"
    work.mkdir()
    kaggle_input.mkdir()
    (kaggle_input / COMPETITION).symlink_to(root / "data")
    offline.package_for_dataset(cfg, ["blend"], kaggle_input / "digit-models", "me/digit-models", "Digit models")
    for key, value in notebook_env(work, {"KAGGLE_INPUT": str(kaggle_input)}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the notebook puts the dataset's src/ first
    monkeypatch.chdir(work)
    runpy.run_path(str(NOTEBOOKS / "inference.py"), run_name="__main__")
    check_submission(root, cfg, local, work, "blend")


@pytest.mark.e2e
def test_upload_carries_the_onnx_models_and_the_notebook_keeps_the_decided_runtime(project, tmp_path):
    """`export` each experiment, upload: the dataset carries export.json and the ONNX models (not TorchScript nor
    pruned weights); the notebook refuses INFER_OVERRIDES that would predict in another runtime than the one the
    runs' CV was measured with."""
    root, cfg, _ = project
    for name in ("exp", "exp2"):  # the quicker exporter
        args = ["export", "-c", str(root / "configs" / f"{name}.yaml"), "export.variants=[onnx]"]
        assert cli.main([*args, "export.exporter=torchscript", "export.opset=17"]) == 0
    (root / "outputs" / "exp" / "export" / "fold0" / "model.ts").write_bytes(b"TorchScript stays home")
    dataset = offline.package_for_dataset(cfg, ["exp", "exp2"], tmp_path / "ds", "me/digit-models", "Digit models")
    exported = dataset / "exp" / "export"
    assert sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*.*")) == [
        "export.json",
        "fold0/model.onnx",
        "fold1/model.onnx",
    ]
    work, done = run_notebook(tmp_path, dataset, root / "data", INFER_OVERRIDES="predict.runtime=onnx")
    # These runs were predicted in torch: their CV is torch's, so the notebook will not predict otherwise (predicting
    # with the ONNX models is decided at home: test_the_notebook_submits_exactly_the_local_submission[onnx_*]).
    assert done.returncode != 0 and "decided by `predict`" in done.stderr
    assert not (work / "submission.csv").exists()


# What a run decides, and how: (task, metric, train overrides, export overrides or None, predict overrides).
DECIDED = {
    "tta_auto": ("multiclass", "auto", [], None, ["tta.views=auto", "tta.candidates=[hflip,vflip,rot90]"]),
    "multilabel_thresholds": ("multilabel", "auto", [], None, ["tta.views=[identity,vflip]"]),
    "regression_ordinal_cuts": ("regression", "qwk", [], None, ["tta.views=[identity,hflip]"]),
    "pick_averaged": ("multiclass", "auto", ["train.epochs=2", "train.avg_best_k=2", "train.pick_averaged=true"],
                      None, []),
    "onnx_fp32": ("multiclass", "auto", [], ["export.variants=[onnx]"], ["predict.runtime=onnx"]),
    "onnx_int8": ("binary", "accuracy", [], ["export.variants=[onnx,onnx_int8]"],
                  ["predict.runtime=onnx", "predict.onnx_model=int8", "tta.views=[identity,vflip]"]),
}  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(DECIDED))
def test_the_notebook_submits_exactly_the_local_submission(tmp_path, new_project, case):
    """Each decision a run makes (TTA views chosen on OOF, multilabel thresholds, regression ordinal cuts, the
    averaged weights picked, the ONNX fp32 or int8 runtime) travels in the upload: the notebook, run as Kaggle runs
    it, writes the submission `make-submission` wrote locally (the same labels, probabilities within 1e-6), and the
    CV the submit message states is that of this very submission."""
    task, metric, train_args, export_args, predict_args = DECIDED[case]
    root = tmp_path / "project"
    cfg = new_project(root, task, metric, n_folds=2, extra=TINY + f"competition: {COMPETITION}\n")
    path = str(root / "configs" / "exp.yaml")
    assert cli.main(["train", "-c", path, *train_args]) == 0
    if export_args is not None:
        assert cli.main(["export", "-c", path, *export_args, "export.exporter=torchscript", "export.opset=17"]) == 0
    assert cli.main(["predict", "-c", path, *predict_args]) == 0
    assert cli.main(["make-submission", "-c", path]) == 0
    local = root / "submissions" / "exp.csv"
    decided = Run.named(cfg.output_dir, "exp").read_decisions()
    if case == "tta_auto":
        assert decided.views[0] == "identity" and "auto" not in decided.views
    if case == "multilabel_thresholds":
        classes = Run.named(cfg.output_dir, "exp").read_classes().classes
        assert decided.thresholds is not None and len(decided.thresholds) == len(classes)
    if case == "regression_ordinal_cuts":
        assert decided.ordinal is not None and len(decided.ordinal["cuts"]) == len(decided.ordinal["levels"]) - 1
    if case.startswith("onnx"):  # the CV printed and recorded is the ONNX models' own
        assert decided.runtime == f"onnx {case.split('_')[1]}" and decided.cv_from == "oof_tta.csv"
        cv = json.loads((root / "outputs" / "exp" / "cv.json").read_text())
        assert cv["runtime"] == decided.runtime and cv["cv_submission"] == decided.cv
    # the CV of the submission: its decisions applied to the OOF predicted as the test set was, scored
    assert kaggle_submissions.default_message(cfg, local.stem) == f"exp CV {decided.metric}={decided.cv:.5f}"

    dataset = offline.package_for_dataset(cfg, ["exp"], tmp_path / "ds", "me/digit-models", "Digit models")
    work, done = run_notebook(tmp_path, dataset, root / "data")
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = read(work / "submission.csv"), read(local)
    assert ours.columns.tolist() == theirs.columns.tolist() and ours["id"].tolist() == theirs["id"].tolist()
    for col in ours.columns[1:]:
        if pd.api.types.is_float_dtype(theirs[col]):
            np.testing.assert_allclose(ours[col], theirs[col], rtol=0, atol=1e-6)
        else:
            assert ours[col].tolist() == theirs[col].tolist()  # labels, tags, grades: the same
    pred_ours = read(work / "outputs" / "exp" / "test_pred.csv").iloc[:, 1:].to_numpy()
    pred_theirs = read(root / "outputs" / "exp" / "test_pred.csv").iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(pred_ours, pred_theirs, rtol=0, atol=1e-6)


@pytest.mark.e2e
def test_the_notebook_submits_exactly_the_local_segmentation_submission(tmp_path):
    """A segmentation run (TTA views, post-processing decided on OOF) travels in the upload: the notebook, run as
    Kaggle runs it, writes the very run-length encodings `make-submission` wrote locally, from the same maps."""
    root = tmp_path / "project"
    demo.write_demo(root / "data", "segmentation")
    path = write_config(root, "segmentation", n_folds=2, extra=TINY_SEGMENTATION + f"competition: {COMPETITION}\n")
    for command in (["folds"], ["train"], ["predict", "tta.views=[identity,vflip]"], ["make-submission"]):
        assert cli.main([command[0], "-c", str(path), *command[1:]]) == 0
    cfg = config.load(path)
    dataset = offline.package_for_dataset(cfg, ["exp"], tmp_path / "ds", "me/digit-models", "Digit models")
    work, done = run_notebook(tmp_path, dataset, root / "data")
    assert done.returncode == 0, done.stderr[-3000:]
    ours = pd.read_csv(work / "submission.csv", dtype=str, keep_default_na=False)
    theirs = pd.read_csv(root / "submissions" / "exp.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(ours, theirs)
    ids = theirs["id"].drop_duplicates().tolist()
    np.testing.assert_array_equal(read_masks(work / "outputs" / "exp" / "test_pred.csv", ids),
                                  read_masks(root / "outputs" / "exp" / "test_pred.csv", ids))  # fmt: skip


def test_notebook_refuses_to_predict_otherwise_than_decided(tmp_path):
    """INFER_OVERRIDES may not change what the CV was measured with: the views, merge and runtime are decided."""
    run = Run(tmp_path / "ds" / "exp")
    run.path.mkdir(parents=True)
    run.write_decisions(Decisions(metric="accuracy", higher_is_better=True, cv=0.5, cv_from="oof.csv",
                                  format="label", views=["identity"], merge="mean", runtime="torch"))  # fmt: skip
    for override in ("predict.runtime=onnx", "tta.views=[identity,hflip]"):
        with pytest.raises(errors.UserError, match="decided by `predict`"):
            offline.predict_packaged(tmp_path / "ds", "exp", tmp_path / "data", tmp_path / "out", [override], **QUIET)


def make_dataset(root: Path, runs: dict[str, list[str]]) -> Path:
    """A packaged dataset's run folders only: name -> ensemble members ([] for an experiment)."""
    for name, members in runs.items():
        (root / name).mkdir(parents=True)
        Run(root / name).write_classes(Classes("binary", ["0", "1"]))
        if members:
            Run(root / name).write_weights(BlendWeights("mean", members, [1.0 / len(members)] * len(members)))
        else:
            (root / name / "config.yaml").write_text(f"exp: {name}\ncompetition: {COMPETITION}\n")
    return root


def test_packaged_experiments_leave_out_ensemble_members(tmp_path):
    runs = {"exp1": [], "exp2": [], "exp3": [], "blend": ["exp2", "inner"], "inner": ["exp3"]}
    dataset = make_dataset(tmp_path, runs)
    assert offline.packaged_experiments(dataset) == ["blend", "exp1"]
    assert offline.config_path(dataset, "blend") == dataset / "exp2" / "config.yaml"
    with pytest.raises(errors.UserError, match="no packaged experiment"):
        offline.packaged_experiments(tmp_path / "empty")


def test_find_data_dir(tmp_path):
    dataset = make_dataset(tmp_path / "models", {"exp1": []})
    root = tmp_path / "input"
    newer = root / "competitions" / COMPETITION  # another mount layout: found by the sample submission
    newer.mkdir(parents=True)
    (newer / "sample_submission.csv").write_text("id,label\n")
    (root / "other-dataset").mkdir()
    (root / "other-dataset" / "sample_submission.csv").write_text("id,label\n")
    assert offline.find_data_dir(dataset, "exp1", root) == newer
    (root / COMPETITION).mkdir()
    (root / COMPETITION / "sample_submission.csv").write_text("id,label\n")
    assert offline.find_data_dir(dataset, "exp1", root) == root / COMPETITION
    shutil.rmtree(newer.parent)
    shutil.rmtree(root / COMPETITION)
    (root / "third").mkdir()
    (root / "third" / "sample_submission.csv").write_text("id,label\n")
    with pytest.raises(errors.UserError, match="INFER_DATA_DIR"):
        offline.find_data_dir(dataset, "exp1", root)


class FakeApi:
    """kaggle.api's kernel calls: kernels_push records the folder and the metadata it would have sent (version 3),
    kernels_status answers `statuses` in turn, competition_submit_code records what it would have submitted."""

    def __init__(self, statuses=("complete",)):
        self.pushed, self.statuses, self.code_submissions = [], list(statuses), []

    def kernels_push(self, folder):
        self.pushed.append((folder, json.loads((Path(folder) / "kernel-metadata.json").read_text())))
        return types.SimpleNamespace(error="", url="https://www.kaggle.com/code/me/kernel", version_number=3)

    def kernels_status(self, kernel):
        status = self.statuses.pop(0)
        return types.SimpleNamespace(status=types.SimpleNamespace(name=status.upper()), failure_message="boom")

    def competition_submit_code(self, **kwargs):
        self.code_submissions.append(kwargs)
        return types.SimpleNamespace(message="Successfully submitted")


@pytest.fixture
def kaggle(monkeypatch):
    """The one network place replaced; `clients` counts how often the Kaggle client was asked for."""
    api, clients = FakeApi(), []
    monkeypatch.setattr(kaggle_api, "_client", lambda: clients.append(1) or api)
    api.clients = clients
    return api


@pytest.fixture
def kernel(tmp_path):
    folder = tmp_path / "kernel"
    shutil.copytree(NOTEBOOKS, folder)
    exp = write_config(tmp_path, extra=f"competition: {COMPETITION}\n")
    return folder, exp


FILLED = ("id", "title", "dataset_sources", "competition_sources")


def test_push_notebook_dry_run_fills_the_metadata_and_sends_nothing(kernel, kaggle, capsys):
    folder, exp = kernel
    template = json.loads((NOTEBOOKS / "kernel-metadata.json").read_text())
    args = ["push-notebook", "-c", str(exp), "--dataset", "me/digit-models", "--folder", str(folder), "--dry-run"]
    assert cli.main(args) == 0
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta["id"] == f"me/{COMPETITION}-inference" and meta["title"] == f"{COMPETITION.replace('-', ' ')} inference"
    assert meta["dataset_sources"] == ["me/digit-models"] and meta["competition_sources"] == [COMPETITION]
    assert {k: v for k, v in meta.items() if k not in FILLED} == {k: v for k, v in template.items() if k not in FILLED}
    assert meta["enable_internet"] is False and meta["code_file"] == "inference.py" and meta["kernel_type"] == "script"
    assert (folder / "inference.py").read_bytes() == (NOTEBOOKS / "inference.py").read_bytes()
    assert kaggle.clients == [] and "dry run" in capsys.readouterr().out


def test_push_notebook_pushes_the_folder(kernel, kaggle, capsys):
    folder, exp = kernel
    args = ["push-notebook", "-c", str(exp), "--dataset", "me/digit-models", "--folder", str(folder)]
    assert cli.main([*args, "--kernel", "me/my-infer-kernel", "--title", "My infer kernel"]) == 0
    [(pushed, meta)] = kaggle.pushed
    assert pushed == str(folder)
    assert meta["id"] == "me/my-infer-kernel" and meta["title"] == "My infer kernel"
    assert meta["dataset_sources"] == ["me/digit-models"] and meta["competition_sources"] == [COMPETITION]
    assert "https://www.kaggle.com/code/me/kernel" in capsys.readouterr().out


def test_push_notebook_submit_waits_for_the_run_then_submits_its_output_and_logs_it(kernel, kaggle, tmp_path):
    """The code-competition round trip: push, poll the kernel until its run completes, submit that run's
    submission.csv (kernel and version) with the experiment's CV of its submission, and log it like any submission."""
    folder, exp = kernel
    cfg = config.load(exp)
    Run.named(cfg.output_dir, "exp").write_decisions(Decisions(metric="accuracy", higher_is_better=True, cv=0.98765,
                                                              cv_from="oof_tta.csv", format="label"))  # fmt: skip
    kaggle.statuses = ["queued", "running", "running", "complete"]
    args = ["push-notebook", "-c", str(exp), "--dataset", "me/digit-models", "--folder", str(folder)]
    assert cli.main([*args, "--submit", "exp", "--poll", "0.001"]) == 0
    assert kaggle.statuses == []  # polled until complete
    [sent] = kaggle.code_submissions
    kernel_id = f"me/{COMPETITION}-inference"
    assert sent == {"file_name": "submission.csv", "competition": COMPETITION, "kernel": kernel_id, "kernel_version": 3,
                    "message": f"exp CV accuracy=0.98765 (kernel {kernel_id} v3)"}  # fmt: skip
    log = pd.read_csv(tmp_path / "submissions" / "log.csv", dtype=str)
    assert log["experiment"].tolist() == ["exp"] and float(log["cv"].iloc[0]) == 0.98765
    assert log["file"].iloc[0] == f"submission.csv (kernel {kernel_id} v3)"
    assert log["message"].iloc[0] == sent["message"]


def test_push_notebook_submit_stops_on_a_failed_run_and_submits_nothing(kernel, kaggle, capsys):
    folder, exp = kernel
    kaggle.statuses = ["running", "error"]
    args = ["push-notebook", "-c", str(exp), "--dataset", "me/digit-models", "--folder", str(folder)]
    assert cli.main([*args, "--submit", "exp", "--poll", "0.001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ended with status error: boom; nothing submitted" in err[0]
    assert kaggle.code_submissions == []
    assert cli.main([*args, "--submit", "exp", "--dry-run"]) == 2  # a dry run has no run to submit


def test_push_notebook_refusals(kernel, kaggle, tmp_path, capsys):
    folder, exp = kernel
    no_comp = write_config(tmp_path, name="nocomp")
    cases = [
        (exp, "my-models", folder, "--dataset"),
        (exp, "me/digit-models", tmp_path / "empty", "inference.py not found"),
        (no_comp, "me/digit-models", folder, "competition"),
    ]
    for cfg_path, dataset, where, message in cases:
        assert cli.main(["push-notebook", "-c", str(cfg_path), "--dataset", dataset, "--folder", str(where)]) == 2
        assert message in capsys.readouterr().err
    assert kaggle.clients == []
    assert (folder / "kernel-metadata.json").read_bytes() == (NOTEBOOKS / "kernel-metadata.json").read_bytes()
