"""The `aug-preview` command: what the training augmentation does to a few training images, as one PNG grid.

Each row is one training image: first as the model sees it in validation (resized only), then `draws` independent
draws of the configured preset (`augment.preset`, flips as configured). Logged to wandb when it is on.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from .config import Config
from .core.runs import atomic_savefig
from .core.tracking import Tracker
from .data.augment import build_transforms
from .data.decode import image_paths, read_image
from .data.tables import data_path, read_train

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def preview_rows(images: list[np.ndarray], cfg: Config, draws: int) -> list[list[np.ndarray]]:
    """Per image: the resized original, then `draws` augmented versions (uint8 HWC), reproducible from cfg.seed."""
    n_chans = cfg.model.in_chans
    augment = build_transforms(cfg.augment, True, n_chans)
    augment.set_random_seed(cfg.seed)
    resize = build_transforms(cfg.augment, False, n_chans)
    return [[resize(image=img)["image"]] + [augment(image=img)["image"] for _ in range(draws)] for img in images]


def run_aug_preview(cfg: Config, n_images: int = 6, draws: int = 8) -> Path:
    """outputs/<exp>/aug_preview.png: `n_images` training images (drawn with cfg.seed) x (original + `draws`)."""
    ids = read_train(cfg)[cfg.data.id_col].tolist()
    rng = np.random.default_rng(cfg.seed)
    picked = sorted(rng.choice(len(ids), size=min(n_images, len(ids)), replace=False).tolist())
    paths = image_paths(data_path(cfg, cfg.data.train_images), [ids[i] for i in picked], cfg.data.image_ext,
                        "train_images")  # fmt: skip
    rows = preview_rows([read_image(p, cfg.model.in_chans) for p in paths], cfg, draws)
    fig, axes = plt.subplots(len(rows), draws + 1, figsize=(1.3 * (draws + 1), 1.3 * len(rows)), squeeze=False)
    for r, (row, path) in enumerate(zip(rows, paths, strict=True)):
        for c, img in enumerate(row):
            ax = axes[r, c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("resized" if c == 0 else f"draw {c}", fontsize=8)
        axes[r, 0].set_ylabel(path.stem[:14], fontsize=7)
    fig.suptitle(f"augment.preset={cfg.augment.preset} ({cfg.augment.image_size} px)", fontsize=10)
    try:
        out = atomic_savefig(cfg.run.aug_preview, fig)
    finally:
        plt.close(fig)
    tracker = Tracker(cfg, "aug-preview", "aug-preview")
    tracker.image("aug_preview", out)
    tracker.finish()
    print(f"{out}: {len(rows)} training images x {draws} draws of augment.preset={cfg.augment.preset}")
    return out
