"""The experiment config: the schema (core/schema.py) loaded from YAML with dotted command-line overrides, and checked.

`configs/<exp>.yaml` holds only what differs from the defaults below; the experiment's name is the file's stem.
`base: exp001.yaml` (a path relative to the file) merges another config first, so a later experiment states only
what it changes. OmegaConf's struct mode turns an unknown key or a wrong type into an error that names the key;
every range and combination check then runs here, at load time, so a bad config stops before any data is read.
Config keys that name a registry entry (loss, optimizer, schedule, metric, preset, sampler) take their allowed
values from that registry.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .core.errors import UserError
from .core.runs import atomic_write_text, check_name, seed_member
from .core.runtime import parse_device
from .core.schema import (
    EXPORT_VARIANTS,
    AugmentConfig,
    Config,
    DataConfig,
    DistillConfig,
    ExportConfig,
    FoldsConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PredictConfig,
    PseudoConfig,
    ServeConfig,
    SubmitConfig,
    TrainConfig,
    TTAConfig,
    WandbConfig,
    metric_name,
)
from .core.tasks import PIXEL_TASKS, TASKS
from .data import folds as folds_module
from .data.augment import AUGMIX_MAX_SEVERITY, PRESETS, RANDAUGMENT_MAX_M, aug_ops, check_normalization
from .data.cache import MODES as CACHE_MODES
from .data.hashing import HASH_BITS, HASHES
from .data.samplers import SAMPLERS
from .modeling import losses, metrics, tta
from .modeling.deploy import EXPORTERS
from .modeling.models import INITS, check_backbone, check_segmentation_model
from .modeling.optim import OPTIMIZERS, SCHEDULES, has_lookahead
from .modeling.predictors import ONNX_MODELS, RUNTIMES

# The schema's types are re-exported: stages and tests name them as config.Config, config.TrainConfig...
__all__ = ["CHOICES", "AugmentConfig", "Config", "DataConfig", "DistillConfig", "ExportConfig", "FoldsConfig",
           "LossConfig", "ModelConfig", "OptimConfig", "PredictConfig", "PseudoConfig", "ServeConfig",
           "SubmitConfig", "TTAConfig", "TrainConfig", "WandbConfig", "get", "load", "metric_name", "save",
           "seed_members", "to_yaml", "training_changes", "validate"]  # fmt: skip

# Allowed values of the keys that name a choice; those a registry holds come from the registry.
CHOICES: dict[str, tuple[str, ...]] = {
    "task": TASKS,
    "metric": ("auto", *metrics.list_metrics()),
    "folds.method": folds_module.METHODS,
    "data.cache": CACHE_MODES,
    "augment.preset": tuple(PRESETS.names()),
    "model.init_head": ("prior", "none"),
    "model.init": tuple(INITS.names()),
    "loss.name": ("auto", *losses.list_losses()),
    "loss.class_weight": ("none", "balanced"),
    "optim.name": tuple(OPTIMIZERS.names()),
    "optim.schedule": tuple(SCHEDULES.names()),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.sampler": tuple(SAMPLERS.names()),
    "tta.merge": tta.MERGES,
    "predict.runtime": RUNTIMES,
    "predict.onnx_model": ONNX_MODELS,
    "export.exporter": EXPORTERS,
    "wandb.mode": ("online", "offline", "disabled"),
    "submit.format": ("auto", "label", "probs", "tags", "value"),
    "data.mask_mode": ("multilabel", "multiclass"),
    "data.rle_order": ("F", "C"),
}


def _read_yaml(path: Path, trail: tuple[Path, ...] = ()) -> Any:
    """The file's YAML with its `base:` chain merged underneath (paths relative to the file that names them)."""
    if not path.is_file():
        where = f" (named by 'base' in {trail[-1]})" if trail else ""
        raise UserError(f"config file {path} not found{where}")
    if path.resolve() in {p.resolve() for p in trail}:
        raise UserError(f"{trail[0]}: 'base' chain loops back to {path}")
    try:
        node = OmegaConf.load(path)  # its YAML loader refuses a key given twice in one mapping
    except yaml.MarkedYAMLError as e:
        line = f", line {e.problem_mark.line + 1}" if e.problem_mark else ""
        twice = re.fullmatch(r"found duplicate key (.+)", e.problem or "")
        if twice:
            raise UserError(
                f"{path}{line}: key '{twice.group(1)}' appears twice in the same section; keep one"
            ) from None
        raise UserError(f"{path}{line}: not valid YAML ({e.problem or e.context})") from None
    except Exception as e:  # yaml.YAMLError and friends
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(node, DictConfig):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    if not node and not re.search(r"^\s*[^#\s]", path.read_text(), re.MULTILINE):
        raise UserError(f"{path}: empty; a config states what differs from the defaults (at least base: exp001.yaml, "
                        "or exp: <name>)")  # fmt: skip
    _check_sections(node, str(path))
    base = node.pop("base", None)
    if base is None:
        return node
    if not isinstance(base, str) or not base:
        raise UserError(f"{path}: 'base' must name another config file, e.g. base: exp001.yaml")
    return OmegaConf.merge(_read_yaml(path.parent / base, (*trail, path)), node)


# List keys that also take one bare word: `tta.views: auto` reads as `tta.views: [auto]`.
WORD_OR_LIST = ("tta.views",)


# Word keys whose words YAML 1.1 reads as booleans: `train.amp: off` (and `train.amp=off` on the command line) arrives
# as False. The boolean is read back as the word meant.
BOOLEAN_WORDS = {"train.amp": {False: "off", True: "auto"}}


# Top-level keys that hold a section of keys (data, optim, train...): a list or a number there is a slip.
SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory))


def _check_sections(node: DictConfig, where: str) -> None:
    for key in SECTIONS:
        value = node.get(key) if key in node else {}
        if not isinstance(value, DictConfig | dict):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else "empty" if value is None else value
            raise UserError(f"{where}: config key '{key}' is {shown!r}; expected a section of keys (a mapping: "
                            f"'{key}:', then e.g. '{_keys_at(key)[0]}: ...' indented below it)")  # fmt: skip


def _normalise_words(node: DictConfig) -> DictConfig:
    for key in WORD_OR_LIST:
        value = OmegaConf.select(node, key, default=None)
        if isinstance(value, str):
            OmegaConf.update(node, key, [value], merge=False)
    for key, words in BOOLEAN_WORDS.items():
        value = OmegaConf.select(node, key, default=None)
        if isinstance(value, bool):
            OmegaConf.update(node, key, words[value], merge=False)
    return node


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- base YAML <- YAML file <- `key=value` overrides, checked against the schema and validated."""
    path = Path(path)
    file_cfg = _normalise_words(_read_yaml(path))
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. train.epochs=3)")
        try:
            _check_sections(OmegaConf.from_dotlist([item]), f"override {item!r}")
        except yaml.YAMLError as e:
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"override {item!r}: its value is not valid YAML ({why}); close brackets and quotes, "
                            "e.g. tta.views=[identity,hflip]") from None  # fmt: skip
        except OmegaConfBaseException as e:
            raise UserError(f"override {item!r}: {_describe(e)}") from None
    try:
        cli_cfg = _renamed(_normalise_words(OmegaConf.from_dotlist(list(overrides))))
        merged = OmegaConf.merge(OmegaConf.structured(Config), _renamed(file_cfg), cli_cfg)
        if OmegaConf.is_missing(merged, "exp"):
            merged.exp = path.stem
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(f"{path}: {_describe(e)}") from None
    assert isinstance(cfg, Config)
    _expand_home(cfg)
    try:
        validate(cfg)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return cfg


# Path keys. `~` is expanded once, at load, so every stage (and wandb) sees the same folder. Those written to stay
# inside the project (the working directory) when relative, and never name the project or a folder above it; an
# absolute path is taken as given (a scratch disk, /kaggle/working). data.* paths are only read: an absolute data.dir
# (a Kaggle input folder) or one beside the project (../input) is fine.
WRITTEN_PATHS = ("output_dir", "data.cache_dir", "folds.path")
PATH_KEYS = (*WRITTEN_PATHS, "data.dir", "data.train_csv", "data.test_csv", "data.sample_submission",
             "data.train_images", "data.test_images", "pseudo.extra_images", "model.weights")  # fmt: skip


def _expand_home(cfg: Config) -> None:
    for key in PATH_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = get(cfg, parent) if parent else cfg
        value = getattr(node, leaf)
        if isinstance(value, str) and value.startswith("~"):
            setattr(node, leaf, os.path.expanduser(value))


def _check_written_path(key: str, value: str) -> None:
    here = Path.cwd().resolve()
    where = (here / os.path.expanduser(value)).resolve()
    if value.startswith("~") or not value.strip():  # `~` that os.path.expanduser could not expand (no HOME)
        raise UserError(f"config key '{key}' is {value!r}; expected a path inside the project, e.g. outputs")
    if not Path(value).is_absolute() and not where.is_relative_to(here):
        raise UserError(f"config key '{key}' is {value!r}, which leaves the project folder {here}; expected a path "
                        "inside it, or an absolute path")  # fmt: skip
    if where == here or here.is_relative_to(where):
        raise UserError(f"config key '{key}' is {value!r}, the project folder {here} or one above it; expected a "
                        "folder of its own inside it (e.g. outputs), or elsewhere")  # fmt: skip


def _renamed(node: DictConfig) -> DictConfig:
    """Configs written before a key was renamed (an older run's outputs/<exp>/config.yaml, read again by teachers,
    `upload` and the offline notebook) load under the new name: data.cache_images true/false -> data.cache
    memory/none (unless data.cache is given too)."""
    data = node.get("data")
    if isinstance(data, DictConfig) and "cache_images" in data:
        old = data.pop("cache_images")
        if "cache" not in data:
            data.cache = "memory" if old else "none"
    return node


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or "?"
    if isinstance(e, ConfigKeyError):
        parent, _, leaf = key.rpartition(".")
        allowed = _keys_at(parent)
        close = difflib.get_close_matches(leaf, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f"in '{parent}'" if parent else "at the top level"
        return f"unknown key '{key}'{hint}; keys {where}: {', '.join(allowed)}"
    if isinstance(e, ValidationError):
        first = str(e).splitlines()[0]
        return f"wrong type for '{key}': {first}"
    return str(e).splitlines()[0]


def _keys_at(dotted: str) -> list[str]:
    node: Any = Config
    for part in filter(None, dotted.split(".")):
        types = {f.name: f.type for f in dataclasses.fields(node)}
        sub = next((f.default_factory for f in dataclasses.fields(node) if f.name == part), None)
        if part not in types or not callable(sub):
            return []
        node = type(sub())
    return [f.name for f in dataclasses.fields(node)]


def get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise UserError(f"config key '{key}' is {value!r}; expected {expected}")


def _is_encoding(name: str) -> bool:
    try:
        return codecs.lookup(name) is not None
    except LookupError:
        return False


def _lr_ok(lr: Any) -> bool:
    if lr == "auto":
        return True
    return isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0


def validate(cfg: Config) -> None:
    """Every check that the config alone can answer: choices, ranges, and keys that must agree."""
    check_name(cfg.exp, "config key 'exp'")
    for key in WRITTEN_PATHS:
        _check_written_path(key, get(cfg, key))
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise UserError(f"config key '{key}' is {value!r}; allowed: {', '.join(allowed)}")
    tc = cfg.data.target_col
    if not (isinstance(tc, str) or (isinstance(tc, list) and tc and all(isinstance(c, str) for c in tc))):
        raise UserError(f"config key 'data.target_col' must be a column name or a list of names, got {tc!r}")
    if isinstance(tc, list) and cfg.task != "multilabel" and len(tc) > 1:
        raise UserError(f"config key 'data.target_col' lists {len(tc)} columns; only task=multilabel takes several")
    grouping = folds_module.GROUP_METHODS
    if cfg.folds.group_col is not None and cfg.folds.method not in ("auto", *grouping):
        raise UserError(
            f"config key 'folds.group_col'={cfg.folds.group_col!r} is ignored by folds.method={cfg.folds.method} "
            f"(a group would straddle folds); use folds.method={' or '.join(grouping)}, or auto (picks one)"
        )
    if metric_name(cfg) not in metrics.list_metrics(cfg.task):
        raise UserError(
            f"config key 'metric' is {cfg.metric!r}, which is not defined for task={cfg.task}; "
            f"metrics for {cfg.task}: {', '.join(metrics.list_metrics(cfg.task))}"
        )
    t, o, a, p, d, x = cfg.train, cfg.optim, cfg.augment, cfg.pseudo, cfg.distill, cfg.export
    checks = [
        (_is_encoding(cfg.data.encoding), "data.encoding", cfg.data.encoding, "a text encoding, e.g. utf-8, cp1252"),
        (2 <= cfg.folds.n_folds <= 20, "folds.n_folds", cfg.folds.n_folds, "2..20"),
        (cfg.folds.n_bins >= 2, "folds.n_bins", cfg.folds.n_bins, ">= 2"),
        (cfg.seed >= 0, "seed", cfg.seed, ">= 0"),
        (_auto_or_int(cfg.data.num_workers, 0), "data.num_workers", cfg.data.num_workers, "auto or an integer >= 0"),
        (_auto_or_int(cfg.threads, 1), "threads", cfg.threads, "auto or an integer >= 1"),
        (cfg.model.channels_last in (True, False, "auto"), "model.channels_last", cfg.model.channels_last,
         "auto, true or false"),
        (cfg.model.in_chans in (1, 3), "model.in_chans", cfg.model.in_chans, "1 (grayscale) or 3 (RGB)"),
        (0 <= cfg.model.drop_rate < 1, "model.drop_rate", cfg.model.drop_rate, "0 <= value < 1"),
        (0 <= cfg.model.drop_path_rate < 1, "model.drop_path_rate", cfg.model.drop_path_rate, "0 <= value < 1"),
        (cfg.model.freeze_backbone_epochs >= 0, "model.freeze_backbone_epochs", cfg.model.freeze_backbone_epochs,
         ">= 0"),
        (cfg.model.backbone_lr_mult is None or cfg.model.backbone_lr_mult >= 0, "model.backbone_lr_mult",
         cfg.model.backbone_lr_mult, ">= 0, or unset (0.1 pretrained, 1 from scratch)"),
        (a.image_size > 0, "augment.image_size", a.image_size, "> 0"),
        (1 <= a.randaugment_n <= len(aug_ops(cfg.model.in_chans)), "augment.randaugment_n", a.randaugment_n,
         f"1..{len(aug_ops(cfg.model.in_chans))} (the ops for model.in_chans={cfg.model.in_chans})"),
        (0 <= a.randaugment_m <= RANDAUGMENT_MAX_M, "augment.randaugment_m", a.randaugment_m,
         f"0..{RANDAUGMENT_MAX_M}"),
        (1 <= a.augmix_severity <= AUGMIX_MAX_SEVERITY, "augment.augmix_severity", a.augmix_severity,
         f"1..{AUGMIX_MAX_SEVERITY}"),
        (a.augmix_width >= 1, "augment.augmix_width", a.augmix_width, ">= 1"),
        (a.augmix_depth >= 0, "augment.augmix_depth", a.augmix_depth, ">= 0 (0: 1 to 3 ops, drawn per chain)"),
        (a.augmix_alpha > 0, "augment.augmix_alpha", a.augmix_alpha, "> 0"),
        (a.mixup_alpha >= 0, "augment.mixup_alpha", a.mixup_alpha, ">= 0 (0 = off)"),
        (a.cutmix_alpha >= 0, "augment.cutmix_alpha", a.cutmix_alpha, ">= 0 (0 = off)"),
        (0 <= a.mix_prob <= 1, "augment.mix_prob", a.mix_prob, "0..1"),
        (0 <= a.switch_prob <= 1, "augment.switch_prob", a.switch_prob, "0..1"),
        (_lr_ok(o.lr), "optim.lr", o.lr, "a number > 0, or auto (the LR finder's suggestion; see `lr-find`)"),
        (o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0"),
        (o.lookahead_k >= 1, "optim.lookahead_k", o.lookahead_k, ">= 1"),
        (0 < o.lookahead_alpha <= 1, "optim.lookahead_alpha", o.lookahead_alpha, "0 < value <= 1"),
        (not (o.lookahead and has_lookahead(o.name)), "optim.lookahead", o.lookahead,
         f"false with optim.name={o.name}, which holds a Lookahead already"),
        (0 <= o.momentum < 1, "optim.momentum", o.momentum, "0 <= value < 1"),
        (0 < o.pct_start < 1, "optim.pct_start", o.pct_start, "0 < value < 1"),
        (o.div_factor >= 1, "optim.div_factor", o.div_factor, ">= 1"),
        (o.final_div_factor >= 1, "optim.final_div_factor", o.final_div_factor, ">= 1"),
        (0 <= o.flat_pct <= 1, "optim.flat_pct", o.flat_pct, "0..1"),
        (0 <= o.warmup_pct < 1, "optim.warmup_pct", o.warmup_pct, "0 <= value < 1"),
        (o.restart_cycles >= 1, "optim.restart_cycles", o.restart_cycles, ">= 1"),
        (o.restart_mult > 0, "optim.restart_mult", o.restart_mult, "> 0 (1: cycles of equal length)"),
        (0 <= o.restart_floor < 1, "optim.restart_floor", o.restart_floor, "0 <= value < 1 (a share of optim.lr)"),
        (0 < o.step_pct <= 1, "optim.step_pct", o.step_pct, "0 < value <= 1"),
        (0 < o.step_gamma <= 1, "optim.step_gamma", o.step_gamma, "0 < value <= 1"),
        (o.grad_accum >= 1, "optim.grad_accum", o.grad_accum, ">= 1"),
        (o.clip_grad >= 0, "optim.clip_grad", o.clip_grad, ">= 0 (0 = off)"),
        (t.epochs >= 1, "train.epochs", t.epochs, ">= 1"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1"),
        (0 < t.ema_decay < 1, "train.ema_decay", t.ema_decay, "0 < value < 1"),
        (0 <= t.swa_start < 1, "train.swa_start", t.swa_start, "0 <= value < 1 (a fraction of train.epochs)"),
        (t.avg_best_k == 0 or t.avg_best_k >= 2, "train.avg_best_k", t.avg_best_k, "0 (off) or >= 2"),
        (not t.pick_averaged or t.swa or t.avg_best_k > 0 or _snapshots(o), "train.pick_averaged", t.pick_averaged,
         "false unless train.swa, train.avg_best_k or snapshots (optim.schedule=cosine_restarts with "
         "optim.restart_cycles >= 2) are on (there is nothing else to pick)"),
        (t.early_stopping >= 0, "train.early_stopping", t.early_stopping, ">= 0 (0 = off)"),
        (t.sampler_power >= 0, "train.sampler_power", t.sampler_power, ">= 0"),
        (t.limit_batches >= 0, "train.limit_batches", t.limit_batches, ">= 0 (0 = every batch)"),
        (cfg.tta.batch_size >= 1, "tta.batch_size", cfg.tta.batch_size, ">= 1"),
        (len(cfg.tta.views) >= 1, "tta.views", list(cfg.tta.views), "at least one view, e.g. [identity]"),
        (0 <= cfg.submit.threshold <= 1, "submit.threshold", cfg.submit.threshold, "0..1"),
        (p.rounds >= 1, "pseudo.rounds", p.rounds, ">= 1"),
        (0 <= p.threshold <= 1, "pseudo.threshold", p.threshold, "0..1"),
        (0 < p.top_fraction <= 1, "pseudo.top_fraction", p.top_fraction, "> 0 and <= 1"),
        (p.max_per_class >= 0, "pseudo.max_per_class", p.max_per_class, ">= 0 (0 = no cap)"),
        (p.weight >= 0, "pseudo.weight", p.weight, ">= 0"),
        (0 <= p.batch_ratio < 1, "pseudo.batch_ratio", p.batch_ratio, "0 <= value < 1"),
        (0 <= d.alpha <= 1, "distill.alpha", d.alpha, "0..1 (weight of the distillation term)"),
        (d.temperature > 0, "distill.temperature", d.temperature, "> 0"),
        (x.opset >= (18 if x.exporter == "dynamo" else 13), "export.opset", x.opset,
         ">= 18 with export.exporter=dynamo, >= 13 with torchscript"),
        (x.tolerance > 0, "export.tolerance", x.tolerance, "> 0"),
        (x.check_batches >= 1, "export.check_batches", x.check_batches, ">= 1"),
        (x.calibration_batches >= 1, "export.calibration_batches", x.calibration_batches, ">= 1"),
        (0 < x.sparsity < 1, "export.sparsity", x.sparsity, "0 < value < 1 (the share of weights zeroed)"),
        (x.prune_finetune_epochs >= 0, "export.prune_finetune_epochs", x.prune_finetune_epochs, ">= 0 (0 = none)"),
        (x.prune_finetune_lr > 0, "export.prune_finetune_lr", x.prune_finetune_lr, "> 0 (a share of optim.lr)"),
        (x.qat_epochs >= 1, "export.qat_epochs", x.qat_epochs, ">= 1"),
        (x.qat_lr > 0, "export.qat_lr", x.qat_lr, "> 0 (a share of optim.lr)"),
        (0 <= cfg.serve.port <= 65535, "serve.port", cfg.serve.port, "0..65535"),
        (cfg.serve.max_batch >= 1, "serve.max_batch", cfg.serve.max_batch, ">= 1 (1 = no batching)"),
        (cfg.serve.max_wait_ms >= 0, "serve.max_wait_ms", cfg.serve.max_wait_ms, ">= 0"),
        (cfg.serve.max_bytes >= 1, "serve.max_bytes", cfg.serve.max_bytes, ">= 1"),
        (cfg.serve.max_files >= 1, "serve.max_files", cfg.serve.max_files, ">= 1"),
    ]  # fmt: skip
    for ok, key, value, expected in checks:
        _check(ok, key, value, expected)
    if tta.AUTO in cfg.tta.views and list(cfg.tta.views) != [tta.AUTO]:
        raise UserError(f"config key 'tta.views' is {list(cfg.tta.views)}; 'auto' stands alone (tta.views: auto)")
    for view in [v for v in cfg.tta.views if v != tta.AUTO] + list(cfg.tta.candidates):
        tta.get_view(view)  # an unknown view names itself and the choices
    unknown = [v for v in x.variants if v not in EXPORT_VARIANTS]
    if unknown or len(set(x.variants)) != len(x.variants):
        raise UserError(f"config key 'export.variants' is {list(x.variants)}; expected distinct names among "
                        f"{', '.join(EXPORT_VARIANTS)}")  # fmt: skip
    for needs_onnx in ("onnx_int8", "dynamic_int8"):
        if needs_onnx in x.variants and "onnx" not in x.variants:
            raise UserError(f"config key 'export.variants' lists {needs_onnx} without onnx: int8 is quantised from "
                            "the ONNX model")  # fmt: skip
    check_backbone(cfg.model.backbone)
    if cfg.device != "auto":
        parse_device(cfg.device)
    check_normalization(cfg.augment, cfg.model.in_chans)
    if cfg.task == "regression" and (p.threshold > 0 or p.top_fraction < 1 or p.max_per_class > 0):
        raise UserError("pseudo.threshold / top_fraction / max_per_class rank confidences; task=regression has none")
    n_pseudo = round(t.batch_size * p.batch_ratio)
    if p.batch_ratio > 0 and t.batch_size > 1 and not 0 < n_pseudo < t.batch_size:
        raise UserError(
            f"config key 'pseudo.batch_ratio'={p.batch_ratio} gives {n_pseudo} pseudo rows in a batch of "
            f"train.batch_size={t.batch_size}; expected at least 1 pseudo and 1 labelled row"
        )
    losses.check_options(cfg.loss, cfg.task)
    if cfg.submit.ordinal and cfg.task != "regression":
        raise UserError(
            f"config key 'submit.ordinal' rounds regression predictions to grades; task={cfg.task} has none"
        )
    if cfg.train.sampler != "none" and cfg.task == "regression":
        raise UserError("config key 'train.sampler' balances classes; task=regression has none (use none)")
    if cfg.train.frozen_features and cfg.task in PIXEL_TASKS:
        raise UserError(f"config key 'train.frozen_features' fits a head on pooled features; task={cfg.task} predicts "
                        "maps and has none (use false)")  # fmt: skip
    if cfg.task in PIXEL_TASKS:
        _check_segmentation(cfg)
    m = cfg.model  # model.init_from: a plain experiment name, another one than this, fold-wise (not a full fit)
    _check(m.init_from_head in ("keep", "reset"), "model.init_from_head", m.init_from_head, "keep or reset")
    if m.init_from is not None:
        check_name(m.init_from, "config key 'model.init_from'")
        if m.init_from == cfg.exp:
            raise UserError(f"config key 'model.init_from' is {m.init_from!r}, this experiment itself: name the "
                            "experiment whose fold-k weights each fold starts from")  # fmt: skip
        if "@" in m.init_from:
            raise UserError(f"config key 'model.init_from' is {m.init_from!r}, a model fitted on every row: "
                            "fold k starts only from a fold-k model, which never saw its validation rows")  # fmt: skip
    lb = cfg.lb
    _check(lb.public_rows >= 0, "lb.public_rows", lb.public_rows, ">= 0 (0: lb.public_share of the test rows)")
    _check(0 < lb.public_share <= 1, "lb.public_share", lb.public_share, "in (0, 1]")
    _check(lb.draws >= 100, "lb.draws", lb.draws, ">= 100")
    _check(0.5 <= lb.confidence < 1, "lb.confidence", lb.confidence, "in [0.5, 1)")
    _check_weights(cfg)
    _check_seeds(cfg)
    _check_data_checks(cfg)


def _check_weights(cfg: Config) -> None:
    """model.weights: the pretrained backbone from a file, so model.pretrained must be on. The file itself is looked
    for where the weights are loaded (build_model, at training): a notebook that only predicts never needs it."""
    w = cfg.model.weights
    if w is not None and (not isinstance(w, str) or not w.strip()):
        raise UserError(f"config key 'model.weights' is {w!r}; expected the path of a weights file, or unset")
    if w is not None and not cfg.model.pretrained:
        raise UserError(f"config key 'model.weights' is {w!r} but model.pretrained is false; set model.pretrained: "
                        "true to start from those weights, or unset model.weights")  # fmt: skip


def _check_seeds(cfg: Config) -> None:
    """`seeds`: unset (one training under `seed`), or at least two distinct integers >= 0, each its member experiment
    `<exp>-seed<s>` (a plain name within the length a file system takes)."""
    if cfg.seeds is None:
        return
    seeds = list(cfg.seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UserError(f"config key 'seeds' is {seeds}; expected at least two distinct integers >= 0 (e.g. "
                        "[42, 7, 1]), or unset for one training under 'seed'")  # fmt: skip
    for s in seeds:
        check_name(seed_member(cfg.exp, s), "config key 'seeds': the member experiment")


def seed_members(cfg: Config) -> list[Config]:
    """A seed bag's members (config key `seeds`): the experiment `<exp>-seed<s>` per seed, exactly `cfg` with
    `seed: s` (and no `seeds`: each member is one ordinary training). None bagged: [cfg]."""
    if not cfg.seeds:
        return [cfg]
    return [dataclasses.replace(cfg, exp=seed_member(cfg.exp, s), seed=s, seeds=None) for s in cfg.seeds]


def _check_data_checks(cfg: Config) -> None:
    """check-data's keys (checks.*) and folds.groups_file."""
    k, groups_file = cfg.checks, cfg.folds.groups_file
    _check(k.hash in HASHES, "checks.hash", k.hash, f"one of {', '.join(HASHES)}")
    _check(0 <= k.hash_distance < HASH_BITS, "checks.hash_distance", k.hash_distance,
           f"0..{HASH_BITS - 1} (bits of {HASH_BITS} that may differ between near duplicates)")  # fmt: skip
    _check(2 <= k.adversarial_folds <= 20, "checks.adversarial_folds", k.adversarial_folds, "2..20")
    _check(k.top_k >= 1, "checks.top_k", k.top_k, ">= 1")
    _check(k.show_pairs >= 1, "checks.show_pairs", k.show_pairs, ">= 1")
    if groups_file is None:
        return
    _check(bool(str(groups_file).strip()), "folds.groups_file", groups_file, "a groups table, e.g. "
           "outputs/data_check/groups.csv (check-data writes it)")  # fmt: skip
    if cfg.folds.group_col is not None:
        raise UserError(f"config keys 'folds.groups_file'={groups_file!r} and 'folds.group_col'="
                        f"{cfg.folds.group_col!r} both name the groups; keep one")  # fmt: skip
    grouping = folds_module.GROUP_METHODS
    if cfg.folds.method not in ("auto", *grouping):
        raise UserError(f"config key 'folds.groups_file'={groups_file!r} is ignored by folds.method="
                        f"{cfg.folds.method} (a group would straddle folds); use folds.method="
                        f"{' or '.join(grouping)}, or auto (picks one)")  # fmt: skip


def _snapshots(o: OptimConfig) -> bool:
    """Whether the schedule takes snapshots to average (cosine_restarts with two cycles or more)."""
    return bool(SCHEDULES.meta(o.schedule).get("restarts")) and o.restart_cycles >= 2


def _check_segmentation(cfg: Config) -> None:
    """What task=segmentation cannot honour exactly is refused, never adjusted: an smp architecture that fits
    model.decoder_channels, and no batch mixing (timm's Mixup mixes images and class targets, not the masks: a mixed
    image would be trained on one image's mask)."""
    check_segmentation_model(cfg.model)
    for key in ("augment.mixup_alpha", "augment.cutmix_alpha"):
        if get(cfg, key) > 0:
            raise UserError(f"config key '{key}' is {get(cfg, key)}; task=segmentation mixes no masks (use 0)")
    if cfg.augment.preset == "augmix":
        raise UserError("config key 'augment.preset' is augmix; task=segmentation cannot use it: AugMix blends "
                        "differently warped copies of an image, which no one mask fits (use autoaugment, trivial "
                        "or randaugment)")  # fmt: skip
    d = cfg.data
    refused = [
        (
            d.cache != "none",
            "data.cache",
            "none: the decode cache stores resized images, which the masks (laid on "
            "the original pixels) would no longer fit",
        ),
        (cfg.train.sampler != "none", "train.sampler", "none: pixels have no per-image class to balance"),
        (cfg.submit.format not in ("auto",), "submit.format", "auto: masks are submitted run-length encoded"),
        (
            d.rle_col is not None and not isinstance(d.rle_col, str) and d.class_col is not None,
            "data.rle_col",
            "one column when data.class_col names the class column",
        ),
    ]
    for bad, key, want in refused:
        if bad:
            raise UserError(f"config key '{key}' is {get(cfg, key)!r}; task=segmentation needs {want}")
    if cfg.augment.image_size % 32:
        raise UserError(f"config key 'augment.image_size' is {cfg.augment.image_size}; segmentation decoders halve "
                        "the image 5 times: use a multiple of 32")  # fmt: skip


# Keys that leave what a fold learns unchanged (where files are, what is logged, what happens after training): a
# run interrupted under other values of these resumes as it is. Every other key alters training, so a change to it
# stops a resume (see training_changes). pseudo.rounds only asks for more rounds later. data.num_workers is one:
# the augmentations are seeded per image and the thread count never follows the workers (runtime.plan_cpu). Keys of
# where and how fast the math runs are not: another torch thread count, memory format, compiled kernels or device
# add up in another order (CPU convolutions under another thread count: PITFALLS), and data.cache none decodes
# full-size images where memory / disk shrink them first.
RESUME_IGNORES = (
    "exp",
    "output_dir",
    "competition",
    "data.dir",
    "data.num_workers",
    "data.cache_dir",
    "train.pick_averaged",  # which of the averages best.pt holds is chosen after training
    "tta",
    "wandb",
    "submit",
    "serve",
    "pseudo.rounds",
    "seeds",  # a seed bag's member is one training under `seed`; `seeds` only says which members to train
    "checks",
)


def _flatten(node: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3}"""
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def training_changes(saved: Path, cfg: Config | Path) -> list[str]:
    """'key old -> new' for each key that alters training (all but RESUME_IGNORES) and differs between the
    config a run was trained with (its config.yaml, `saved`) and `cfg` (a config, or another saved one)."""
    old = _saved_keys(saved)
    new = _saved_keys(cfg) if isinstance(cfg, Path) else _flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))
    absent = object()

    def ignored(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in RESUME_IGNORES)

    def show(value: Any) -> str:
        return "(absent)" if value is absent else repr(value)

    keys = [k for k in dict.fromkeys([*old, *new]) if not ignored(k)]
    return [f"{k} {show(old.get(k, absent))} -> {show(new.get(k, absent))}"
            for k in keys if old.get(k, absent) != new.get(k, absent)]  # fmt: skip


def _saved_keys(saved: Path) -> dict[str, Any]:
    try:
        return _flatten(OmegaConf.to_container(_renamed(OmegaConf.load(saved))))
    except Exception as e:
        raise UserError(f"{saved}: not readable ({str(e).splitlines()[0]}); --force starts the run over") from None


def _auto_or_int(value: int | str, low: int) -> bool:
    return value == "auto" or (isinstance(value, int) and value >= low)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, to_yaml(cfg))
