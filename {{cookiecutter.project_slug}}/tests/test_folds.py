"""Folds: stratified within one row per class, groups kept whole, multilabel balanced, seeded, written once."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from {{ cookiecutter.package_name }} import config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import folds, tables


def fold_table(cfg):
    return pd.read_csv(cfg.folds.path, dtype={"id": str})


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory, new_project):
    return new_project(tmp_path_factory.mktemp("mc"), "multiclass", n_folds=5, images=False)


def test_every_class_within_one_row_of_its_share(multiclass):
    df = fold_table(multiclass)
    counts = pd.crosstab(df["label"], df["fold"])
    share = counts.sum(1).to_numpy()[:, None] / 5
    assert np.abs(counts.to_numpy() - share).max() <= 1
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]


def test_same_seed_same_folds_other_seed_other_folds(multiclass):
    y = tables.encode_targets(multiclass, tables.read_train(multiclass), [str(i) for i in range(10)])
    a = folds.assign_folds(y, "stratified", 5, seed=1)
    np.testing.assert_array_equal(a, folds.assign_folds(y, "stratified", 5, seed=1))
    assert (a != folds.assign_folds(y, "stratified", 5, seed=2)).any()


def test_rewrite_is_a_no_op_a_different_split_needs_force(multiclass):
    before = fold_table(multiclass)
    _, h, written = folds.write_folds(multiclass)
    assert not written and h == folds.folds_hash(before["id"], before["fold"])
    other = config.load(Path(multiclass.folds.path).parents[1] / "configs" / "exp.yaml", ["folds.seed=7"])
    with pytest.raises(UserError, match=r"different split.*--force"):
        folds.write_folds(other)
    pd.testing.assert_frame_equal(fold_table(multiclass), before)  # nothing overwritten
    _, h2, written = folds.write_folds(other, force=True)
    assert written and h2 != h
    folds.write_folds(multiclass, force=True)  # restore for the other tests


def test_edited_or_stale_folds_are_caught(tmp_path, new_project):
    cfg = new_project(tmp_path, "binary", n_folds=3, images=False)
    train = tables.read_train(cfg)
    folds.read_folds(cfg, train)
    with pytest.raises(UserError, match="out of date"):
        folds.read_folds(cfg, train.iloc[:-5])
    df = fold_table(cfg)
    df.loc[0, "fold"] = (df.loc[0, "fold"] + 1) % 3
    df.to_csv(cfg.folds.path, index=False)
    with pytest.raises(UserError, match="changed after it was written"):
        folds.read_folds(cfg, train)


def add_patients(root: Path, per_patient: int = 7) -> None:
    csv = root / "data" / "train.csv"
    train = pd.read_csv(csv, dtype=str, keep_default_na=False)
    train["patient"] = [f"p{i // per_patient}" for i in range(len(train))]
    train.to_csv(csv, index=False)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_groups_never_straddle_folds(tmp_path, new_project, task):
    """folds.group_col under method auto (each task's group-aware method) and group: every patient in one fold."""
    new_project(tmp_path, task, n_folds=4, images=False)
    add_patients(tmp_path)
    methods = ["auto", "group"] if task == "multiclass" else ["auto"]
    for method in methods:
        grouped = config.load(tmp_path / "configs" / "exp.yaml", ["folds.group_col=patient", f"folds.method={method}"])
        folds.write_folds(grouped, force=True)
        df = fold_table(grouped)
        assert df.groupby("patient")["fold"].nunique().max() == 1
        assert df["fold"].nunique() == 4
        assert json.loads(folds.meta_path(grouped).read_text())["method"] in folds.GROUP_METHODS
        folds.read_folds(grouped, tables.read_train(grouped))  # and reads back


@pytest.mark.parametrize("method", ["stratified", "kfold", "multilabel", "binned"])
def test_a_group_col_with_a_method_that_ignores_groups_is_refused(tmp_path, method):
    path = tmp_path / "exp.yaml"
    path.write_text(f"folds:\n  group_col: patient\n  method: {method}\n")
    with pytest.raises(UserError, match=rf"'folds.group_col'='patient' is ignored by folds.method={method}.*group or "
                                        "stratified_group"):  # fmt: skip
        config.load(path)


def test_folds_read_with_a_group_that_straddles_them_are_refused(tmp_path, new_project):
    """folds.csv written by a config without the group column, or edited by hand after a grouped split."""
    cfg = new_project(tmp_path, "multiclass", n_folds=3, images=False)  # stratified: patients straddle
    add_patients(tmp_path)
    grouped = config.load(tmp_path / "configs" / "exp.yaml", ["folds.group_col=patient"])
    with pytest.raises(UserError, match=r"folds.csv: group 'p\d+' of folds.group_col 'patient' is in folds \[\d, \d"):
        folds.read_folds(grouped, tables.read_train(grouped))
    folds.write_folds(grouped, force=True)
    folds.read_folds(cfg)  # the config without group_col checks the group the split was written with (folds.json)
    df = fold_table(grouped)
    df.loc[0, "fold"] = (df.loc[0, "fold"] + 1) % 3  # patient p0 now in two folds
    df.to_csv(cfg.folds.path, index=False)
    for reader in (cfg, grouped):
        with pytest.raises(UserError, match=r"group 'p0' of folds.group_col 'patient' is in folds \[\d, \d\]"):
            folds.read_folds(reader)


def test_multilabel_positives_balanced_per_label(tmp_path, new_project):
    cfg = new_project(tmp_path, "multilabel", n_folds=5, images=False)
    train = tables.read_train(cfg)
    classes = tables.derive_classes(cfg, train)
    y = tables.encode_targets(cfg, train, classes)
    fold = fold_table(cfg).set_index("id").loc[train["id"], "fold"].to_numpy()
    per_fold = np.stack([y[fold == k].sum(0) for k in range(5)])
    share = y.sum(0) / 5
    assert np.abs(per_fold - share).max() <= 2, per_fold  # iterative stratification: near-exact per label


def test_regression_bins_spread_the_target(tmp_path, new_project):
    cfg = new_project(tmp_path, "regression", n_folds=4, images=False)
    df = fold_table(cfg)
    bins = folds.quantile_bins(df["label"].to_numpy(), cfg.folds.n_bins)
    counts = pd.crosstab(bins, df["fold"]).to_numpy()
    assert np.abs(counts - counts.sum(1, keepdims=True) / 4).max() <= 1
    assert df.groupby("fold")["label"].mean().std() < 0.1


def test_kfold_and_bad_method_requests(tmp_path, new_project):
    cfg = new_project(tmp_path, "regression", n_folds=3, images=False)
    assert folds.resolve_method(cfg) == "binned"
    path = tmp_path / "configs" / "exp.yaml"
    with pytest.raises(UserError, match="group_col"):
        folds.write_folds(config.load(path, ["folds.method=group"]), force=True)
    with pytest.raises(UserError, match="needs task=multilabel"):
        folds.write_folds(config.load(path, ["folds.method=multilabel"]), force=True)
    folds.write_folds(config.load(path, ["folds.method=kfold"]), force=True)
    assert np.ptp(np.bincount(fold_table(cfg)["fold"])) <= 1
