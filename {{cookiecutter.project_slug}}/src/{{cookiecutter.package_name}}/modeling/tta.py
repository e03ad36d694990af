"""Test-time augmentation: invertible views of an NCHW batch, and merging of the per-view probabilities.

A view has `apply(x)` (the augmented batch fed to the model) and `invert(y)` (maps a spatial output, e.g. a
segmentation map, back onto the original pixels; classification outputs are not spatial and need no inversion).
The eight dihedral views (D4) are exact permutations of pixels (rot90 / transpose swap H and W of a non-square
input, and their inverse swaps them back); `scale_<factor>` views (e.g. 'scale_0.875') are made on demand: the image
is resized bilinearly, a map is resized back by block averages where it shrinks by an integer factor (exact for a
nearest upscale) and bilinearly otherwise. Merging happens on probabilities, never on logits (a geometric mean of
logits is undefined for negative values: ttach's NaNs).

`tta.views: auto` chooses the views on OOF predictions with `greedy_views`: start from the identity, add the
candidate that raises the merged OOF score most, stop when none raises it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import UserError
from ..core.registry import Registry

Size = tuple[int, int]


@dataclass(frozen=True)
class View:
    """`invert(y, size)`: size is the (H, W) of the original input; only resizing views need it."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, Size | None], torch.Tensor]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def invert(self, y: torch.Tensor, size: Size | None = None) -> torch.Tensor:
        return self.backward(y, size)


VIEWS: Registry[View] = Registry("TTA view")


def _add(name: str, fwd: Callable[[torch.Tensor], torch.Tensor], inv: Callable[[torch.Tensor], torch.Tensor]) -> None:
    VIEWS.register(name, View(name, fwd, lambda y, size=None: inv(y)))


def _rot(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    # torch.rot90 turns from the H axis towards the W axis: counter-clockwise as displayed, like numpy.rot90.
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _transverse(x: torch.Tensor) -> torch.Tensor:
    # Reflection about the anti-diagonal: out[i, j] = x[W-1-j, H-1-i]. Its own inverse.
    return x.transpose(-2, -1).flip(-2, -1)


_add("identity", lambda x: x, lambda y: y)
_add("hflip", lambda x: x.flip(-1), lambda y: y.flip(-1))
_add("vflip", lambda x: x.flip(-2), lambda y: y.flip(-2))
_add("transpose", lambda x: x.transpose(-2, -1), lambda y: y.transpose(-2, -1))
_add("rot90", _rot(1), _rot(-1))
_add("rot180", _rot(2), _rot(-2))
_add("rot270", _rot(3), _rot(-3))
_add("transverse", _transverse, _transverse)


def list_tta_views() -> list[str]:
    """The fixed views: the eight symmetries of the square (D4), exact pixel permutations. 'scale_<factor>' views
    are also accepted by get_view."""
    return VIEWS.names()


def _scale_view(name: str, factor: float) -> View:
    def fwd(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def inv(y: torch.Tensor, size: Size | None = None) -> torch.Tensor:
        if size is None:  # without the original size, undo the factor (exact when h * factor was an integer)
            h, w = y.shape[-2:]
            size = (max(1, round(h / factor)), max(1, round(w / factor)))
        return _resize_back(y, (int(size[0]), int(size[1])))

    return View(name, fwd, inv)


def _resize_back(y: torch.Tensor, size: Size) -> torch.Tensor:
    """A map back to `size`. Shrinking by an integer factor in both axes averages each k x k block ('area'): the
    exact inverse of a nearest-neighbour upscale, and every output pixel counts (bilinear without antialias reads 2
    of every k > 2 pixels and aliases a segmentation map). Any other size is resampled bilinearly."""
    (h, w), (th, tw) = y.shape[-2:], size
    if (h, w) == (th, tw):
        return y
    if h >= th and w >= tw and h % th == 0 and w % tw == 0:
        return F.adaptive_avg_pool2d(y, (th, tw))
    return F.interpolate(y, size=(th, tw), mode="bilinear", align_corners=False)


def get_view(name: str) -> View:
    """A fixed view by name, or a resizing view for 'scale_<factor>' (factor > 0, e.g. 'scale_1.125')."""
    if name in VIEWS or not name.startswith("scale_"):
        return VIEWS.get(name)
    try:
        factor = float(name.removeprefix("scale_"))
    except ValueError:
        factor = math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise UserError(f"TTA view {name!r}: expected 'scale_<factor>' with a factor > 0, e.g. 'scale_0.875'")
    return _scale_view(name, factor)


AUTO = "auto"  # tta.views: [auto] -> chosen on OOF among tta.candidates


def default_candidates() -> list[str]:
    """The eight symmetries of the square and two mild rescalings."""
    return [*list_tta_views(), "scale_0.9", "scale_1.1"]


# ----------------------------------------------------------------------------------------------- merging

MERGES = ("mean", "gmean", "max")


def merge(
    probs: Sequence[torch.Tensor | np.ndarray],
    how: str = "mean",
    normalize_rows: bool = False,
    eps: float = 1e-7,
) -> torch.Tensor | np.ndarray:
    """Merge per-view probabilities of identical shape into one array (a tensor if the first input is one).

    mean:  (1/V) sum_v p_v
    gmean: exp((1/V) sum_v log(max(p_v, eps))) -- the clamp keeps log(0) finite, so zeros give eps, never NaN
    max:   max_v p_v
    normalize_rows (multiclass only): divide each row by its sum over the last axis, since gmean and max of
    probability rows do not sum to 1. Binary / multilabel probabilities are independent: leave it off.
    """
    if how not in MERGES:
        raise UserError(f"config key 'tta.merge' is {how!r}; allowed: {', '.join(MERGES)}")
    if len(probs) == 0:
        raise ValueError("merge needs at least one array of probabilities")
    as_tensor = isinstance(probs[0], torch.Tensor)
    ts = [torch.as_tensor(p) for p in probs]
    if any(t.shape != ts[0].shape for t in ts):
        raise ValueError(f"merge needs arrays of one shape, got {[tuple(t.shape) for t in ts]}")
    dtype = torch.promote_types(ts[0].dtype, torch.float32)
    stack = torch.stack([t.to(device=ts[0].device, dtype=dtype) for t in ts])
    if how == "mean":
        out = stack.mean(0)
    elif how == "gmean":
        out = stack.clamp_min(eps).log().mean(0).exp()
    else:
        out = stack.amax(0)
    if normalize_rows:
        out = out / out.sum(-1, keepdim=True).clamp_min(eps)
    return out if as_tensor else out.cpu().numpy()


# ----------------------------------------------------------------------------------------------- choosing views


def greedy_views(
    preds: dict[str, np.ndarray], gain: Callable[[np.ndarray], float], how: str = "mean", start: str = "identity"
) -> tuple[list[str], list[dict]]:
    """Forward selection of views on OOF predictions. `preds`: each candidate view's (activated) predictions of the
    same rows; `gain(merged)`: larger is better. From `start`, add the view whose merge with those chosen raises
    the gain most; stop when none raises it (so the result never scores below `start` alone).
    Returns the chosen views in the order they were added, and each step as {"view": name, "gain": value}."""
    chosen, best = [start], gain(preds[start])
    steps = [{"view": start, "gain": best}]
    while True:
        trials = {v: gain(merge([preds[c] for c in (*chosen, v)], how)) for v in preds if v not in chosen}
        if not trials:
            break
        view = max(trials, key=trials.__getitem__)
        if not trials[view] > best + 1e-12:
            break
        chosen.append(view)
        best = trials[view]
        steps.append({"view": view, "gain": best})
    return chosen, steps
