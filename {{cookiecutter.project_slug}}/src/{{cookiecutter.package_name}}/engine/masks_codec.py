"""The segmentation submission codec: probability maps -> run-length encoded masks at each test image's own size,
with the run's post-processing applied as recorded, laid out as the sample submission is; a file validated against
the sample (ids, classes, every encoding a valid one for its image), and read back into masks to be scored.

Layouts (found from the sample submission's columns):
- long: one row per image and class, the class in data.class_col, the encoding in data.rle_col (Severstal);
- wide: one row per image, one encoding column per class, named as the class;
- single: one row per image, one encoding column (one class: SIIM pneumothorax, Airbus ships as one class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..config import Config
from ..core.errors import UserError
from ..data.masks import check_rle, rle_decode, rle_encode, training_masks
from ..data.problem import sizes_of_test_images
from ..data.tables import data_path, read_long_table
from . import postprocess


@dataclass(frozen=True)
class Layout:
    kind: str  # long | wide | single
    rle_col: str | None  # long and single: the encodings' column
    class_col: str | None  # long: the class column


def cell(v: object) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def resolve_layout(cfg: Config, sample: pd.DataFrame, classes: list[str], where: str) -> Layout:
    """Which layout the sample submission has, checked against the run's classes."""
    cols, rle = list(sample.columns[1:]), cfg.data.rle_col
    if cfg.data.class_col is not None and cfg.data.class_col in cols:
        if not isinstance(rle, str) or rle not in cols:
            raise UserError(f"{where}: no column data.rle_col={rle!r} beside the class column {cfg.data.class_col!r}")
        found = sorted(set(sample[cfg.data.class_col].map(cell)) - set(classes))
        if found:
            raise UserError(f"{where}: column {cfg.data.class_col!r} holds classes {found[:5]} that the run does not "
                            f"predict (its classes: {classes[:10]})")  # fmt: skip
        return Layout("long", rle, cfg.data.class_col)
    if sorted(cols) == sorted(classes) and len(classes) > 1:
        return Layout("wide", None, None)
    if len(cols) == 1 and len(classes) == 1:
        return Layout("single", cols[0], None)
    raise UserError(
        f"{where}: columns {cols} are neither data.class_col + data.rle_col (one row per image and class), one "
        f"column per class {classes[:10]}, nor one encoding column for a one-class run"
    )


def sample_cells(sample: pd.DataFrame, layout: Layout, id_col: str, classes: list[str]) -> list[tuple[str, str]]:
    """The (id, class) pairs the sample submission asks for, in its order."""
    ids = sample[id_col].map(cell).tolist()
    if layout.kind == "long":
        return list(zip(ids, sample[layout.class_col].map(cell).tolist(), strict=True))
    return [(i, c) for i in ids for c in classes]


def image_masks(probs: np.ndarray, shape: tuple[int, int], pp: dict) -> np.ndarray:
    """One image's maps (C, S, S) uint8 -> its post-processed masks (C, H, W) at the image's own size: the
    probabilities are resized (bilinear) before thresholding, so the mask edges fall between the coarse pixels."""
    h, w = shape
    p = probs.astype(np.float32) / 255
    up = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in p])
    return postprocess.apply(up[None], pp)[0]


def encode_submission(cfg: Config, ids: list[str], maps: np.ndarray, shapes: list[tuple[int, int]], pp: dict,
                      sample: pd.DataFrame, classes: list[str], where: str) -> pd.DataFrame:  # fmt: skip
    """The submission table: each test image's masks at its size, encoded (data.rle_order), in the sample's
    layout and row order."""
    id_col = cfg.data.id_col
    layout = resolve_layout(cfg, sample, classes, where)
    position = {i: n for n, i in enumerate(ids)}
    wanted = sample_cells(sample, layout, id_col, classes)
    missing = sorted({i for i, _ in wanted} - set(position))
    if missing:
        raise UserError(f"{where}: {len(missing)} ids of the sample submission were not predicted, e.g. {missing[:3]}")
    encoded: dict[tuple[str, str], str] = {}
    for i in dict.fromkeys(i for i, _ in wanted):
        n = position[i]
        masks = image_masks(maps[n], shapes[n], pp)
        for c, m in zip(classes, masks, strict=True):
            encoded[(i, c)] = rle_encode(m, cfg.data.rle_order)
    if layout.kind == "long":
        out = sample[[id_col, layout.class_col]].copy()
        out[layout.rle_col] = [encoded[key] for key in wanted]
        return out[list(sample.columns)]
    out = pd.DataFrame({id_col: sample[id_col].map(cell)})
    if layout.kind == "single":
        out[layout.rle_col] = [encoded[(i, classes[0])] for i in out[id_col]]
    else:
        for c in sample.columns[1:]:
            out[c] = [encoded[(i, c)] for i in out[id_col]]
    return out


def parse_submission(cfg: Config, sub: pd.DataFrame, sample: pd.DataFrame, classes: list[str],
                     shapes: dict[str, tuple[int, int]], where: str) -> dict[tuple[str, str], np.ndarray]:  # fmt: skip
    """A submission (or a solution in the same layout) -> (id, class) -> mask at the image's size, after checking
    it against the sample: the same columns, the same (id, class) cells, each encoding valid for its image."""
    id_col = cfg.data.id_col
    if list(sub.columns) != list(sample.columns):
        raise UserError(f"{where}: columns {list(sub.columns)} != the sample submission's {list(sample.columns)}")
    layout = resolve_layout(cfg, sample, classes, where)
    got, want = sample_cells(sub, layout, id_col, classes), sample_cells(sample, layout, id_col, classes)
    if sorted(got) != sorted(want) or len(set(got)) != len(got):
        extra, lacking = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        dup = len(got) - len(set(got))
        raise UserError(f"{where}: its (id, class) cells differ from the sample submission's ({len(extra)} extra, e.g. "
                        f"{extra[:2]}; {len(lacking)} missing, e.g. {lacking[:2]}; {dup} repeated)")  # fmt: skip
    if layout.kind == "long":
        texts = sub[layout.rle_col].map(cell).tolist()
    else:
        cols = [layout.rle_col] if layout.kind == "single" else classes
        texts = [cell(sub[c].iloc[r]) for r in range(len(sub)) for c in cols]
    out = {}
    for row, ((i, c), rle) in enumerate(zip(got, texts, strict=True)):
        if i not in shapes:
            raise UserError(f"{where}: id {i!r} has no image in data.test_images")
        line = row // (1 if layout.kind == "long" else len(classes)) + 2
        check_rle(rle, shapes[i], f"{where} row {line} (id {i}, class {c})")
        out[(i, c)] = rle_decode(rle, shapes[i], cfg.data.rle_order)
    return out


def validate_submission(cfg: Config, sub: pd.DataFrame, sample: pd.DataFrame, classes: list[str],
                        shapes: dict[str, tuple[int, int]], where: str) -> None:  # fmt: skip
    """What parse_submission checks, for a file about to be written."""
    parse_submission(cfg, sub, sample, classes, shapes, where)


@dataclass(frozen=True)
class CheckedFile:
    """A segmentation submission (or solution) file, checked against the sample submission and decoded."""

    table: pd.DataFrame
    ids: list[str]  # the sample's images, in its order
    classes: list[str]
    masks: list[np.ndarray]  # per image of `ids`, (C, H, W) at its size


def read_submission(cfg: Config, path: str | Path, what: str = "submission file") -> CheckedFile:
    """`path` read as text, checked cell by cell against the sample submission (data.sample_submission) and each
    test image's size, and decoded; the classes are the training table's (data.masks.training_masks)."""
    id_col, enc = cfg.data.id_col, cfg.data.encoding
    if not Path(path).is_file():
        raise UserError(f"{path}: {what} not found")
    table = read_long_table(Path(path), id_col, enc)
    sample = read_long_table(data_path(cfg, cfg.data.sample_submission), id_col, enc)
    classes = training_masks(cfg).classes
    ids = list(dict.fromkeys(sample[id_col].map(cell)))
    shapes = dict(zip(ids, sizes_of_test_images(cfg, ids), strict=True))
    masks = parse_submission(cfg, table, sample, classes, shapes, str(path))
    return CheckedFile(table, ids, classes, stack(masks, ids, classes))


def stack(masks: dict[tuple[str, str], np.ndarray], ids: list[str], classes: list[str]) -> list[np.ndarray]:
    """Per image, its (C, H, W) masks in class order."""
    return [np.stack([masks[(i, c)] for c in classes]) for i in ids]
