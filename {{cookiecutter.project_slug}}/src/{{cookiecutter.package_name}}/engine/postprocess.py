"""Segmentation post-processing: probability maps -> the masks a submission holds, and its parameters tuned on OOF.

A post-processing is a plain dict (it is written into the run folder as JSON by the stage that tunes it):

    {"exclusive": False, "classes": [{"threshold": 0.5, "min_area": 0.0, "empty_below": 0.0}, ...]}

one entry per class, in the run's class order. Per class: `threshold` on the probability; `min_area` drops connected
components (8-connected) smaller than this share of the image area (0 = off); `empty_below` empties the whole mask
when its largest probability is below it (0 = off): Kaggle's per-image Dice gives an empty truth 1 only for an empty
prediction, so a few confident-looking pixels on an empty image cost a whole image x class pair. `exclusive`
(data.mask_mode multiclass): each pixel keeps only the most probable class among those above their threshold.

min_area is a share of the image, not pixels, so one tuned value holds at any resolution: it is tuned on OOF at the
training size and applied to test predictions at the original size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from ..core.errors import UserError
from ..modeling.metrics import get_metric, score

THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.10, 0.901, 0.05), 2))
MIN_AREAS = (0.0, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2e-2)  # shares of the image area
EMPTY_BELOW = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Components are 8-connected within one image (cv2.connectedComponents' default); the empty planes before and after
# keep the images of an (N, H, W) stack apart, so one `ndimage.label` call labels a whole class.
_STACK = np.zeros((3, 3, 3), dtype=bool)
_STACK[1] = True

PostProcess = dict[str, Any]


def default(n_classes: int, exclusive: bool = False) -> PostProcess:
    """The untuned post-processing: threshold 0.5 (the metrics' own), nothing else."""
    return {"exclusive": bool(exclusive), "classes": [_entry(0.5, 0.0, 0.0) for _ in range(n_classes)]}


def _entry(threshold: float, min_area: float, empty_below: float) -> dict[str, float]:
    return {"threshold": float(threshold), "min_area": float(min_area), "empty_below": float(empty_below)}


def as_probs(probs: Any) -> np.ndarray:
    """(N, C, H, W) probabilities as float32: stored uint8 predictions (round(p * 255)) are divided by 255."""
    p = np.asarray(probs)
    if p.ndim != 4:
        raise UserError(f"segmentation predictions must be (N, C, H, W) probabilities, got shape {p.shape}")
    if p.dtype == np.uint8:
        return p.astype(np.float32) / 255.0
    return p.astype(np.float32, copy=False)


def _check(pp: PostProcess, n_classes: int) -> list[dict[str, float]]:
    classes = pp["classes"]
    if len(classes) != n_classes:
        raise UserError(f"post-processing has {len(classes)} classes, the predictions {n_classes}")
    return classes


def threshold_masks(p: np.ndarray, thresholds: Any, exclusive: bool) -> np.ndarray:
    """p >= threshold per class, as bool (N, C, H, W); exclusive: a pixel keeps only its most probable class among
    those above their threshold (the lower class id on a tie)."""
    above = p >= np.asarray(thresholds, dtype=np.float32).reshape(1, -1, 1, 1)
    if not exclusive:
        return above
    # A running maximum over the few classes: argmax along axis 1 of an (N, C, H, W) array is several times slower.
    best, winner = np.full(p[:, 0].shape, -1.0, np.float32), np.zeros(p[:, 0].shape, np.int8)
    for k in range(p.shape[1]):
        wins = above[:, k] & (p[:, k] > best)  # strictly: a tie keeps the lower class id
        best, winner = np.where(wins, p[:, k], best), np.where(wins, np.int8(k), winner)
    return above & (np.arange(p.shape[1]).reshape(1, -1, 1, 1) == winner[:, None])


def component_sizes(masks: np.ndarray) -> np.ndarray:
    """For a bool (N, H, W) stack: each pixel's 8-connected component size within its image (0 off the mask)."""
    labels, _ = ndimage.label(masks, structure=_STACK)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return sizes[labels]


def apply(probs: Any, pp: PostProcess) -> np.ndarray:
    """Probabilities (N, C, H, W) (float, or uint8 = p * 255) -> uint8 masks (N, C, H, W): threshold, exclusivity,
    components smaller than min_area * H * W removed, masks whose maximum is below empty_below emptied."""
    p = as_probs(probs)
    classes = _check(pp, p.shape[1])
    masks = threshold_masks(p, [c["threshold"] for c in classes], pp["exclusive"])
    area = p.shape[2] * p.shape[3]
    for k, c in enumerate(classes):
        if c["min_area"] > 0:
            masks[:, k] &= component_sizes(masks[:, k]) >= c["min_area"] * area
        if c["empty_below"] > 0:
            masks[p[:, k].max(axis=(1, 2)) < c["empty_below"], k] = False
    return masks.view(np.uint8)


def tune(probs: Any, truth: Any, metric_name: str, exclusive: bool = False) -> tuple[PostProcess, float, float]:
    """Post-processing tuned on OOF for `metric_name`: (pp, score of the untuned default, score after).

    Coordinate search, one grid at a time, each value kept only if it scores strictly better (so ties keep the
    simpler, earlier value and the result never scores below the default): the thresholds of every class first
    (they interact when classes are exclusive), then per class min_area, then empty_below. These two act on one
    channel after exclusivity, so only that channel is scored, which picks the same values as scoring every channel
    for the segmentation metrics (means over classes, or over image x class pairs); a class's components are labelled
    once for all the min_area candidates. Without exclusivity the thresholds are scored per channel too."""
    p, y = as_probs(probs), np.asarray(truth)
    if y.shape != p.shape:
        raise UserError(f"post-processing: masks {y.shape} and predictions {p.shape} differ in shape")
    metric = get_metric(metric_name)
    n_classes, (h, w) = p.shape[1], p.shape[2:]

    # Masks are scored as 0/1 uint8 views of the bool masks (no float copy per candidate): the metrics threshold at
    # 0.5, so they score exactly as the 0./1. floats of the convention.
    def scored(masks: np.ndarray) -> float:  # every channel
        return score(metric_name, y, masks.view(np.uint8), "segmentation")

    def scored_channel(mask: np.ndarray, k: int) -> float:  # one class's (N, H, W) mask against its truth
        return score(metric_name, y[:, k : k + 1], mask[:, None].view(np.uint8), "segmentation")

    pp = default(n_classes, exclusive)
    before = scored(apply(p, pp))
    classes = pp["classes"]

    def search(key: str, k: int, grid: tuple[float, ...], evaluate: Callable[[float], float]) -> None:
        best_value, best = classes[k][key], evaluate(classes[k][key])
        for value in grid:
            if value != best_value and metric.better(s := evaluate(value), best):
                best_value, best = value, s
        classes[k][key] = float(best_value)

    for k in range(n_classes):
        by_threshold = (
            _exclusive_scorer(p, classes, k, scored) if exclusive else (lambda t, k=k: scored_channel(p[:, k] >= t, k))
        )
        search("threshold", k, THRESHOLDS, by_threshold)

    base = threshold_masks(p, [c["threshold"] for c in classes], exclusive)
    for k in range(n_classes):
        channel = base[:, k]
        sizes = component_sizes(channel)
        peak = p[:, k].max(axis=(1, 2))

        def kept(min_area: float, channel: np.ndarray = channel, sizes: np.ndarray = sizes) -> np.ndarray:
            return channel & (sizes >= min_area * h * w) if min_area > 0 else channel

        def by_area(a: float, k: int = k, kept: Callable[[float], np.ndarray] = kept) -> float:
            return scored_channel(kept(a), k)

        search("min_area", k, MIN_AREAS, by_area)
        area_mask = kept(classes[k]["min_area"])

        def by_peak(e: float, k: int = k, area_mask: np.ndarray = area_mask, peak: np.ndarray = peak) -> float:
            return scored_channel(area_mask & (peak >= e)[:, None, None] if e > 0 else area_mask, k)

        search("empty_below", k, EMPTY_BELOW, by_peak)
    return pp, before, scored(apply(p, pp))


def _exclusive_scorer(
    p: np.ndarray, classes: list[dict[str, float]], k: int, scored: Callable[[np.ndarray], float]
) -> Callable[[float], float]:
    """t -> the score of exclusive masks with class k at threshold t and the others at theirs. What the other classes
    make without k (their masks, the best probability and class at each pixel) is computed once, so a candidate costs
    a few operations per class instead of a new exclusivity over the whole array."""
    cut = [c["threshold"] for c in classes]
    cut[k] = np.inf  # class k never a candidate
    others = threshold_masks(p, cut, exclusive=True)
    held = others.any(axis=1)
    best = np.where(held, (p * others).max(axis=1), -1.0)
    winner = others.argmax(axis=1)
    masks = others.copy()

    def by_threshold(t: float) -> float:
        pk = p[:, k]
        wins = (pk >= t) & ((pk > best) | ((pk == best) & (k < winner)))  # a tie keeps the lower class id
        np.logical_and(others, ~wins[:, None], out=masks)
        masks[:, k] = wins
        return scored(masks)

    return by_threshold
