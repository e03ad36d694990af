"""Leaderboard sense: is a CV-LB gap noise, and which two submissions to pick at the end.

`lb` (kaggle/leaderboard.py) adds, per submission, the CV's bootstrap interval and the public interval (the range a
public score falls in by chance on a public-leaderboard-sized sample when the CV is right: engine/bootstrap.py), the
gap public - CV, and the verdict: `noise` (the public score inside the public interval) or `beyond noise`.

`final-two` looks at every run under output_dir with OOF and test predictions (experiments and ensembles), proposes
(1) the best CV (that of the submission: decisions.json's) and (2) the hedge: among the runs the best does not beat
beyond noise (the paired bootstrap interval of their score difference reaches 0), the one whose test predictions
differ most from the best's (the lowest Pearson correlation of the test predictions), and writes
submissions/final_two.json. Ties in CV are common at the top of a leaderboard; a hedge that predicts differently
protects against the private split favouring one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config, metric_name
from ..core.errors import UserError
from ..core.runs import (
    FinalTwo,
    Run,
    read_pred_csv,
    submission_log_path,
    submissions_dir,
    write_final_two,
)
from ..core.tasks import PIXEL_TASKS
from ..data.problem import oof_truth
from ..engine import bootstrap
from ..modeling import metrics

NOISE, BEYOND = "noise", "beyond noise"


@dataclass
class RunPredictions:
    """A run's OOF predictions as its submission's decisions were tuned on them, their truth, and its CV."""

    name: str
    ids: list[str]
    y: np.ndarray
    oof: np.ndarray
    cv: float  # the CV of its submission (decisions.json) or, before predict, cv.json's
    folds_hash: str
    n_test: int  # test_pred.csv rows (0 when not predicted)


def load_run(cfg: Config, name: str) -> RunPredictions:
    """`name`'s OOF rows (as predicted: the file its decisions were tuned on), their targets and its CV."""
    if cfg.task in PIXEL_TASKS:
        raise UserError(f"bootstrap intervals take table predictions; task={cfg.task} blends maps")
    run = Run.named(cfg.output_dir, name)
    summary = run.read_cv()
    cols = list(summary.pred_cols)
    path = run.oof_as_predicted()[0]
    df = read_pred_csv(path, cfg.data.id_col, cols)
    ids = df[cfg.data.id_col].tolist()
    y = oof_truth(cfg, ids, run.read_classes(), summary.folds_hash, str(path))[0]
    cv = run.read_decisions().cv if run.decisions.is_file() else summary.cv
    n_test = len(read_pred_csv(run.test_pred, cfg.data.id_col, cols)) if run.test_pred.is_file() else 0
    return RunPredictions(name, ids, y, df[cols].to_numpy(np.float64), float(cv), summary.folds_hash, n_test)


def intervals(cfg: Config, preds: RunPredictions, cv: float | None = None) -> tuple[bootstrap.Interval, ...]:
    """(CV interval, public interval), both centred on `cv` (default the run's)."""
    lb, metric = cfg.lb, metric_name(cfg)
    center = preds.cv if cv is None else cv
    n_test = preds.n_test or len(preds.y)
    rows = bootstrap.public_rows(n_test, lb.public_rows, lb.public_share)
    common = {"draws": lb.draws, "confidence": lb.confidence, "seed": cfg.seed, "center": center}
    full = bootstrap.interval(metric, cfg.task, preds.y, preds.oof, **common)
    public = bootstrap.interval(metric, cfg.task, preds.y, preds.oof, rows=rows, **common)
    return full, public


def add_noise(cfg: Config, table: pd.DataFrame, log: Callable[[str], None] = print) -> pd.DataFrame:
    """The `lb` table with cv_low, cv_high, public_low, public_high, public_rows, gap and verdict per submission whose
    experiment's OOF predictions are here (else empty cells)."""
    out = table.copy()
    extra = {c: [] for c in ("cv_low", "cv_high", "public_low", "public_high", "public_rows", "gap", "verdict")}
    cache: dict[str, tuple | None] = {}
    for _, row in out.iterrows():
        name, cv, public = str(row["experiment"]), finite_float(row["cv"]), finite_float(row["public"])
        if name not in cache:
            try:
                cache[name] = intervals(cfg, load_run(cfg, name))
            except UserError as e:  # a run made elsewhere or deleted since: no interval
                log(f"  {name}: no interval ({e})")
                cache[name] = None
        found = cache[name]
        if found is None or cv is None:
            for values in extra.values():
                values.append(None)
            continue
        full, pub = found
        shift = cv - full.score  # centred on the CV the log recorded for this file
        extra["cv_low"].append(full.low + shift)
        extra["cv_high"].append(full.high + shift)
        extra["public_low"].append(pub.low + shift)
        extra["public_high"].append(pub.high + shift)
        extra["public_rows"].append(pub.rows)
        extra["gap"].append(None if public is None else public - cv)
        inside = public is not None and pub.low + shift <= public <= pub.high + shift
        extra["verdict"].append(None if public is None else NOISE if inside else BEYOND)
    for col, values in extra.items():
        out[col] = pd.Series(values, index=out.index, dtype=object if col == "verdict" else float)
    return out


def finite_float(value: object) -> float | None:
    """`value` as a finite float; None for a missing, non-numeric or infinite value (a CSV cell, a JSON field)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def format_noise(table: pd.DataFrame, confidence: float) -> str:
    """One line per submission: CV [interval], public [interval it may fall in by chance], gap, verdict."""

    def num(v: object) -> str:
        return "-" if v is None or pd.isna(v) else f"{float(v):.5f}"

    pct = f"{100 * confidence:g}%"
    lines = [f"{'experiment':<24} {'CV':>9} {'CV ' + pct + ' interval':>22} {'public':>9} "
             f"{'public by chance':>22} {'gap':>9}  verdict"]  # fmt: skip
    for _, r in table.iterrows():
        cv_iv = "-" if pd.isna(r["cv_low"]) else f"[{r['cv_low']:.5f}, {r['cv_high']:.5f}]"
        pub_iv = "-" if pd.isna(r["public_low"]) else f"[{r['public_low']:.5f}, {r['public_high']:.5f}]"
        verdict = r["verdict"] if isinstance(r["verdict"], str) else "-"
        lines.append(f"{r['experiment']:<24} {num(r['cv']):>9} {cv_iv:>22} {num(r['public']):>9} {pub_iv:>22} "
                     f"{num(r['gap']):>9}  {verdict}")  # fmt: skip
    rows = table["public_rows"].dropna()
    if len(rows):
        lines.append(f"public by chance: the {pct} range of the score on {int(rows.iloc[0])} resampled OOF rows (the "
                     "public leaderboard's size) around the CV; a public score outside it is beyond noise")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- final two


def _runs(cfg: Config) -> list[str]:
    """Every run folder under output_dir with cv.json and test_pred.csv, by name."""
    root = Path(cfg.output_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if Run(p).cv.is_file() and Run(p).test_pred.is_file())


def _test_matrix(cfg: Config, name: str) -> pd.DataFrame:
    run = Run.named(cfg.output_dir, name)
    cols = list(run.read_cv().pred_cols)
    return read_pred_csv(run.test_pred, cfg.data.id_col, cols).set_index(cfg.data.id_col)[cols]


def correlation(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Pearson correlation of two runs' test predictions (every column, rows aligned by id)."""
    b = b.loc[a.index]
    x, z = a.to_numpy(np.float64).ravel(), b.to_numpy(np.float64).ravel()
    if x.std() == 0 or z.std() == 0:
        return 1.0 if np.allclose(x, z) else 0.0
    return float(np.corrcoef(x, z)[0, 1])


def final_two(cfg: Config, names: list[str] | None = None, log: Callable[[str], None] = print) -> FinalTwo:
    """The `final-two` command (see the module's doc); writes submissions/final_two.json and returns it."""
    metric = metrics.get_metric(metric_name(cfg))
    names = names or _runs(cfg)
    loaded: dict[str, RunPredictions] = {}
    for name in names:
        try:
            loaded[name] = load_run(cfg, name)
        except UserError as e:
            log(f"  {name}: left out ({e})")
    if not loaded:
        raise UserError(f"{cfg.output_dir}: no run with cv.json, oof.csv and test_pred.csv; train and predict first")
    best = max(loaded, key=lambda n: metric.gain(loaded[n].cv))
    top = loaded[best]
    top_test = _test_matrix(cfg, best)
    submitted = _submitted(cfg)
    rows = []
    for name, p in loaded.items():
        row = {"name": name, "cv": p.cv, "submitted": name in submitted}
        if name != best:
            if p.folds_hash != top.folds_hash or set(p.ids) != set(top.ids):
                row["note"] = "other folds or rows than the best: not compared"
                rows.append(row)
                continue
            order = pd.Series(range(len(p.ids)), index=p.ids).loc[top.ids].to_numpy()
            low, high = bootstrap.paired_gap(metric.name, cfg.task, top.y, top.oof, p.oof[order], draws=cfg.lb.draws,
                                             confidence=cfg.lb.confidence, seed=cfg.seed)  # fmt: skip
            test = _test_matrix(cfg, name)
            if set(test.index) != set(top_test.index):
                row["note"] = "other test ids than the best: not compared"
                rows.append(row)
                continue
            row |= {"gap_low": low, "gap_high": high, "within_noise": bool(low <= 0),
                    "test_correlation": correlation(top_test, test)}  # fmt: skip
        rows.append(row)
    close = [r for r in rows if r.get("within_noise")]
    pct = f"{100 * cfg.lb.confidence:g}%"
    if close:
        hedge = min(close, key=lambda r: r["test_correlation"])
        why = (f"{hedge['name']}: CV {hedge['cv']:.5f} is within the noise of the best's {top.cv:.5f} (the best "
               f"leads by [{hedge['gap_low']:+.5f}, {hedge['gap_high']:+.5f}] in gain, {pct} paired bootstrap, "
               f"which reaches 0), and of the {len(close)} such run(s) its test predictions differ most from the "
               f"best's (correlation {hedge['test_correlation']:.4f})")  # fmt: skip
        second = hedge["name"]
    else:
        compared = [r for r in rows if "test_correlation" in r]
        second = max(compared, key=lambda r: metric.gain(r["cv"]))["name"] if compared else None
        why = ("no other run is within the noise of the best: the second is the next best CV" if second else
               "no other run to compare with the best")  # fmt: skip
    record = FinalTwo(metric=metric.name, best=best, hedge=second, why=why, candidates=rows)
    path = write_final_two(submissions_dir(cfg.output_dir), record)
    log(f"{'run':<24} {metric.name:>9} {'gap to best (' + pct + ')':>26} {'test corr':>10}  within noise")
    for r in sorted(rows, key=lambda r: -metric.gain(r["cv"])):
        gap = f"[{r['gap_low']:+.5f}, {r['gap_high']:+.5f}]" if "gap_low" in r else "-"
        corr = f"{r['test_correlation']:.4f}" if "test_correlation" in r else "-"
        flag = "best" if r["name"] == best else ("yes" if r.get("within_noise") else r.get("note", "no"))
        log(f"{r['name']:<24} {r['cv']:>9.5f} {gap:>26} {corr:>10}  {flag}{' (submitted)' if r['submitted'] else ''}")
    log(f"final 1: {best} (best CV {top.cv:.5f})")
    log(f"final 2: {second or '-'}: {why}")
    log(f"{path}")
    return record


def _submitted(cfg: Config) -> set[str]:
    """The experiments that submissions/log.csv lists (sent from here)."""
    path = submission_log_path(submissions_dir(cfg.output_dir))
    if not path.is_file():
        return set()
    log = pd.read_csv(path, dtype=str, keep_default_na=False)
    return set(log["experiment"]) if "experiment" in log.columns else set()
