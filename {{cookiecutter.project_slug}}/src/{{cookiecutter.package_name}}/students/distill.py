"""Knowledge distillation: a student (any timm model) learns from the outputs of teacher experiments.

    distill -c configs/exp003.yaml --teacher exp001 [exp002 ...]

Leak-free by construction: fold k's student trains on fold k's training rows, and their teacher logits come from
fold k's teacher models only (teachers.py: finding them, the provenance checks, the cache, the lineage record).
The ensemble teacher's logits are the weighted mean of its members' fold-k logits, computed once, without TTA.

Loss: alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * task loss (multiclass); the sigmoid/BCE analogue
for binary and multilabel, per pixel for segmentation; MSE to the teacher's value for regression
(losses.distillation_loss). Segmentation: the teacher's logit maps (at the training size, float16 in the cache) are
laid on each training image's pixels and augmented with it, as its masks are (ImageDataset `maps`).
With `distill.use_test` the test images join training with the teacher's soft outputs only (no task loss on them;
segmentation: empty masks, never scored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from ..config import Config
from ..core.errors import UserError
from ..core.runs import CVSummary
from ..core.tasks import PIXEL_TASKS
from ..data.problem import EmptyMasks, FoldData, Problem, StoredMaps, build_fold_data, load_problem
from ..engine.fold import Step
from ..modeling.losses import distillation_loss
from .teachers import (
    Log,
    start_lineage,
    student_rows,
    teacher_logits,
    train_students,
    unlabelled_images,
)

# --- distillation ----------------------------------------------------------------------------------------------------


def distill_step(task: str, alpha: float, temperature: float) -> Step:
    """alpha * distillation loss on every row + (1 - alpha) * task loss on the labelled rows."""

    def step(model: torch.nn.Module, batch: dict, criterion: torch.nn.Module) -> dict[str, torch.Tensor]:
        logits = model(batch["image"])
        kd = distillation_loss(logits, batch["teacher"], task, temperature)
        labelled = batch["labelled"] > 0.5
        if bool(labelled.any()):
            task_loss = criterion(logits[labelled], batch["target"][labelled])
        else:
            task_loss = logits.sum() * 0.0
        return {"loss": alpha * kd + (1 - alpha) * task_loss, "kd": kd.detach(), "task": task_loss.detach()}

    return step


def _in_student_units(teacher: np.ndarray, problem: Problem, fold: int, task: str) -> np.ndarray:
    """Teacher logits as the student's outputs are: regression teacher values standardised with the student's fold
    scale (train.setup_fold computes the same), the logits of the other tasks as they are."""
    scale = problem.target_scale(fold, task)
    return teacher if scale is None else scale.standardize(teacher).astype(np.float32)


def build_distill_fold(cfg: Config, problem: Problem, fold: int, leaves: dict[str, float]) -> tuple[FoldData, dict]:
    """Fold k's data with each training row's teacher logits (from fold k's teachers), + test rows if use_test."""
    data = build_fold_data(cfg, problem, fold)
    ids = [problem.ids[i] for i in problem.rows(fold, valid=False)]
    teach = teacher_logits(cfg, leaves, fold, ids, "train")
    teach.check_fold(fold)
    teacher_out = _in_student_units(teach.values, problem, fold, cfg.task)
    pixels = cfg.task in PIXEL_TASKS
    if pixels:  # maps move with the image
        data.train.maps["teacher"] = StoredMaps(teacher_out)
        data.train.extras["labelled"] = np.ones(len(ids), np.float32)
    else:
        data.train.extras.update(teacher=teacher_out, labelled=np.ones(len(ids), np.float32))
    record: dict = {"train_rows": len(ids), "sources": teach.sources, "test_rows": 0}
    if not cfg.distill.use_test:
        return data, record
    test = unlabelled_images(cfg)  # the test set
    soft = teacher_logits(cfg, leaves, fold, test.ids, "test")
    soft.check_fold(fold)
    labelled = np.zeros(len(test.ids), np.float32)  # never scored: their targets are dummies
    soft_out = _in_student_units(soft.values, problem, fold, cfg.task)
    if pixels:
        maps = {"teacher": StoredMaps(soft_out)}
        test_rows = student_rows(cfg, test.paths, None, masks=EmptyMasks(len(problem.classes)), maps=maps,
                                 labelled=labelled)  # fmt: skip
    else:
        dummy = np.zeros((len(test.ids), *problem.y.shape[1:]), problem.y.dtype)
        test_rows = student_rows(cfg, test.paths, dummy, teacher=soft_out, labelled=labelled)
    record.update(test_rows=len(test.ids), test_sources=soft.sources)
    # The class-balancing sampler knows the labelled rows only; the test rows are drawn like the rest.
    return dataclasses.replace(data, train=ConcatDataset([data.train, test_rows]), sampler_labels=None), record


def run_distill(
    cfg: Config,
    teachers: Sequence[str] = (),
    log: Log = print,
    folds: Sequence[int] | None = None,
    force: bool = False,
    allow_partial: bool = False,
) -> CVSummary:
    """Train the student `cfg` on every fold (or `folds`) from `teachers` (default: distill.teachers);
    outputs/<exp>/ gets the usual experiment files plus lineage.json. Returns the cv.json summary."""
    names = list(teachers) or list(cfg.distill.teachers)
    if not names:
        raise UserError("distill needs a teacher: --teacher EXP [EXP ...] or config key 'distill.teachers'")
    problem = load_problem(cfg)
    settings = dataclasses.asdict(dataclasses.replace(cfg.distill, teachers=names))
    leaves, lineage = start_lineage(cfg, problem, "distill", names, settings, force)
    log(f"{cfg.exp}: distilling {cfg.model.backbone} from {', '.join(f'{e} ({w:.3f})' for e, w in leaves.items())}")
    step = distill_step(cfg.task, cfg.distill.alpha, cfg.distill.temperature)
    build = lambda k: build_distill_fold(cfg, problem, k, leaves)  # noqa: E731
    return train_students(cfg, folds, lineage, build, step, force, log, allow_partial)
