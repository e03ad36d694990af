"""Folds: stratified within one row per class, groups kept whole, multilabel balanced, seeded, written once."""

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


def test_groups_never_straddle_folds(tmp_path, new_project):
    new_project(tmp_path, "multiclass", n_folds=4, images=False)
    csv = tmp_path / "data" / "train.csv"
    train = pd.read_csv(csv, dtype={"id": str})
    train["patient"] = [f"p{i // 7}" for i in range(len(train))]  # 7 images per patient
    train.to_csv(csv, index=False)
    for method in ("auto", "group"):
        grouped = config.load(tmp_path / "configs" / "exp.yaml", ["folds.group_col=patient", f"folds.method={method}"])
        folds.write_folds(grouped, force=True)
        df = fold_table(grouped)
        assert df.groupby("patient")["fold"].nunique().max() == 1
        assert df["fold"].nunique() == 4


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
