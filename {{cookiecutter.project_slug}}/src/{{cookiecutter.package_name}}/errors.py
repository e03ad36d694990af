"""The `errors` command: error analysis of an experiment's (or an ensemble's) out-of-fold predictions.

Every OOF row gets the task's own loss (modeling/calibration.row_losses: cross-entropy, binary cross-entropy summed
over labels, squared or absolute error); the `top` rows of largest loss become an image grid (true label, predicted
label, confidence, loss: errors_top.png) and a table (errors_top.csv); the probabilities' calibration becomes a
reliability diagram per class plus the top-label one, each titled with its ECE (reliability.png), and a record of
ECE / MCE per class and overall (calibration.json). With wandb on, a run (job_type errors, in the experiment's group)
holds the rows as a table with the images, the two PNGs and the ECEs.

Which OOF: the one the run's decisions were tuned on (decisions.json `cv_from`): oof_tta.csv when `predict`
re-predicted the OOF rows as it predicts the test set (TTA views, runtime), else oof.csv. That is the OOF of the
predictions a submission holds; predicted labels apply the decisions' thresholds (binary, multilabel) as the
submission does. Without decisions.json (no `cv` / `predict` since training): oof.csv, labels at 0.5.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from .config import Config
from .core.errors import UserError
from .core.runs import (
    STALE_TMP_AGE,
    Decisions,
    ErrorReport,
    Run,
    atomic_savefig,
    atomic_write_csv,
    read_pred_csv,
    remove_stale_tmp,
)
from .core.tasks import PIXEL_TASKS
from .core.tracking import Tracker
from .data.decode import image_paths, read_image
from .data.problem import oof_truth
from .data.tables import data_path
from .modeling.calibration import N_BINS, Reliability, calibration, loss_name, row_losses
from .modeling.metrics import DEFAULT_THRESHOLD

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAX_PANELS = 48  # reliability panels drawn (the classes of largest ECE when there are more); the json has every one
GRID_COLUMNS = 8


@dataclass
class Analysis:
    """What `errors` found: every OOF row (id, fold, true, pred, confidence, loss; largest loss first), the
    calibration diagrams (per class, then the overall one) and the record written."""

    rows: pd.DataFrame
    diagrams: list[Reliability]
    report: ErrorReport
    panels: list[str]


def analysed_oof(run: Run) -> tuple[Path, Decisions | None, str]:
    """The OOF table to analyse, the decisions a submission applies (None before `cv`), and why that table."""
    path, d = run.oof_as_predicted()
    if d is None:
        return path, None, "no decisions.json (run `cv` or `predict`): plain OOF, labels at 0.5"
    why = "the OOF predicted as test_pred.csv is (TTA views, runtime)" if path != run.oof else "plain OOF"
    return path, d, f"decisions.json was tuned on it: {why}"


def row_labels(task: str, y: np.ndarray, pred: np.ndarray, classes: list[str], positive: str | None,
               d: Decisions | None) -> tuple[list[str], list[str], np.ndarray]:  # fmt: skip
    """Per row: the true label, the predicted label (thresholds of `d` applied, as in the submission) and the
    model's confidence in it (regression: the true and predicted values, confidence NaN)."""
    n = len(y)
    if task == "multiclass":
        top = pred.argmax(1)
        return [classes[int(c)] for c in y], [classes[int(c)] for c in top], pred.max(1)
    if task == "binary":
        p = pred.reshape(n, -1)[:, 0]
        t = d.threshold if d is not None and d.threshold is not None else DEFAULT_THRESHOLD
        pos = positive or classes[0]
        names = {1: pos, 0: f"not {pos}"}
        side = (p >= t).astype(int)
        return [names[int(v)] for v in y], [names[int(v)] for v in side], np.where(side == 1, p, 1 - p)
    if task == "multilabel":
        ts = d.thresholds if d is not None and d.thresholds is not None else [DEFAULT_THRESHOLD] * len(classes)
        chosen = pred >= np.asarray(ts)[None, :]

        def tags(row: np.ndarray) -> str:
            return " ".join(c for c, on in zip(classes, row, strict=True) if on) or "(none)"

        sure = np.where(chosen, pred, 1 - pred).mean(1)
        return [tags(r > 0.5) for r in y], [tags(r) for r in chosen], sure
    values = pred.reshape(n, -1)[:, 0]
    return [f"{v:.4g}" for v in y], [f"{v:.4g}" for v in values], np.full(n, np.nan)


def analyse(cfg: Config, name: str, top: int = 32, log=print) -> Analysis:
    """Losses and calibration of run `name`'s OOF predictions (an experiment or an ensemble under output_dir)."""
    if top < 1:
        raise UserError(f"--top {top}: expected at least 1 row")
    if cfg.task in PIXEL_TASKS:
        raise UserError("errors: task=segmentation is not analysed (its loss is per pixel; look at the masks with "
                        "`predict` and the dice per image in oof.csv instead)")  # fmt: skip
    run = Run.named(cfg.output_dir, name, "experiment or ensemble name")
    classes, cv = run.read_classes(), run.read_cv()
    if classes.task != cfg.task:
        raise UserError(f"{run.classes}: task {classes.task!r}, but the config says task={cfg.task}")
    path, d, why = analysed_oof(run)
    cols, id_col = list(classes.classes), cfg.data.id_col
    df = read_pred_csv(path, id_col, ["fold", *cols])
    ids = df[id_col].tolist()
    y, _, _ = oof_truth(cfg, ids, classes, trained_on=cv.folds_hash, where=f"{run.name}/{path.name}")
    pred = df[cols].to_numpy(np.float64)
    if run.is_ensemble() and run.read_weights().rank:
        log(f"note: {run.name} blends ranks, not probabilities: its losses and calibration describe ranks")
    loss = row_losses(cfg.task, y, pred, cv.metric)
    true, predicted, confidence = row_labels(cfg.task, y, pred, cols, classes.positive, d)
    rows = pd.DataFrame({id_col: ids, "fold": df["fold"].to_numpy(), "true": true, "pred": predicted,
                         "confidence": confidence, "loss": loss})  # fmt: skip
    rows = rows.iloc[np.argsort(-loss, kind="stable")].reset_index(drop=True)
    names = [f"{cols[0]}={classes.positive}"] if cfg.task == "binary" and classes.positive else cols
    diagrams = calibration(cfg.task, y, pred, names, N_BINS)
    overall = diagrams[-1] if diagrams else None
    report = ErrorReport(
        exp=run.name,
        task=cfg.task,
        oof=path.name,
        why=why,
        loss=loss_name(cfg.task, cv.metric),
        mean_loss=float(loss.mean()),
        n_rows=len(rows),
        n_bins=N_BINS,
        overall=overall.name if overall else None,
        ece=overall.ece if overall else None,
        mce=overall.mce if overall else None,
        classes={r.name: r.to_dict() for r in diagrams[:-1]},
    )
    return Analysis(rows, diagrams, report, [])


def load_images(cfg: Config, ids: list[str]) -> list[np.ndarray]:
    """The training images of `ids` (data.train_images), HWC uint8 with model.in_chans channels."""
    paths = image_paths(data_path(cfg, cfg.data.train_images), ids, cfg.data.image_ext, "train_images")
    return [read_image(p, cfg.model.in_chans) for p in paths]


def _show(ax: plt.Axes, img: np.ndarray) -> None:
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def grid_figure(rows: pd.DataFrame, images: list[np.ndarray], id_col: str, title: str, path: Path) -> Path:
    """The rows (largest loss first) as a grid: each image titled true / predicted (confidence) / loss."""
    n = len(rows)
    ncols = min(GRID_COLUMNS, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 2.3 * nrows + 0.4), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (_, r), img in zip(axes.ravel(), rows.iterrows(), images, strict=False):
        _show(ax, img)
        conf = "" if np.isnan(r["confidence"]) else f" ({r['confidence']:.2f})"
        ax.set_title(f"{str(r[id_col])[:16]}\ntrue {str(r['true'])[:16]}\npred {str(r['pred'])[:16]}{conf}\n"
                     f"loss {r['loss']:.3g}", fontsize=6)  # fmt: skip
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def reliability_figure(diagrams: list[Reliability], title: str, path: Path) -> tuple[Path, list[str]]:
    """A panel per class (the MAX_PANELS - 1 of largest ECE when there are more), then the overall one: accuracy
    per confidence bin against the diagonal, the row counts beneath, ECE in each title. Returns the panels drawn."""
    per_class, overall = diagrams[:-1], diagrams[-1]
    if len(per_class) >= MAX_PANELS:
        per_class = sorted(per_class, key=lambda r: -r.ece)[: MAX_PANELS - 1]
        title += f" ({MAX_PANELS - 1} classes of largest ECE of {len(diagrams) - 1})"
    shown = [*per_class, overall]
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows + 0.4), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax in axes.ravel()[len(shown) :]:
        ax.axis("off")
    for ax, r in zip(axes.ravel(), shown, strict=False):
        width = 1.0 / r.n_bins
        full = [i for i, c in enumerate(r.counts) if c]
        centers = (np.asarray(full) + 0.5) * width
        acc = np.asarray([r.accuracy[i] for i in full], dtype=np.float64)
        conf = np.asarray([r.confidence[i] for i in full], dtype=np.float64)
        ax.bar(centers, acc, width=width, edgecolor="black", linewidth=0.4, color="tab:blue", label="accuracy")
        ax.bar(centers, conf - acc, bottom=acc, width=width, fill=False, edgecolor="tab:red", hatch="///",
               linewidth=0.6, label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        share = np.asarray(r.counts) / max(r.n, 1)
        ax.bar((np.arange(r.n_bins) + 0.5) * width, share * 0.25, width=width, color="gray", alpha=0.5,
               label="rows (share x 0.25)")  # fmt: skip
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{r.name[:24]}  ECE {r.ece:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes.ravel()[0].legend(fontsize=5, loc="upper left")
    fig.supxlabel("confidence", fontsize=8)
    fig.supylabel("accuracy", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path), [r.name for r in shown]


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        return atomic_savefig(path, fig)
    finally:
        plt.close(fig)


def run_errors(cfg: Config, exp: str | None = None, top: int = 32) -> Analysis:
    """`errors`: analyse run `exp` (default the config's own), write errors_top.png/.csv, reliability.png and
    calibration.json into its folder, print a summary, and log it to wandb when that is on."""
    name = exp or cfg.exp
    found = analyse(cfg, name, top)
    run, rep, id_col = Run.named(cfg.output_dir, name), found.report, cfg.data.id_col
    remove_stale_tmp(run.path, STALE_TMP_AGE)  # what a killed `errors` left
    worst = found.rows.head(top)
    images = load_images(cfg, worst[id_col].tolist())
    grid = grid_figure(worst, images, id_col, f"{name}: {len(worst)} OOF rows of largest {rep.loss} ({rep.oof})",
                       run.errors_grid)  # fmt: skip
    atomic_write_csv(run.errors_table, worst)
    made = {"errors_top": grid}
    if found.diagrams:
        ece_line = f"{rep.overall} ECE {rep.ece:.4f}"
        made["reliability"], found.panels = reliability_figure(found.diagrams, f"{name}: {ece_line} ({rep.oof})",
                                                               run.reliability)  # fmt: skip
    else:
        run.reliability.unlink(missing_ok=True)  # regression: no probabilities; a stale diagram would mislead
    made["calibration"] = run.write_error_report(rep)
    _print(found, top, id_col, [*made.values(), run.errors_table])
    made.pop("calibration")
    tracker = Tracker(dataclasses.replace(cfg, exp=name), "errors", "errors")
    table = [{"id": str(r[id_col]), "image": img[..., 0] if img.shape[-1] == 1 else img, "true": str(r["true"]),
              "pred": str(r["pred"]), "confidence": None if np.isnan(r["confidence"]) else float(r["confidence"]),
              "loss": float(r["loss"])} for (_, r), img in zip(worst.iterrows(), images, strict=True)]  # fmt: skip
    tracker.table("errors/top_loss", table)
    for key, png in made.items():
        tracker.image(f"errors/{key}", png)
    summary: dict = {"errors/mean_loss": rep.mean_loss}
    if rep.ece is not None:
        summary |= {"errors/ece": rep.ece, "errors/mce": rep.mce}
        summary |= {f"errors/ece_class/{c}": v["ece"] for c, v in rep.classes.items()}
    tracker.summary(summary)
    tracker.finish()
    return found


def _print(found: Analysis, top: int, id_col: str, written: list[Path]) -> None:
    rep = found.report
    print(f"{rep.exp}: {rep.n_rows} OOF rows of {rep.oof} ({rep.why}); {rep.loss}, mean {rep.mean_loss:.4f}")
    print(f"  the {min(top, rep.n_rows)} rows of largest loss, the first {min(top, 10)}:")
    for _, r in found.rows.head(min(top, 10)).iterrows():
        conf = "" if np.isnan(r["confidence"]) else f" ({r['confidence']:.3f})"
        print(f"    {r[id_col]!s:<16} fold {int(r['fold'])}  true {r['true']:<12} pred {r['pred']}{conf}  "
              f"loss {r['loss']:.4f}")  # fmt: skip
    if rep.ece is not None:
        worst = sorted(rep.classes.items(), key=lambda kv: -kv[1]["ece"])[:5]
        per_class = ", ".join(f"{c} {v['ece']:.4f}" for c, v in worst)
        print(f"  calibration ({rep.n_bins} equal-width bins): {rep.overall} ECE {rep.ece:.4f}, MCE {rep.mce:.4f}; "
              f"largest per-class ECE: {per_class}")  # fmt: skip
    print(f"  written: {', '.join(str(p) for p in written)}")
