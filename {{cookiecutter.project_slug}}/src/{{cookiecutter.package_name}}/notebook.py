"""The offline inference notebook of a code competition (notebooks/inference.py) and `push-notebook`.

On Kaggle the upload dataset (kaggle_api.package_for_dataset) is mounted read-only, so each packaged experiment is
staged into a writable folder (its small files copied, its checkpoints linked) where the ordinary
`infer.predict_test` and `submit.make_submission` run unchanged: the notebook predicts exactly as `make predict`
and `make-submission` do locally.

    notebooks/inference.py          the notebook (percent format), the single source of the Kaggle kernel
    notebooks/kernel-metadata.json  kernel id, title, dataset and competition, internet off (push-notebook fills it)
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import kaggle_api
from .artefacts import atomic_write_csv, atomic_write_json, read_json
from .config import Config, load
from .errors import UserError

STAGED_FILES = ("config.yaml", "classes.json", "cv.json", "weights.json", "oof.csv")
KERNEL_METADATA = "kernel-metadata.json"
CODE_FILE = "inference.py"
MEAN_NAME = "notebook-mean"
KERNEL_SLUG_MAX = 50


def _members(run: Path) -> list[str]:
    weights = run / "weights.json"
    return list(read_json(weights).get("members", [])) if weights.is_file() else []


def packaged_experiments(dataset_dir: str | Path) -> list[str]:
    """What `upload --exps` packaged: every run folder, less the members of a packaged ensemble (they are there
    only so that the ensemble can be recomputed)."""
    dataset_dir = Path(dataset_dir)
    runs = sorted(p.parent.name for p in dataset_dir.glob("*/classes.json"))
    used = {m for r in runs for m in _members(dataset_dir / r)}
    found = [r for r in runs if r not in used]
    if not found:
        raise UserError(f"{dataset_dir}: no packaged experiment (<exp>/classes.json); build it with `upload`")
    return found


def config_path(dataset_dir: str | Path, exp: str) -> Path:
    """The experiment's resolved config.yaml; for an ensemble (which has none) its first member's."""
    run = Path(dataset_dir) / exp
    if (run / "config.yaml").is_file():
        return run / "config.yaml"
    members = _members(run)
    if not members:
        raise UserError(f"{run}: neither config.yaml nor weights.json; not a packaged experiment")
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
    folds = Path(dataset_dir) / "folds.csv"
    if folds.is_file():  # only read to tune thresholds on OOF, when the upload carries the folds
        base.append(f"folds.path={folds}")
    return load(config_path(dataset_dir, exp), [*base, *overrides])


def stage_run(src: Path, dest: Path) -> Path:
    """A writable stand-in for the read-only run folder `src`: small files copied, fold checkpoints linked
    (copied where the file system has no links)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in STAGED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    for ckpt in sorted(src.glob("fold*/best.pt")):
        link = dest / ckpt.parent.name / ckpt.name
        link.parent.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        try:
            link.symlink_to(ckpt.resolve())
        except OSError:
            shutil.copy2(ckpt, link)
    return dest


def predict_packaged(
    dataset_dir: str | Path,
    exp: str,
    data_dir: str | Path,
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
    _done: dict[str, Config] | None = None,
) -> Config:
    """output_dir/<exp>/test_pred.csv from the packaged experiment: its fold models x TTA views, as `predict` does;
    an ensemble predicts its members, then blends them with its recorded weights. Returns the config used."""
    from .infer import predict_test

    done = {} if _done is None else _done
    if exp in done:
        return done[exp]
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    run = stage_run(dataset_dir / exp, output_dir / exp)
    members = _members(run)
    if members:
        cfgs = [predict_packaged(dataset_dir, m, data_dir, output_dir, overrides, log, done) for m in members]
        info = read_json(run / "weights.json")
        blend_test(cfgs[0], exp, members, info["weights"], bool(info.get("rank", False)))
        cfg = cfgs[0]
    else:
        cfg = load_packaged_config(dataset_dir, exp, data_dir, output_dir, overrides)
        predict_test(cfg)
        for link in run.glob("fold*/best.pt"):  # only needed to predict; keeps the kernel's output small
            link.unlink()
    log(f"{exp}: {run / 'test_pred.csv'}")
    done[exp] = cfg
    return cfg


def blend_test(cfg: Config, name: str, members: list[str], weights: Sequence[float], rank: bool = False) -> Path:
    """output_dir/<name>/test_pred.csv: the members' test predictions combined as `ensemble.blend` does."""
    from .ensemble import combine, read_pred_csv, to_ranks

    out, id_col = Path(cfg.output_dir), cfg.data.id_col
    cols = list(read_json(out / members[0] / "classes.json")["classes"])
    tests = [read_pred_csv(out / m / "test_pred.csv", id_col, cols) for m in members]
    ids = tests[0][id_col].tolist()
    preds = np.stack([t.set_index(id_col).loc[ids, cols].to_numpy(np.float64) for t in tests])
    frame = pd.DataFrame(combine(to_ranks(preds) if rank else preds, np.asarray(weights)), columns=cols)
    frame.insert(0, id_col, ids)
    return atomic_write_csv(out / name / "test_pred.csv", frame)


def average(cfg: Config, exps: Sequence[str], name: str = MEAN_NAME) -> str:
    """One experiment: itself. Several: their equally weighted mean, written as an ensemble folder `name`."""
    exps = list(exps)
    if len(exps) == 1:
        return exps[0]
    out = Path(cfg.output_dir)
    classes = [read_json(out / e / "classes.json") for e in exps]
    if any(c["classes"] != classes[0]["classes"] for c in classes):
        raise UserError(f"experiments {exps} predict different columns; only like experiments can be averaged")
    atomic_write_json(out / name / "classes.json", classes[0])
    atomic_write_json(out / name / "weights.json", {"method": "mean", "members": exps, "weights": [1 / len(exps)]})
    blend_test(cfg, name, exps, [1.0 / len(exps)] * len(exps))
    return name


def write_submission(cfg: Config, exp: str, work_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """work_dir/submission.csv from output_dir/<exp>/test_pred.csv, validated against the sample submission."""
    from .submit import make_submission

    try:
        return make_submission(cfg, exp, name="submission", out_dir=work_dir, log=log)
    except UserError as e:
        if (Path(cfg.output_dir) / exp / "oof.csv").is_file():
            raise
        raise UserError(
            f"{e} (the upload has no oof.csv for {exp!r}: thresholds tuned on OOF cannot be recomputed here; "
            "set INFER_OVERRIDES='submit.tune_thresholds=false' or upload the OOF predictions)"
        ) from None


def _check_id(value: str, what: str, flag: str) -> None:
    if not kaggle_api.DATASET_ID.match(value):
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
) -> Path:
    """Refresh folder/kernel-metadata.json and, unless `dry_run`, push the folder's notebook to Kaggle.
    Returns the metadata file."""
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
    else:
        log(kaggle_api.kernel_push(folder))
    return path
