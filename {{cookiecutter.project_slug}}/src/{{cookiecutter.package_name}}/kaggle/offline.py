"""The offline inference notebook of a code competition (notebooks/inference.py) and `push-notebook`.

The upload dataset (`package_for_dataset`, below; `upload` sends it) holds the package's Python files, the packaged
runs and the folds. On Kaggle it is mounted read-only, so each packaged experiment is staged into a writable folder
(its small files copied, its checkpoints linked) where the ordinary `predict.predict_test` and
`submission.make_submission` run unchanged, with the run's decisions.json: the TTA views, merge and runtime
(torch, or the exported ONNX fp32 / int8 models, which then travel with the run) that `predict` used locally, and
the thresholds and cuts tuned on the matching OOF. The notebook writes the submission `make-submission` writes at
home, whose CV is the one measured; nothing is re-derived from the config.

    notebooks/inference.py          the notebook (percent format), the single source of the Kaggle kernel
    notebooks/kernel-metadata.json  kernel id, title, dataset and competition, internet off (push-notebook fills it)
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config, load
from ..core.errors import UserError
from ..core.runs import (
    PACKAGED,
    PACKAGED_EXPORT,
    BlendWeights,
    Decisions,
    Run,
    atomic_write_csv,
    atomic_write_json,
    folds_meta_path,
    read_json,
    read_pred_csv,
)
from ..data.folds import expected_folds
from ..engine.inference import as_decided
from ..ensemble import apply_saved
from ..predict import predict_test
from ..submission import make_submission
from . import api as kaggle_api
from .api import DATASET_ID, METADATA
from .submissions import default_message, log_code_submission

PACKAGED_FOLDS = "folds.csv"  # in the upload dataset's root
# Decided by `predict` and recorded in decisions.json: the notebook predicts as the CV was measured, never otherwise.
DECIDED_KEYS = ("tta.views", "tta.merge", "predict.runtime", "predict.onnx_model")
KERNEL_METADATA = "kernel-metadata.json"
CODE_FILE = "inference.py"
MEAN_NAME = "notebook-mean"
KERNEL_SLUG_MAX = 50


def packaged_experiments(dataset_dir: str | Path) -> list[str]:
    """What `upload --exps` packaged: every run folder, less the members of a packaged ensemble (they are there
    only so that the ensemble can be recomputed)."""
    dataset_dir = Path(dataset_dir)
    runs = sorted(p.name for p in dataset_dir.glob("*") if Run(p).classes.is_file())
    used = {m for r in runs for m in Run(dataset_dir / r).members()}
    found = [r for r in runs if r not in used]
    if not found:
        raise UserError(f"{dataset_dir}: no packaged experiment (<exp>/classes.json); build it with `upload`")
    return found


def config_path(dataset_dir: str | Path, exp: str) -> Path:
    """The experiment's resolved config.yaml; for an ensemble (which has none) its first member's."""
    run = Run(Path(dataset_dir) / exp)
    if run.is_experiment():
        return run.config
    members = run.members()
    if not members:
        raise UserError(f"{run.path}: neither {run.config.name} nor {run.weights.name}; not a packaged experiment")
    return config_path(dataset_dir, members[0])


def find_data_dir(dataset_dir: str | Path, exp: str, root: str | Path = "/kaggle/input") -> Path:
    """The competition's folder under `root`: root/<competition> (the config's `competition`), else the one folder
    (up to three levels down) holding the sample submission."""
    cfg, root = load(config_path(dataset_dir, exp)), Path(root)
    sample = Path(cfg.data.sample_submission).name
    if cfg.competition and (root / cfg.competition / sample).is_file():
        return root / cfg.competition
    hits = sorted({p.parent for depth in (1, 2, 3) for p in root.glob("*/" * depth + sample)})
    named = [h for h in hits if cfg.competition and cfg.competition in h.parts]
    if len(named) == 1 or len(hits) == 1:
        return (named or hits)[0]
    raise UserError(f"{len(hits)} folders under {root} hold {sample} ({hits[:3]}); set INFER_DATA_DIR")


def load_packaged_config(
    dataset_dir: str | Path, exp: str, data_dir: str | Path, output_dir: str | Path, overrides: Sequence[str] = ()
) -> Config:
    """A packaged experiment's config, pointed at the competition data and a writable output_dir; wandb off,
    device auto. `overrides` (key=value) come last and win."""
    base = [f"data.dir={data_dir}", f"output_dir={output_dir}", "wandb.mode=disabled", "device=auto"]
    folds = Path(dataset_dir) / PACKAGED_FOLDS
    if folds.is_file():  # only read to tune thresholds on OOF, when the upload carries the folds
        base.append(f"folds.path={folds}")
    return load(config_path(dataset_dir, exp), [*base, *overrides])


def _link(src: Path, link: Path) -> None:
    """`link` -> `src` (a copy where the file system has no links)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    try:
        link.symlink_to(src.resolve())
    except OSError:
        shutil.copy2(src, link)


def stage_run(src: Run, dest: Run) -> Run:
    """A writable stand-in for the read-only run folder `src`: small files copied, fold checkpoints and exported
    models linked."""
    dest.path.mkdir(parents=True, exist_ok=True)
    for name in PACKAGED:
        if (src.path / name).is_file():
            shutil.copy2(src.path / name, dest.path / name)
    if src.export_json.is_file():
        dest.export_dir.mkdir(exist_ok=True)
        shutil.copy2(src.export_json, dest.export_json)
    for k in src.fold_numbers():
        ckpt = src.fold(k).best
        if not ckpt.is_file():
            continue
        _link(ckpt, dest.fold(k).best)
        for name in PACKAGED_EXPORT:
            if (src.export_fold(k).path / name).is_file():
                _link(src.export_fold(k).path / name, dest.export_fold(k).path / name)
        if src.fold(k).normalization.is_file():  # augment.mean/std: fold: the fold's own statistics
            shutil.copy2(src.fold(k).normalization, dest.fold(k).normalization)
        if src.fold(k).oof.is_file():  # marks the fold finished, as in the run it was packaged from
            shutil.copy2(src.fold(k).oof, dest.fold(k).oof)
    return dest


def predict_packaged(
    dataset_dir: str | Path,
    exp: str,
    data_dir: str | Path,
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
    _done: dict[str, Config] | None = None,
    views: list[str] | None = None,
) -> Config:
    """output_dir/<exp>/test_pred.csv from the packaged experiment: its fold models x TTA views, as `predict` does;
    an ensemble predicts its members, then blends them with its recorded weights. Returns the config used. `views`:
    those an ensemble chose for this member (ensemble --budget, weights.json), else the member's own."""
    done = {} if _done is None else _done
    key = exp if views is None else f"{exp} {views}"
    if key in done:
        return done[key]
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    run = stage_run(Run(dataset_dir / exp), Run(output_dir / exp))
    members = run.members()
    if members:
        info = run.read_weights()
        chosen = info.views or {}
        cfgs = [predict_packaged(dataset_dir, m, data_dir, output_dir, overrides, log, done, chosen.get(m))
                for m in members]  # fmt: skip
        blend_test(cfgs[0], exp, members, info)
        cfg = cfgs[0]
    else:
        decided = run.read_decisions()  # how the CV was measured: the same views, merge and runtime here
        refused = [o for o in overrides if o.split("=")[0].strip() in DECIDED_KEYS]
        if refused:
            raise UserError(f"INFER_OVERRIDES {refused}: {exp}'s TTA views and runtime are decided by `predict` "
                            f"({run.decisions.name}); change them locally, predict, and upload again")  # fmt: skip
        cfg = load_packaged_config(dataset_dir, exp, data_dir, output_dir, overrides)
        cfg = as_decided(cfg, views or decided.views, decided.merge, decided.runtime)
        predict_test(cfg, run.finished_folds())  # the folds `upload` packaged: all, unless --allow-partial
        for k in run.fold_numbers():  # only needed to predict; keeps the kernel's output small
            run.fold(k).best.unlink(missing_ok=True)
            for name in PACKAGED_EXPORT:
                (run.export_fold(k).path / name).unlink(missing_ok=True)
    log(f"{exp}: {run.test_pred}")
    done[key] = cfg
    return cfg


def blend_test(cfg: Config, name: str, members: list[str], info: BlendWeights) -> Path:
    """output_dir/<name>/test_pred.csv: the members' test predictions combined as `ensemble.blend` did (`info`: its
    weights.json)."""
    runs, id_col = [Run.named(cfg.output_dir, m) for m in members], cfg.data.id_col
    cols = runs[0].read_classes().classes
    tests = [read_pred_csv(r.test_pred, id_col, cols) for r in runs]
    ids = tests[0][id_col].tolist()
    preds = np.stack([t.set_index(id_col).loc[ids, cols].to_numpy(np.float64) for t in tests])
    frame = pd.DataFrame(apply_saved(info, preds), columns=cols)
    frame.insert(0, id_col, ids)
    return atomic_write_csv(Run.named(cfg.output_dir, name).test_pred, frame)


def average(cfg: Config, exps: Sequence[str], name: str = MEAN_NAME) -> str:
    """One experiment: itself. Several: their equally weighted mean, written as an ensemble folder `name`."""
    exps = list(exps)
    if len(exps) == 1:
        return exps[0]
    classes = [Run.named(cfg.output_dir, e).read_classes() for e in exps]
    if any(c.classes != classes[0].classes for c in classes):
        raise UserError(f"experiments {exps} predict different columns; only like experiments can be averaged")
    decided = [Run.named(cfg.output_dir, e).read_decisions() for e in exps]
    tuned = [e for e, d in zip(exps, decided, strict=True) if (d.threshold, d.thresholds, d.ordinal) != (None,) * 3]
    if tuned:
        raise UserError(f"{tuned} apply thresholds or cuts tuned on their own OOF, which a mean of them would not "
                        f"match: blend them locally (`make ensemble EXPS=\"{' '.join(exps)}\" METHOD=mean`), and "
                        "upload the blend, whose decisions are tuned on the blended OOF")  # fmt: skip
    out = Run.named(cfg.output_dir, name)
    out.write_classes(classes[0])
    info = BlendWeights(method="mean", members=exps, weights=[1.0 / len(exps)] * len(exps))
    out.write_weights(info)
    blend_test(cfg, name, exps, info)
    # Nothing tuned to apply; the mean's CV was never measured (blend locally to measure it).
    d = decided[0]
    out.write_decisions(Decisions(metric=d.metric, higher_is_better=d.higher_is_better, cv=float("nan"),
                                  cv_from="not measured: an unweighted mean made offline", format=d.format,
                                  clip=d.clip, members=exps))  # fmt: skip
    return name


def write_submission(cfg: Config, exp: str, work_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """work_dir/submission.csv from output_dir/<exp>/test_pred.csv with the decisions recorded locally (thresholds,
    cuts), validated against the sample submission: the file `make-submission` writes at home."""
    return make_submission(cfg, exp, name="submission", out_dir=work_dir, log=log)


def _check_id(value: str, what: str, flag: str) -> None:
    if not DATASET_ID.match(value):
        raise UserError(f"{flag} {value!r}: a {what} id looks like '<kaggle-user>/<slug>', slug 6-50 of a-z 0-9 -")


def kernel_metadata(cfg: Config, base: dict, dataset_id: str, kernel_id: str | None, title: str | None) -> dict:
    """`base` (the folder's kernel-metadata.json) with the kernel's id and title, the upload dataset and the
    competition filled in. Internet stays off: code competitions refuse kernels that have it on."""
    if not cfg.competition:
        raise UserError("config key 'competition' is empty; set it to the Kaggle competition slug")
    _check_id(dataset_id, "dataset", "--dataset")
    if kernel_id is None:
        slug = re.sub(r"[^a-z0-9-]+", "-", f"{cfg.competition.lower()}-inference")[:KERNEL_SLUG_MAX].strip("-")
        kernel_id = f"{dataset_id.split('/')[0]}/{slug}"
    _check_id(kernel_id, "kernel", "--kernel")
    meta = dict(base)
    meta.update(
        id=kernel_id,
        title=title or kernel_id.split("/")[1].replace("-", " "),  # Kaggle derives the slug from the title
        code_file=base.get("code_file", CODE_FILE),
        enable_internet=False,
        dataset_sources=[dataset_id],
        competition_sources=[cfg.competition],
    )
    return meta


def push_notebook(
    cfg: Config,
    dataset_id: str,
    kernel_id: str | None = None,
    title: str | None = None,
    folder: str | Path = "notebooks",
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    submit: str | None = None,
    poll_s: float = 30.0,
    timeout_s: float = 9 * 3600.0,
) -> Path:
    """Refresh folder/kernel-metadata.json and, unless `dry_run`, push the folder's notebook to Kaggle. With
    `submit` (the experiment the upload's submission was made from, for the message and the log): wait for the
    kernel's run to finish (polled every `poll_s` seconds, at most `timeout_s`), then submit its submission.csv
    to the competition and log it in submissions/log.csv like any submission. Returns the metadata file."""
    folder = Path(folder)
    path = folder / KERNEL_METADATA
    base = read_json(path) if path.is_file() else {"language": "python", "kernel_type": "script", "is_private": True}
    code = folder / base.get("code_file", CODE_FILE)
    if not code.is_file():
        raise UserError(f"{code} not found: --folder must hold the notebook (render with code_competition=True)")
    meta = kernel_metadata(cfg, base, dataset_id, kernel_id, title)
    atomic_write_json(path, meta)
    log(f"{path}: kernel {meta['id']}, dataset {dataset_id}, competition {cfg.competition}")
    if dry_run:
        log(f"dry run: would push {folder} (kaggle kernels push -p {folder})")
        return path
    url, version = kaggle_api.kernel_push(folder)
    log(f"pushed {meta['id']} version {version}: {url}")
    if submit is not None:
        wait_for_kernel(meta["id"], poll_s, timeout_s, log)
        submit_kernel_output(cfg, meta["id"], version, submit, log)
    return path


def wait_for_kernel(kernel: str, poll_s: float, timeout_s: float, log: Callable[[str], None] = print) -> None:
    """Poll the kernel's run until it completes; a failed or cancelled run, or one past `timeout_s`, stops with one
    line (its log is on the kernel's page)."""
    start, last = time.monotonic(), None
    while True:
        status, failure = kaggle_api.kernel_status(kernel)
        if status != last:
            log(f"kernel {kernel}: {status}")
            last = status
        if status in kaggle_api.KERNEL_DONE:
            return
        if status in kaggle_api.KERNEL_FAILED:
            raise UserError(f"kernel {kernel} ended with status {status}{': ' + failure if failure else ''}; nothing "
                            "submitted (see its log on kaggle.com)")  # fmt: skip
        if time.monotonic() - start > timeout_s:
            raise UserError(f"kernel {kernel} still {status} after {timeout_s:.0f} s; nothing submitted (submit it "
                            "later with push-notebook --submit, or from the kernel's page)")  # fmt: skip
        time.sleep(poll_s)


def submit_kernel_output(cfg: Config, kernel: str, version: int | None, exp: str,
                         log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Submit the kernel run's submission.csv to the competition, with the experiment's CV in the message (the CV
    of the submission its decisions describe, which the notebook reproduces), and log it."""
    message = f"{default_message(cfg, exp)} (kernel {kernel} v{version})"
    answer = kaggle_api.competition_submit_code(cfg.competition, kernel, version, message)
    row = log_code_submission(cfg, kernel, version, exp, message, cfg.competition)
    log(f"submitted {kernel} v{version}'s submission.csv to {cfg.competition}: {message}"
        + (f" ({answer})" if answer else ""))  # fmt: skip
    return row


# --- the upload dataset --------------------------------------------------------------------------------------


def check_dataset_id(dataset_id: str, title: str) -> None:
    """Kaggle's own rules, checked before packaging gigabytes: id '<user>/<slug>', slug and title 6-50 characters."""
    if not DATASET_ID.match(dataset_id):
        raise UserError(
            f"dataset id {dataset_id!r} must look like '<kaggle-user>/<slug>', "
            "the slug 6-50 characters of a-z, 0-9 and '-'"
        )
    if not 6 <= len(title) <= 50:
        raise UserError(f"dataset title {title!r} must be 6-50 characters long (Kaggle's limit)")


def _copy_run(run: Run, out: Run, folds: list[int]) -> None:
    """Fold `folds`' checkpoints, the run's small files (runs.PACKAGED) and, when it was exported, its export.json
    and ONNX models (runs.PACKAGED_EXPORT)."""
    out.path.mkdir(parents=True, exist_ok=True)
    for k in folds:  # with its oof.csv, which marks the fold finished
        out.fold(k).path.mkdir(exist_ok=True)
        shutil.copy2(run.fold(k).best, out.fold(k).best)
        shutil.copy2(run.fold(k).oof, out.fold(k).oof)
        if run.fold(k).normalization.is_file():  # augment.mean/std: fold: the fold's own statistics
            shutil.copy2(run.fold(k).normalization, out.fold(k).normalization)
        for name in PACKAGED_EXPORT if run.export_json.is_file() else ():
            if (run.export_fold(k).path / name).is_file():
                out.export_fold(k).path.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run.export_fold(k).path / name, out.export_fold(k).path / name)
    if run.export_json.is_file():
        out.export_dir.mkdir(exist_ok=True)
        shutil.copy2(run.export_json, out.export_json)
    for name in PACKAGED:
        if (run.path / name).is_file():
            shutil.copy2(run.path / name, out.path / name)


def _packaged_folds(cfg: Config, exps: list[str], allow_partial: bool) -> dict[str, list[int]]:
    """Each run to package (an ensemble brings its members along, so its test predictions can be recomputed
    offline) -> the folds whose checkpoints go with it: every fold, finished; with `allow_partial` the finished
    ones. An ensemble carries no checkpoints of its own."""
    n_folds, queue, runs = expected_folds(cfg), list(exps), {}
    while queue:
        exp = queue.pop(0)
        if exp in runs:
            continue
        run = Run.named(cfg.output_dir, exp)
        if not run.path.is_dir():
            raise UserError(f"{run.path} not found: no experiment {exp!r} under output_dir={cfg.output_dir}")
        runs[exp] = [] if run.is_ensemble() else run.usable_folds(n_folds, allow_partial, "upload")
        decided = run.read_decisions()  # how the notebook will predict, and what its submission applies
        if decided.views is None and decided.members is None:
            raise UserError(f"{run.decisions}: {exp!r} was not predicted since its last training; run `predict` "
                            "first (the notebook predicts with the views and runtime it records)")  # fmt: skip
        queue.extend(run.members())
    return runs


def _copy_python_files(package: Path, dest: Path) -> None:
    """The package's Python files only: nothing else that sits in the source tree (a stray .env, notes, caches)."""
    for src in sorted(package.rglob("*.py")):
        if "__pycache__" in src.parts:
            continue
        target = dest / src.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _fresh_dir(dest: Path) -> None:
    """Empty `dest` only when it is a previous package (has dataset-metadata.json): never a random folder."""
    if dest.exists():
        if not dest.is_dir() or (any(dest.iterdir()) and not (dest / METADATA).is_file()):
            raise UserError(f"{dest} exists and is not an upload folder made by this command; choose another path")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)


def package_for_dataset(
    cfg: Config, exps: Iterable[str], dest: str | Path, dataset_id: str, title: str, allow_partial: bool = False
) -> Path:
    """Build a Kaggle dataset folder for offline inference:

    dest/src/<package>/...              this package's Python files
    dest/<exp>/fold<k>/best.pt          each experiment's folds' checkpoints (all finished, unless `allow_partial`)
    dest/<exp>/export/...               its export.json and ONNX models, when it was exported
    dest/<exp>/...                      its small files (runs.PACKAGED; an ensemble's members follow it)
    dest/folds.csv (+ folds.json)       the split the OOF predictions belong to
    dest/dataset-metadata.json          {"title", "id", "licenses"}
    """
    exps = list(exps)
    if not exps:
        raise UserError("upload needs at least one experiment name")
    check_dataset_id(dataset_id, title)
    runs = _packaged_folds(cfg, exps, allow_partial)  # every check before the old folder is replaced
    dest = Path(dest)
    _fresh_dir(dest)
    package = Path(__file__).resolve().parents[1]
    _copy_python_files(package, dest / "src" / package.name)
    for exp, folds in runs.items():
        _copy_run(Run.named(cfg.output_dir, exp), Run(dest / exp), folds)
    if Path(cfg.folds.path).is_file():  # the split the OOF predictions belong to
        shutil.copy2(cfg.folds.path, dest / PACKAGED_FOLDS)
        if folds_meta_path(cfg.folds.path).is_file():
            shutil.copy2(folds_meta_path(cfg.folds.path), folds_meta_path(dest / PACKAGED_FOLDS))
    metadata = {"title": title, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}
    atomic_write_json(dest / METADATA, metadata)
    return dest
