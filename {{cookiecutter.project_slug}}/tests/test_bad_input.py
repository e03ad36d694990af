"""Bad input, through the CLI as typed: every case ends with exit status 2 and exactly one line on stderr that names
the culprit (file, key or value) and what is allowed, no traceback, and not one file written or changed.

Each case runs on its own copy of a small, trained project (relative paths, as a user has them: configs/exp.yaml,
data/, outputs/exp with two finished folds and test predictions, submissions/exp.csv). All cases run in-process
through `cli.main` (the function `python -m <package>` exits with); a few run again as a subprocess, where any
traceback, warning or progress bar would land on the real stderr, and must print the very same line.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import decode, demo

from conftest import TINY, small_digits

PKG = cli.__package__
SRC = str(Path(cli.__file__).parents[1])
C = "configs/exp.yaml"

# The user's layout: paths relative to the project root (the working directory of every case), on conftest's TINY.
CONFIG = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(TINY), OmegaConf.create("""
data: {dir: data, cache: memory}
folds: {n_folds: 2, path: data/folds.csv}
augment: {mean: [0.5], std: [0.5]}
train: {batch_size: 16, limit_batches: 2}
wandb: {mode: disabled}
""")))  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small multiclass project (128 training, 32 test images, two folds): trained, predicted, submitted."""
    root = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "load_digits", small_digits)
        mp.chdir(root)
        mp.setenv("WANDB_MODE", "disabled")
        demo.write_demo("data", "multiclass", size=16)
        Path("configs").mkdir()
        Path(C).write_text(CONFIG)
        for argv in (["folds", "-c", C], ["train", "-c", C], ["predict", "-c", C], ["make-submission", "-c", C]):
            assert cli.main(argv) == 0, argv
    for last in root.glob("outputs/exp/fold*/last.pt"):
        last.unlink()  # not needed by any case, and the largest files to copy
    return root


# --- how a case breaks the project (each writes new files: the copies share unchanged files with `base`) ----------


def rewrite(path: Path, data: bytes | str) -> None:
    path.unlink()  # a hard link to the base project: never write through it
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)


def first_image(root: Path, split: str = "train") -> Path:
    ids = pd.read_csv(root / f"data/{split}.csv", dtype=str)["id"]
    return root / "data" / split / f"{ids[0]}.png"


def edit_table(name: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / "data" / name
        rewrite(path, edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(index=False))

    return setup


def set_row(row: int, col: str, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[row, col] = value
        return df

    return edit


def set_labels(rows: dict[int, str]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        for row, value in rows.items():
            df.loc[row, "label"] = value
        return df

    return edit


def with_patients(df: pd.DataFrame) -> pd.DataFrame:
    """A group column, 8 rows per patient: the base project's stratified folds split most patients."""
    return df.assign(patient=[f"p{i // 8}" for i in range(len(df))])


def grouped_then_edited(root: Path) -> None:
    """folds.csv written with folds.group_col=patient, then one row of patient p0 moved to the other fold by hand."""
    edit_table("train.csv", with_patients)(root)
    with contextlib.chdir(root):
        assert cli.main(["folds", "-c", C, "--force", "folds.group_col=patient"]) == 0
    df = pd.read_csv(root / "data/folds.csv", dtype=str)
    df.loc[0, "fold"] = str(1 - int(df.loc[0, "fold"]))
    rewrite(root / "data/folds.csv", df.to_csv(index=False))


def write_text_in(name: str, text: str, encoding: str) -> Callable[[Path], None]:
    """Replaces data/<name> by `text`, the whole file, in `encoding`."""
    return lambda root: rewrite(root / "data" / name, text.encode(encoding))


def not_utf8(name: str) -> Callable[[Path], None]:
    """data/<name> as a spreadsheet on Windows saves it: cp1252, one cell with an accent."""

    def setup(root: Path) -> None:
        df = pd.read_csv(root / "data" / name, dtype=str, keep_default_na=False)
        df.loc[3, df.columns[-1]] = "caf\xe9"
        rewrite(root / "data" / name, df.to_csv(index=False).encode("cp1252"))

    return setup


def write_config(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / "configs" / name).write_text(text)


def image_bytes(root: Path, how: str) -> None:
    path = first_image(root)
    data = path.read_bytes()
    rewrite(path, {"empty": b"", "truncated": data[: len(data) // 2], "corrupt": os.urandom(len(data))}[how])


def corrupt_test_image(root: Path) -> None:
    rewrite(first_image(root, "test"), b"not an image at all")


def submission(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        sub = pd.read_csv(root / "submissions" / "exp.csv", dtype=str)
        edit(sub).to_csv(root / "submissions" / "bad.csv", index=False)

    return setup


def renamed_class(root: Path) -> None:
    """outputs/exp trained on an older table whose class '9' was called 'nine'."""
    run = root / "outputs" / "exp"
    classes = json.loads((run / "classes.json").read_text())
    classes["classes"] = [c if c != "9" else "nine" for c in classes["classes"]]
    rewrite(run / "classes.json", json.dumps(classes))
    pred = pd.read_csv(run / "test_pred.csv", dtype={"id": str}).rename(columns={"9": "nine"})
    pred["nine"] += 10.0  # the most probable class of every row
    rewrite(run / "test_pred.csv", pred.to_csv(index=False))


class Payload:
    """Unpickled without weights_only, this would run a shell command: what a planted checkpoint does."""

    def __reduce__(self):
        return os.system, ("echo planted",)


def planted(root: Path) -> None:
    best = root / "outputs" / "exp" / "fold0" / "best.pt"
    best.unlink()
    torch.save({"model": Payload()}, best)


@dataclasses.dataclass
class Case:
    id: str
    argv: list[str]
    expect: list[str]  # every one appears in the error line: the culprit and what is allowed
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    subprocess: bool = False  # also run as `python -m <package> ...` in a subprocess


def train(*args: str) -> list[str]:
    """`train` of a new experiment (`exp`'s folds are trained already: train would skip them)."""
    return ["train", "-c", C, "exp=new", *args]


CASES = [
    # config files and keys
    Case("unknown-key", train("train.epoch=3"), ["train.epoch", "did you mean 'epochs'"], subprocess=True),
    Case("unknown-key-in-file", ["train", "-c", "configs/b.yaml"], ["optim.lrr", "keys in 'optim'"],
         write_config("b.yaml", "base: exp.yaml\noptim:\n  lrr: 0.1\n")),
    Case("wrong-type", train("train.epochs=three"), ["train.epochs", "three"]),
    Case("bad-yaml", ["train", "-c", "configs/b.yaml"], ["configs/b.yaml", "not valid YAML"],
         write_config("b.yaml", "train: [1, 2\n"), subprocess=True),
    Case("not-a-mapping", ["train", "-c", "configs/b.yaml"], ["configs/b.yaml", "mapping"],
         write_config("b.yaml", "- a\n- b\n")),
    Case("config-missing", ["train", "-c", "configs/nope.yaml"], ["configs/nope.yaml", "not found"]),
    Case("base-missing", ["train", "-c", "configs/b.yaml"], ["configs/nope.yaml", "not found", "'base'"],
         write_config("b.yaml", "base: nope.yaml\n")),
    Case("base-loop", ["train", "-c", "configs/b.yaml"], ["configs/b.yaml", "loops back"],
         write_config("b.yaml", "base: b.yaml\n")),
    Case("override-without-equals", train("epochs3"), ["'epochs3'", "key=value"]),
    Case("override-unclosed", train("tta.views=[identity,"), ["override 'tta.views=[identity,'", "not valid YAML"],
         subprocess=True),
    Case("section-as-list", ["train", "-c", "configs/b.yaml"], ["configs/b.yaml", "'optim'", "[0.1]", "section"],
         write_config("b.yaml", "base: exp.yaml\noptim: [0.1]\n"), subprocess=True),
    Case("section-as-list-override", train("train=[1]"), ["override 'train=[1]'", "'train'", "section"]),
    Case("duplicate-key", ["train", "-c", "configs/b.yaml"], ["configs/b.yaml, line 4", "'lr'", "twice"],
         write_config("b.yaml", "base: exp.yaml\noptim:\n  lr: 0.1\n  lr: 0.2\n")),
    Case("empty-config", ["train", "-c", "configs/b.yaml"], ["configs/b.yaml", "empty"],
         write_config("b.yaml", "# to do\n")),
    # names and paths: a run stays a folder of its own under output_dir, a submission a file under submissions/
    Case("exp-climbs-out", ["train", "-c", C, "exp=../../x"], ["config key 'exp'", "'../../x'", "plain name"],
         subprocess=True),
    Case("exp-climbs-out-in-yaml", ["train", "-c", "configs/b.yaml"], ["configs/b.yaml", "'exp'", "'../../x'"],
         write_config("b.yaml", "base: exp.yaml\nexp: ../../x\n")),
    Case("exp-is-the-outputs-folder", ["train", "-c", C, "exp=."], ["config key 'exp'", "'.'", "plain name"]),
    Case("exp-sub-folder", ["predict", "-c", C, "exp=exp/fold0"], ["config key 'exp'", "'exp/fold0'"]),
    Case("submission-name-climbs-out", ["make-submission", "-c", C, "--name", "../../x"],
         ["submission name", "'../../x'", "plain name"], subprocess=True),
    Case("submission-exp-climbs-out", ["make-submission", "-c", C, "--exp", "../exp"], ["'../exp'", "plain name"]),
    Case("teacher-climbs-out", ["pseudo", "-c", C, "exp=student", "--teacher", "../outputs/exp"],
         ["'../outputs/exp'", "plain name"]),
    Case("output-dir-climbs-out", train("output_dir=../../x"), ["'output_dir'", "'../../x'", "leaves the project"]),
    Case("output-dir-is-the-project", train("output_dir=."), ["'output_dir'", "'.'", "project folder"]),
    Case("cache-dir-climbs-out", train("data.cache=disk", "data.cache_dir=../cache"),
         ["'data.cache_dir'", "'../cache'", "leaves the project"]),
    Case("folds-path-climbs-out", ["folds", "-c", C, "--force", "folds.path=../../folds.csv"],
         ["'folds.path'", "leaves the project"]),
    # ranges
    Case("negative-lr", train("optim.lr=-0.001"), ["optim.lr", "-0.001", "> 0"]),
    Case("zero-lr", train("optim.lr=0"), ["optim.lr", "is 0", "> 0"]),
    Case("nan-lr", train("optim.lr=nan"), ["optim.lr", "nan", "> 0"]),
    Case("zero-batch", train("train.batch_size=0"), ["train.batch_size", ">= 1"]),
    Case("zero-epochs", train("train.epochs=0"), ["train.epochs", ">= 1"]),
    Case("one-fold", train("folds.n_folds=1"), ["folds.n_folds", "2..20"]),
    Case("in-chans", train("model.in_chans=2"), ["model.in_chans", "1 (grayscale) or 3 (RGB)"]),
    Case("mean-length", train("model.in_chans=3", "augment.mean=[0.5,0.5]"), ["augment.mean", "2 values", "1, 3"]),
    Case("zero-std", train("augment.std=[0]"), ["augment.std", "> 0"]),
    Case("device-name", train("device=gpu"), ["device", "'gpu'", "cuda:<index>"]),
    Case("device-missing", train("device=cuda:99"), ["device='cuda:99'", "device="]),
    # choices, from the registries
    Case("unknown-task", train("task=detection"), ["'task'", "detection", "segmentation"]),
    Case("unknown-metric", train("metric=acc"), ["'metric'", "'acc'", "accuracy"]),
    Case("metric-not-for-task", train("metric=rmse"), ["'metric'", "rmse", "task=multiclass", "accuracy"]),
    Case("unknown-loss", train("loss.name=dice"), ["loss.name", "dice", "focal"]),
    Case("unknown-optimizer", train("optim.name=adamw2"), ["optim.name", "adamw2", "adamw"]),
    Case("unknown-schedule", train("optim.schedule=linear"), ["optim.schedule", "linear", "one_cycle"]),
    Case("unknown-preset", train("augment.preset=extreme"), ["augment.preset", "extreme", "heavy"]),
    Case("unknown-sampler", train("train.sampler=balanced"), ["train.sampler", "balanced", "weighted"]),
    Case("unknown-tta-view", ["predict", "-c", C, "tta.views=[identity,flip]"], ["'flip'", "hflip"]),
    Case("unknown-backbone", train("model.backbone=resnet_18"), ["model.backbone", "resnet_18", "not a timm model"]),
    Case("unknown-pretrained-tag", train("model.backbone=test_resnet.in22k"),
         ["model.backbone", "test_resnet.in22k", "no pretrained tag 'in22k'", "r160_in1k"]),
    # command-line flags
    Case("fold-out-of-range", train("--fold", "5"), ["--fold 5", "0..1"]),
    Case("fold-not-a-number", train("--fold", "first"), ["--fold 'first'", "'all'"]),
    Case("lr-find-fold", ["lr-find", "-c", C, "--fold", "2"], ["--fold 2", "0..1"]),
    # tables
    Case("train-csv-missing", train("data.train_csv=nope.csv"), ["data/nope.csv", "not found", "data.dir"]),
    Case("target-column-missing", train("data.target_col=digit"), ["train.csv", "['digit']", "columns are"]),
    Case("id-column-missing", train("data.id_col=image_id"), ["folds.csv", "'image_id'", "found ["]),
    Case("duplicate-ids", train(), ["train.csv", "duplicate ids", "'id'"],
         edit_table("train.csv", lambda df: pd.concat([df, df.iloc[:1]]))),
    Case("empty-label", train(), ["train.csv", "'label'", "empty/NaN", "row 4"],
         edit_table("train.csv", set_row(2, "label", ""))),
    Case("inf-regression-target", train("task=regression"), ["train.csv", "'label'", "row 7", "'inf'", "finite"],
         edit_table("train.csv", set_row(5, "label", "inf"))),
    Case("nan-regression-target", train("task=regression"), ["train.csv", "'label'", "row 3", "'nan'", "finite"],
         edit_table("train.csv", set_row(1, "label", "nan"))),
    Case("binary-with-ten-values", train("task=binary"),
         ["train.csv", "'label'", "10 distinct values", "task=binary expects 2"]),
    # label text: each class in one spelling, written in full; two classes at least
    Case("nan-text-label", train(), ["train.csv", "'label'", "1 empty/NaN labels", "'NaN'", "row 6"],
         edit_table("train.csv", set_row(4, "label", "NaN"))),
    Case("missing-value-labels", train(), ["train.csv", "'label'", "3 empty/NaN labels: 'NA', 'null', ''",
                                           "rows 3, 5, 10"],
         edit_table("train.csv", set_labels({1: "NA", 3: "null", 8: ""}))),
    Case("trailing-space-label", train(), ["train.csv", "'label'", "leading/trailing spaces: '3 '", "row 4"],
         edit_table("train.csv", set_row(2, "label", "3 ")), subprocess=True),
    Case("leading-space-labels", train(), ["train.csv", "'label'", "2 labels with leading/trailing spaces: ' 7', ' 1'",
                                           "rows 2, 8"],
         edit_table("train.csv", set_labels({0: " 7", 6: " 1"}))),
    Case("one-class", train(), ["train.csv", "'label'", "one class only ('7')", "task=multiclass needs at least 2"],
         edit_table("train.csv", lambda df: df.assign(label="7"))),
    Case("one-class-binary", train("task=binary"), ["train.csv", "'label'", "one class only ('1')", "task=binary"],
         edit_table("train.csv", lambda df: df.assign(label="1"))),
    Case("one-class-binary-make-submission", ["make-submission", "-c", C, "--name", "new", "task=binary"],
         ["train.csv", "'label'", "one class only ('1')", "task=binary"],
         edit_table("train.csv", lambda df: df.assign(label="1"))),
    # files as they come: empty, only a header, not UTF-8
    Case("zero-byte-train-csv", train(), ["data/train.csv", "empty file (0 bytes)"],
         write_text_in("train.csv", "", "utf-8"), subprocess=True),
    Case("header-only-test-csv", ["predict", "-c", C], ["data/test.csv", "no rows, only the header ['id']"],
         write_text_in("test.csv", "id\n", "utf-8")),
    Case("train-csv-not-utf8", train(), ["data/train.csv", "not utf-8 text", "0xe9", "data.encoding=cp1252"],
         not_utf8("train.csv"), subprocess=True),
    Case("sample-submission-not-utf8", ["make-submission", "-c", C, "--name", "new"],
         ["data/sample_submission.csv", "not utf-8 text", "data.encoding"], not_utf8("sample_submission.csv")),
    Case("unknown-encoding", train("data.encoding=utf-9"), ["data.encoding", "'utf-9'", "utf-8, cp1252"]),
    # folds
    Case("folds-missing", train(), ["data/folds.csv", "not found", "`folds`"],
         lambda root: (root / "data/folds.csv").unlink()),
    Case("folds-out-of-date", train(), ["data/folds.csv", "out of date", "folds --force"],
         edit_table("train.csv", lambda df: df.iloc[1:])),
    Case("folds-edited", train(), ["data/folds.csv", "changed after it was written", "folds --force"],
         edit_table("folds.csv", lambda df: df.assign(fold=df["fold"][::-1].to_numpy()))),
    Case("n-folds-differs-from-folds-csv", train("folds.n_folds=3"), ["folds.csv", "holds 2 folds", "n_folds=3"]),
    Case("folds-would-change", ["folds", "-c", C, "folds.seed=1"], ["data/folds.csv", "different split", "--force"]),
    Case("group-column-missing", ["folds", "-c", C, "--force", "folds.group_col=patient"],
         ["'patient'", "not a column"]),
    *[Case(f"group-col-ignored-by-{method}", ["folds", "-c", C, "--force", "folds.group_col=patient",
                                              f"folds.method={method}"],
           ["'folds.group_col'='patient'", f"ignored by folds.method={method}", "group or stratified_group", "auto"],
           edit_table("train.csv", with_patients))
      for method in ("stratified", "kfold", "multilabel", "binned")],
    Case("group-straddles-folds-of-another-config", train("folds.group_col=patient"),
         ["data/folds.csv", "group 'p", "of folds.group_col 'patient' is in folds [0, 1]", "folds --force"],
         edit_table("train.csv", with_patients)),
    Case("group-straddles-folds-after-an-edit", train(),
         ["data/folds.csv", "group 'p0' of folds.group_col 'patient' is in folds [0, 1]", "folds --force"],
         grouped_then_edited),
    # images: missing, and checked to decode before any model is built
    Case("image-folder-missing", train("data.train_images=imgs"),
         ["data/imgs", "image folder not found", "data.train_images"]),
    Case("image-missing", train(), ["data/train", "1 of 128 images not found", "data.image_ext"],
         lambda root: first_image(root).unlink()),
    Case("image-id-with-a-folder", ["predict", "-c", C], ["1 of 32 images not found", "'data/test/sub/"],
         edit_table("test.csv", lambda df: df.assign(id=["sub/" + df["id"][0], *df["id"][1:]]))),
    Case("zero-byte-image", train(),
         ["data/train", "1 of 128 images cannot be read", "empty file", "data.train_images"],
         lambda root: image_bytes(root, "empty"), subprocess=True),
    Case("truncated-image", train(), ["data/train", "1 of 128 images cannot be read", "truncated", "replace or remove"],
         lambda root: image_bytes(root, "truncated")),
    Case("corrupt-image", train(),
         ["data/train", "1 of 128 images cannot be read", "cannot identify", "replace or remove"],
         lambda root: image_bytes(root, "corrupt")),
    Case("corrupt-test-image", ["predict", "-c", C], ["data/test", "1 of 32 images cannot be read", "data.test_images"],
         corrupt_test_image),
    # what only the data can tell: batch size against the rows of a fold, and against the processes
    Case("batch-larger-than-fold", train("train.batch_size=100"),
         ["train.batch_size", "100", "64 training rows", "at most 64"],
         subprocess=True),
    Case("batch-not-split-by-processes", train("train.batch_size=15"),
         ["train.batch_size", "15", "2 processes", "multiple of 2"],
         env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}),
    Case("mixup-odd-batch", train("train.batch_size=15", "augment.mixup_alpha=0.4"),
         ["train.batch_size", "15", "even"]),
    # trained experiments
    Case("backbone-changed", ["predict", "-c", C, "model.backbone=test_efficientnet"],
         ["best.pt", "model.backbone='test_resnet'", "outputs/exp/config.yaml", "model.backbone='test_efficientnet'"],
         subprocess=True),
    Case("in-chans-changed", ["predict", "-c", C, "model.in_chans=3"],
         ["best.pt", "model.in_chans=1", "model.in_chans=3"]),
    Case("force-some-folds-under-another-config", ["train", "-c", C, "--fold", "1", "--force", "optim.lr=0.05"],
         ["--force on fold(s) [1]", "fold 0 was trained under another config", "optim.lr", "-> 0.05",
          "--fold all --force", "new experiment"]),
    Case("not-trained", ["predict", "-c", C, "exp=other"], ["outputs/other", "no finished fold", "'other'"]),
    Case("ensemble-unknown-member", ["ensemble", "-c", C, "--exps", "exp", "nope"],
         ["outputs/nope", "train experiment 'nope'"]),
    Case("pseudo-unknown-teacher", ["pseudo", "-c", C, "--teacher", "nope"], ["outputs/nope", "train teacher 'nope'"]),
    Case("pseudo-none-passes", ["pseudo", "-c", C, "exp=student", "--teacher", "exp", "pseudo.threshold=1"],
         ["fold 0", "none of the 32 unlabelled images", "pseudo.threshold=1", "lower pseudo.threshold"]),
    Case("planted-checkpoint", ["predict", "-c", C], ["outputs/exp/fold0/best.pt", "refused, it would run code (",
                                                      "system"], planted, subprocess=True),
    # submissions
    Case("submit-label-not-a-class", ["submit", "-c", C, "submissions/bad.csv", "--dry-run"],
         ["submissions/bad.csv", "'label'", "'11'", "not among the labels"], submission(set_row(3, "label", "11"))),
    Case("submit-missing-row", ["submit", "-c", C, "submissions/bad.csv", "--dry-run"],
         ["submissions/bad.csv", "31 ids", "the sample 32", "missing"], submission(lambda df: df.iloc[1:])),
    Case("submit-extra-column", ["submit", "-c", C, "submissions/bad.csv", "--dry-run"],
         ["submissions/bad.csv", "extra ['p']"], submission(lambda df: df.assign(p="1"))),
    Case("submit-file-missing", ["submit", "-c", C, "submissions/none.csv", "--dry-run"],
         ["submissions/none.csv", "submission file not found"]),
    Case("make-submission-label-not-a-class", ["make-submission", "-c", C, "--name", "new"],
         ["outputs/exp/classes.json", "['nine']", "not among the labels", "retrain exp"], renamed_class),
    Case("make-submission-not-predicted", ["make-submission", "-c", C, "--exp", "other"],
         ["other", "train experiment"]),
    Case("score-solution-missing", ["score", "-c", C, "submissions/exp.csv", "--solution", "data/nope.csv"],
         ["data/nope.csv", "solution file (--solution) not found"]),
    Case("score-text-for-a-number", ["score", "-c", C, "submissions/bad.csv", "task=regression"],
         ["submission column 'label'", "must hold numbers", "'abc'"], submission(set_row(0, "label", "abc"))),
]  # fmt: skip


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (its size and modification time) and folder, but the caches a rerun reuses: the image check
    (outputs/.cache) and the teachers' predictions (outputs/<student>/teacher)."""
    found: dict[str, tuple[int, int] | None] = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if "outputs/.cache" not in rel and not re.search(r"outputs/[^/]+/teacher(/|$)", rel):
            st = p.stat()
            found[rel] = (st.st_size, st.st_mtime_ns) if p.is_file() else None
    return found


@pytest.fixture
def project(base, tmp_path, request) -> Path:
    """A copy of the base project, broken the way the case says, two folders down in `tmp_path` (what a case writes
    above the project, e.g. through `exp=../../x`, shows in `snapshot(tmp_path)`)."""
    case: Case = request.param
    root = tmp_path / "up" / "up" / "project"
    shutil.copytree(base, root, copy_function=os.link)
    if case.setup is not None:
        case.setup(root)
    return root


def check_error(case: Case, returncode: int, stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert returncode == 2 and len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: ")
    missing = [e for e in case.expect if e not in line]
    assert not missing, f"{missing} not in: {line}"
    return line


@pytest.mark.parametrize("project", CASES, ids=[c.id for c in CASES], indirect=True)
def test_bad_input_stops_with_one_line_and_writes_nothing(project, request, monkeypatch, capsys):
    case: Case = request.node.callspec.params["project"]
    monkeypatch.chdir(project)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = snapshot(project.parents[2])
    capsys.readouterr()
    code = cli.main(case.argv)
    check_error(case, code, capsys.readouterr().err)
    assert snapshot(project.parents[2]) == before


SUBPROCESS = [c for c in CASES if c.subprocess]


@pytest.mark.e2e
@pytest.mark.parametrize("project", SUBPROCESS, ids=[c.id for c in SUBPROCESS], indirect=True)
def test_as_typed_in_a_shell_the_same_single_line(project, request, monkeypatch, capsys):
    """`python -m <package> ...` prints exactly the line `cli.main` printed (so the in-process cases stand for the
    command as typed): nothing else reaches stderr, no traceback, no warning, no progress bar."""
    case: Case = request.node.callspec.params["project"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **case.env}
    env.pop("TQDM_DISABLE", None)  # a progress bar on stderr would show here
    before = snapshot(project.parents[2])
    done = subprocess.run([sys.executable, "-m", PKG, *case.argv], env=env, cwd=project, capture_output=True, text=True)
    line = check_error(case, done.returncode, done.stderr)
    assert snapshot(project.parents[2]) == before
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert cli.main(case.argv) == 2
    assert capsys.readouterr().err.strip() == line


@pytest.mark.e2e
def test_pretrained_weights_offline(base, tmp_path):
    """model.pretrained=true without network (HF_HUB_OFFLINE=1, an empty Hugging Face cache): one line that says how
    to go on, and nothing written."""
    root = tmp_path / "project"
    shutil.copytree(base, root, copy_function=os.link)
    expect = ["model.pretrained=true", "'test_resnet'", "cannot be downloaded", "model.pretrained=false", "HF_HOME"]
    case = Case("pretrained", train("model.pretrained=true"), expect)
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    before = snapshot(root)
    done = subprocess.run([sys.executable, "-m", PKG, *case.argv], env=env, cwd=root, capture_output=True, text=True)
    check_error(case, done.returncode, done.stderr)
    assert snapshot(root) == before


def test_a_diverging_run_stops_with_one_line(base, tmp_path, monkeypatch, capsys):
    """Not knowable before training: the loss turns inf/NaN. One line that says what to change; no checkpoint of
    the broken epoch, no OOF file."""
    root = tmp_path / "project"
    shutil.copytree(base, root, copy_function=os.link)
    monkeypatch.chdir(root)
    case = Case("diverging", train("optim.name=sgd", "optim.lr=1e20", "optim.schedule=constant"),
                ["loss is", "epoch 1", "lower optim.lr", "train.amp=off"])  # fmt: skip
    capsys.readouterr()
    check_error(case, cli.main(case.argv), capsys.readouterr().err)
    assert not any((root / "outputs" / "new" / "fold0" / name).exists() for name in ("best.pt", "last.pt", "oof.csv"))


# --- the image check, and 16-bit images -------------------------------------------------------------------------------


def test_image_check_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    for i in range(5):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(tmp_path / f"{i}.png")
    paths = [tmp_path / f"{i}.png" for i in range(5)]
    cache = tmp_path / "cache" / "check.json"
    decoded = []
    real = decode.read_image
    monkeypatch.setattr(decode, "read_image", lambda p, c: decoded.append(p.name) or real(p, c))
    decode.check_images(paths, "train_images", cache, workers=2)
    assert sorted(decoded) == [p.name for p in paths]
    decoded.clear()
    decode.check_images(paths, "train_images", cache)
    assert decoded == []  # a second run opens nothing
    paths[3].write_bytes(paths[3].read_bytes()[:30])  # changed size: checked again, and found
    with pytest.raises(UserError, match=r"1 of 5 images cannot be read.*first: 3.png: "):
        decode.check_images(paths, "train_images", cache)
    assert decoded == ["3.png"]


def test_sixteen_bit_images_keep_their_brightness(tmp_path):
    """Two 16-bit images, one four times as bright as the other: scaled by the fixed 255/65535, not each to its own
    min..max (which would make them identical)."""
    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    for name, top in (("dark", 16000), ("bright", 64000)):
        Image.fromarray((ramp * top).astype(np.uint16)).save(tmp_path / f"{name}.png")
    dark, bright = (decode.read_image(tmp_path / f"{n}.png", 1)[..., 0].astype(int) for n in ("dark", "bright"))
    assert Image.open(tmp_path / "dark.png").mode.startswith("I;16")
    np.testing.assert_allclose(dark, np.rint(ramp * 16000 * 255 / 65535), atol=1)
    np.testing.assert_allclose(bright, np.rint(ramp * 64000 * 255 / 65535), atol=1)
    assert bright.max() == 249 and dark.max() == 62
