"""The `check-data` command: what to know about the images before the first model, in one pass over them.

- Near duplicates: every train and test image gets a 64-bit perceptual hash (checks.hash, data/hashing.py); two
  images whose hashes differ in at most checks.hash_distance bits are linked. Linked training images form duplicate
  groups (connected components), written as a groups file that `folds` keeps whole (folds.groups_file): a duplicate
  in two folds lets a model validate on an image it trained on. A train/test pair is a leak (the test image's label
  is in the training table).
- Adversarial validation: a gradient-boosted classifier (scikit-learn) tells train from test on the image
  statistics (data/image_stats.py); its out-of-fold ROC AUC is about 0.5 when the two sets look alike and near 1
  when they differ. The training images it finds most test-like are listed (a validation set that resembles the
  test set), and shown.
- Drift: each statistic's distribution per split, with the Kolmogorov-Smirnov distance between train and test.

Everything goes to <output_dir>/data_check/ (core/runs.DataCheckFiles), not to an experiment's folder: it is about
the data. A summary fits on one screen; wandb gets it too when it is on.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from .config import Config
from .core.runs import DataCheck, DataCheckFiles, atomic_savefig, atomic_write_csv, data_check_files, write_groups
from .core.tracking import Tracker
from .data.decode import image_paths, read_image
from .data.hashing import HASHES, close_pairs, components, to_hex
from .data.image_stats import describe_all
from .data.tables import data_path, read_table, read_train

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SPLITS = ("train", "test")


def near_duplicates(
    train_ids: list[str], test_ids: list[str], train_hash: np.ndarray, test_hash: np.ndarray, max_distance: int
) -> tuple[pd.DataFrame, list[str]]:
    """(pairs, groups): every pair within `max_distance` bits (train/train, then train/test: the leaks), as
    id_a, split_a, id_b, split_b, distance, leak; and each training id's group: the first id (in table order) of its
    connected component of train/train pairs (an image with no duplicate is a group of its own)."""
    inner = list(close_pairs(train_hash, None, max_distance))
    leaks = list(close_pairs(train_hash, test_hash, max_distance)) if len(test_hash) else []
    rows = [(train_ids[i], "train", train_ids[j], "train", d, False) for i, j, d in inner]
    rows += [(train_ids[i], "train", test_ids[j], "test", d, True) for i, j, d in leaks]
    pairs = pd.DataFrame(rows, columns=["id_a", "split_a", "id_b", "split_b", "distance", "leak"])
    pairs = pairs.sort_values(["leak", "distance"], ascending=[False, True], kind="stable").reset_index(drop=True)
    component = components(len(train_ids), [(i, j) for i, j, _ in inner])
    first: dict[int, str] = {}
    for i, c in enumerate(component.tolist()):
        first.setdefault(c, train_ids[i])
    return pairs, [first[c] for c in component.tolist()]


def adversarial(stats: pd.DataFrame, is_test: np.ndarray, n_folds: int, seed: int) -> np.ndarray | None:
    """Out-of-fold probability that each image is a test image, from a classifier on the statistics (stratified
    n_folds-fold); None when a split has fewer images than folds. One OpenMP thread: the trees are small, and
    scikit-learn's threads spinning against a busy machine's other processes took 150 s instead of 2.5 s here."""
    if min(is_test.sum(), (~is_test).sum()) < n_folds:
        return None
    model = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=seed)
    cv = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    with threadpool_limits(1):
        return cross_val_predict(model, stats.to_numpy(np.float64), is_test, cv=cv, method="predict_proba")[:, 1]


def separating_features(stats: pd.DataFrame, is_test: np.ndarray, n: int = 5) -> list[str]:
    """The statistics that tell train from test best on their own: `name AUC` (each one's ROC AUC, or 1 - AUC when
    test images score lower), the most telling first."""
    if is_test.all() or not is_test.any():
        return []
    aucs = {c: roc_auc_score(is_test, stats[c]) for c in stats.columns if stats[c].nunique() > 1}
    ranked = sorted(aucs, key=lambda c: -abs(aucs[c] - 0.5))[:n]
    return [f"{c} {max(aucs[c], 1 - aucs[c]):.3f}" for c in ranked]


def drift_table(stats: pd.DataFrame, split: np.ndarray) -> pd.DataFrame:
    """Per statistic and split: n, mean, std, p05, p50, p95; and on the test row the Kolmogorov-Smirnov distance of
    its distribution from train's (0: the same, 1: disjoint)."""
    rows = []
    for feature in stats.columns:
        for name in SPLITS:
            values = stats.loc[split == name, feature].to_numpy(np.float64)
            if not len(values):
                continue
            p05, p50, p95 = np.percentile(values, [5, 50, 95])
            ks = None
            if name == "test":
                ks = float(ks_2samp(stats.loc[split == "train", feature], values).statistic)
            rows.append({"feature": feature, "split": name, "n": len(values), "mean": values.mean(),
                         "std": values.std(), "p05": p05, "p50": p50, "p95": p95, "ks": ks})  # fmt: skip
    return pd.DataFrame(rows)


def _show(ax: plt.Axes, image: np.ndarray, title: str) -> None:
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        return atomic_savefig(path, fig)
    finally:
        plt.close(fig)


def _message(path: Path, text: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    return _save(fig, path)


def plot_pairs(pairs: pd.DataFrame, path_of: dict[tuple[str, str], Path], in_chans: int, n: int, out: Path) -> Path:
    """The first `n` pairs (leaks first, then the closest), side by side, one pair per row."""
    shown = pairs.head(n)
    if shown.empty:
        return _message(out, "no near duplicates")
    fig, axes = plt.subplots(len(shown), 2, figsize=(4, 2 * len(shown)), squeeze=False)
    for r, p in enumerate(shown.itertuples(index=False)):
        for c, (i, s) in enumerate(((p.id_a, p.split_a), (p.id_b, p.split_b))):
            _show(axes[r, c], read_image(path_of[(s, i)], in_chans), f"{s} {i}" + (f"  d={p.distance}" if c else ""))
    fig.suptitle("near duplicates (leaks: train/test)", fontsize=9)
    return _save(fig, out)


def plot_test_like(ids: list[str], probs: list[float], paths: list[Path], in_chans: int, out: Path) -> Path:
    """The most test-like training images in a grid, each with its out-of-fold test probability."""
    if not ids:
        return _message(out, "adversarial validation skipped (too few images)")
    cols = min(8, len(ids))
    rows = -(-len(ids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (i, p, path) in enumerate(zip(ids, probs, paths, strict=True)):
        ax = axes.ravel()[k]
        ax.axis("on")
        _show(ax, read_image(path, in_chans), f"{i[:12]}\np(test)={p:.2f}")
    fig.suptitle("most test-like training images", fontsize=9)
    return _save(fig, out)


def plot_drift(stats: pd.DataFrame, split: np.ndarray, drift: dict[str, float], out: Path) -> Path:
    """One histogram per statistic that varies, train and test overlaid (densities), the KS distance in the title;
    the statistics with one value throughout (every image 512 px wide...) are named in one line instead."""
    varying = [f for f in stats.columns if stats[f].nunique() > 1]
    constant = [f"{f}={stats[f].iloc[0]:g}" for f in stats.columns if f not in varying]
    if not varying:
        return _message(out, "every statistic is the same in every image: " + ", ".join(constant))
    cols = min(4, len(varying))
    rows = -(-len(varying) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows + 0.6), squeeze=False)
    for ax in axes.ravel()[len(varying) :]:
        ax.axis("off")
    for ax, feature in zip(axes.ravel(), varying, strict=False):
        values = stats[feature].to_numpy(np.float64)
        bins = np.histogram_bin_edges(values, bins=30)
        for name in SPLITS:
            part = values[split == name]
            if len(part):
                ax.hist(part, bins=bins, density=True, alpha=0.55, label=f"{name} ({len(part)})")
        ks = drift.get(feature)
        ax.set_title(feature + (f"  KS={ks:.2f}" if ks is not None else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])  # densities: the shapes matter, not the numbers
    axes.ravel()[0].legend(fontsize=7)
    title = "image statistics per split" + (f"\nthe same in every image: {', '.join(constant)}" if constant else "")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(hspace=0.45, wspace=0.15, top=1 - 0.9 / (2.3 * rows + 0.6))
    return _save(fig, out)


def run_check_data(cfg: Config) -> DataCheck:
    """Hash and describe every train and test image, then write <output_dir>/data_check/ and print the summary."""
    d, k, id_col = cfg.data, cfg.checks, cfg.data.id_col
    train_ids = read_train(cfg)[id_col].astype(str).tolist()
    test_ids = read_table(data_path(cfg, d.test_csv), id_col, encoding=d.encoding)[id_col].astype(str).tolist()
    train_paths = image_paths(data_path(cfg, d.train_images), train_ids, d.image_ext, "train_images")
    test_paths = image_paths(data_path(cfg, d.test_images), test_ids, d.image_ext, "test_images") if test_ids else []
    in_chans, hash_bits = cfg.model.in_chans, HASHES[k.hash]
    train_stats, train_hash = describe_all(train_paths, in_chans, hash_bits, "train_images", "check-data train")
    test_stats, test_hash = describe_all(test_paths, in_chans, hash_bits, "test_images", "check-data test")

    pairs, groups = near_duplicates(train_ids, test_ids, train_hash, test_hash, k.hash_distance)
    stats = pd.concat([train_stats, test_stats], ignore_index=True)
    split = np.array(["train"] * len(train_ids) + ["test"] * len(test_ids))
    is_test = split == "test"
    prob = adversarial(stats, is_test, k.adversarial_folds, cfg.seed)
    drift = drift_table(stats, split)
    ks = {r.feature: r.ks for r in drift.itertuples() if r.split == "test"}

    table = pd.DataFrame({id_col: train_ids + test_ids, "split": split})
    table["hash"] = to_hex(np.concatenate([train_hash, test_hash]))
    table = pd.concat([table, stats], axis=1)
    table["test_prob"] = prob if prob is not None else np.nan
    table["group"] = groups + [""] * len(test_ids)
    test_like: list[str] = []
    if prob is not None:
        order = np.argsort(-prob[: len(train_ids)], kind="stable")[: k.top_k]
        test_like = [train_ids[i] for i in order]

    sizes = pd.Series(groups).value_counts()
    check = DataCheck(
        n_train=len(train_ids),
        n_test=len(test_ids),
        hash=k.hash,
        hash_distance=k.hash_distance,
        train_pairs=int((~pairs["leak"]).sum()),
        leak_pairs=int(pairs["leak"].sum()),
        leaked_test_ids=int(pairs.loc[pairs["leak"], "id_b"].nunique()),
        groups=int((sizes > 1).sum()),
        rows_in_groups=int(sizes[sizes > 1].sum()),
        adversarial_auc=float(roc_auc_score(is_test, prob)) if prob is not None else None,
        adversarial_features=separating_features(stats, is_test),
        test_like=test_like,
        drift={f: round(v, 4) for f, v in ks.items()},
    )
    files = data_check_files(cfg.output_dir)
    files.path.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(files.duplicates, pairs)
    write_groups(files.groups, id_col, train_ids, groups)
    atomic_write_csv(files.image_stats, table)
    atomic_write_csv(files.drift, drift)
    path_of = {("train", i): p for i, p in zip(train_ids, train_paths, strict=True)}
    path_of |= {("test", i): p for i, p in zip(test_ids, test_paths, strict=True)}
    plot_pairs(pairs, path_of, in_chans, k.show_pairs, files.duplicates_png)
    top_probs = [float(prob[train_ids.index(i)]) for i in test_like] if prob is not None else []
    plot_test_like(test_like, top_probs, [path_of[("train", i)] for i in test_like], in_chans, files.test_like_png)
    plot_drift(stats, split, ks, files.drift_png)
    files.write_summary(check)
    _track(cfg, check, files)
    print(summary_text(check, files))
    return check


def summary_text(c: DataCheck, files: DataCheckFiles) -> str:
    """The one-screen summary `check-data` prints."""
    auc = "skipped (too few images)" if c.adversarial_auc is None else f"{c.adversarial_auc:.3f}"
    verdict = ""
    if c.adversarial_auc is not None:
        verdict = "  (train and test look alike)" if c.adversarial_auc < 0.6 else "  (train and test differ: see drift)"
    drifted = sorted(c.drift.items(), key=lambda kv: -kv[1])[:4]
    lines = [
        f"data check: {c.n_train} train, {c.n_test} test images -> {files.path}/",
        f"  near duplicates ({c.hash}, <= {c.hash_distance} of 64 bits): {c.train_pairs} train/train pairs in "
        f"{c.groups} groups ({c.rows_in_groups} rows); {c.leak_pairs} train/test pairs (leaks, {c.leaked_test_ids} "
        "test ids)",
        f"  adversarial AUC (train vs test, out-of-fold): {auc}{verdict}",
    ]
    if c.adversarial_features:
        lines.append(f"    telling statistics (AUC alone): {', '.join(c.adversarial_features[:3])}")
    if c.test_like:
        lines.append(f"    most test-like training ids: {', '.join(c.test_like[:5])} ({files.test_like_png.name})")
    if drifted:
        lines.append("  drift (KS train vs test): " + ", ".join(f"{f} {v:.2f}" for f, v in drifted))
    if c.groups:
        lines.append(f"  keep duplicates in one fold: folds.groups_file={files.groups} (then `folds --force`)")
    return "\n".join(lines)


def _track(cfg: Config, check: DataCheck, files: DataCheckFiles) -> None:
    tracker = Tracker(cfg, "check-data", "check-data")
    numbers = {k: v for k, v in check.to_dict().items() if isinstance(v, int | float) and not isinstance(v, bool)}
    tracker.summary({f"data_check/{k}": v for k, v in numbers.items()})
    tracker.summary({f"data_check/drift/{f}": v for f, v in check.drift.items()})
    for path in (files.duplicates_png, files.test_like_png, files.drift_png):
        tracker.image(f"data_check/{path.stem}", path)
    tracker.finish()
