"""PNG figures a person would rather look at than a table: learning curves, fold scores, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .artefacts import atomic_savefig


def learning_curves(histories: dict[str, list[dict]], metric: str, path: Path) -> Path:
    """One line per fold: train loss, valid loss, and the metric, against epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for fold, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        axes[0].plot(epochs, [r["train_loss"] for r in rows], label=f"fold {fold}")
        axes[1].plot(epochs, [r["valid_loss"] for r in rows], label=f"fold {fold}")
        axes[2].plot(epochs, [r["score"] for r in rows], label=f"fold {fold}")
    for ax, title in zip(axes, ("train loss", "valid loss", metric), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, path)


def fold_scores(scores: dict[str, float], cv: float, metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 * len(scores) + 2, 3.5))
    ax.bar(list(scores), list(scores.values()), color="tab:blue")
    ax.axhline(cv, color="tab:red", linestyle="--", label=f"OOF CV {cv:.4f}")
    lo, hi = min(*scores.values(), cv), max(*scores.values(), cv)
    pad = max(hi - lo, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_title(f"{metric} per fold")
    ax.legend()
    return _save(fig, path)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path) -> Path:
    n = len(classes)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(0.5 * n + 3, 0.5 * n + 2.5))
    ax.imshow(cm, cmap="Blues")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("OOF confusion matrix")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        return atomic_savefig(path, fig)
    finally:
        plt.close(fig)
