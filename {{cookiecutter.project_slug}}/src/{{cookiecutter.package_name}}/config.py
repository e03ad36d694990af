"""The experiment config: a dataclass schema, loaded from YAML with dotted command-line overrides.

`configs/<exp>.yaml` holds only what differs from the defaults below; the experiment's name is the file's stem.
`base: exp001.yaml` (a path relative to the file) merges another config first, so a later experiment states only
what it changes. OmegaConf's struct mode turns an unknown key or a wrong type into an error that names the key;
every range and combination check then runs here, at load time, so a bad config stops before any data is read.
Config keys that name a registry entry (loss, optimizer, schedule, metric, preset, sampler) take their allowed
values from that registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .core.errors import UserError
from .core.runs import Run, atomic_write_text
from .core.runtime import parse_device
from .core.tasks import TASKS
from .data import folds as folds_module
from .data.augment import PRESETS, RANDAUGMENT_MAX_M, aug_ops, check_normalization
from .data.cache import MODES as CACHE_MODES
from .data.samplers import SAMPLERS
from .modeling import losses, metrics, tta
from .modeling.deploy import EXPORTERS
from .modeling.models import check_backbone
from .modeling.optim import OPTIMIZERS, SCHEDULES
from .modeling.predictors import ONNX_MODELS, RUNTIMES

EXPORT_VARIANTS = ("torchscript", "onnx", "onnx_int8", "pruned")  # besides the fp32 torch model, always measured


@dataclass
class DataConfig:
    dir: str = "data"  # the other paths are relative to it (unless absolute)
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    sample_submission: str = "sample_submission.csv"
    train_images: str = "train"
    test_images: str = "test"
    id_col: str = "id"
    target_col: Any = "label"  # one column, or (multilabel) a list of 0/1 columns
    label_sep: str = " "  # multilabel tags in one column are split on this
    image_ext: str = ".png"  # appended to the id unless the id already ends with an extension
    cache: str = "none"  # none | memory | disk: decode each image once, at the size training needs (data/cache.py)
    cache_dir: str = "data/cache"  # data.cache=disk: where the decoded arrays live (relative to the project)
    num_workers: int | str = "auto"  # loader processes; auto: see threads


@dataclass
class FoldsConfig:
    n_folds: int = 5
    method: str = "auto"  # auto | stratified | multilabel | group | stratified_group | binned | kfold
    group_col: str | None = None  # rows sharing a group never straddle folds
    n_bins: int = 10  # regression targets are binned into quantiles before stratifying
    seed: int = 42  # separate from `seed`: changing the training seed must not change the split
    path: str = "data/folds.csv"


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    pretrained: bool = True
    in_chans: int = 3
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    freeze_backbone_epochs: int = 0  # train only the head for the first N epochs
    # backbone LR = optim.lr * this (the head gets optim.lr); unset: 0.1 with pretrained weights, 1 from scratch
    backbone_lr_mult: float | None = None
    channels_last: bool | str = "auto"  # auto: on for CUDA, off on CPU
    compile: bool = False  # torch.compile the training model
    init_head: str = "prior"  # prior: logits start at the training fold's label prior (regression: the mean) | none


@dataclass
class AugmentConfig:
    image_size: int = 256
    preset: str = "light"  # none | light | medium | heavy | trivial | randaugment (PRESETS in data/augment.py)
    randaugment_n: int = 2  # randaugment: ops per image
    randaugment_m: float = 9.0  # randaugment: their level, 0..10
    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    mixup_alpha: float = 0.0  # > 0 turns mixup on (timm.data.Mixup)
    cutmix_alpha: float = 0.0  # > 0 turns cutmix on
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    mean: list[float] | None = None  # None: the backbone's pretrained normalisation
    std: list[float] | None = None


@dataclass
class LossConfig:
    name: str = "auto"  # auto: ce (multiclass), bce (binary, multilabel), mse (regression)
    label_smoothing: float = 0.0
    class_weight: str = "none"  # none | balanced
    pos_weight: float | None = None  # BCE positive weight; None = 1
    focal_gamma: float = 2.0
    huber_delta: float = 1.0


@dataclass
class OptimConfig:
    name: str = "ranger"
    lr: Any = 0.03  # a number > 0, or auto: the LR finder's suggestion (fold 0, once per experiment, cached)
    weight_decay: float = 1e-2
    momentum: float = 0.9
    schedule: str = "one_cycle"  # one_cycle | flat_cos | cosine | constant
    pct_start: float = 0.25  # one_cycle: share of steps rising to the peak LR
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    flat_pct: float = 0.7  # flat_cos: share of steps at the full LR before the cosine decay
    warmup_pct: float = 0.05  # cosine: linear warm-up share
    grad_accum: int = 1
    clip_grad: float = 0.0  # max gradient norm; 0 = off


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    amp: str = "auto"  # auto (bf16 on a GPU that has it, else fp16; off on CPU) | bf16 | fp16 | off (true: auto)
    ema: bool = True
    ema_decay: float = 0.998
    swa: bool = False  # also average the weights of the last epochs (SWA), scored beside the best epoch
    swa_start: float = 0.75  # SWA averages the epochs after this fraction of train.epochs
    avg_best_k: int = 0  # > 1: also average the K best epochs' weights, scored beside the best epoch
    pick_averaged: bool = False  # best.pt becomes an average when it scores better on the fold's validation rows
    early_stopping: int = 0  # patience in epochs; 0 = off
    sampler: str = "none"  # none | weighted | upsample | downsample
    sampler_power: float = 1.0  # weighted: weight = 1 / count ** power
    deterministic: bool = False
    limit_batches: int = 0  # > 0: stop each epoch after this many batches (smoke runs)


@dataclass
class TTAConfig:
    views: list[str] = field(default_factory=lambda: ["identity"])  # or auto: chosen on OOF among the candidates
    candidates: list[str] = field(default_factory=tta.default_candidates)  # views: auto picks among these
    merge: str = "mean"  # mean | gmean | max
    batch_size: int = 64


@dataclass
class PredictConfig:
    runtime: str = "torch"  # torch: the fold checkpoints | onnx: the models `export` wrote (onnxruntime)
    onnx_model: str = "fp32"  # runtime onnx: fp32 (model.onnx) | int8 (model_int8.onnx)


@dataclass
class ExportConfig:
    variants: list[str] = field(default_factory=lambda: list(EXPORT_VARIANTS))  # fp32 torch is always measured
    exporter: str = "dynamo"  # dynamo (torch.export; needs onnxscript) | torchscript (older tracer, quicker)
    opset: int = 18
    dynamic_size: bool = False  # ONNX height/width dynamic too (TTA scale_* views resize the input)
    tolerance: float = 1e-4  # max |probability difference| ONNX vs torch; beyond it the ONNX model is refused
    check_batches: int = 4  # validation batches (tta.batch_size) for the parity check and the CPU images/s
    calibration_batches: int = 8  # int8: batches of fold k's training images that set the activation ranges
    per_channel: bool = True  # int8: one weight scale per output channel
    sparsity: float = 0.5  # pruned: share of conv/linear weights zeroed (global magnitude pruning)
    prune_finetune_epochs: int = 0  # pruned: epochs of fine-tuning with the zeros kept (0 = none)
    prune_finetune_lr: float = 0.1  # ... at this share of optim.lr


@dataclass
class WandbConfig:
    mode: str = "offline"  # online | offline | disabled
    project: str = "kaggle"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class PseudoConfig:
    teacher: str = ""  # experiment (or ensemble) directory name under output_dir
    rounds: int = 1
    soft: bool = True  # soft: teacher probabilities; hard: one-hot argmax
    threshold: float = 0.0  # keep rows whose confidence is at least this
    top_fraction: float = 1.0  # and within the most confident share of each class
    max_per_class: int = 0  # cap per class; 0 = no cap
    weight: float = 1.0  # loss weight of pseudo rows
    batch_ratio: float = 0.3  # share of each training batch drawn from pseudo rows
    extra_images: str | None = None  # an extra unlabelled image folder
    tta: bool = True


@dataclass
class DistillConfig:
    teachers: list[str] = field(default_factory=list)
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha goes to the task loss
    temperature: float = 4.0
    use_test: bool = False  # also distil on test images (soft teacher labels)


@dataclass
class SubmitConfig:
    format: str = "auto"  # auto (from sample_submission) | label | probs | tags | value
    threshold: float = 0.5  # multilabel / binary-label default threshold
    tune_thresholds: bool = True  # tune per-label thresholds on OOF
    clip: bool = True  # clip regression values to the training range
    # Regression: round predictions to the target's levels (grades) with cuts tuned on OOF for the metric; recorded
    # in cv.json (cv_ordinal) and applied to the test predictions. Unset: on for metric qwk, off otherwise.
    ordinal: bool | None = None


@dataclass
class Config:
    task: str = "multiclass"  # multiclass | binary | multilabel | regression
    metric: str = "auto"  # auto: the usual metric for the task
    seed: int = 42
    exp: str = MISSING  # the config file's stem
    competition: str = ""  # the Kaggle competition slug (kaggle competitions download/submit)
    output_dir: str = "outputs"
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    # torch threads of the main process; auto (with data.num_workers: auto): on CUDA every core but one decodes,
    # on CPU a quarter of the cores decode and the rest compute, so that threads + workers <= cores (runtime.plan_cpu)
    threads: int | str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.exp

    @property
    def run(self) -> Run:
        """This experiment's run folder: every artefact path (core/runs.py)."""
        return Run(self.run_dir)

    @property
    def target_cols(self) -> list[str]:
        t = self.data.target_col
        return [t] if isinstance(t, str) else list(t)


# Allowed values of the keys that name a choice; those a registry holds come from the registry.
CHOICES: dict[str, tuple[str, ...]] = {
    "task": TASKS,
    "metric": ("auto", *metrics.list_metrics()),
    "folds.method": folds_module.METHODS,
    "data.cache": CACHE_MODES,
    "augment.preset": tuple(PRESETS.names()),
    "model.init_head": ("prior", "none"),
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
}

DEFAULT_METRIC = {"multiclass": "accuracy", "binary": "roc_auc", "multilabel": "f1_micro", "regression": "rmse"}


def _read_yaml(path: Path, trail: tuple[Path, ...] = ()) -> Any:
    """The file's YAML with its `base:` chain merged underneath (paths relative to the file that names them)."""
    if not path.is_file():
        where = f" (named by 'base' in {trail[-1]})" if trail else ""
        raise UserError(f"config file {path} not found{where}")
    if path.resolve() in {p.resolve() for p in trail}:
        raise UserError(f"{trail[0]}: 'base' chain loops back to {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(node, DictConfig):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
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
        cli_cfg = _renamed(_normalise_words(OmegaConf.from_dotlist(list(overrides))))
        merged = OmegaConf.merge(OmegaConf.structured(Config), _renamed(file_cfg), cli_cfg)
        if OmegaConf.is_missing(merged, "exp"):
            merged.exp = path.stem
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(f"{path}: {_describe(e)}") from None
    assert isinstance(cfg, Config)
    try:
        validate(cfg)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return cfg


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


def _lr_ok(lr: Any) -> bool:
    if lr == "auto":
        return True
    return isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0


def validate(cfg: Config) -> None:
    """Every check that the config alone can answer: choices, ranges, and keys that must agree."""
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise UserError(f"config key '{key}' is {value!r}; allowed: {', '.join(allowed)}")
    tc = cfg.data.target_col
    if not (isinstance(tc, str) or (isinstance(tc, list) and tc and all(isinstance(c, str) for c in tc))):
        raise UserError(f"config key 'data.target_col' must be a column name or a list of names, got {tc!r}")
    if isinstance(tc, list) and cfg.task != "multilabel" and len(tc) > 1:
        raise UserError(f"config key 'data.target_col' lists {len(tc)} columns; only task=multilabel takes several")
    if metric_name(cfg) not in metrics.list_metrics(cfg.task):
        raise UserError(
            f"config key 'metric' is {cfg.metric!r}, which is not defined for task={cfg.task}; "
            f"metrics for {cfg.task}: {', '.join(metrics.list_metrics(cfg.task))}"
        )
    t, o, a, p, d, x = cfg.train, cfg.optim, cfg.augment, cfg.pseudo, cfg.distill, cfg.export
    checks = [
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
        (a.mixup_alpha >= 0, "augment.mixup_alpha", a.mixup_alpha, ">= 0 (0 = off)"),
        (a.cutmix_alpha >= 0, "augment.cutmix_alpha", a.cutmix_alpha, ">= 0 (0 = off)"),
        (0 <= a.mix_prob <= 1, "augment.mix_prob", a.mix_prob, "0..1"),
        (0 <= a.switch_prob <= 1, "augment.switch_prob", a.switch_prob, "0..1"),
        (_lr_ok(o.lr), "optim.lr", o.lr, "a number > 0, or auto (the LR finder's suggestion; see `lr-find`)"),
        (o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0"),
        (0 <= o.momentum < 1, "optim.momentum", o.momentum, "0 <= value < 1"),
        (0 < o.pct_start < 1, "optim.pct_start", o.pct_start, "0 < value < 1"),
        (o.div_factor >= 1, "optim.div_factor", o.div_factor, ">= 1"),
        (o.final_div_factor >= 1, "optim.final_div_factor", o.final_div_factor, ">= 1"),
        (0 <= o.flat_pct <= 1, "optim.flat_pct", o.flat_pct, "0..1"),
        (0 <= o.warmup_pct < 1, "optim.warmup_pct", o.warmup_pct, "0 <= value < 1"),
        (o.grad_accum >= 1, "optim.grad_accum", o.grad_accum, ">= 1"),
        (o.clip_grad >= 0, "optim.clip_grad", o.clip_grad, ">= 0 (0 = off)"),
        (t.epochs >= 1, "train.epochs", t.epochs, ">= 1"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1"),
        (0 < t.ema_decay < 1, "train.ema_decay", t.ema_decay, "0 < value < 1"),
        (0 <= t.swa_start < 1, "train.swa_start", t.swa_start, "0 <= value < 1 (a fraction of train.epochs)"),
        (t.avg_best_k == 0 or t.avg_best_k >= 2, "train.avg_best_k", t.avg_best_k, "0 (off) or >= 2"),
        (not t.pick_averaged or t.swa or t.avg_best_k > 0, "train.pick_averaged", t.pick_averaged,
         "false unless train.swa or train.avg_best_k is on (there is nothing else to pick)"),
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
    if "onnx_int8" in x.variants and "onnx" not in x.variants:
        raise UserError(
            "config key 'export.variants' lists onnx_int8 without onnx: int8 is quantised from the ONNX model"
        )
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


# Keys that leave what a fold learns unchanged (where files are, how fast, what is logged, what happens after
# training): a run interrupted under other values of these resumes as it is. Every other key alters training,
# so a change to it stops a resume (see training_changes). pseudo.rounds only asks for more rounds later.
RESUME_IGNORES = (
    "exp",
    "output_dir",
    "competition",
    "device",
    "data.dir",
    "threads",
    "data.num_workers",
    "data.cache",
    "data.cache_dir",
    "model.channels_last",
    "model.compile",
    "train.pick_averaged",  # which of the averages best.pt holds is chosen after training
    "tta",
    "wandb",
    "submit",
    "pseudo.rounds",
)


def _flatten(node: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3}"""
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def training_changes(saved: Path, cfg: Config) -> list[str]:
    """'key old -> new' for each key that alters training (all but RESUME_IGNORES) and differs between the
    config a run was trained with (its config.yaml, `saved`) and `cfg`."""
    try:
        old = _flatten(OmegaConf.to_container(_renamed(OmegaConf.load(saved))))
    except Exception as e:
        raise UserError(f"{saved}: not readable ({str(e).splitlines()[0]}); --force starts the run over") from None
    new = _flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))
    absent = object()

    def ignored(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in RESUME_IGNORES)

    def show(value: Any) -> str:
        return "(absent)" if value is absent else repr(value)

    keys = [k for k in dict.fromkeys([*old, *new]) if not ignored(k)]
    return [f"{k} {show(old.get(k, absent))} -> {show(new.get(k, absent))}"
            for k in keys if old.get(k, absent) != new.get(k, absent)]  # fmt: skip


def _auto_or_int(value: int | str, low: int) -> bool:
    return value == "auto" or (isinstance(value, int) and value >= low)


def metric_name(cfg: Config) -> str:
    return DEFAULT_METRIC[cfg.task] if cfg.metric == "auto" else cfg.metric


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, to_yaml(cfg))
