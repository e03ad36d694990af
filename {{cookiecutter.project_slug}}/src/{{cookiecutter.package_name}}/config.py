"""The experiment config: a dataclass schema, loaded from YAML with dotted command-line overrides.

`configs/<exp>.yaml` holds only what differs from the defaults below; the experiment's name is the file's stem.
OmegaConf's struct mode turns an unknown key or a wrong type into an error that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError

TASKS = ("multiclass", "binary", "multilabel", "regression")


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
    cache_images: bool = False  # decode every image once and keep it in memory (small datasets)
    num_workers: int = 2


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
    backbone_lr_mult: float = 1.0  # backbone LR = lr * this (head gets lr)
    channels_last: bool = False
    compile: bool = False


@dataclass
class AugmentConfig:
    image_size: int = 256
    preset: str = "light"  # none | light | medium | heavy
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
    lr: float = 1e-3
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
    amp: str = "auto"  # auto (bf16 on a GPU that has it, else fp16; off on CPU) | bf16 | fp16 | off
    ema: bool = True
    ema_decay: float = 0.998
    early_stopping: int = 0  # patience in epochs; 0 = off
    sampler: str = "none"  # none | weighted | upsample | downsample
    sampler_power: float = 1.0  # weighted: weight = 1 / count ** power
    deterministic: bool = False
    limit_batches: int = 0  # > 0: stop each epoch after this many batches (smoke runs)


@dataclass
class TTAConfig:
    views: list[str] = field(default_factory=lambda: ["identity"])
    merge: str = "mean"  # mean | gmean | max
    batch_size: int = 64


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


@dataclass
class Config:
    task: str = "multiclass"  # multiclass | binary | multilabel | regression
    metric: str = "auto"  # auto: the usual metric for the task
    seed: int = 42
    exp: str = MISSING  # the config file's stem
    competition: str = ""  # the Kaggle competition slug (kaggle competitions download/submit)
    output_dir: str = "outputs"
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.exp

    @property
    def target_cols(self) -> list[str]:
        t = self.data.target_col
        return [t] if isinstance(t, str) else list(t)


CHOICES = {
    "task": TASKS,
    "folds.method": ("auto", "stratified", "multilabel", "group", "stratified_group", "binned", "kfold"),
    "augment.preset": ("none", "light", "medium", "heavy"),
    "loss.class_weight": ("none", "balanced"),
    "optim.schedule": ("one_cycle", "flat_cos", "cosine", "constant"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.sampler": ("none", "weighted", "upsample", "downsample"),
    "tta.merge": ("mean", "gmean", "max"),
    "wandb.mode": ("online", "offline", "disabled"),
    "submit.format": ("auto", "label", "probs", "tags", "value"),
}

DEFAULT_METRIC = {"multiclass": "accuracy", "binary": "roc_auc", "multilabel": "f1_micro", "regression": "rmse"}


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- `key=value` overrides, checked against the schema."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    schema = OmegaConf.structured(Config)
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. train.epochs=3)")
    try:
        merged = OmegaConf.merge(schema, file_cfg, OmegaConf.from_dotlist(list(overrides)))
        if OmegaConf.is_missing(merged, "exp"):
            merged.exp = path.stem
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(f"{path}: {_describe(e)}") from None
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


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


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise UserError(f"config key '{key}' is {value!r}; allowed: {', '.join(allowed)}")
    tc = cfg.data.target_col
    if not (isinstance(tc, str) or (isinstance(tc, list) and tc and all(isinstance(c, str) for c in tc))):
        raise UserError(f"config key 'data.target_col' must be a column name or a list of names, got {tc!r}")
    if isinstance(tc, list) and cfg.task != "multilabel" and len(tc) > 1:
        raise UserError(f"config key 'data.target_col' lists {len(tc)} columns; only task=multilabel takes several")
    if not 2 <= cfg.folds.n_folds <= 20:
        raise UserError(f"config key 'folds.n_folds' is {cfg.folds.n_folds}; expected 2..20")
    if cfg.augment.image_size <= 0 or cfg.train.batch_size <= 0 or cfg.optim.grad_accum <= 0:
        raise UserError("config keys 'augment.image_size', 'train.batch_size', 'optim.grad_accum' must be > 0")


def metric_name(cfg: Config) -> str:
    return DEFAULT_METRIC[cfg.task] if cfg.metric == "auto" else cfg.metric


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save(cfg: Config, path: str | Path) -> None:
    from .artefacts import atomic_write_text

    atomic_write_text(path, to_yaml(cfg))
