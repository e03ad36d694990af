"""Segmentation masks: Kaggle's run-length encoding, and reading the training masks whatever form the competition
ships them in.

Kaggle's RLE is "start length start length ...": 1-indexed starts, pixels numbered down the first column, then the
next (order "F", column-major; most competitions) or along the rows (order "C"); "" is an empty mask.

The training masks come as (data.* keys, see core/schema.py DataConfig):
    RLE, long    one row per (image, class): the class in data.class_col, the RLE in data.rle_col (Severstal);
                 an image may lack the rows of some classes (empty), several rows of one (image, class) are united
                 (one row per instance, as Airbus ships)
    RLE, wide    data.rle_col a list of columns, one per class, the class named as its column
    RLE, single  data.rle_col one column, no class_col: one class (named as the column, or data.mask_classes[0])
    PNG          data.train_masks a folder: `<id>.png` (pixel value k = the k-th class, 0 background; a mask of
                 0/255 or 0/1 only is one class) or `<id>_<class>.png`, one 0/nonzero mask per class

Every one of them reads as the same thing: `MaskSource.read(i, shape)` -> uint8 (H, W, C) in {0, 1}, one channel per
class in the order of `MaskSource.classes` (HWC, so albumentations takes it as `mask=`). The rest of the pipeline
sees one row per image (`image_table`) and never the format.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from ..core.errors import UserError
from .tables import read_long_table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..core.schema import Config

ORDERS = ("F", "C")
MASK_EXT = ".png"
# An id that ends with one of these names its image file; its mask is `<id without it>.png`. (data/decode.py holds the
# same list for the images; it imports torch and OpenCV, which this module keeps out of.)
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


# --- Kaggle's run-length encoding -------------------------------------------------------------------------------------


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise UserError(f"data.rle_order={order!r}: expected F (column-major, Kaggle's usual) or C (row-major)")


def rle_encode(mask: np.ndarray, order: str = "F") -> str:
    """The RLE of one (H, W) mask (nonzero = in). Runs are found where the flattened mask, padded with a 0 at both
    ends, changes value: no loop over pixels, so a 4k x 4k mask encodes in milliseconds."""
    _check_order(order)
    flat = np.asarray(mask).astype(bool).ravel(order=order)
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # 1-indexed: starts and one-past-ends, alternating
    edges[1::2] -= edges[::2]  # one-past-end - start = length
    return " ".join(map(str, edges.tolist()))


def _rle_text(rle: Any) -> str:
    """An RLE cell as text: a missing cell (NaN, None; pandas reads an empty cell so) is the empty mask."""
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        return ""
    return str(rle)


def _parse(rle: Any, shape: tuple[int, int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths), 1-indexed, of a well-formed RLE for an image of `shape`; anything else is a one-line
    UserError naming `where`. Checked whole-array: one bad run in a million is found without a Python loop."""
    text = _rle_text(rle)
    tokens = text.split()
    if not tokens:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        nums = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(t for t in tokens if not _is_int(t))
        raise UserError(f"{where}: RLE holds {bad!r}; expected integers 'start length start length ...'") from None
    if len(nums) % 2:
        raise UserError(f"{where}: RLE has {len(nums)} numbers, an odd count; expected pairs 'start length'")
    starts, lengths = nums[0::2], nums[1::2]
    h, w = shape
    n_pixels = h * w
    if (bad := np.flatnonzero(starts < 1)).size:
        k = bad[0]
        raise UserError(f"{where}: RLE run {k + 1} starts at {starts[k]}; starts are 1-indexed (the first pixel is 1)")
    if (bad := np.flatnonzero(lengths < 1)).size:
        k = bad[0]
        raise UserError(f"{where}: RLE run {k + 1} (start {starts[k]}) has length {lengths[k]}; expected >= 1")
    if (bad := np.flatnonzero(starts[1:] <= starts[:-1])).size:
        k = bad[0] + 1
        raise UserError(
            f"{where}: RLE run {k + 1} starts at {starts[k]}, not after run {k}'s start {starts[k - 1]}; "
            "runs must be in increasing pixel order"
        )
    ends = starts + lengths - 1  # last pixel of each run, inclusive
    if (bad := np.flatnonzero(starts[1:] <= ends[:-1])).size:
        k = bad[0] + 1
        raise UserError(
            f"{where}: RLE run {k + 1} starts at {starts[k]}, inside run {k} (pixels {starts[k - 1]}..{ends[k - 1]}); "
            "runs must not overlap"
        )
    if ends[-1] > n_pixels:
        raise UserError(
            f"{where}: RLE run {len(starts)} (pixels {starts[-1]}..{ends[-1]}) ends beyond the image's {n_pixels} "
            f"pixels ({h} x {w}, height x width); wrong image size or data.rle_order?"
        )
    return starts, lengths


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def check_rle(rle: Any, shape: tuple[int, int], where: str) -> None:
    """Refuse, in one line naming `where` (e.g. "submissions/x.csv row 12 (id abc, class 2)"), an RLE that Kaggle's
    scorer would refuse or misread: not integers, an odd count, a start < 1, a length < 1, runs out of order or
    overlapping, a run beyond the image's H * W pixels. Touching runs (one starting right after the last) are
    accepted: the mask they describe is unambiguous."""
    _parse(rle, shape, where)


def rle_decode(rle: Any, shape: tuple[int, int], order: str = "F", where: str = "RLE") -> np.ndarray:
    """The (H, W) uint8 mask in {0, 1} of an RLE ("" or a missing cell: empty). The RLE is checked as check_rle
    does (a malformed one raises, naming `where`, rather than drawing a wrong mask). +1 at each start, -1 after each
    end, cumulative sum: no loop over pixels or runs."""
    _check_order(order)
    h, w = shape
    starts, lengths = _parse(rle, shape, where)
    delta = np.zeros(h * w + 1, np.int32)
    delta[starts - 1] += 1  # starts are distinct, and so are ends: plain fancy indexing adds correctly
    delta[starts - 1 + lengths] -= 1
    return np.cumsum(delta[:-1], dtype=np.int32).astype(np.uint8).reshape((h, w), order=order)


def rle_area(rle: Any, shape: tuple[int, int], where: str = "RLE") -> int:
    """Pixels in the mask of an RLE, from its run lengths (checked, not decoded)."""
    return int(_parse(rle, shape, where)[1].sum())


# --- the training masks -----------------------------------------------------------------------------------------------


def _path(cfg: Config, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else Path(cfg.data.dir) / p


def _rle_cols(cfg: Config) -> list[str] | None:
    """The wide format's columns (a list in data.rle_col); None for one column."""
    col = cfg.data.rle_col
    return None if isinstance(col, str) else [str(c) for c in col]


def _sort_classes(values: Sequence[str]) -> list[str]:
    """Numeric labels sort as numbers (2 before 10), the rest as strings; each keeps its text ('01' stays '01')."""
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def _mask_stem(image_id: str) -> str:
    """The mask file's name without `.png`: the id, less an image extension it ends with ('a.jpg' -> 'a')."""
    p = Path(image_id)
    return image_id[: -len(p.suffix)] if p.suffix.lower() in _IMAGE_EXTS else image_id


def _check_classes(cfg: Config, found: Sequence[str], source: str) -> list[str]:
    """data.mask_classes when set (every class found must be among them; a listed class never seen is an empty
    one), else the classes found, sorted."""
    if cfg.data.mask_classes is None:
        return _sort_classes(list(dict.fromkeys(found)))
    classes = [str(c) for c in cfg.data.mask_classes]
    if len(set(classes)) != len(classes):
        raise UserError(f"data.mask_classes={classes} lists a class twice")
    extra = [c for c in dict.fromkeys(found) if c not in classes]
    if extra:
        raise UserError(f"{source} holds the class {extra[0]!r}, which data.mask_classes={classes} does not list")
    return classes


@dataclass
class MaskSource:
    """The training masks of the images of `image_table`, in its row order: `read(i, shape)` -> uint8 (H, W, C).

    RLE sources keep, per image, its (class index, RLE, where) entries; PNG sources the mask files. `shape` is the
    image's own (H, W) as decoded from its file: RLE pixel numbers only mean something for that size, and a PNG
    mask must be that size."""

    classes: list[str]
    ids: list[str]
    kind: str  # rle | png_index | png_per_class
    order: str = "F"
    entries: list[list[tuple[int, str, str]]] = field(default_factory=list)  # rle: per image (class, rle, where)
    files: list[list[tuple[int, Path]]] = field(default_factory=list)  # png: per image (class index, file)
    index_values: bool = True  # png_index: pixel value k = class k; False: one class, any nonzero value

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, i: int, shape: tuple[int, int]) -> np.ndarray:
        h, w = int(shape[0]), int(shape[1])
        out = np.zeros((h, w, len(self.classes)), np.uint8)
        if self.kind == "rle":
            for c, rle, where in self.entries[i]:
                out[..., c] |= rle_decode(rle, (h, w), self.order, where)
            return out
        for c, path in self.files[i]:
            values = _read_png(path, (h, w))
            if self.kind == "png_per_class":
                out[..., c] = values != 0
            elif not self.index_values:
                out[..., 0] = values != 0
            else:
                top = int(values.max(initial=0))
                if top > len(self.classes):
                    raise UserError(
                        f"{path}: pixel value {top} but {len(self.classes)} classes {self.classes}; an index mask "
                        "holds 0 (background) and 1..C (data.mask_classes in order)"
                    )
                # one-hot without a background channel: value k -> channel k - 1
                out[...] = values[..., None] == np.arange(1, len(self.classes) + 1, dtype=values.dtype)
        return out

    def areas(self, i: int, shape: tuple[int, int]) -> np.ndarray:
        """(C,) mask pixels per class of image i. RLE: summed run lengths, nothing decoded (several rows of one
        class add up: exact as long as they do not overlap, as instance rows do not); PNG: the mask is read."""
        if self.kind != "rle":
            return self.read(i, shape).reshape(-1, len(self.classes)).sum(0, dtype=np.int64)
        out = np.zeros(len(self.classes), np.int64)
        for c, rle, where in self.entries[i]:
            out[c] += rle_area(rle, shape, where)
        return out


def _read_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) values of a mask PNG (a palette PNG gives its indices), which must be the image's size."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if (h, w) != tuple(shape):
                raise UserError(
                    f"{path}: mask is {w}x{h} pixels but its image is {shape[1]}x{shape[0]} (width x height); a mask "
                    "must be its image's size"
                )
            values = np.asarray(img.convert("L") if img.mode in ("RGB", "RGBA", "LA", "1") else img)
    except OSError as e:
        raise UserError(f"{path}: not a readable mask image ({e})") from None
    return values if values.ndim == 2 else values[..., 0]


def image_table(cfg: Config, df: pd.DataFrame) -> pd.DataFrame:
    """One row per image, in first-seen order, for the rest of the pipeline (folds, the datasets): in the long RLE
    format train.csv holds several rows per image; their first row stands for the image, less the mask columns."""
    id_col = cfg.data.id_col
    if id_col not in df.columns:
        raise UserError(f"{cfg.data.train_csv}: column '{id_col}' (data.id_col) not found; columns are {list(df)}")
    drop = [c for c in (cfg.data.class_col, *(_rle_cols(cfg) or [cfg.data.rle_col])) if c in df.columns]
    if cfg.data.train_masks:
        drop = []  # PNG masks: the table has no mask columns
    return df.drop_duplicates(id_col).drop(columns=drop).reset_index(drop=True)


def mask_source(cfg: Config, train_df: pd.DataFrame) -> MaskSource:
    """The training masks of `train_df` (train.csv as read, any of the formats), images in `image_table`'s order."""
    ids = [str(v) for v in pd.unique(train_df[cfg.data.id_col])]
    if cfg.data.train_masks:
        return _png_source(cfg, ids)
    _check_order(cfg.data.rle_order)
    where = cfg.data.train_csv
    cols = _rle_cols(cfg)
    needed = [*(cols or [cfg.data.rle_col]), *([cfg.data.class_col] if cfg.data.class_col else [])]
    missing = [c for c in needed if c not in train_df.columns]
    if missing:
        raise UserError(
            f"{where}: mask column(s) {missing} not found (data.rle_col, data.class_col); columns are "
            f"{list(train_df.columns)}"
        )
    if cols is not None and cfg.data.class_col:
        raise UserError(
            f"data.rle_col={cols} (one column per class) and data.class_col={cfg.data.class_col!r} (one row per "
            "class) exclude each other; set one"
        )
    row_of = {v: k for k, v in enumerate(ids)}
    entries: list[list[tuple[int, str, str]]] = [[] for _ in ids]
    image_ids = train_df[cfg.data.id_col].astype(str).to_numpy()
    rows = np.arange(len(train_df)) + 2  # as an editor counts them: the header is line 1

    def at(r: int, image_id: str, cls: str) -> str:
        return f"{where} row {r} (id {image_id}, class {cls})"

    if cols is not None:  # wide: a column per class
        classes = _check_classes(cfg, cols, f"{where}: data.rle_col")
        for col in cols:
            c = classes.index(col)
            for image_id, rle, r in zip(image_ids, train_df[col].to_numpy(), rows, strict=True):
                if _rle_text(rle).strip():
                    entries[row_of[image_id]].append((c, _rle_text(rle), at(r, image_id, col)))
    elif cfg.data.class_col is None:  # one column, one class
        listed = cfg.data.mask_classes
        if listed is not None and len(listed) != 1:
            raise UserError(
                f"data.mask_classes lists {len(listed)} classes but {where} has one mask column "
                f"('{cfg.data.rle_col}') and no data.class_col; set data.class_col to the column of each row's class"
            )
        classes = [str(listed[0]) if listed else str(cfg.data.rle_col)]
        for image_id, rle, r in zip(image_ids, train_df[cfg.data.rle_col].to_numpy(), rows, strict=True):
            if _rle_text(rle).strip():
                entries[row_of[image_id]].append((0, _rle_text(rle), at(r, image_id, classes[0])))
    else:  # long: a row per (image, class)
        col = cfg.data.class_col
        labels = train_df[col].map(_rle_text).to_numpy()
        rles = train_df[cfg.data.rle_col].map(_rle_text).to_numpy()
        has_mask = np.array([bool(s.strip()) for s in rles], bool)
        unnamed = np.flatnonzero((labels == "") & has_mask)
        if unnamed.size:
            r = rows[unnamed[0]]
            raise UserError(f"{where}: column '{col}' (data.class_col) is empty at row {r}, which holds a mask")
        found = [v for v in pd.unique(labels) if v != ""]  # an image with no mask at all may have one empty row
        classes = _check_classes(cfg, found, f"{where}: column '{col}'")
        index = {c: k for k, c in enumerate(classes)}
        for k in np.flatnonzero(has_mask):
            entries[row_of[image_ids[k]]].append((index[labels[k]], rles[k], at(rows[k], image_ids[k], labels[k])))
    return MaskSource(classes, ids, "rle", order=cfg.data.rle_order, entries=entries)


def _png_source(cfg: Config, ids: list[str]) -> MaskSource:
    """Masks as PNG files. `<id>.png` for the first image means index masks for all; else `<id>_<class>.png`
    (the class is the text after the last underscore). Index masks without data.mask_classes are scanned once for
    their largest value (classes 1..max; only 0/255 or 0/1 in every mask: one class)."""
    folder = _path(cfg, cfg.data.train_masks)
    if not folder.is_dir():
        raise UserError(f"{folder}: mask folder not found (config key data.train_masks)")
    names = {e.name for e in os.scandir(folder) if e.name.lower().endswith(MASK_EXT)}
    stems = [_mask_stem(i) for i in ids]
    if f"{stems[0]}{MASK_EXT}" in names:
        missing = [f"{s}{MASK_EXT}" for s in stems if f"{s}{MASK_EXT}" not in names]
        if missing:
            raise UserError(
                f"{folder}: {len(missing)} of {len(ids)} masks not found, first: {missing[:3]} (index masks are "
                f"<id>{MASK_EXT}, as {stems[0]}{MASK_EXT} is; check data.train_masks)"
            )
        files = [[(0, folder / f"{s}{MASK_EXT}")] for s in stems]
        index_values = True
        if cfg.data.mask_classes is not None:
            classes = _check_classes(cfg, [], str(folder))
            index_values = len(classes) > 1
        else:
            seen: set[int] = set()
            for ((_, path),) in files:
                with Image.open(path) as img:
                    seen |= set(np.unique(np.asarray(img)).tolist())
            if seen <= {0, 1} or seen <= {0, 255}:
                classes, index_values = ["1"], False
            else:
                classes = [str(k) for k in range(1, max(seen) + 1)]
        return MaskSource(classes, ids, "png_index", files=files, index_values=index_values)
    per_stem: dict[str, list[tuple[str, str]]] = {s: [] for s in stems}
    for name in names:
        stem, sep, cls = name[: -len(MASK_EXT)].rpartition("_")
        if sep and stem in per_stem:
            per_stem[stem].append((cls, name))
    found = [cls for files in per_stem.values() for cls, _ in files]
    if not found:
        raise UserError(
            f"{folder}: no mask of the {len(ids)} training images, e.g. {stems[0]}{MASK_EXT} or {stems[0]}_<class>"
            f"{MASK_EXT} (check data.train_masks and data.id_col)"
        )
    classes = _check_classes(cfg, found, f"{folder}: mask file names")
    index = {c: k for k, c in enumerate(classes)}
    files = [sorted((index[cls], folder / name) for cls, name in per_stem[s]) for s in stems]
    return MaskSource(classes, ids, "png_per_class", files=files)


def area_fractions(source: MaskSource, shapes: Sequence[tuple[int, int]]) -> np.ndarray:
    """(N, C) float32: each image's mask area per class / its image area (fold stratification, the pixel prior).
    `shapes`: each image's (H, W). RLE: run lengths summed, nothing decoded (10k images in well under a second)."""
    if len(shapes) != len(source):
        raise ValueError(f"{len(shapes)} shapes for {len(source)} images")
    out = np.zeros((len(source), len(source.classes)), np.float32)
    for i, shape in enumerate(shapes):
        out[i] = source.areas(i, shape) / float(shape[0] * shape[1])
    return out


def training_masks(cfg: Config, ids: list[str] | None = None) -> MaskSource:
    """The masks of train_csv (read here, any of the formats), checked to be those of the images `ids` in that
    order when given (the rows a Problem or a split holds)."""
    source = mask_source(cfg, read_long_table(_path(cfg, cfg.data.train_csv), cfg.data.id_col, cfg.data.encoding))
    if ids is not None and source.ids != [str(i) for i in ids]:
        raise UserError(f"{cfg.data.train_csv}: its images are not those of the split ({len(source.ids)} vs "
                        f"{len(ids)}); rerun `folds --force`")  # fmt: skip
    return source
