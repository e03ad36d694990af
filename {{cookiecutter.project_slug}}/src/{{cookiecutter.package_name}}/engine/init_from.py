"""model.init_from: multi-stage training. Fold k starts from another experiment's fold-k weights (progressive
resizing, a high-resolution fine-tune, external-data pretraining), never from weights that saw fold k's validation
rows, at any stage behind them.

The property is checked directly, on ids: fold k's start may come only from models whose own training rows hold none
of this fold's validation ids. Walked through the chain: the source's fold k, what that fold started from
(its fold<k>/init_from.json, else its config's model.init_from), and a pseudo / distill student's teachers
(lineage.json: their fold-k models taught its fold k), recursively. A model's training ids are the labelled rows of
its split (its folds file, and every fold's validation rows it recorded) less those its fold k validated on
(fold<k>/oof.csv): an over-estimate where the folds file lost rows, never an under-estimate. A model recorded as
trained on another split of the same rows (cv.json / lineage.json `folds_hash`) is refused outright; one trained on
other images altogether (external data: no id in common) passes, whatever its split. An ensemble (its weights.json
mixes every fold's models, a stacker was fitted on every fold's OOF) and a model fitted on every row (a full-data fit,
`<exp>@...`, or an experiment without fold<k>/best.pt) cannot start fold k.

What the fold started from is recorded in fold<k>/init_from.json (InitFrom: the source, its best.pt sha256, the chain);
a resume (`check_resumable`) stops when the source's checkpoint changed since, and cv.json says the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..config import load as load_config
from ..core.errors import UserError
from ..core.runs import Checkpoint, InitFrom, Run, checksum, read_id_csv
from ..core.runtime import is_main
from ..data.folds import read_fold_table
from ..data.problem import Problem
from ..modeling.models import head_modules, unwrap

# Model settings the source's weights must have been built with: another backbone, architecture, input channels or
# first convolution gives other tensors (or the same shapes meaning other things).
MATCHING = ("backbone", "arch", "in_chans", "coord_conv")


def _source_config(run: Run, fold: int, what: str) -> Config:
    """The config `run`'s fold `fold` was trained under (a plain experiment with that fold finished); `what` names
    it in the messages."""
    if run.is_ensemble():
        raise UserError(f"{what} is an ensemble ({run.weights}): its weights mix models that saw fold "
                        f"{fold}'s validation rows; start from one of its member experiments")  # fmt: skip
    if not run.is_experiment():
        raise UserError(f"{run.path}: no experiment there ({run.config.name} not found): {what}; train it first")
    files = run.fold(fold)
    if not files.finished():
        raise UserError(f"{files.best if not files.best.is_file() else files.oof} not found: {what} "
                        f"has no finished fold {fold}, and fold {fold} starts only from its fold-{fold} model (train "
                        f"its fold {fold}; a model fitted on every row saw fold {fold}'s validation rows)")  # fmt: skip
    return load_config(run.trained_config(fold))


def _labelled_ids(cfg: Config, run: Run) -> set[str]:
    """Every labelled id `run` trained or validated on: its folds file's rows, and every fold's recorded OOF ids."""
    id_col = cfg.data.id_col
    ids: set[str] = set()
    path = Path(cfg.folds.path)
    if path.is_file():
        table = read_fold_table(path)
        if id_col in table.columns:
            ids |= set(table[id_col].astype(str))
    for k in run.fold_numbers():
        if run.fold(k).oof.is_file():
            ids |= set(read_id_csv(run.fold(k).oof, id_col)[id_col].astype(str))
    return ids


def _recorded_hash(run: Run) -> str | None:
    """The split `run` says it was trained on: its cv.json's folds hash, else its lineage.json's."""
    for path, read in ((run.cv, run.read_cv), (run.lineage, run.read_lineage)):
        if path.is_file():
            return read().folds_hash
    return None


def _behind(run: Run, scfg: Config, fold: int) -> list[str]:
    """The experiments whose fold-`fold` models shaped `run`'s fold `fold`: what it started from (its record, else
    its config's model.init_from) and, for a student, its teachers."""
    files = run.fold(fold)
    start = files.read_init_from().exp if files.init_from.is_file() else scfg.model.init_from
    teachers = list(run.read_lineage().teacher_weights) if run.lineage.is_file() else []
    return list(dict.fromkeys([*([start] if start else []), *teachers]))


def check_chain(cfg: Config, problem: Problem, fold: int) -> list[str]:
    """Every experiment behind model.init_from's fold-`fold` weights, the source first; stops with one line at the
    first whose fold `fold` trained on any of this fold's validation ids (or says it was trained on another split of
    them), or that is no finished fold-wise experiment."""
    valid = {problem.ids[i] for i in problem.rows(fold, valid=True)}
    ours = set(problem.ids)
    source = cfg.model.init_from
    assert source is not None
    chain: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        via = " -> ".join((cfg.exp, *trail, name))
        if name == cfg.exp or name in trail:
            raise UserError(f"model.init_from {source!r}: the chain {via} comes back to {name!r}; a fold cannot start "
                            "from its own weights")  # fmt: skip
        if name in chain:
            return
        what = f"model.init_from {name!r}" if not trail else f"experiment {name!r} (behind model.init_from: {via})"
        run = Run.named(cfg.output_dir, name, "model.init_from")
        scfg = _source_config(run, fold, what)
        seen = _labelled_ids(scfg, run)
        recorded = _recorded_hash(run)
        if recorded is not None and recorded != problem.folds_hash and seen & ours:
            raise UserError(
                f"model.init_from {source!r}: {name!r} ({via}) was trained on folds hash {recorded}, {cfg.folds.path} "
                f"has {problem.folds_hash}: its fold-{fold} model saw this fold's validation rows; retrain it on "
                f"{cfg.folds.path}"
            )
        own_valid = set(read_id_csv(run.fold(fold).oof, scfg.data.id_col)[scfg.data.id_col].astype(str))
        leak = valid & (seen - own_valid)
        if leak:
            raise UserError(
                f"model.init_from {source!r}: fold {fold} of {name!r} ({via}) trained on {len(leak)} of fold {fold}'s "
                f"{len(valid)} validation ids (e.g. {sorted(leak)[:3]}); start from an experiment trained on "
                f"{cfg.folds.path}'s split"
            )
        chain.append(name)
        for before in _behind(run, scfg, fold):
            visit(before, (*trail, name))

    visit(source, ())
    return chain


def _head_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the model's head (modeling.models.head_modules)."""
    model = unwrap(model)
    heads = {id(h) for h in head_modules(model)}
    if heads == {id(model)}:  # a model without a separable head
        return set()
    prefixes = [f"{name}." for name, m in model.named_modules() if id(m) in heads]
    return {k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)}


def start_from(cfg: Config, problem: Problem, fold: int, model: nn.Module) -> InitFrom:
    """Load model.init_from's fold-`fold` best.pt into `model` (just built, its head initialised), after checking
    the chain behind it (check_chain) and that it was built as this config builds: model.init_from_head=keep loads
    the head too (same task and classes), reset leaves the new head as built. Returns the fold's record."""
    name = cfg.model.init_from
    assert name is not None
    chain = check_chain(cfg, problem, fold)
    run = Run.named(cfg.output_dir, name, "model.init_from")
    scfg = load_config(run.trained_config(fold))
    keys = [k for k in MATCHING if (k != "arch" or cfg.task == "segmentation")]
    differ = [k for k in keys if getattr(scfg.model, k) != getattr(cfg.model, k)]
    if differ:
        was = ", ".join(f"model.{k}={getattr(scfg.model, k)!r}" for k in differ)
        now = ", ".join(f"model.{k}={getattr(cfg.model, k)!r}" for k in differ)
        raise UserError(f"model.init_from {name!r}: its fold {fold} was built with {was}, this config has {now}; "
                        "set them as the source's")  # fmt: skip
    path = run.fold(fold).best
    ckpt: Checkpoint = run.fold(fold).read_best()
    head = cfg.model.init_from_head
    if head == "keep" and (scfg.task != cfg.task or (ckpt.classes is not None and ckpt.classes != problem.classes)):
        raise UserError(
            f"model.init_from {name!r} predicts {scfg.task} {ckpt.classes}, this config {cfg.task} {problem.classes}: "
            "its head does not fit; set model.init_from_head=reset to start from its backbone with a new head"
        )
    target = unwrap(model)
    state = target.state_dict()
    dropped = _head_keys(target) if head == "reset" else set()
    weights = {k: v for k, v in ckpt.model.items() if k not in dropped}
    wrong = sorted(k for k, v in weights.items() if k not in state or state[k].shape != v.shape)
    absent = sorted(k for k in state if k not in weights and k not in dropped)
    if wrong or absent:
        first = (wrong or absent)[0]
        both = first in weights and first in state
        shape = f" {tuple(weights[first].shape)} vs {tuple(state[first].shape)}" if both else ""
        raise UserError(f"{path}: {len(wrong) + len(absent)} tensor(s) do not fit the model this config builds (e.g. "
                        f"{first}{shape}); set model.* as experiment {name!r} has them")  # fmt: skip
    with torch.no_grad():
        target.load_state_dict({**state, **weights})
    if is_main():
        print(f"fold {fold}: starting from {name}'s fold {fold} weights ({path}, head {head}; chain "
              f"{' -> '.join(chain)})")  # fmt: skip
    return InitFrom(exp=name, fold=fold, checkpoint=checksum(path), head=head, chain=chain)


def source_changed(cfg: Config, fold: int) -> str | None:
    """Fold `fold` started from a checkpoint that is no longer there as it was: 'what changed', else None."""
    files = cfg.run.fold(fold)
    if not files.init_from.is_file():
        return None
    record = files.read_init_from()
    best = Run.named(cfg.output_dir, record.exp, "model.init_from").fold(fold).best
    if best.is_file() and checksum(best) != record.checkpoint:
        return (
            f"fold {fold} started from {best} (sha256 {record.checkpoint[:12]}), which was retrained since "
            f"(now {checksum(best)[:12]})"
        )
    return None


def chain_summary(cfg: Config, folds: Sequence[int]) -> dict | None:
    """What cv.json records of model.init_from: the source, each fold's chain and source checkpoint (sha256)."""
    records = {k: cfg.run.fold(k).read_init_from() for k in folds if cfg.run.fold(k).init_from.is_file()}
    if not records:
        return None
    first = next(iter(records.values()))
    return {
        "exp": first.exp,
        "head": first.head,
        "chain": {str(k): r.chain for k, r in records.items()},
        "checkpoints": {str(k): r.checkpoint for k, r in records.items()},
    }
