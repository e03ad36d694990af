"""How much an OOF score moves by chance: bootstrap intervals (`lb`, `final-two`).

The OOF rows are resampled with replacement (`lb.draws` times, seeded) and scored with the run's metric:
- the CV interval: resamples of every OOF row, the spread of the CV itself;
- the public interval: resamples of as many rows as the public leaderboard holds (`lb.public_rows`, or
  `lb.public_share` of the test rows), the range a public score falls in by chance when the CV is right: the public
  rows are a fresh sample of the same population, as small as they are.
Intervals are centred on the score they are about (the basic bootstrap: the score plus the resamples' deviations
from the full score), so a CV with decisions applied (thresholds) gets the spread of its raw OOF predictions.
`paired_gap` resamples two runs' OOF rows together: the interval of their score difference (a model correlated with
another differs from it less than their separate intervals suggest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.tasks import SINGLE_OUTPUT_TASKS
from ..modeling import metrics


@dataclass(frozen=True)
class Interval:
    """`score` and its [low, high] interval from `draws` resamples of `rows` OOF rows."""

    score: float
    low: float
    high: float
    rows: int
    draws: int

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _format(pred: np.ndarray, task: str) -> np.ndarray:
    return pred[:, 0] if task in SINGLE_OUTPUT_TASKS and pred.ndim == 2 else pred


def _score(metric: str, y: np.ndarray, pred: np.ndarray, task: str) -> float:
    try:
        return metrics.score(metric, y, _format(pred, task), task)
    except ValueError:  # a resample with one class only (AUC): not a score, left out
        return float("nan")


def resample_scores(metric: str, task: str, y: np.ndarray, preds: list[np.ndarray], rows: int, draws: int,
                    seed: int) -> np.ndarray:  # fmt: skip
    """(draws, len(preds)) scores of `preds` on the same `draws` resamples of `rows` rows (with replacement). The
    inputs are checked once, on every row (metrics.score); each resample of checked rows goes to the metric itself."""
    for p in preds:
        _score(metric, y, p, task)  # one line naming a bad shape or label, before the loop
    fn = metrics.get_metric(metric).fn
    yt, yps = np.asarray(y), [np.asarray(_format(p, task), dtype=np.float64) for p in preds]
    rng = np.random.default_rng(seed)
    out = np.empty((draws, len(preds)))
    for i in range(draws):
        idx = rng.integers(0, len(yt), rows)
        out[i] = [_fn(fn, yt[idx], p[idx], task) for p in yps]
    return out


def _fn(fn, y: np.ndarray, pred: np.ndarray, task: str) -> float:
    try:
        return float(fn(y, pred, task))
    except ValueError:  # a resample with one class only (AUC): not a score, left out
        return float("nan")


def interval(metric: str, task: str, y: np.ndarray, pred: np.ndarray, rows: int | None = None, draws: int = 1000,
             confidence: float = 0.95, seed: int = 0, center: float | None = None) -> Interval:  # fmt: skip
    """The `confidence` interval of the score of `pred` on `rows` rows drawn from these OOF rows (default: as many as
    there are: the CV's interval), centred on `center` (default the full score)."""
    rows = len(y) if rows is None else int(rows)
    full = _score(metric, y, pred, task)
    center = full if center is None else center
    scores = resample_scores(metric, task, y, [pred], rows, draws, seed)[:, 0]
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(scores - full, [tail, 100 - tail])
    return Interval(float(center), float(center + low), float(center + high), rows, draws)


def paired_gap(metric: str, task: str, y: np.ndarray, a: np.ndarray, b: np.ndarray, draws: int = 1000,
               confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """The `confidence` interval of gain(a) - gain(b) (larger = a better, whatever the metric's direction) over
    resamples of every row taken by both runs alike."""
    m = metrics.get_metric(metric)
    scores = resample_scores(metric, task, y, [a, b], len(y), draws, seed)
    gaps = np.array([m.gain(s) for s in scores[:, 0]]) - np.array([m.gain(s) for s in scores[:, 1]])
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(gaps, [tail, 100 - tail])
    return float(low), float(high)


def public_rows(n_test: int, configured: int, share: float) -> int:
    """The public leaderboard's row count: `configured` (lb.public_rows) or `share` of the test rows, at least 1."""
    return int(configured) if configured > 0 else max(1, round(share * n_test))
