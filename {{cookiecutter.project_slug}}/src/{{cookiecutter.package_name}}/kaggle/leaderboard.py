"""The `lb` command: does the CV track the public leaderboard?

Every `submit` leaves a row in submissions/log.csv (time, file, size, sha256, experiment, CV, message). `lb` fetches
the competition's submission history through kaggle/api.py, joins each logged submission to the Kaggle submission it
became (same file name or description, the closest in time, the same size when Kaggle reports one), prints a table
(experiment, CV, public score, rank by each), writes it to submissions/cv_vs_lb.csv and plots CV against public score
with their Pearson and Spearman correlations (submissions/cv_vs_lb.png, logged to wandb when it is on). Each
submission's gap public - CV is called `noise` or `beyond noise` from bootstrap intervals (kaggle/lb_sense.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr

from ..config import Config, metric_name
from ..core.errors import UserError
from ..core.runs import atomic_savefig, atomic_write_csv, cv_vs_lb_paths, submission_log_path, submissions_dir
from ..core.tracking import Tracker
from ..modeling import metrics
from . import api as kaggle_api
from . import lb_sense

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MATCH_WINDOW = timedelta(hours=24)  # a logged submission and Kaggle's record of it are seconds apart


def _time(text: object) -> pd.Timestamp | None:
    """A time as naive UTC; None when missing or unreadable."""
    try:
        t = pd.Timestamp(str(text))
    except ValueError:
        return None
    if pd.isna(t):
        return None
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


def read_log(cfg: Config) -> pd.DataFrame:
    path = submission_log_path(submissions_dir(cfg.output_dir))
    if not path.is_file():
        raise UserError(f"{path} not found: it is written by `make submit` (each submission sent from here)")
    log = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("time", "file", "experiment", "cv", "message") if c not in log.columns]
    if missing:
        raise UserError(f"{path}: column(s) {missing} not found; columns are {list(log.columns)}")
    return log


def _closeness(h: dict, entry: pd.Series) -> tuple | None:
    """How well Kaggle submission `h` fits the logged `entry` (larger is closer), None if it cannot be that one:
    the same file name or description, within MATCH_WINDOW; then the same description, the same size, the
    nearest time win."""
    if h.get("file_name") != entry["file"] and h.get("description") != entry["message"]:
        return None
    sent, seen = _time(entry["time"]), _time(h.get("date"))
    gap = abs(seen - sent) if sent is not None and seen is not None else MATCH_WINDOW
    if gap > MATCH_WINDOW:
        return None
    same_size = h.get("total_bytes") is not None and str(h.get("total_bytes")) == str(entry.get("bytes", ""))
    return h.get("description") == entry["message"], same_size, -gap


def join(log: pd.DataFrame, history: list[dict]) -> pd.DataFrame:
    """Each logged submission with the Kaggle submission it became (public / private score, status), or none
    ("not found"); each Kaggle submission is matched once at most. The CV is that of the file sent (the log records
    its decisions' CV; older logs kept the CV with TTA in a column of its own)."""
    free, rows = list(range(len(history))), []
    for _, entry in log.iterrows():
        fits = {i: c for i in free if (c := _closeness(history[i], entry)) is not None}
        match = max(fits, key=fits.__getitem__) if fits else None
        if match is not None:
            free.remove(match)
        h = history[match] if match is not None else {}
        cv = lb_sense.finite_float(entry.get("cv_tta"))
        rows.append({
            "time": entry["time"], "experiment": entry["experiment"], "file": entry["file"],
            "cv": cv if cv is not None else lb_sense.finite_float(entry["cv"]), "public": h.get("public_score"),
            "private": h.get("private_score"), "status": h.get("status", "not found"), "message": entry["message"],
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=["time", "experiment", "file", "cv", "public", "private", "status", "message"])
    table.attrs["unlogged"] = len(free)  # Kaggle submissions made elsewhere (the website, another machine)
    return table


def correlations(table: pd.DataFrame) -> dict:
    """Pearson and Spearman correlation of CV and public score over the submissions that have both (NaN below 3:
    two points always lie on a line)."""
    both = table.dropna(subset=["cv", "public"])
    n = len(both)
    if n < 3 or both["cv"].nunique() < 2 or both["public"].nunique() < 2:
        return {"n": n, "pearson": float("nan"), "spearman": float("nan")}
    cv, lb = both["cv"].astype(float), both["public"].astype(float)
    return {"n": n, "pearson": float(pearsonr(cv, lb)[0]), "spearman": float(spearmanr(cv, lb)[0])}


def add_ranks(table: pd.DataFrame, metric: metrics.Metric) -> pd.DataFrame:
    """rank_cv, rank_lb: 1 = best in `metric`'s direction (ties share the best rank); empty where a score is
    missing."""
    out = table.copy()
    for col, name in (("cv", "rank_cv"), ("public", "rank_lb")):
        values = pd.to_numeric(out[col], errors="coerce")
        gains = values.map(metric.gain).where(values.notna())  # a missing score gets no rank, not the last one
        out[name] = gains.rank(ascending=False, method="min").astype("Int64")
    return out


def format_table(table: pd.DataFrame, corr: dict, metric: str) -> str:
    def num(v: object) -> str:
        return "-" if v is None or pd.isna(v) else f"{float(v):.5f}"

    lines = [f"{'experiment':<24} {'CV':>9} {'public':>9} {'rank CV':>8} {'rank LB':>8}  time (UTC)"]
    for _, r in table.iterrows():
        rc = "-" if pd.isna(r["rank_cv"]) else str(r["rank_cv"])
        rl = "-" if pd.isna(r["rank_lb"]) else str(r["rank_lb"])
        lines.append(f"{r['experiment']:<24} {num(r['cv']):>9} {num(r['public']):>9} {rc:>8} {rl:>8}  {r['time']}")
    if corr["n"] >= 3 and np.isfinite(corr["pearson"]):
        lines.append(f"{metric}: CV vs public over {corr['n']} submissions: Pearson r = {corr['pearson']:.3f}, "
                     f"Spearman rho = {corr['spearman']:.3f}")  # fmt: skip
    else:
        lines.append(f"{corr['n']} submission(s) with both a CV and a public score: too few for a correlation (3+)")
    if table.attrs.get("unlogged"):
        lines.append(f"({table.attrs['unlogged']} Kaggle submission(s) were not sent from here: not in the log)")
    return "\n".join(lines)


def plot(table: pd.DataFrame, corr: dict, metric: str, path: Path) -> Path:
    both = table.dropna(subset=["cv", "public"])
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(both["cv"].astype(float), both["public"].astype(float), color="tab:blue")
    for _, r in both.iterrows():
        ax.annotate(str(r["experiment"]), (float(r["cv"]), float(r["public"])), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    if corr["n"] >= 3 and np.isfinite(corr["pearson"]):
        slope, intercept = np.polyfit(both["cv"].astype(float), both["public"].astype(float), 1)
        xs = np.linspace(both["cv"].astype(float).min(), both["cv"].astype(float).max(), 2)
        ax.plot(xs, slope * xs + intercept, color="tab:red", linestyle="--", linewidth=1)
        title = f"Pearson r = {corr['pearson']:.3f}, Spearman rho = {corr['spearman']:.3f} (n = {corr['n']})"
    else:
        title = f"n = {corr['n']}: too few for a correlation"
    ax.set_xlabel(f"OOF CV ({metric})")
    ax.set_ylabel(f"public leaderboard ({metric})")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    try:
        return atomic_savefig(path, fig)
    finally:
        plt.close(fig)


def run_lb(cfg: Config, log: Callable[[str], None] = print) -> pd.DataFrame:
    """The `lb` command: fetch, join, print, write the table and the plot; returns the table."""
    if not cfg.competition:
        raise UserError("config key 'competition' is empty; set it to the Kaggle competition slug")
    entries = read_log(cfg)
    history = kaggle_api.competition_submissions(cfg.competition)
    metric = metric_name(cfg)
    table = add_ranks(join(entries, history), metrics.get_metric(metric))
    corr = correlations(table)
    log(format_table(table, corr, metric))
    table = lb_sense.add_noise(cfg, table, log)
    log(lb_sense.format_noise(table, cfg.lb.confidence))
    png, csv = cv_vs_lb_paths(submissions_dir(cfg.output_dir))
    atomic_write_csv(csv, table)
    plot(table, corr, metric, png)
    log(f"{png}, {csv}")
    tracker = Tracker(cfg, "lb", "lb")
    tracker.image("cv_vs_lb", png)
    tracker.summary({"lb_n": corr["n"], "lb_pearson": corr["pearson"], "lb_spearman": corr["spearman"],
                     "lb_beyond_noise": int((table["verdict"] == lb_sense.BEYOND).sum())})  # fmt: skip
    tracker.finish()
    return table
