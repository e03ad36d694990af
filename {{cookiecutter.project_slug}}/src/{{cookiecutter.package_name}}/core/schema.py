"""The experiment config's schema: typed dataclasses with their defaults, and nothing else.

Types only: loading (`base:` inheritance, overrides) and every range and registry check live in config.py, which
sits above data/ and modeling/; those read their sections' types from here, so nothing below config imports it.
`configs/<exp>.yaml` holds only what differs from these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from .runs import Run

# Besides the fp32 torch model, always measured. qat fine-tunes (export.qat_epochs per fold): asked for by name only.
EXPORT_VARIANTS = ("torchscript", "onnx", "onnx_int8", "dynamic_int8", "pruned", "qat")
DEFAULT_EXPORT_VARIANTS = tuple(v for v in EXPORT_VARIANTS if v != "qat")


@dataclass
class DataConfig:
    dir: str = "data"  # the other paths are relative to it (unless absolute)
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    sample_submission: str = "sample_submission.csv"
    train_images: str = "train"
    test_images: str = "test"
    id_col: str = "id"
    encoding: str = "utf-8"  # of the competition's CSV files (train, test, sample submission, solution)
    target_col: Any = "label"  # one column, or (multilabel) a list of 0/1 columns
    label_sep: str = " "  # multilabel tags in one column are split on this
    image_ext: str = ".png"  # appended to the id unless the id already ends with an extension
    cache: str = "none"  # none | memory | disk: decode each image once, at the size training needs (data/cache.py)
    cache_dir: str = "data/cache"  # data.cache=disk: where the decoded arrays live (relative to the project)
    num_workers: int | str = "auto"  # loader processes; auto: see threads
    # task=segmentation: where the masks are. train_masks: a folder of PNG masks, `<id>.png` (pixel value = class
    # number 1..C, 0 = background; a 0/255 mask for one class) or `<id>_<class>.png` (one 0/nonzero mask per class).
    # Unset: run-length encodings in train_csv, in rle_col (one column; or a list: one column per class, named as
    # the class), one row per image and class when class_col names the class column (an empty cell = empty mask).
    train_masks: str | None = None
    rle_col: Any = "EncodedPixels"
    class_col: str | None = None
    rle_order: str = "F"  # F: Kaggle's column-major pixel numbering (top to bottom, then left to right) | C: row-major
    mask_classes: list[str] | None = None  # the classes in order; unset: sorted from the table (or 1..max of the PNGs)
    # multilabel: classes may overlap (each pixel any number of classes) | multiclass: at most one class per pixel
    # (the submission keeps each pixel's most probable class among those above their threshold)
    mask_mode: str = "multilabel"


@dataclass
class FoldsConfig:
    n_folds: int = 5
    method: str = "auto"  # auto | stratified | multilabel | group | stratified_group | binned | kfold
    group_col: str | None = None  # rows sharing a group never straddle folds
    n_bins: int = 10  # regression targets are binned into quantiles before stratifying
    seed: int = 42  # separate from `seed`: changing the training seed must not change the split
    path: str = "data/folds.csv"
    # a table of <data.id_col>,group (check-data's outputs/data_check/groups.csv: near-duplicate groups) joined to
    # the training table on the id and used as folds.group_col is: a group never straddles folds
    groups_file: str | None = None


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
    init: str = "timm"  # new layers (the head): timm (as built) | xavier | kaiming (INITS in modeling/models.py)
    coord_conv: bool = False  # two coordinate channels (x, y in -1..1) appended to the first convolution's input
    init_head: str = "prior"  # prior: logits start at the training fold's label prior (regression: the mean) | none
    # task=segmentation: the segmentation-models-pytorch architecture around the timm backbone (`tu-<backbone>`):
    # unet | unetplusplus | fpn | deeplabv3plus | linknet | manet | pan; decoder_channels unset: the architecture's
    # own (Unet: 256 128 64 32 16); fewer channels train faster on a CPU
    arch: str = "unet"
    decoder_channels: list[int] | None = None
    # the backbone's pretrained weights from this file instead of the hub (a Kaggle dataset in a notebook without
    # internet: /kaggle/input/<dataset>/model.safetensors): a .safetensors, .pth or .bin state dict as timm saves it;
    # relative to the project. Loaded by timm (the head left out, the first convolution adapted to model.in_chans);
    # needs model.pretrained: true. The normalisation stays the pretrained tag's (augment.mean/std to override).
    weights: str | None = None
    # multi-stage training: fold k starts from experiment <init_from>'s fold-k best.pt (progressive resizing, a
    # high-resolution fine-tune, external-data pretraining), checked never to have trained on fold k's validation rows
    init_from: str | None = None
    init_from_head: str = "keep"  # keep: the source's head too (same task and classes) | reset: the backbone only


@dataclass
class AugmentConfig:
    image_size: int = 256
    # none | light | medium | heavy | trivial | randaugment | augmix | autoaugment (PRESETS in data/augment.py)
    preset: str = "light"
    randaugment_n: int = 2  # randaugment: ops per image
    randaugment_m: float = 9.0  # randaugment: their level, 0..10
    augmix_severity: float = 3.0  # augmix: each op's level is drawn up to this, 1..10 (the paper's 3)
    augmix_width: int = 3  # augmix: chains mixed per image
    augmix_depth: int = 0  # augmix: ops per chain; 0: 1 to 3, drawn per chain
    augmix_alpha: float = 1.0  # augmix: Dirichlet (chain weights) and Beta (blend with the original) parameter
    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    mixup_alpha: float = 0.0  # > 0 turns mixup on (timm.data.Mixup)
    cutmix_alpha: float = 0.0  # > 0 turns cutmix on
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    # None: the backbone's pretrained normalisation; a list (one value, three, or one per channel); fold: computed
    # from fold k's training images when it trains (fold<k>/normalization.json), read back by every later stage
    mean: Any = None
    std: Any = None


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
    name: str = "ranger"  # OPTIMIZERS in modeling/optim.py
    lookahead: bool = False  # wrap optim.name in Lookahead (not ranger / ranger21: theirs is built in)
    lookahead_k: int = 5  # Lookahead: updates between syncs of the slow weights
    lookahead_alpha: float = 0.5  # Lookahead: the share of the way the slow weights move to the fast ones
    lr: Any = 0.03  # a number > 0, or auto: the LR finder's suggestion (fold 0, once per experiment, cached)
    weight_decay: float = 1e-2
    momentum: float = 0.9
    # one_cycle | flat_cos | cosine | constant | cosine_restarts | step (SCHEDULES in modeling/optim.py)
    schedule: str = "one_cycle"
    pct_start: float = 0.25  # one_cycle: share of steps rising to the peak LR
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    flat_pct: float = 0.7  # flat_cos: share of steps at the full LR before the cosine decay
    warmup_pct: float = 0.05  # cosine: linear warm-up share
    # cosine_restarts (SGDR): this many cosine cycles fill the run, each restart_mult times as long as the one before
    # (1: equal cycles), from optim.lr down to optim.lr * restart_floor; the weights at each cycle's end are
    # snapshots, averaged into the `snapshot` weights and scored beside the best epoch (modeling/averaging.py)
    restart_cycles: int = 3
    restart_mult: float = 1.0
    restart_floor: float = 0.0
    step_pct: float = 0.3  # step: the LR is multiplied by step_gamma after every step_pct of the updates
    step_gamma: float = 0.1
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
    # best.pt becomes an average (swa, avg_best_k, or the snapshots of optim.schedule=cosine_restarts) when it scores
    # better on the fold's validation rows
    pick_averaged: bool = False
    early_stopping: int = 0  # patience in epochs; 0 = off
    sampler: str = "none"  # none | weighted | upsample | downsample
    sampler_power: float = 1.0  # weighted: weight = 1 / count ** power
    deterministic: bool = False
    limit_batches: int = 0  # > 0: stop each epoch after this many batches (smoke runs)
    # also fit a linear head (scikit-learn logistic regression; ridge for regression) on the frozen backbone's pooled
    # features, cached per fold under data.cache_dir/features: a linear-probe baseline, cv_frozen_features in cv.json
    frozen_features: bool = False


@dataclass
class TTAConfig:
    views: list[str] = field(default_factory=lambda: ["identity"])  # or auto: chosen on OOF among the candidates
    # views: auto picks among these; empty: modeling/tta.default_candidates (the eight symmetries of the square and
    # two mild rescalings)
    candidates: list[str] = field(default_factory=list)
    merge: str = "mean"  # mean | gmean | max
    batch_size: int = 64


@dataclass
class PredictConfig:
    runtime: str = "torch"  # torch: the fold checkpoints | onnx: the models `export` wrote (onnxruntime)
    onnx_model: str = "fp32"  # runtime onnx: fp32 (model.onnx) | int8 (model_int8.onnx)


@dataclass
class ExportConfig:
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_EXPORT_VARIANTS))  # fp32 torch: always measured
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
    qat_epochs: int = 1  # qat: epochs of quantisation-aware fine-tuning on fold k's training rows
    qat_lr: float = 0.05  # ... at this share of optim.lr


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
    # Segmentation: tune on OOF, per class, the mask threshold, the minimum component area (share of the image) and
    # the probability below which the whole mask is left empty; recorded in decisions.json, applied to the test set.
    tune_postprocess: bool = True


@dataclass
class ServeConfig:
    """`serve`: the HTTP server over an experiment's fold models (serve.py)."""

    host: str = "127.0.0.1"  # 0.0.0.0 to answer other machines
    port: int = 8000
    max_batch: int = 32  # images run through the models together (1: no batching, each image on its own)
    max_wait_ms: float = 5.0  # how long the first queued image may wait for others on their way to fill its batch
    max_bytes: int = 10_000_000  # the largest image file accepted (bytes); larger ones get 413
    max_files: int = 16  # images in one request


@dataclass
class ChecksConfig:
    """`check-data`: near duplicates, adversarial validation and drift of the images (datacheck.py)."""

    hash: str = "phash"  # phash (DCT) | dhash (difference): data/hashing.py
    hash_distance: int = 6  # images whose 64-bit hashes differ in at most this many bits are near duplicates
    adversarial_folds: int = 5  # stratified folds of the train-vs-test classifier (its AUC is out-of-fold)
    top_k: int = 16  # the most test-like training images listed and shown (test_like.png)
    show_pairs: int = 8  # duplicate pairs shown side by side (duplicates.png)


@dataclass
class LeaderboardConfig:
    """`lb` and `final-two`: bootstrap intervals of the OOF score (engine/bootstrap.py)."""

    # the public leaderboard's rows: 0 = public_share x the test rows (test_pred.csv)
    public_rows: int = 0
    public_share: float = 0.3  # a usual Kaggle split: about a third of the test set is public, the rest private
    draws: int = 1000  # bootstrap resamples of the OOF rows
    confidence: float = 0.95  # the intervals' coverage


@dataclass
class Config:
    task: str = "multiclass"  # multiclass | binary | multilabel | regression | segmentation
    metric: str = "auto"  # auto: the usual metric for the task
    seed: int = 42
    exp: str = MISSING  # the config file's stem
    competition: str = ""  # the Kaggle competition slug (kaggle competitions download/submit)
    output_dir: str = "outputs"
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    # torch threads of the main process; auto: from the cores alone (never from data.num_workers, which would then
    # change the model): on CUDA every core but one is left to the loader workers, on CPU a quarter of the cores
    # decode and the rest compute, so that auto threads + auto workers <= cores (runtime.plan_cpu)
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
    serve: ServeConfig = field(default_factory=ServeConfig)
    # seed bagging: train every fold once per seed, each as the experiment `<exp>-seed<s>` (core/runs.seed_member) with
    # `seed: s`; outputs/<exp>/ is then their mean (an ensemble) with the per-seed CVs and their spread (cv.json)
    seeds: list[int] | None = None
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    lb: LeaderboardConfig = field(default_factory=LeaderboardConfig)

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


DEFAULT_METRIC = {
    "multiclass": "accuracy",
    "binary": "roc_auc",
    "multilabel": "f1_micro",
    "regression": "rmse",
    "segmentation": "dice",
}


def metric_name(cfg: Config) -> str:
    """The metric the experiment is scored with: `metric`, or the task's usual one when it is auto."""
    return DEFAULT_METRIC[cfg.task] if cfg.metric == "auto" else cfg.metric
