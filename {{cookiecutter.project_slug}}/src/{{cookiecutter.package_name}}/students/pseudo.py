"""Pseudo-labelling in rounds, leak-free per fold (noisy student).

    pseudo -c configs/exp002.yaml --teacher exp001        (an experiment or an ensemble folder)

For fold k the unlabelled images (the test set, plus the folder `pseudo.extra_images`, relative to data.dir) are
labelled by fold k's teacher model only: outputs/<teacher>/fold<k>/test_pred.csv (TTA-merged; `pseudo.tta: false`
predicts again with one view), never test_pred.csv, whose fold average includes models that trained on fold k's
validation rows. An ensemble teacher is the weighted blend of its members' fold-k predictions (weights.json; a rank
blend is blended on values, as ranks are no labels; tuned weights saw every fold's OOF rows, a scalar-sized leak).
Selected rows join fold k's training set only; its validation rows stay untouched (teacher outputs: teachers.py).

Selection, per fold. Confidence: the top class probability (multiclass), max(p, 1 - p) (binary), that of the least
certain label (multilabel), the mean over pixels (and classes) of max(p, 1 - p) (segmentation). A row's class: the
argmax (multiclass), the 0/1 label (binary), its rarest predicted label (multilabel; segmentation: of the classes
with a pixel at p >= 0.5, "(none)" for an image predicted empty). Keep rows with confidence >= `threshold` that
are among the `top_fraction` most confident rows of their class (rounded up), then at most `max_per_class` per class.
Regression keeps every row (it has no confidence).
Targets: `soft` = the teacher's probabilities; hard = one-hot argmax / 0-1 labels; regression = the teacher's value.
Segmentation: the teacher fold's maps as `predict` stored them (uint8 p * 255 at the training size), hard = 0/1 at
p >= 0.5; laid on each image's pixels and augmented with it as its mask, the target p in [0, 1] (float32, as the
labelled rows' 0/1 masks then are too).

Training: each batch holds round(batch_size * batch_ratio) pseudo rows, the rest labelled (RatioBatchSampler; an
epoch covers the labelled rows once; batch_ratio 0 shuffles pseudo rows in with the rest). Loss = task loss on the
labelled rows + `weight` * task loss on the pseudo rows (logged as `labelled` and `pseudo`).

Rounds: round 1 writes outputs/<exp>, round r > 1 outputs/<exp>_r<r>; the student of round r is the teacher of round
r + 1. Each round folder is a full experiment (cv.json, test_pred.csv, ...) plus lineage.json (round, teacher and its
members, settings, per fold the models used and the candidates / selected rows per class) and
fold<k>/pseudo_labels.csv. Noisy student: give the student noise (augment.preset heavy, model.drop_rate,
model.drop_path_rate) and, if you like, a larger backbone than the teacher's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Sampler

from ..config import Config
from ..core.errors import UserError
from ..core.runs import CVSummary, atomic_write_csv, write_masks
from ..core.tasks import PIXEL_TASKS, num_outputs
from ..data.augment import build_mixup
from ..data.problem import FoldData, Problem, StoredMaps, build_fold_data, load_problem, pred_frame
from ..engine.fold import Step
from .teachers import (
    Log,
    Unlabelled,
    start_lineage,
    student_rows,
    teacher_predictions,
    train_students,
    unlabelled_images,
)

# --- selection and targets -------------------------------------------------------------------------------------------


def confidence_and_class(pred: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how sure the teacher is, and the class the row counts for (see the module docstring).
    Segmentation: `pred` are uint8 maps (N, C, H, W), p * 255."""
    if task in PIXEL_TASKS:
        maps = np.asarray(pred)
        conf = np.array([np.maximum(m, 255 - m).mean(dtype=np.float64) / 255 for m in maps])  # image by image
        _, group = confidence_and_class(maps.max(axis=(2, 3)) / 255, "multilabel")
        return conf, group
    p = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    if task == "multiclass":
        return p.max(1), p.argmax(1)
    if task == "binary":
        return np.maximum(p[:, 0], 1 - p[:, 0]), (p[:, 0] >= 0.5).astype(np.int64)
    if task == "multilabel":
        hard = p >= 0.5
        rarity = np.where(hard, hard.sum(0)[None, :], np.inf)
        group = np.where(np.isinf(rarity.min(1)), p.shape[1], rarity.argmin(1))
        return np.maximum(p, 1 - p).min(1), group.astype(np.int64)
    return np.ones(len(p)), np.zeros(len(p), np.int64)


def class_names(task: str, classes: list[str]) -> list[str]:
    names = {"multiclass": classes, "binary": ["negative", "positive"], "multilabel": [*classes, "(none)"]}
    return names.get("multilabel" if task in PIXEL_TASKS else task, ["all"])


def select_pseudo(
    pred: np.ndarray, task: str, threshold: float = 0.0, top_fraction: float = 1.0, max_per_class: int = 0
) -> np.ndarray:
    """Sorted row indices of the predictions to use as pseudo labels."""
    conf, group = confidence_and_class(pred, task)
    keep = conf >= threshold
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        order = rows[np.lexsort((rows, -conf[rows]))]  # most confident first, ties by row
        n_top = math.ceil(top_fraction * len(rows) - 1e-9)  # 0.3 * 10 is 3.0000000000000004
        keep[order[n_top:]] = False
        if max_per_class > 0:
            kept = order[keep[order]]
            keep[kept[max_per_class:]] = False
    return np.flatnonzero(keep)


def pseudo_targets(pred: np.ndarray, task: str, soft: bool) -> np.ndarray:
    """Training targets from teacher predictions: (N, C) multiclass/multilabel, (N,) binary/regression, float32;
    segmentation: uint8 maps (N, C, H, W) as stored, p * 255 (hard: 0 or 255 at p >= 0.5)."""
    if task in PIXEL_TASKS:
        maps = np.asarray(pred, dtype=np.uint8)
        return maps if soft else np.where(maps >= 128, 255, 0).astype(np.uint8)  # round(0.5 * 255) = 128
    p = np.asarray(pred, dtype=np.float32).reshape(len(pred), -1)
    if task == "multiclass":
        return p if soft else np.eye(p.shape[1], dtype=np.float32)[p.argmax(1)]
    if task == "multilabel":
        return p if soft else (p >= 0.5).astype(np.float32)
    if task == "binary":
        return p[:, 0] if soft else (p[:, 0] >= 0.5).astype(np.float32)
    return p[:, 0]


def labelled_targets(y: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """Labelled targets in the pseudo targets' form, so both collate into one batch (class ids -> one-hot)."""
    if task == "multiclass":
        return np.eye(n_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]
    return np.asarray(y, dtype=np.float32)


# --- batches and loss ------------------------------------------------------------------------------------------------


def pseudo_per_batch(batch_size: int, ratio: float) -> int:
    """Pseudo rows in each batch (config.validate checks the same for the configured batch size)."""
    n = round(batch_size * ratio)
    if ratio > 0 and not 0 < n < batch_size:
        raise ValueError(
            f"config key 'pseudo.batch_ratio'={ratio} gives {n} pseudo rows in a batch of train.batch_size="
            f"{batch_size}; expected at least 1 pseudo and 1 labelled row"
        )
    return n


class RatioBatchSampler(Sampler[list[int]]):
    """Batches over ConcatDataset([labelled, pseudo]): `n_pseudo` pseudo rows (indices >= n_labelled) and
    batch_size - n_pseudo labelled rows each. Both streams are reshuffled permutations, so every batch is full
    and an epoch of ceil(n_labelled / labelled-per-batch) batches sees each labelled row at least once. The
    order depends on (seed, epoch) only; the epoch advances with each pass (or is set by `set_epoch`)."""

    def __init__(self, n_labelled: int, n_pseudo_rows: int, batch_size: int, ratio: float, seed: int = 0) -> None:
        super().__init__()
        self.n_labelled, self.n_pseudo_rows, self.seed, self.epoch = n_labelled, n_pseudo_rows, seed, 0
        self.n_pseudo = pseudo_per_batch(batch_size, ratio) if n_pseudo_rows else 0
        self.n_lab = batch_size - self.n_pseudo
        if n_labelled < 1 or self.n_lab < 1:
            raise ValueError(f"no labelled rows to batch ({n_labelled} rows, {self.n_lab} per batch)")

    def __len__(self) -> int:
        return math.ceil(self.n_labelled / self.n_lab)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        n = len(self)
        lab = _stream(rng, self.n_labelled, n * self.n_lab)
        pse = _stream(rng, self.n_pseudo_rows, n * self.n_pseudo) + self.n_labelled
        for b in range(n):
            part = lab[b * self.n_lab : (b + 1) * self.n_lab], pse[b * self.n_pseudo : (b + 1) * self.n_pseudo]
            yield np.concatenate(part).tolist()


def _stream(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    if n == 0 or count == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([rng.permutation(n) for _ in range(math.ceil(count / n))])[:count]


def pseudo_step(weight: float, mixer: Callable | None = None) -> Step:
    """Task loss on the labelled rows + `weight` * task loss on the pseudo rows of a batch."""

    def step(model: torch.nn.Module, batch: dict, criterion: torch.nn.Module) -> dict[str, torch.Tensor]:
        x, y, is_pseudo = batch["image"], batch["target"], batch["pseudo"] > 0.5
        if mixer is not None:
            x, y = mixer(x, y)
        logits = model(x)
        zero = logits.sum() * 0.0
        lab = criterion(logits[~is_pseudo], y[~is_pseudo]) if bool((~is_pseudo).any()) else zero
        pse = criterion(logits[is_pseudo], y[is_pseudo]) if bool(is_pseudo.any()) else zero
        return {"loss": lab + weight * pse, "labelled": lab.detach(), "pseudo": pse.detach()}

    return step


# --- one fold, one round, the rounds ---------------------------------------------------------------------------------


def build_pseudo_fold(
    cfg: Config,
    problem: Problem,
    fold: int,
    leaves: dict[str, float],
    unl: Unlabelled,
    log: Log = print,
) -> tuple[FoldData, dict]:
    """Fold k's data: its training rows + the unlabelled rows fold k's teacher labels confidently enough."""
    p, task, classes = cfg.pseudo, cfg.task, problem.classes
    data = build_fold_data(cfg, problem, fold)
    teach = teacher_predictions(cfg, leaves, fold, unl, log)
    teach.check_fold(fold)
    chosen = select_pseudo(teach.values, task, p.threshold, p.top_fraction, p.max_per_class)
    conf, group = confidence_and_class(teach.values, task)
    if len(chosen) == 0 and len(unl.ids):  # before any file of the fold is written
        raise UserError(
            f"fold {fold}: none of the {len(unl.ids)} unlabelled images reached pseudo.threshold={p.threshold} "
            f"(the most confident teacher prediction: {conf.max():.4f}); lower pseudo.threshold below that"
        )
    targets = pseudo_targets(teach.values[chosen], task, p.soft)
    names, pixels = class_names(task, classes), task in PIXEL_TASKS
    ids = [unl.ids[i] for i in chosen]
    record = {
        "sources": teach.sources,
        "unlabelled": len(unl.ids),
        "pseudo": len(chosen),
        "candidates_per_class": {n: int((group == g).sum()) for g, n in enumerate(names)},
        "pseudo_per_class": {n: int((group[chosen] == g).sum()) for g, n in enumerate(names)},
    }
    path = cfg.run.fold(fold).pseudo_labels
    if pixels:  # the maps beside the table (pseudo_labels_masks.npz), the table their largest p per class
        write_masks(path, ids, targets)
    table = pred_frame(ids, targets.max(axis=(2, 3)) / 255 if pixels else targets, classes, cfg.data.id_col)
    table.insert(1, "class", [names[g] for g in group[chosen]])
    table.insert(2, "confidence", conf[chosen])
    atomic_write_csv(path, table)
    log(f"fold {fold}: {len(chosen)} of {len(unl.ids)} unlabelled images pseudo-labelled by {teach.sources}")
    if len(chosen) == 0:
        return data, record
    data.train.extras["pseudo"] = np.zeros(len(data.train), np.float32)
    flag, paths = np.ones(len(chosen), np.float32), [unl.paths[i] for i in chosen]
    if pixels:  # 0/1 masks and soft masks, both float32
        data.train.mask_scale = 1.0
        rows = student_rows(cfg, paths, None, masks=StoredMaps(targets), mask_scale=255.0, pseudo=flag)
    else:
        data.train.targets = labelled_targets(data.train.targets, task, len(classes))
        rows = student_rows(cfg, paths, targets, pseudo=flag)
    sampler = None
    if p.batch_ratio > 0:
        sampler = RatioBatchSampler(len(data.train), len(chosen), cfg.train.batch_size, p.batch_ratio, cfg.seed + fold)
    train = ConcatDataset([data.train, rows])
    return dataclasses.replace(data, train=train, sampler_labels=None, batch_sampler=sampler), record


def round_name(exp: str, r: int) -> str:
    """Round 1 is the experiment itself; round r > 1 is <exp>_r<r>."""
    return exp if r == 1 else f"{exp}_r{r}"


def run_round(
    cfg: Config,
    problem: Problem,
    teacher: str,
    r: int,
    unl: Unlabelled,
    folds: Sequence[int] | None,
    force: bool,
    log: Log,
    allow_partial: bool = False,
) -> CVSummary:
    # `rounds` is left out: asking for more rounds later carries on from the finished ones
    settings = {k: v for k, v in dataclasses.asdict(cfg.pseudo).items() if k not in ("rounds", "teacher")}
    leaves, lineage = start_lineage(cfg, problem, "pseudo", [teacher], settings, force, round=r)
    log(f"{cfg.exp}: pseudo-labelling round {r}, teacher {teacher}, student {cfg.model.backbone}")
    if cfg.train.sampler != "none":
        log(f"train.sampler={cfg.train.sampler} is not used: pseudo.batch_ratio composes the batches")
    # The criterion smooths labels already, and smoothing is linear: mixing must not smooth them a second time.
    mixer = build_mixup(cfg.augment, cfg.task, num_outputs(cfg.task, len(problem.classes)), 0.0)
    step = pseudo_step(cfg.pseudo.weight, mixer)
    build = lambda k: build_pseudo_fold(cfg, problem, k, leaves, unl, log)  # noqa: E731
    return train_students(cfg, folds, lineage, build, step, force, log, allow_partial)


def run_pseudo(
    cfg: Config,
    teacher: str = "",
    log: Log = print,
    folds: Sequence[int] | None = None,
    force: bool = False,
    allow_partial: bool = False,
) -> dict:
    """`pseudo.rounds` rounds from `teacher` (default: pseudo.teacher); returns the last round's cv.json summary
    (`summary`) and `rounds`: [{round, exp, teacher, cv}]."""
    teacher = teacher or cfg.pseudo.teacher
    if not teacher:
        raise UserError("pseudo needs a teacher: --teacher EXP or config key 'pseudo.teacher'")
    problem = load_problem(cfg)
    unl = unlabelled_images(cfg, cfg.pseudo.extra_images)
    rounds, result = [], None
    for r in range(1, cfg.pseudo.rounds + 1):
        # The round's config names its real teacher, so config.yaml agrees with lineage.json.
        rcfg = dataclasses.replace(
            cfg, exp=round_name(cfg.exp, r), pseudo=dataclasses.replace(cfg.pseudo, teacher=teacher)
        )
        result = run_round(rcfg, problem, teacher, r, unl, folds, force, log, allow_partial)
        rounds.append({"round": r, "exp": rcfg.exp, "teacher": teacher, "cv": result.cv})
        teacher = rcfg.exp
    return {"summary": result, "rounds": rounds}
