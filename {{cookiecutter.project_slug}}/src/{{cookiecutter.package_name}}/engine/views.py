"""`tta.views: auto`: each candidate view predicts every fold's validation rows once; the views are chosen greedily on
those OOF predictions (modeling/tta.greedy_views: a view is kept only when it raises the OOF score), recorded in
tta_auto.json with the checkpoints' sha256 (a retrained fold or another candidate list chooses again), and read back
by every later stage that predicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..config import Config, metric_name
from ..core.runs import (
    TTAChoice,
    checksum,
)
from ..data.problem import (
    build_fold_data,
    load_problem,
    save_predictions,
)
from ..modeling import metrics, tta
from .inference import (
    fold_models,
    fold_predictors,
    folds_source,
    merge_views,
    predict_views,
)


def checkpoint_digests(cfg: Config, folds: list[int]) -> dict[str, str]:
    """Content hashes, not times: a packaged run (Kaggle dataset) keeps its choice although its files are copies."""
    return {str(k): checksum(cfg.run.fold(k).best) for k in folds}


def _candidates(cfg: Config) -> list[str]:
    """identity first, then tta.candidates (empty: tta.default_candidates), each once."""
    listed = cfg.tta.candidates or tta.default_candidates()
    return ["identity", *[v for v in dict.fromkeys(listed) if v != "identity"]]


def read_choice(cfg: Config) -> TTAChoice | None:
    """tta_auto.json if it was chosen among the configured candidates and merge by the current checkpoints."""
    if not cfg.run.tta_auto.is_file():
        return None
    choice = cfg.run.read_tta_choice()
    same = choice.candidates == _candidates(cfg) and choice.merge == cfg.tta.merge
    return choice if same and choice.checkpoints == checkpoint_digests(cfg, cfg.run.finished_folds()) else None


def with_views(cfg: Config, views: Sequence[str]) -> Config:
    return dataclasses.replace(cfg, tta=dataclasses.replace(cfg.tta, views=list(views)))


def resolve_views(cfg: Config, choose: bool = True) -> Config | None:
    """`cfg` with concrete TTA views: as configured, or (tta.views: auto) those chosen on OOF, choosing them now if
    no valid choice exists and `choose` (else None)."""
    if list(cfg.tta.views) != [tta.AUTO]:
        return cfg
    choice = read_choice(cfg) or (choose_views(cfg) if choose else None)
    return None if choice is None else with_views(cfg, choice.views)


def choose_views(cfg: Config) -> TTAChoice:
    """Greedy forward selection of TTA views on OOF (see the module's doc) -> tta_auto.json; the chosen views' merged
    OOF predictions become oof_tta.csv, as `predict_oof_tta` would write them."""
    run, folds, candidates = cfg.run, fold_models(cfg), _candidates(cfg)
    problem = load_problem(cfg)
    load, feed = fold_predictors(cfg, len(problem.classes))
    ids, fold_col, per_view = [], [], {v: [] for v in candidates}
    for k in folds:
        data = build_fold_data(cfg, problem, k)
        loader = feed(data.valid)
        for v, pred in predict_views(load(k), loader, cfg.task, candidates, f"oof views {k}").items():
            per_view[v].append(pred)
        ids += data.valid_ids
        fold_col += [k] * len(data.valid_ids)
    preds = {v: np.concatenate(parts) for v, parts in per_view.items()}
    position = {i: n for n, i in enumerate(problem.ids)}
    rows = np.array([position[i] for i in ids])
    first = next(iter(preds.values()))  # segmentation: masks scored at the maps' size
    y = problem.truth(rows, first.shape[-1]) if first.ndim == 4 else problem.y[rows]
    metric = metrics.get_metric(metric_name(cfg))

    def score(views: list[str]) -> float:  # the OOF score of these views merged as predict merges them
        return metrics.score(metric.name, y, merge_views([preds[v] for v in views], cfg.task, cfg.tta.merge), cfg.task)

    def gain(pred: np.ndarray) -> float:
        return metric.gain(metrics.score(metric.name, y, pred, cfg.task))

    chosen, _ = tta.greedy_views(preds, gain, "mean" if cfg.task == "regression" else cfg.tta.merge)
    scores = [score(chosen[: i + 1]) for i in range(len(chosen))]  # one per step: the views chosen so far
    choice = TTAChoice(
        candidates=candidates,
        merge=cfg.tta.merge,
        metric=metric.name,
        views=chosen,
        identity=scores[0],
        chosen=scores[-1],
        steps=[{"view": v, "score": s} for v, s in zip(chosen, scores, strict=True)],
        checkpoints=checkpoint_digests(cfg, folds),
    )
    resolved = with_views(cfg, chosen)
    merged = merge_views([preds[v] for v in chosen], cfg.task, cfg.tta.merge)
    save_predictions(run.oof_tta, ids, merged, problem.classes, cfg.data.id_col, np.asarray(fold_col),
                     folds_source(resolved, folds))  # fmt: skip
    run.write_tta_choice(choice)
    print(f"{cfg.exp}: TTA views chosen on OOF {chosen}: {metric.name} {choice.chosen:.5f} "
          f"(identity alone {choice.identity:.5f}; candidates {candidates})")  # fmt: skip
    return choice
