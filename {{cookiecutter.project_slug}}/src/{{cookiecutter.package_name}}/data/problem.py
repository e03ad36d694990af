"""What a fold trains and validates on: the competition's table, its folds, targets and image Datasets.

`load_problem` reads and checks everything once (files, columns, labels, folds, and that every image decodes) so
that bad input fails before a model is built; `build_fold_data` cuts it into fold k's training and validation sets.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
from torch.utils.data import Dataset, Sampler

from ..core.errors import UserError
from ..core.runs import (
    Classes,
    FoldNormalization,
    atomic_write_csv,
    image_check_cache,
    write_derived,
    write_masks,
)
from ..core.runtime import available_cores
from ..core.tasks import PIXEL_TASKS, TargetScale
from .augment import build_transforms, source_size
from .cache import ImageCache, open_cache
from .cache import decode as cache_decode
from .decode import check_images, decode_bytes, image_paths, image_shapes
from .folds import read_folds
from .images import ImageDataset
from .masks import MaskSource, area_fractions, training_masks
from .tables import (
    binary_positive,
    class_counts,
    data_path,
    derive_classes,
    encode_targets,
    read_table,
    read_train,
    stratify_labels,
)

if TYPE_CHECKING:
    from ..core.schema import Config


@dataclass
class Problem:
    """The training table joined with its folds, and the task's encoded targets in the same row order.
    Segmentation: `y` is each image's area share per class (N, C), what folds stratify on and the pixel prior is
    taken from; the masks themselves are read on demand from `masks` (data/masks.py), laid on `shapes`."""

    ids: list[str]
    folds: np.ndarray
    y: np.ndarray
    paths: list[Path]
    classes: list[str]
    positive: str | None
    folds_hash: str
    masks: MaskSource | None = None
    shapes: list[tuple[int, int]] | None = None

    def rows(self, fold: int, valid: bool) -> np.ndarray:
        return np.flatnonzero((self.folds == fold) if valid else (self.folds != fold))

    def truth(self, rows: np.ndarray, size: int) -> np.ndarray:
        """Segmentation: the masks of `rows` at the training size, (n, C, size, size) uint8, resized as the
        evaluation transform resizes them (nearest neighbour): what OOF predictions are scored against."""
        assert self.masks is not None and self.shapes is not None
        out = np.zeros((len(rows), len(self.classes), size, size), np.uint8)
        for j, i in enumerate(rows):
            out[j] = resize_masks(self.masks.read(int(i), self.shapes[i]), size).transpose(2, 0, 1)
        return out

    def target_scale(self, fold: int, task: str) -> TargetScale | None:
        """Regression: the standardisation of fold `fold`'s training targets (validation rows never count);
        None for the other tasks."""
        return TargetScale.fit(self.y[self.rows(fold, valid=False)]) if task == "regression" else None


@dataclass
class RowMasks:
    """A Dataset's row j -> problem row rows[j]'s masks (a class, not a closure: loader workers pickle it)."""

    source: MaskSource
    rows: np.ndarray

    def __call__(self, j: int, shape: tuple[int, int]) -> np.ndarray:
        return self.source.read(int(self.rows[j]), shape)


@dataclass
class StoredMaps:
    """A Dataset's row j -> maps[j], (C, h, w) maps stored at the training size (a teacher's uint8 probabilities
    or float logits), laid back on the image's own pixels (nearest neighbour), HWC: the transforms then move and
    resize them with the image as they do a mask. Up by an integer factor and down again by the same, nearest
    neighbour gives back the stored map exactly."""

    maps: np.ndarray

    def __call__(self, j: int, shape: tuple[int, int]) -> np.ndarray:
        m = self.maps[j].transpose(1, 2, 0)
        return resize_masks(m if m.dtype in (np.uint8, np.float32) else m.astype(np.float32), shape)


@dataclass
class EmptyMasks:
    """Row j -> C empty masks: the masks of rows that have none (unlabelled), so that their batches collate."""

    n_classes: int

    def __call__(self, j: int, shape: tuple[int, int]) -> np.ndarray:
        return np.zeros((*shape, self.n_classes), np.uint8)


def resize_masks(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """HWC masks -> (size, size, C) or (height, width, C), nearest neighbour: albumentations' Resize does the same
    to a `mask`."""
    h, w = (size, size) if isinstance(size, int) else size
    out = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return out[..., None] if out.ndim == 2 else out


@dataclass
class FoldData:
    train: Dataset
    valid: Dataset
    valid_ids: list[str]
    y_valid: np.ndarray
    sampler_labels: np.ndarray | None  # class ids (or multilabel 0/1 tags) of the training rows, for samplers
    class_counts: np.ndarray | None  # data.tables.class_counts of the training rows (None for regression)
    batch_sampler: Sampler | None = None  # composes whole training batches (pseudo-labelling's batch ratio)


def load_problem(cfg: Config) -> Problem:
    if cfg.task in PIXEL_TASKS:
        return _load_masks_problem(cfg)
    train = read_train(cfg)
    folds, h = read_folds(cfg, train)
    id_col = cfg.data.id_col
    train = train.merge(folds[[id_col, "fold"]], on=id_col, how="left", validate="one_to_one")
    classes = derive_classes(cfg, train)
    positive = binary_positive(cfg, train) if cfg.task == "binary" else None
    y = encode_targets(cfg, train, classes, positive)
    ids = train[id_col].tolist()
    folder = data_path(cfg, cfg.data.train_images)
    paths = image_paths(folder, ids, cfg.data.image_ext, "train_images")
    check_images(paths, "train_images", image_check_cache(cfg.output_dir, folder))
    return Problem(ids, train["fold"].to_numpy(np.int64), y, paths, classes, positive, h)


def _load_masks_problem(cfg: Config) -> Problem:
    """Segmentation: the images of train_csv (one row each), their folds, masks and area shares."""
    train = read_train(cfg)
    folds, h = read_folds(cfg, train)
    id_col = cfg.data.id_col
    train = train.merge(folds[[id_col, "fold"]], on=id_col, how="left", validate="one_to_one")
    ids = train[id_col].tolist()
    folder = data_path(cfg, cfg.data.train_images)
    paths = image_paths(folder, ids, cfg.data.image_ext, "train_images")
    check_images(paths, "train_images", image_check_cache(cfg.output_dir, folder))
    source = training_masks(cfg, ids)
    shapes = image_shapes(paths)
    y = area_fractions(source, shapes)
    return Problem(ids, train["fold"].to_numpy(np.int64), y, paths, source.classes, None, h, source, shapes)


def image_cache(cfg: Config, paths: list[Path]) -> ImageCache | None:
    """The decode cache (data.cache) of an image set, built on first use: every training image at once, so that
    all folds share one entry. Its build decodes with data.num_workers processes ('auto': one per core, since
    nothing else runs yet)."""
    workers = cfg.data.num_workers if cfg.data.num_workers != "auto" else available_cores()
    size = source_size(cfg.augment, cfg.model.in_chans)
    return open_cache(cfg.data.cache, paths, cfg.model.in_chans, size, cfg.data.cache_dir, int(workers))


def _rows_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def fold_statistics(cfg: Config, problem: Problem, fold: int) -> FoldNormalization:
    """Per-channel mean and std (0..1 scale, population std over every pixel) of fold k's training images, each
    decoded and resized as prediction feeds it (image_size, no augmentation): what the model's input looks like."""
    rows, c = problem.rows(fold, valid=False), cfg.model.in_chans
    tf = build_transforms(cfg.augment, False, c)
    dataset = ImageDataset([problem.paths[i] for i in rows], None, tf, c, image_cache(cfg, problem.paths))
    total, squares, pixels = np.zeros(c), np.zeros(c), 0
    for i in range(len(dataset)):
        image = dataset[i]["image"].numpy().reshape(-1, c).astype(np.float64) / 255.0
        total += image.sum(0)
        squares += (image * image).sum(0)
        pixels += len(image)
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean * mean, 0.0))
    if (std <= 0).any():
        raise UserError(f"augment.std: fold: fold {fold}'s training images are constant in a channel (std 0); give "
                        "augment.mean/std as numbers")  # fmt: skip
    return FoldNormalization(mean.tolist(), std.tolist(), cfg.augment.image_size, c, len(rows),
                             _rows_hash([problem.ids[i] for i in rows]))  # fmt: skip


def fold_normalization(cfg: Config, problem: Problem, fold: int) -> tuple[list[float], list[float]]:
    """augment.mean/std: fold: fold k's (mean, std), computed once (`fold_statistics`) and kept in the run folder
    (fold<k>/normalization.json); recomputed only when the rows, the image size or the channels it was computed
    for have changed."""
    files = cfg.run.fold(fold)
    key = (cfg.augment.image_size, cfg.model.in_chans, _rows_hash([problem.ids[i] for i in problem.rows(fold, False)]))
    if files.normalization.is_file():
        saved = files.read_normalization()
        if (saved.image_size, saved.in_chans, saved.rows_hash) == key:
            return saved.mean, saved.std
    stats = fold_statistics(cfg, problem, fold)
    files.path.mkdir(parents=True, exist_ok=True)
    files.write_normalization(stats)
    return stats.mean, stats.std


def build_fold_data(cfg: Config, problem: Problem, fold: int) -> FoldData:
    tr, va = problem.rows(fold, valid=False), problem.rows(fold, valid=True)
    in_chans, paths = cfg.model.in_chans, problem.paths
    if problem.masks is not None:
        return _masks_fold_data(cfg, problem, tr, va)
    cache = image_cache(cfg, paths)
    train_tf = build_transforms(cfg.augment, True, in_chans)
    valid_tf = build_transforms(cfg.augment, False, in_chans)
    train_ds = ImageDataset([paths[i] for i in tr], problem.y[tr], train_tf, in_chans, cache)
    valid_ds = ImageDataset([paths[i] for i in va], problem.y[va], valid_tf, in_chans, cache)
    labels = stratify_labels(cfg, problem.y[tr]) if cfg.train.sampler != "none" else None
    return FoldData(
        train=train_ds,
        valid=valid_ds,
        valid_ids=[problem.ids[i] for i in va],
        y_valid=problem.y[va],
        sampler_labels=labels,
        class_counts=class_counts(problem.y[tr], cfg.task, len(problem.classes)),
    )


def _masks_fold_data(cfg: Config, problem: Problem, tr: np.ndarray, va: np.ndarray) -> FoldData:
    """Segmentation: images with their masks (no decode cache: it would store resized images, which the masks,
    laid on the original pixels, no longer fit); class_counts = the training rows' mean area share per class
    (the pixel prior the output bias starts at)."""
    assert problem.masks is not None
    in_chans, paths = cfg.model.in_chans, problem.paths
    train_tf = build_transforms(cfg.augment, True, in_chans)
    valid_tf = build_transforms(cfg.augment, False, in_chans)
    train_ds = ImageDataset([paths[i] for i in tr], None, train_tf, in_chans, masks=RowMasks(problem.masks, tr))
    valid_ds = ImageDataset([paths[i] for i in va], None, valid_tf, in_chans, masks=RowMasks(problem.masks, va))
    return FoldData(
        train=train_ds,
        valid=valid_ds,
        valid_ids=[problem.ids[i] for i in va],
        y_valid=problem.truth(va, cfg.augment.image_size),
        sampler_labels=None,
        class_counts=problem.y[tr].mean(0),
    )


def test_dataset(cfg: Config) -> tuple[list[str], ImageDataset]:
    test = read_table(data_path(cfg, cfg.data.test_csv), cfg.data.id_col, encoding=cfg.data.encoding)
    ids = test[cfg.data.id_col].tolist()
    folder = data_path(cfg, cfg.data.test_images)
    paths = image_paths(folder, ids, cfg.data.image_ext, "test_images")
    check_images(paths, "test_images", image_check_cache(cfg.output_dir, folder))
    tf = build_transforms(cfg.augment, False, cfg.model.in_chans)
    return ids, ImageDataset(paths, None, tf, cfg.model.in_chans, image_cache(cfg, paths))


def upload_decoder(cfg: Config) -> Callable[[bytes], np.ndarray]:
    """`decode(data)`: an image file's bytes (an upload to `serve`) -> HWC uint8, as test_dataset reads that file:
    decoded by read_image, and with data.cache on, shrunk as the decode cache holds it. The size the cache shrinks
    to is worked out here, once (it builds both transform pipelines), not for every upload."""
    in_chans = cfg.model.in_chans
    if cfg.data.cache == "none":
        return lambda data: decode_bytes(data, in_chans)
    size = source_size(cfg.augment, in_chans)
    return lambda data: cache_decode(io.BytesIO(data), in_chans, size)


def sizes_of_test_images(cfg: Config, ids: list[str]) -> list[tuple[int, int]]:
    """(height, width) of each test image: the size a segmentation submission's masks are encoded at."""
    folder = data_path(cfg, cfg.data.test_images)
    return image_shapes(image_paths(folder, ids, cfg.data.image_ext, "test_images"))


def save_classes(cfg: Config, problem: Problem) -> None:
    cfg.run.write_classes(Classes(cfg.task, problem.classes, problem.positive))


def pred_frame(ids: list[str], probs: np.ndarray, classes: list[str], id_col: str) -> pd.DataFrame:
    """Predictions as a table: the id, then one column per class/label/target (see README, 'Artefacts').
    Segmentation maps (N, C, H, W) are summarised per class by their largest probability (how sure the model is
    that the class is in the image); the maps themselves go beside the table (core.runs.write_masks)."""
    probs = probs.max(axis=(2, 3)) if probs.ndim == 4 else probs.reshape(len(ids), -1)
    df = pd.DataFrame(probs, columns=classes)
    df.insert(0, id_col, ids)
    return df


def save_predictions(path: Path, ids: list[str], probs: np.ndarray, classes: list[str], id_col: str,
                     fold: int | None = None, source: dict | None = None) -> Path:  # fmt: skip
    """A prediction table (pred_frame, with the `fold` column when given; derived from `source` when given, see
    core.runs.write_derived), and segmentation maps beside it, written first."""
    if probs.ndim == 4:
        write_masks(path, ids, probs)
    df = pred_frame(ids, probs, classes, id_col)
    if fold is not None:
        df.insert(1, "fold", fold)
    return write_derived(path, df, source) if source is not None else atomic_write_csv(path, df)


def oof_truth(
    cfg: Config, ids: list[str], classes: Classes, trained_on: str | None, where: str, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Targets and folds (from folds.csv) of the OOF rows `ids`, encoded with the run's `classes` (classes.json),
    and the folds hash, which must be the one the run was trained on (`trained_on`, from its cv.json).
    Segmentation: the masks at the maps' `size`."""
    if cfg.task in PIXEL_TASKS:
        problem = load_problem(cfg)
        if trained_on != problem.folds_hash:
            raise UserError(f"{where} was trained on folds hash {trained_on} but {cfg.folds.path} has hash "
                            f"{problem.folds_hash}: retrain it on the current folds")  # fmt: skip
        position = {i: n for n, i in enumerate(problem.ids)}
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise UserError(f"{where} has ids not in {cfg.data.train_csv}, e.g. {unknown[:3]}")
        rows = np.array([position[i] for i in ids])
        return problem.truth(rows, int(size or cfg.augment.image_size)), problem.folds[rows], problem.folds_hash
    train = read_train(cfg)
    folds, folds_hash = read_folds(cfg, train)
    if trained_on != folds_hash:
        raise UserError(
            f"{where} was trained on folds hash {trained_on} but {cfg.folds.path} has hash {folds_hash}: "
            "retrain it on the current folds"
        )
    id_col = cfg.data.id_col
    unknown = set(ids) - set(train[id_col])
    if unknown:
        raise UserError(f"{where} has ids not in {cfg.data.train_csv}, e.g. {sorted(unknown)[:3]}")
    rows = train.set_index(id_col).loc[ids].reset_index()
    y = encode_targets(cfg, rows, list(classes.classes), classes.positive)
    fold = folds.set_index(id_col).loc[ids, "fold"].to_numpy(np.int64)
    return y, fold, folds_hash
