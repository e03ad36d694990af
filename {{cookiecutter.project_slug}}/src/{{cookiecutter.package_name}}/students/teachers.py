"""What a teacher gives fold k: its predictions and logits, provenance-checked; and the student loop around them.

Shared by pseudo-labelling and distillation. A teacher is an experiment or an ensemble folder (its members weighted
as in its weights.json, recursively); several teachers count equally. Fold k's student learns from fold k's teacher
models only: they never saw fold k's validation rows (another fold's model, or one trained on all the data, did, and
would make the student's CV lie). So teachers share the student's folds (cv.json `folds_hash`), and teacher outputs
carry the (experiment, fold) models they came from (TeacherOutput), recorded per fold in the student's lineage.json.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config, load
from ..core.errors import UserError
from ..core.runs import (
    CVSummary,
    Lineage,
    Run,
    atomic_save_npz,
    maps_uint8,
    read_derived,
    read_masks,
    read_pred_csv,
    stamp,
)
from ..core.runtime import amp_dtype, compute_setup, world_size
from ..core.tasks import PIXEL_TASKS, num_outputs
from ..cv import summarize
from ..data.augment import build_transforms
from ..data.decode import IMAGE_EXTS, image_paths
from ..data.images import ImageDataset
from ..data.problem import FoldData, Problem, image_cache
from ..data.tables import data_path, read_table
from ..engine.fold import Step
from ..engine.inference import feeder, load_fold_weights, predict_loader, prediction_source
from ..engine.views import resolve_views
from ..modeling.models import build_model
from ..predict import predict_test_folds, run_predict
from ..train import check_forced, check_resumable, fold_pending, train_one_fold

Source = tuple[str, int]  # (teacher experiment, fold): the one model an array of teacher outputs came from
Log = Callable[[str], None]
FoldBuilder = Callable[[int], tuple[FoldData, dict]]  # fold k -> its training data, and its record for lineage.json

# --- teachers and their fold-k outputs -------------------------------------------------------------------------------


@dataclass
class TeacherOutput:
    """Teacher outputs for some images, and the fold models they were computed with (the provenance)."""

    ids: list[str]
    # (N, outputs): logits (distillation) or predictions in the task's format (pseudo labels); segmentation maps
    # (N, C, H, W) at the training size: float16 logits, or uint8 probabilities as the run stores them (round(p*255))
    values: np.ndarray
    sources: list[Source]

    def check_fold(self, fold: int) -> None:
        """Fold `fold`'s student may only see outputs of fold `fold`'s models."""
        bad = [s for s in self.sources if s[1] != fold]
        if bad:
            raise RuntimeError(f"fold {fold} was given outputs of {bad}, models that saw its validation rows")


def teacher_leaves(cfg: Config, names: Sequence[str]) -> dict[str, float]:
    """Teacher names -> {experiment: weight}, ensembles expanded into their members; the weights sum to 1."""
    leaves: dict[str, float] = {}

    def add(name: str, weight: float, trail: tuple[str, ...]) -> None:
        run = Run.named(cfg.output_dir, name)
        if name in trail:
            raise UserError(f"ensemble {trail[0]!r} contains itself (via {' -> '.join((*trail, name))})")
        if run.is_ensemble():
            info = run.read_weights()
            if info.weights is None:  # a stacking meta-model was even fitted on every fold's OOF targets
                raise UserError(
                    f"ensemble {name!r} (method={info.method}) is no weighted mean of its members: teach with "
                    "its members, or with a mean / weighted / hill_climb / optimize blend of them"
                )
            for member, w in zip(info.members, info.weights, strict=True):
                add(member, weight * float(w), (*trail, name))
        elif run.is_experiment():
            leaves[name] = leaves.get(name, 0.0) + weight
        else:
            raise UserError(
                f"{run.path}: no {run.config.name} (experiment) or {run.weights.name} (ensemble): "
                f"train teacher {name!r}"
            )

    for name in names:
        if name == cfg.exp:
            raise UserError(f"experiment {name!r} cannot be its own teacher: give the student another config name")
        add(name, 1.0 / len(names), ())
    return {e: w for e, w in leaves.items() if w > 0}  # hill climbing leaves members at weight 0


def check_teachers(cfg: Config, problem: Problem, names: Sequence[str], leaves: dict[str, float]) -> None:
    """Every teacher is another experiment, of the same task and classes, trained on the same folds."""
    for name in dict.fromkeys([*names, *leaves]):
        if name == cfg.exp:
            raise UserError(f"experiment {name!r} cannot be its own teacher: give the student another config name")
        info = Run.named(cfg.output_dir, name).read_cv()
        if info.folds_hash != problem.folds_hash:
            raise UserError(
                f"teacher {name!r} was trained on folds hash {info.folds_hash}, {cfg.folds.path} has "
                f"{problem.folds_hash}: its fold-k models saw the student's fold-k validation rows; retrain it"
            )
        if info.task != cfg.task or list(info.pred_cols) != problem.classes:
            raise UserError(
                f"teacher {name!r} predicts {info.task} {info.pred_cols}, the student {cfg.task} {problem.classes}"
            )


def teacher_config(cfg: Config, exp: str) -> Config:
    """The teacher's saved config, run on the student's device, threads, workers and output folder."""
    tcfg = load(Run.named(cfg.output_dir, exp).config)
    data = dataclasses.replace(tcfg.data, num_workers=cfg.data.num_workers)
    return dataclasses.replace(tcfg, exp=exp, output_dir=cfg.output_dir, device=cfg.device, threads=cfg.threads,
                               data=data)  # fmt: skip


def checkpoint(tcfg: Config, fold: int) -> Path:
    path = tcfg.run.fold(fold).best
    if not tcfg.run.fold(fold).finished():
        raise UserError(f"{path} not found: teacher {tcfg.exp!r} has no fold {fold} model (train its fold {fold})")
    return path


@dataclass
class Unlabelled:
    """Images a teacher labels: the test set, then any extra images (ids extra/<file>)."""

    ids: list[str]
    paths: list[Path]
    n_test: int


def unlabelled_images(cfg: Config, extra_images: str = "") -> Unlabelled:
    """The test images (data.test_csv, data.test_images), + those under `extra_images` (pseudo.extra_images)."""
    test = read_table(data_path(cfg, cfg.data.test_csv), cfg.data.id_col, encoding=cfg.data.encoding)
    ids = test[cfg.data.id_col].tolist()
    paths = image_paths(data_path(cfg, cfg.data.test_images), ids, cfg.data.image_ext, "test_images")
    extra: list[Path] = []
    if extra_images:
        folder = data_path(cfg, extra_images)
        if not folder.is_dir():
            raise UserError(f"{folder}: folder not found (config key pseudo.extra_images, relative to data.dir)")
        extra = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not extra:
            raise UserError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTS))}) (config key pseudo.extra_images)")
        ids += [f"extra/{p.relative_to(folder).as_posix()}" for p in extra]
    return Unlabelled(ids, paths + extra, len(paths))


def split_paths(tcfg: Config, split: str, ids: list[str]) -> list[Path]:
    """The teacher's own copy of the images (its data config may point at other folders or preprocessing)."""
    key = "train_images" if split == "train" else "test_images"
    return image_paths(data_path(tcfg, getattr(tcfg.data, key)), ids, tcfg.data.image_ext, key)


def predict_fold(
    cfg: Config, tcfg: Config, fold: int, paths: list[Path], views: Sequence[str] = ("identity",), activation=False
) -> np.ndarray:
    """(N, outputs) of teacher `tcfg`'s fold-`fold` model on `paths`: logits, or TTA-merged predictions (regression:
    values in the target's units, whatever scale the teacher learnt them in); segmentation: (N, C, H, W) maps at
    the teacher's training size. The teacher's model settings, this run's device, threads, workers and precision."""
    device, workers = compute_setup(cfg.device, cfg.threads, cfg.data.num_workers)
    n_out = num_outputs(tcfg.task, len(tcfg.run.read_classes().classes))
    model = build_model(tcfg, n_out, pretrained=False).to(device)
    checkpoint(tcfg, fold)  # a teacher fold that is not finished is named first
    scale = load_fold_weights(tcfg, model, fold)
    tf = build_transforms(tcfg.augment, False, tcfg.model.in_chans)
    dataset = ImageDataset(paths, None, tf, tcfg.model.in_chans, image_cache(tcfg, paths))
    feed = feeder(tcfg, model, device, workers)
    feed.use_fold(fold)  # augment.mean/std: fold: the teacher fold's own statistics
    loader = feed(dataset)
    dtype, desc = amp_dtype(cfg.train.amp, device), f"teacher {tcfg.exp} fold {fold}"
    out = predict_loader(model, loader, tcfg.task, device, dtype, views, tcfg.tta.merge, activation, desc, scale)
    return out if tcfg.task in PIXEL_TASKS else out.reshape(len(paths), -1)


def cached(path: Path, ids: list[str], key: dict, compute: Callable[[], np.ndarray], dtype=np.float32) -> np.ndarray:
    """`compute()` once, stored as `dtype`; reused while the ids and the key (teachers, checkpoints, views) are the
    same."""
    text = json.dumps(key, sort_keys=True)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == text and z["ids"].tolist() == list(ids):
                return z["values"]
    values = np.asarray(compute(), dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(path, ids=np.asarray(ids, dtype=str), values=values, key=np.asarray(text))
    return values


def teacher_logits(cfg: Config, leaves: dict[str, float], fold: int, ids: list[str], split: str) -> TeacherOutput:
    """The weighted mean of the leaves' fold-`fold` logits on images `ids` of `split` (train | test), cached
    (without TTA) in outputs/<student>/teacher/fold<k>[_test].npz. Regression teachers give values in the target's
    units (each learnt in its own fold's scale); the student standardises them with its own (distill.py).
    Segmentation: (N, C, H, W) logit maps at the training size, kept as float16 (half the memory of float32, and
    3 significant digits are more than a soft target needs)."""
    tcfgs = {e: teacher_config(cfg, e) for e in leaves}
    stamps = [[e, w, stamp(checkpoint(tcfgs[e], fold))] for e, w in leaves.items()]
    values = cfg.task == "regression"
    key = {"split": split, "fold": fold, "teachers": stamps, "outputs": "values" if values else "logits"}

    def compute() -> np.ndarray:
        parts = [w * predict_fold(cfg, tcfgs[e], fold, split_paths(tcfgs[e], split, ids), activation=values)
                 for e, w in leaves.items()]  # fmt: skip
        return np.sum(parts, axis=0)

    name = f"fold{fold}" if split == "train" else f"fold{fold}_{split}"
    dtype = np.float16 if cfg.task in PIXEL_TASKS else np.float32
    values = cached(cfg.run.teacher_cache(name), ids, key, compute, dtype)
    return TeacherOutput(list(ids), values, [(e, fold) for e in leaves])


def _predicted(cfg: Config, tcfg: Config, fold: int, ids: list[str], paths: list[Path], split: str) -> np.ndarray:
    views = list(tcfg.tta.views) if cfg.pseudo.tta else ["identity"]
    key = {"split": split, "fold": fold, "views": views, "model": stamp(checkpoint(tcfg, fold))}
    path = cfg.run.teacher_cache(f"{tcfg.exp}_fold{fold}_{split}")
    if tcfg.task in PIXEL_TASKS:  # maps as the run stores them
        return cached(path, ids, key, lambda: maps_uint8(predict_fold(cfg, tcfg, fold, paths, views, True)), np.uint8)
    return cached(path, ids, key, lambda: predict_fold(cfg, tcfg, fold, paths, views, activation=True))


def _test_predictions(cfg: Config, tcfg: Config, fold: int, ids: list[str], log: Log) -> np.ndarray:
    """Fold `fold`'s TTA-merged test predictions, as `predict` saved them: made again when missing or made with
    other views or another checkpoint than the teacher has now. Segmentation: the uint8 maps saved beside them."""
    if not cfg.pseudo.tta:
        return _predicted(cfg, tcfg, fold, ids, split_paths(tcfg, "test", ids), "test")
    path, id_col = tcfg.run.fold(fold).test_pred, cfg.data.id_col
    if read_derived(path, prediction_source(tcfg, fold), id_col) is None:
        log(f"teacher {tcfg.exp}: {path} missing or out of date, predicting its test set first")
        predict_test_folds(tcfg, [fold])
    classes = tcfg.run.read_classes().classes
    df = read_pred_csv(path, id_col, classes).set_index(id_col)
    missing = sorted(set(ids) - set(df.index))
    if missing:
        raise UserError(f"{path} lacks {len(missing)} test ids, e.g. {missing[:3]}: predict teacher {tcfg.exp!r} again")
    if tcfg.task in PIXEL_TASKS:
        row = {i: n for n, i in enumerate(df.index)}
        return read_masks(path, list(df.index))[[row[i] for i in ids]]
    return df.loc[ids, classes].to_numpy(np.float32)


def teacher_predictions(cfg: Config, leaves: dict[str, float], fold: int, unl: Unlabelled, log: Log) -> TeacherOutput:
    """The weighted blend of the leaves' fold-`fold` predictions on the unlabelled images; on the test images
    those `predict` saved, TTA-merged (one view if not `pseudo.tta`: then predicted now, cached).
    Segmentation: uint8 maps, the members' probabilities blended and stored again as uint8 (one teacher: its own)."""
    pixels = cfg.task in PIXEL_TASKS
    total: np.ndarray | float = 0.0
    for exp, weight in leaves.items():
        tcfg = resolve_views(teacher_config(cfg, exp))  # tta.views: auto -> the views chosen on the teacher's OOF
        parts = [_test_predictions(cfg, tcfg, fold, unl.ids[: unl.n_test], log)]
        if len(unl.ids) > unl.n_test:
            parts.append(_predicted(cfg, tcfg, fold, unl.ids[unl.n_test :], unl.paths[unl.n_test :], "extra"))
        values = np.concatenate(parts)
        total = total + weight * (values.astype(np.float32) / 255 if pixels else values)
    values = maps_uint8(np.asarray(total, np.float32)) if pixels else np.asarray(total, dtype=np.float32)
    return TeacherOutput(list(unl.ids), values, [(e, fold) for e in leaves])


# --- the student's training loop -------------------------------------------------------------------------------------


def student_rows(cfg: Config, paths: list[Path], y: np.ndarray | None, masks=None, mask_scale: float | None = None,
                 maps: dict | None = None, **extras) -> ImageDataset:  # fmt: skip
    """Rows that join fold k's training set next to its labelled rows: same augmentation, per-row `extras`;
    segmentation: their `masks` and `maps` (data.problem.StoredMaps) moved with the image (ImageDataset)."""
    tf = build_transforms(cfg.augment, True, cfg.model.in_chans)
    return ImageDataset(paths, y, tf, cfg.model.in_chans, image_cache(cfg, paths), extras=extras, masks=masks,
                        mask_scale=mask_scale, maps=maps)  # fmt: skip


def start_lineage(
    cfg: Config, problem: Problem, kind: str, names: Sequence[str], settings: dict, force: bool,
    round: int | None = None,
) -> tuple[dict[str, float], Lineage]:  # fmt: skip
    """Teachers `names` as checked {experiment: weight}, and the record for outputs/<exp>/lineage.json: what the
    student learns from (+ per-fold records). A folder whose finished folds learnt from other teachers or settings
    is not mixed with this run unless `force`."""
    leaves = teacher_leaves(cfg, names)
    check_teachers(cfg, problem, names, leaves)
    lineage = Lineage(kind=kind, exp=cfg.exp, round=round, teachers=list(names), teacher_weights=leaves,
                      settings=settings, backbone=cfg.model.backbone, folds_hash=problem.folds_hash)  # fmt: skip
    run = cfg.run
    old = run.read_lineage() if run.lineage.is_file() else None
    if old is not None and not force:
        if old.origin() == lineage.origin():
            return leaves, old
        if run.finished_folds():
            raise UserError(
                f"{cfg.run_dir} holds folds trained from {old.teachers} with other settings than now "
                f"(see {run.lineage}); pass --force to retrain, or use another experiment name"
            )
    return leaves, lineage


def student_folds(
    cfg: Config, leaves: dict[str, float], folds: Sequence[int] | None, allow_partial: bool, log: Log
) -> list[int]:
    """The student folds to train (default: every fold). Fold k's student learns from fold k's teachers, so each
    needs fold k of every teacher finished; an unfinished one stops here, or with `allow_partial` leaves that
    student fold out."""
    wanted = list(range(cfg.folds.n_folds)) if folds is None else list(folds)
    missing = {e: [k for k in Run.named(cfg.output_dir, e).missing_folds(cfg.folds.n_folds) if k in wanted]
               for e in leaves}  # fmt: skip
    missing = {e: m for e, m in missing.items() if m}
    if not missing:
        return wanted
    what = "; ".join(f"teacher {e!r} fold(s) {m}" for e, m in missing.items())
    skip = sorted({k for m in missing.values() for k in m})
    keep = [k for k in wanted if k not in skip]
    if not allow_partial or not keep:
        raise UserError(
            f"{what} not finished, and fold k's student learns from fold k's teachers only: finish them (train "
            f"--fold ...)" + (f" or pass --allow-partial to train student fold(s) {keep} only" if keep else "")
        )
    log(f"{what} not finished: student fold(s) {skip} left out (--allow-partial)")
    return keep


def train_students(
    cfg: Config,
    folds: Sequence[int] | None,
    lineage: Lineage,
    build: FoldBuilder,
    step: Step,
    force: bool,
    log: Log,
    allow_partial: bool = False,
) -> CVSummary:
    """Train each fold (default: every fold) on the data `build(fold)` returns (its record goes to lineage.json),
    then the CV summary and the test predictions, so the student is an experiment like any other. Every student
    fold needs its teachers' fold finished (`student_folds`); the test predictions wait until every student fold
    is finished, unless `allow_partial`."""
    if world_size() > 1:  # the batch sampler and the per-fold records are not shared out between ranks
        raise UserError("pseudo and distill run in one process: start them without torchrun")
    trained = False
    leaves = lineage.teacher_weights  # the teachers' experiments, ensembles expanded (start_lineage)
    todo = student_folds(cfg, leaves, folds, allow_partial, log)
    if force:
        check_forced(cfg, todo)
    for k in todo:
        if not fold_pending(cfg, k, force, log):
            continue
        if not force:
            check_resumable(cfg, k)  # before the teachers run and lineage.json is rewritten (again under the lock)
        data, record = build(k)
        lineage.folds[str(k)] = record
        cfg.run.write_lineage(lineage)
        train_one_fold(cfg, k, data, step, force=force)
        trained = True
    # As `train` then `predict` would: the test predictions (with the OOF re-predicted the same way), then the CV
    # summary and the decisions a submission applies, tuned on that OOF.
    missing = cfg.run.missing_folds(cfg.folds.n_folds)
    if missing and not allow_partial:
        log(f"{cfg.exp}: test predictions once fold(s) {missing} are finished (or predict --allow-partial)")
    elif trained or not cfg.run.test_pred.is_file():
        run_predict(cfg, allow_partial=allow_partial)
    return summarize(cfg, allow_partial=allow_partial, log=log)
