"""Segmentation post-processing: each step of `apply` on hand-made maps, and `tune` on synthetic OOF."""

from __future__ import annotations

import numpy as np
import pytest

from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.engine import postprocess
from {{ cookiecutter.package_name }}.modeling import metrics


def pp_of(*classes: tuple[float, float, float], exclusive: bool = False) -> dict:
    keys = ("threshold", "min_area", "empty_below")
    return {"exclusive": exclusive, "classes": [dict(zip(keys, c, strict=True)) for c in classes]}


def blobs() -> np.ndarray:
    """One 10 x 10 image, one class: a 3 x 3 blob (9 px) at 0.8 and a 2 x 2 blob (4 px) at 0.6, the rest 0.1."""
    p = np.full((1, 1, 10, 10), 0.1, np.float32)
    p[0, 0, 1:4, 1:4] = 0.8
    p[0, 0, 6:8, 6:8] = 0.6
    return p


def test_threshold_only():
    masks = postprocess.apply(blobs(), pp_of((0.5, 0.0, 0.0)))
    assert masks.dtype == np.uint8 and masks.shape == (1, 1, 10, 10)
    assert masks.sum() == 13
    assert postprocess.apply(blobs(), pp_of((0.7, 0.0, 0.0))).sum() == 9
    assert postprocess.apply(blobs(), postprocess.default(1)).sum() == 13


def test_min_area_is_a_share_of_the_image():
    # 100 px: a share of 0.05 is 5 px, so the 4-px blob goes and the 9-px one stays; 0.04 = 4 px keeps both
    assert postprocess.apply(blobs(), pp_of((0.5, 0.05, 0.0))).sum() == 9
    assert postprocess.apply(blobs(), pp_of((0.5, 0.04, 0.0))).sum() == 13
    assert postprocess.apply(blobs(), pp_of((0.5, 0.1, 0.0))).sum() == 0
    # the same share at twice the resolution removes the same blob
    big = blobs().repeat(2, axis=2).repeat(2, axis=3)
    assert postprocess.apply(big, pp_of((0.5, 0.05, 0.0))).sum() == 36


def test_components_are_eight_connected_and_per_image():
    p = np.zeros((2, 1, 6, 6), np.float32)
    p[0, 0, [0, 1, 2], [0, 1, 2]] = 0.9  # a diagonal line of 3 px: one component with 8-connectivity
    p[1, 0, 0, 0] = 0.9  # one pixel in the next image, right "below" the first: not connected to it
    masks = postprocess.apply(p, pp_of((0.5, 3 / 36, 0.0)))
    assert masks[0].sum() == 3 and masks[1].sum() == 0


def test_empty_below():
    p = blobs()
    assert postprocess.apply(p, pp_of((0.5, 0.0, 0.85))).sum() == 0  # max 0.8 < 0.85: all of it goes
    assert postprocess.apply(p, pp_of((0.5, 0.0, 0.8))).sum() == 13  # max 0.8 is not below 0.8


def test_exclusive_keeps_the_most_probable_class_above_its_threshold():
    p = np.zeros((1, 3, 1, 4), np.float32)
    p[0, :, 0, 0] = [0.6, 0.9, 0.0]  # class 1 wins
    p[0, :, 0, 1] = [0.9, 0.95, 0.0]  # class 1 wins (with threshold 0.97 it is not a candidate: class 0)
    p[0, :, 0, 2] = [0.7, 0.7, 0.7]  # a tie: the lower class id
    p[0, :, 0, 3] = [0.2, 0.3, 0.4]  # none above
    pp = pp_of((0.5, 0, 0), (0.97, 0, 0), (0.5, 0, 0), exclusive=True)
    masks = postprocess.apply(p, pp)  # class 1 is never above 0.97: class 0 wins wherever it is above 0.5
    assert masks[0, :, 0].T.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]]
    pp["classes"][1]["threshold"] = 0.5
    masks = postprocess.apply(p, pp)
    assert masks[0, :, 0].T.tolist() == [[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert (postprocess.apply(p, {**pp, "exclusive": False}).sum(1) > 1).any()  # without it, pixels overlap


def test_uint8_predictions_are_read_as_p_times_255():
    p = blobs()
    stored = np.rint(p * 255).astype(np.uint8)
    pp = pp_of((0.5, 0.05, 0.0))
    assert np.array_equal(postprocess.apply(stored, pp), postprocess.apply(p, pp))


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match=r"\(N, C, H, W\)"):
        postprocess.apply(np.zeros((2, 4, 4)), postprocess.default(1))
    with pytest.raises(UserError, match="2 classes, the predictions 1"):
        postprocess.apply(blobs(), postprocess.default(2))


# --- tuning ----------------------------------------------------------------------------------------------------------


def noisy_oof(n: int = 120, size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes: square objects in about half the images, probabilities too low inside (class 0: the best
    threshold is below 0.5), speckle noise outside (small false components), and some images with a faint glow and
    no object (empty_below's case)."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 3, size, size), np.uint8)
    p = rng.uniform(0, 0.3, (n, 3, size, size)).astype(np.float32)
    for i in range(n):
        for c in range(3):
            if rng.random() < 0.5:
                s = int(rng.integers(4, 10))
                r, q = rng.integers(0, size - s, 2)
                y[i, c, r : r + s, q : q + s] = 1
                p[i, c, r : r + s, q : q + s] = rng.uniform(0.3, 0.9 if c else 0.6, (s, s))
            speckle = rng.random((size, size)) < 0.01
            p[i, c][speckle] = rng.uniform(0.5, 0.99, speckle.sum())
    return y, p


@pytest.mark.parametrize("metric", ["dice", "iou", "miou"])
@pytest.mark.parametrize("exclusive", [False, True])
def test_tune_never_scores_below_the_default(metric, exclusive):
    y, p = noisy_oof()
    pp, before, after = postprocess.tune(p, y, metric, exclusive=exclusive)
    untuned_masks = postprocess.apply(p, postprocess.default(3, exclusive)).astype(float)
    untuned = metrics.score(metric, y, untuned_masks, "segmentation")
    assert before == pytest.approx(untuned)
    assert after >= before
    got = metrics.score(metric, y, postprocess.apply(p, pp).astype(np.float32), "segmentation")
    assert after == pytest.approx(got)  # the score it reports is the score of what apply makes
    assert pp["exclusive"] == exclusive and len(pp["classes"]) == 3
    if metric == "dice" and not exclusive:
        assert after > before + 0.05  # speckle and faint maps leave plenty to gain
        assert any(c["min_area"] > 0 for c in pp["classes"])


def test_tune_recovers_a_known_threshold():
    """Truth is p >= 0.35 exactly, on maps without small components: the only threshold that scores 1 is 0.35."""
    rng = np.random.default_rng(1)
    p = np.repeat(np.repeat(rng.uniform(0, 1, (40, 1, 6, 6)), 4, axis=2), 4, axis=3).astype(np.float32)
    y = (p >= 0.35).astype(np.uint8)
    pp, before, after = postprocess.tune(p, y, "dice")
    assert pp["classes"][0] == {"threshold": 0.35, "min_area": 0.0, "empty_below": 0.0}
    assert after == 1.0 > before


def test_tune_keeps_the_default_on_ties():
    """Perfect maps: every threshold scores 1, so nothing moves from the default."""
    y, _ = noisy_oof(n=10)
    pp, before, after = postprocess.tune(y.astype(np.float32), y, "dice")
    assert pp == postprocess.default(3) and before == after == 1.0


def test_tune_refuses_mismatched_shapes_and_other_tasks_metrics():
    y, p = noisy_oof(n=4)
    with pytest.raises(UserError, match="differ in shape"):
        postprocess.tune(p[:, :2], y, "dice")
    with pytest.raises(UserError, match="not defined for task 'segmentation'"):
        postprocess.tune(p, y, "accuracy")
