"""Cross-validation folds, written once to data/folds.csv: every later stage reads them, none recomputes them.

The split's hash is stored beside it (folds.json) and copied into every run's cv.json, so OOF predictions from
different splits are never blended, and an edited or stale folds.csv is caught.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from ..core.errors import UserError
from ..core.runs import GROUP_COL, atomic_write_csv, atomic_write_json, read_groups, read_json
from ..core.tasks import PIXEL_TASKS
from .decode import image_paths, image_shapes
from .masks import area_fractions, training_masks
from .tables import data_path, derive_classes, encode_targets, read_train

if TYPE_CHECKING:
    from ..core.schema import Config


METHODS = ("auto", "stratified", "multilabel", "group", "stratified_group", "binned", "kfold")
GROUP_METHODS = ("group", "stratified_group")  # the methods that keep a folds.group_col's rows in one fold


def resolve_method(cfg: Config) -> str:
    method, grouped = cfg.folds.method, cfg.folds.group_col is not None or cfg.folds.groups_file is not None
    if method != "auto":
        if method in ("group", "stratified_group") and not grouped:
            raise UserError(f"folds.method={method} needs folds.group_col (the column whose rows must stay together) "
                            "or folds.groups_file")  # fmt: skip
        return method
    if cfg.task in ("multilabel", *PIXEL_TASKS):  # segmentation: the classes present and their area bins
        return "group" if grouped else "multilabel"
    if cfg.task == "regression":
        return "stratified_group" if grouped else "binned"
    return "stratified_group" if grouped else "stratified"


def quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Regression targets -> quantile bin ids, so each fold sees the whole range of the target."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.digitize(values, edges)


def assign_folds(
    y: np.ndarray,
    method: str,
    n_folds: int,
    seed: int,
    groups: np.ndarray | None = None,
    task: str = "multiclass",
    n_bins: int = 10,
) -> np.ndarray:
    """Fold index per row. `y` is the encoded target (see labels.encode_targets)."""
    strat = quantile_bins(y, n_bins) if task == "regression" else y
    if task == "binary":
        strat = (y > 0.5).astype(int)
    if task in ("multilabel", *PIXEL_TASKS) and method == "stratified_group":
        raise UserError("folds.method=stratified_group is not defined for multilabel; use group or multilabel")
    dummy = np.zeros(len(y))
    if method == "multilabel":
        if task not in ("multilabel", *PIXEL_TASKS):
            raise UserError(f"folds.method=multilabel needs task=multilabel, not {task}")
        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(dummy, y)
    elif method in ("stratified", "binned"):
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(dummy, strat)
    elif method == "stratified_group":
        splits = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(dummy, strat, groups)
    elif method == "group":
        splits = GroupKFold(n_folds, shuffle=True, random_state=seed).split(dummy, groups=groups)
    else:
        splits = KFold(n_folds, shuffle=True, random_state=seed).split(dummy)
    fold = np.full(len(y), -1, dtype=np.int64)
    for k, (_, valid) in enumerate(splits):
        fold[valid] = k
    return fold


def folds_hash(ids: pd.Series, fold: pd.Series) -> str:
    """A hash of the (id, fold) pairs, independent of row order."""
    pairs = sorted(zip(ids.astype(str), fold.astype(int), strict=True))
    text = "\n".join(f"{i},{k}" for i, k in pairs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def meta_path(cfg: Config) -> Path:
    return Path(cfg.folds.path).with_suffix(".json")


def group_values(cfg: Config, df: pd.DataFrame, group_col: str) -> np.ndarray:
    """The training table's groups (as text) in its row order."""
    if group_col not in df.columns:
        raise UserError(f"{cfg.data.train_csv}: folds.group_col '{group_col}' is not a column")
    return df[group_col].astype(str).to_numpy()


def file_groups(cfg: Config, ids: pd.Series) -> np.ndarray:
    """folds.groups_file's group of each id in `ids` (the training table's, in its order); an id missing from the
    file is refused: its duplicates could not be kept in its fold."""
    path = Path(cfg.folds.groups_file)
    groups = read_groups(path, cfg.data.id_col).reindex(ids.astype(str))
    missing = ids[groups.isna().to_numpy()]
    if len(missing):
        raise UserError(f"{path} (folds.groups_file): {len(missing)} training ids of {cfg.data.train_csv} have no "
                        f"group, first: {list(missing[:3])}; run `check-data` again for this table")  # fmt: skip
    return groups.to_numpy(dtype=str)


def check_groups(
    fold: np.ndarray, groups: np.ndarray, group_col: str, where: str, key: str = "folds.group_col"
) -> None:
    """No group in two folds: a group whose rows straddle folds is validated on by a model that trained on it."""
    table = pd.DataFrame({"group": groups, "fold": fold})
    per_group = table.groupby("group", sort=False)["fold"].unique()
    straddling = per_group[per_group.map(len) > 1]
    if len(straddling):
        group, folds = straddling.index[0], sorted(int(k) for k in straddling.iloc[0])
        raise UserError(
            f"{where}: group {group!r} of {key} '{group_col}' is in folds {folds} ({len(straddling)} groups "
            "straddle folds, a CV leak); rewrite the split with `folds --force` (folds.method auto, group or "
            "stratified_group)"
        )


def mask_strata(fractions: np.ndarray, n_bins: int) -> np.ndarray:
    """Segmentation: what folds stratify on, as 0/1 columns (multilabel stratification): each class present or
    not, and the quantile bin of its area share among the images that have it (small, medium, large defects spread
    over every fold)."""
    columns = [fractions > 0]
    for c in range(fractions.shape[1]):
        present = fractions[:, c] > 0
        if present.sum() < 2:
            continue
        bins = np.full(len(fractions), -1)
        bins[present] = quantile_bins(fractions[present, c], max(1, min(n_bins, 4)))
        columns += [(bins == b)[:, None] for b in np.unique(bins[present])]
    return np.concatenate(columns, axis=1).astype(np.int64)


def _targets(cfg: Config, df: pd.DataFrame) -> np.ndarray:
    """What the split stratifies on, row by row of the training table `df`."""
    if cfg.task not in PIXEL_TASKS:
        return encode_targets(cfg, df, derive_classes(cfg, df))
    ids = df[cfg.data.id_col].tolist()
    paths = image_paths(data_path(cfg, cfg.data.train_images), ids, cfg.data.image_ext, "train_images")
    return mask_strata(area_fractions(training_masks(cfg, ids), image_shapes(paths)), cfg.folds.n_bins)


def make_folds(cfg: Config) -> pd.DataFrame:
    df = read_train(cfg)
    y = _targets(cfg, df)
    groups = None
    if cfg.folds.group_col is not None:
        groups = group_values(cfg, df, cfg.folds.group_col)
    elif cfg.folds.groups_file is not None:
        groups = file_groups(cfg, df[cfg.data.id_col])
    method = resolve_method(cfg)
    n_groups = len(np.unique(groups)) if groups is not None else len(df)
    if n_groups < cfg.folds.n_folds:
        raise UserError(f"folds.n_folds={cfg.folds.n_folds} but only {n_groups} rows/groups to split")
    task = "multilabel" if cfg.task in PIXEL_TASKS else cfg.task  # the strata are 0/1 columns
    fold = assign_folds(y, method, cfg.folds.n_folds, cfg.folds.seed, groups, task, cfg.folds.n_bins)
    if groups is not None and cfg.folds.groups_file is not None:
        check_groups(fold, groups, cfg.folds.groups_file, f"folds.method={method}", "folds.groups_file")
    elif groups is not None:
        check_groups(fold, groups, cfg.folds.group_col, f"folds.method={method}")
    keep = [cfg.data.id_col, *[c for c in cfg.target_cols if c in df.columns]]
    if cfg.folds.group_col is not None:
        keep.append(cfg.folds.group_col)
    out = df[list(dict.fromkeys(keep))].copy()
    out.insert(1, "fold", fold)
    if cfg.folds.groups_file is not None and GROUP_COL not in out.columns:
        out[GROUP_COL] = groups  # for the eye: read_folds checks the groups file itself
    return out


def write_folds(cfg: Config, force: bool = False) -> tuple[Path, str, bool]:
    """Write folds.csv + folds.json; refuse to replace a different existing split unless `force`.

    Returns (path, hash, written)."""
    folds = make_folds(cfg)
    new_hash = folds_hash(folds[cfg.data.id_col], folds["fold"])
    path, meta = Path(cfg.folds.path), meta_path(cfg)
    if path.exists() and not force:
        old = read_fold_table(path)
        old_hash = folds_hash(old[cfg.data.id_col], old["fold"]) if "fold" in old else "?"
        if old_hash == new_hash:
            return path, new_hash, False
        raise UserError(
            f"{path} already holds a different split (hash {old_hash} != {new_hash}); OOF predictions depend on it. "
            "Pass --force to overwrite it (and retrain every experiment)"
        )
    info = {
        "hash": new_hash,
        "method": resolve_method(cfg),
        "n_folds": cfg.folds.n_folds,
        "seed": cfg.folds.seed,
        "n_rows": len(folds),
        "group_col": cfg.folds.group_col,
        "train_csv": cfg.data.train_csv,
        "groups_file": cfg.folds.groups_file,
    }
    atomic_write_csv(path, folds)
    atomic_write_json(meta, info)
    return path, new_hash, True


def check_fold_numbers(cfg: Config, fold: pd.Series, path: Path) -> int:
    """The folds in the file are 0..n-1 and n is `folds.n_folds`: a config that names fewer folds than the file
    would train (and call "complete") a part of the data. Returns n."""
    numbers = pd.to_numeric(fold, errors="coerce")
    bad = numbers.isna() | (numbers % 1 != 0)
    if bad.any():
        raise UserError(f"{path}: column 'fold' holds {fold[bad].iloc[0]!r}; expected fold numbers 0, 1, ...")
    found = sorted(set(numbers.astype(int)))
    n = len(found)
    if found != list(range(n)):
        raise UserError(f"{path}: fold numbers {found} are not 0..{n - 1}; rewrite the split with `folds --force`")
    if n != cfg.folds.n_folds:
        raise UserError(
            f"{path} holds {n} folds but folds.n_folds={cfg.folds.n_folds}: set folds.n_folds={n}, or rewrite the "
            "split with `folds --force` (and retrain)"
        )
    return n


def expected_folds(cfg: Config) -> int:
    """How many folds a finished experiment has: those of folds.csv (checked against folds.n_folds); the config's
    folds.n_folds where the file is absent (a packaged run)."""
    if Path(cfg.folds.path).is_file():
        read_folds(cfg)
    return cfg.folds.n_folds


def read_fold_table(path: Path) -> pd.DataFrame:
    """folds.csv as the text written (ids and groups such as `NA` or `007` kept), the fold numbers as written."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def read_folds(cfg: Config, train: pd.DataFrame | None = None) -> tuple[pd.DataFrame, str]:
    """Load folds.csv, check it was not edited since it was written, still matches train.csv, and keeps every group
    (folds.group_col, or the one it was written with) in one fold."""
    path, id_col = Path(cfg.folds.path), cfg.data.id_col
    if not path.is_file():
        raise UserError(f"{path} not found: run the `folds` command first (make folds)")
    folds = read_fold_table(path)
    if id_col not in folds.columns or "fold" not in folds.columns:
        raise UserError(f"{path}: expected columns '{id_col}' and 'fold', found {list(folds.columns)}")
    check_fold_numbers(cfg, folds["fold"], path)
    folds["fold"] = pd.to_numeric(folds["fold"]).astype(np.int64)
    if train is not None:
        stale = set(train[id_col]) ^ set(folds[id_col])
        if stale:
            raise UserError(
                f"{path} is out of date with {cfg.data.train_csv}: {len(stale)} ids differ "
                f"(e.g. {sorted(stale)[:3]}); rerun `folds --force`"
            )
    meta = meta_path(cfg)
    info = read_json(meta) if meta.is_file() else {}
    group_col = cfg.folds.group_col or info.get("group_col")
    if cfg.folds.groups_file is not None:  # the file as it is now: a split from older groups is caught
        ids = folds[id_col]
        groups = read_groups(Path(cfg.folds.groups_file), id_col).reindex(ids)
        if groups.isna().any():
            raise UserError(f"{cfg.folds.groups_file} (folds.groups_file) has no group for {int(groups.isna().sum())} "
                            f"ids of {path}, first: {list(ids[groups.isna().to_numpy()][:3])}; run `check-data` "
                            "again, then `folds --force`")  # fmt: skip
        check_groups(folds["fold"].to_numpy(), groups.to_numpy(dtype=str), cfg.folds.groups_file, str(path),
                     "folds.groups_file")  # fmt: skip
    elif group_col is not None:
        table = train if train is not None else folds if group_col in folds.columns else read_train(cfg)
        groups = pd.Series(group_values(cfg, table, group_col), index=table[id_col]).reindex(folds[id_col])
        known = groups.notna().to_numpy()  # ids of an out-of-date folds.csv are named by the check above
        check_groups(folds["fold"].to_numpy()[known], groups.to_numpy()[known], group_col, str(path))
    h = folds_hash(folds[id_col], folds["fold"])
    if meta.is_file() and info.get("hash") != h:
        raise UserError(f"{path} was changed after it was written (hash {h} != {meta}); rerun `folds --force`")
    return folds, h
