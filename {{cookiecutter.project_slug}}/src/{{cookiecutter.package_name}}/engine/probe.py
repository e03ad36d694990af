"""train.frozen_features: a linear probe, the baseline a fine-tuned model has to beat, in seconds.

Fold k's training and validation images go once through the backbone as it stands when the fold starts (its
pretrained weights, or its seeded initialisation), in eval mode, at the training size, without augmentation (the
prediction transform), normalised as training normalises; the pooled features (timm's `forward_head(...,
pre_logits=True)`: what the classifier layer reads) are cached on disk (data/cache.py: the decode cache's key of the
image set, extended with the backbone, a digest of its weights, the normalisation and the precision). Folds that
share the images and the weights (pretrained weights, the usual folds) share one entry, and a second run computes
nothing: no backbone pass at all.

The head is fitted with scikit-learn, not with the configured optimizer and loss: on fixed features the problem is
convex, so L-BFGS reaches the optimum in a second, deterministically, with no learning rate, epochs or schedule to
tune (a linear probe's usual recipe). Multiclass and binary: logistic regression (multinomial), multilabel: one
per label, regression: ridge on the fold's standardised targets; features standardised on the fold's training rows,
L2 strength C = 1 (alpha = 1), loss.class_weight: balanced honoured. The standardisation is folded into the weights,
so the probe's logits are `features @ W.T + b` exactly as the model's classifier layer would compute them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config, metric_name
from ..core.errors import UserError
from ..core.runtime import autocast
from ..core.tasks import num_outputs
from ..data.augment import build_transforms
from ..data.cache import features_file, features_key, read_features, write_features
from ..data.images import DeviceLoader, ImageDataset, make_loader
from ..data.problem import image_cache
from ..modeling import metrics
from ..modeling.models import head_parameter_ids, unwrap
from .fold import FoldSetup
from .inference import activate

C = 1.0  # inverse L2 strength of the logistic regressions (ridge: alpha = 1 / C), on standardised features
MAX_ITER = 2000
ABSENT_LOGIT = -30.0  # a class no training row of the fold has: never predicted


@dataclass
class Probe:
    weight: np.ndarray  # (n_outputs, n_features): the classifier layer's weights on the raw pooled features
    bias: np.ndarray  # (n_outputs,)
    probs: np.ndarray  # the fold's validation rows, as the task predicts them (activate)
    score: float
    key: str  # the feature cache entry it was fitted on
    computed: bool  # whether the features were computed now (False: read from the cache)


def weights_digest(model: nn.Module) -> str:
    """sha256 of the backbone's state (names, dtypes, shapes, values; the classifier head left out, whose start
    does not change a feature)."""
    model = unwrap(model)
    head = head_parameter_ids(model)
    skip = {name for name, p in model.named_parameters() if id(p) in head}
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        if name in skip:
            continue
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.inference_mode()
def pooled_features(
    model: nn.Module, loader: DeviceLoader, device: torch.device, dtype: torch.dtype | None
) -> np.ndarray:
    """The pooled features (what the classifier layer reads) of every row of `loader`, in order, in eval mode."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in loader:
            with autocast(device, dtype):
                f = model.forward_head(model.forward_features(batch["image"]), pre_logits=True)
            out.append(f.float().flatten(1))
    finally:
        model.train(was_training)
    return torch.cat(out).cpu().numpy()


def _identity(cfg: Config, s: FoldSetup) -> dict:
    """What besides the image set decides a feature: the key's model part."""
    normalize = s.valid_loader.normalize
    return {
        "backbone": cfg.model.backbone,
        "weights": weights_digest(s.model),
        "mean": [round(float(v), 8) for v in normalize.mean.flatten().tolist()],
        "inv_std": [round(float(v), 8) for v in normalize.inv_std.flatten().tolist()],
        "dtype": str(s.dtype),
        "decoded": "shrunk" if cfg.data.cache != "none" else "full",  # the decode cache shrinks before the resize
    }


def fold_features(cfg: Config, s: FoldSetup, fold: int) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """Fold `fold`'s (training, validation) pooled features, from the cache, or computed once and cached; the
    cache key, and whether they were computed now."""
    problem = s.problem
    tr, va = problem.rows(fold, valid=False), problem.rows(fold, valid=True)
    paths = sorted({str(problem.paths[i]) for i in (*tr, *va)})
    key = features_key([Path(p) for p in paths], cfg.model.in_chans, cfg.augment.image_size, _identity(cfg, s))
    file = features_file(cfg.data.cache_dir, key)
    rows = read_features(file)
    computed = rows is None or any(p not in rows for p in paths)
    if computed:
        c = cfg.model.in_chans
        dataset = ImageDataset([Path(p) for p in paths], None, build_transforms(cfg.augment, False, c), c,
                               image_cache(cfg, problem.paths))  # fmt: skip
        vl = s.valid_loader
        loader = make_loader(dataset, cfg.tta.batch_size, False, vl.loader.num_workers, vl.device, vl.normalize,
                             channels_last=vl.channels_last)  # fmt: skip
        features = pooled_features(s.model, loader, s.device, s.dtype)
        write_features(file, paths, features)
        rows = dict(zip(paths, features, strict=True))
    assert rows is not None
    pick = lambda idx: np.stack([rows[str(problem.paths[i])] for i in idx]).astype(np.float64)  # noqa: E731
    return pick(tr), pick(va), key, computed


def _logistic(x: np.ndarray, y: np.ndarray, balanced: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=MAX_ITER, class_weight="balanced" if balanced else None)
    clf.fit(x, y)
    return clf.coef_, clf.intercept_, clf.classes_


def fit_head(
    task: str, n_out: int, x: np.ndarray, y: np.ndarray, balanced: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a linear head on standardised features `x` (n, d): logits = x @ W.T + b, `n_out` of them."""
    d = x.shape[1]
    w, b = np.zeros((n_out, d)), np.zeros(n_out)
    if task == "regression":
        from sklearn.linear_model import Ridge

        reg = Ridge(alpha=1.0 / C).fit(x, y)
        w[0], b[0] = reg.coef_, reg.intercept_
    elif task == "multiclass":
        coef, intercept, present = _logistic(x, y.astype(np.int64), balanced)
        b[:] = ABSENT_LOGIT
        if len(present) == 1:
            b[present[0]] = 0.0
        elif len(present) == 2:  # scikit-learn gives one logit (of the second class): split it between the two
            w[present[1]], b[present[1]] = coef[0] / 2, intercept[0] / 2
            w[present[0]], b[present[0]] = -coef[0] / 2, -intercept[0] / 2
        else:
            w[present], b[present] = coef, intercept
    else:  # binary (one logit) and multilabel (one logistic regression per label)
        y = y.reshape(len(y), -1)
        for j in range(n_out):
            labels = y[:, j] > 0.5
            if labels.all() or not labels.any():  # a label constant in the fold's training rows: its prior
                b[j] = -ABSENT_LOGIT if labels.all() else ABSENT_LOGIT
                continue
            coef, intercept, _ = _logistic(x, labels.astype(np.int64), balanced)
            w[j], b[j] = coef[0], intercept[0]
    return w, b


def linear_probe(cfg: Config, s: FoldSetup, fold: int) -> Probe:
    """Fit fold `fold`'s linear head on its training rows' cached features and predict its validation rows."""
    if not hasattr(unwrap(s.model), "forward_head"):
        raise UserError(f"train.frozen_features: {cfg.model.backbone} has no timm forward_head (pooled features)")
    x_train, x_valid, key, computed = fold_features(cfg, s, fold)
    y = s.problem.y[s.problem.rows(fold, valid=False)]
    if s.target_scale is not None:  # regression: fitted on the standardised targets, as the network learns them
        y = s.target_scale.standardize(y.astype(np.float64))
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 1e-6, std, 1.0)  # a constant feature: left at its scale (its weight ends near 0)
    n_out = num_outputs(cfg.task, len(s.problem.classes))
    w, b = fit_head(cfg.task, n_out, (x_train - mean) / std, y, cfg.loss.class_weight == "balanced")
    weight = w / std  # the standardisation folded into the layer: it reads the raw features
    bias = b - weight @ mean
    logits = torch.from_numpy(x_valid @ weight.T + bias)
    probs = activate(logits, cfg.task, s.target_scale).numpy()
    score = metrics.score(metric_name(cfg), s.data.y_valid, probs, cfg.task)
    return Probe(weight.astype(np.float32), bias.astype(np.float32), probs, float(score), key, computed)
