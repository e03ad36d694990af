"""Every network call to Kaggle, in one place, plus the folder layout of the upload dataset.

`import kaggle` reads the credentials as it is imported, so it happens only inside `_client()`: the rest of the
package (and its tests) never needs a Kaggle account. Nothing here prints, logs or writes a credential.
Dataset uploads use `dir_mode="zip"`: Kaggle's default ("skip") silently drops sub-folders such as `src/`.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .artefacts import atomic_write_json, read_json
from .config import Config
from .errors import UserError

CREDENTIALS_HELP = (
    "Kaggle credentials not found or not accepted: set KAGGLE_API_TOKEN (or ~/.kaggle/access_token), or "
    "KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json); see kaggle.com > Settings > API"
)
DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]{4,48}[a-z0-9]$")
METADATA = "dataset-metadata.json"


def _client() -> Any:
    """The authenticated `kaggle.api` object: the single place that imports (and so authenticates) kaggle."""
    try:
        import kaggle

        api = kaggle.api
        # kaggle >= 2 swallows a failed authentication at import; older versions raise there instead.
        if not getattr(api, "_authenticated", True):
            api.authenticate()
    except (Exception, SystemExit) as e:  # authenticate() calls exit(1) when nothing is configured
        raise UserError(f"{CREDENTIALS_HELP} ({type(e).__name__})") from None
    return api


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one API call; an HTTP or API error becomes a one-line UserError (the text holds no credentials)."""
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        hint = ""
        if any(code in first for code in ("401", "403")):
            hint = " (accept the competition rules on kaggle.com first, and check the credentials)"
        raise UserError(f"kaggle {what} failed: {first}{hint}") from None


def _check_response(what: str, response: Any) -> None:
    error = getattr(response, "error", None)
    if error:
        raise UserError(f"kaggle {what} failed: {error}")


def download(competition: str, dest_dir: str | Path) -> Path:
    """Download the competition's files into `dest_dir`, unzipped, the zip removed. Returns `dest_dir`."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    api = _client()
    # Unzipped here rather than with unzip=True, which older kaggle versions lack.
    _call("download", api.competition_download_files, competition, path=str(dest), quiet=False)
    archive = dest / f"{competition}.zip"
    if archive.is_file():
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)  # zipfile drops absolute paths and '..' parts
        archive.unlink()
    return dest


def submit(competition: str, file: str | Path, message: str) -> str:
    """Submit `file` to `competition`; returns Kaggle's answer (empty when it says nothing)."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{file}: submission file not found")
    api = _client()
    response = _call("submit", api.competition_submit, file_name=str(file), message=message, competition=competition)
    return str(getattr(response, "message", "") or "")


def dataset_create_or_version(folder: str | Path, message: str) -> str:
    """Create the dataset described by `folder/dataset-metadata.json`, or add a version if it exists.

    Returns the dataset's URL."""
    folder = Path(folder)
    meta = folder / METADATA
    if not meta.is_file():
        raise UserError(f"{meta} not found: build the folder with package_for_dataset first")
    dataset_id = read_json(meta).get("id", "")
    api = _client()
    try:
        api.dataset_status(dataset_id)  # raises (HTTP 404) when the dataset does not exist yet
        exists = True
    except Exception:
        exists = False
    if exists:
        response = _call(
            "datasets version",
            api.dataset_create_version,
            str(folder),
            version_notes=message,
            quiet=False,
            dir_mode="zip",
        )
    else:
        response = _call(
            "datasets create", api.dataset_create_new, str(folder), public=False, quiet=False, dir_mode="zip"
        )
    _check_response("datasets create/version", response)
    return str(getattr(response, "url", "") or f"https://www.kaggle.com/datasets/{dataset_id}")


def kernel_push(folder: str | Path) -> str:
    """Push the notebook in `folder` (with its kernel-metadata.json); returns the kernel's URL."""
    folder = Path(folder)
    if not (folder / "kernel-metadata.json").is_file():
        raise UserError(f"{folder / 'kernel-metadata.json'} not found: the folder must hold the kernel's metadata")
    api = _client()
    response = _call("kernels push", api.kernels_push, str(folder))
    _check_response("kernels push", response)
    return str(getattr(response, "url", "") or "")


def check_dataset_id(dataset_id: str, title: str) -> None:
    """Kaggle's own rules, checked before packaging gigabytes: id '<user>/<slug>', slug and title 6-50 characters."""
    if not DATASET_ID.match(dataset_id):
        raise UserError(
            f"dataset id {dataset_id!r} must look like '<kaggle-user>/<slug>', "
            "the slug 6-50 characters of a-z, 0-9 and '-'"
        )
    if not 6 <= len(title) <= 50:
        raise UserError(f"dataset title {title!r} must be 6-50 characters long (Kaggle's limit)")


def _members(run_dir: Path) -> list[str]:
    """An ensemble's member experiments (from its weights.json), else none."""
    weights = run_dir / "weights.json"
    return list(read_json(weights).get("members", [])) if weights.is_file() else []


def _copy_experiment(run_dir: Path, out: Path) -> None:
    ensemble = (run_dir / "weights.json").is_file()
    checkpoints = sorted(run_dir.glob("fold*/best.pt"))
    if not checkpoints and not ensemble:
        raise UserError(f"{run_dir}: no fold*/best.pt checkpoints; train the experiment first")
    out.mkdir(parents=True, exist_ok=True)
    for ckpt in checkpoints:
        (out / ckpt.parent.name).mkdir(exist_ok=True)
        shutil.copy2(ckpt, out / ckpt.parent.name / ckpt.name)
    # oof.csv travels too: thresholds and QWK cuts tuned on OOF are re-tuned offline exactly as here.
    for name in ("config.yaml", "classes.json", "cv.json", "weights.json", "oof.csv"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)


def _fresh_dir(dest: Path) -> None:
    """Empty `dest` only when it is a previous package (has dataset-metadata.json): never a random folder."""
    if dest.exists():
        if not dest.is_dir() or (any(dest.iterdir()) and not (dest / METADATA).is_file()):
            raise UserError(f"{dest} exists and is not an upload folder made by this command; choose another path")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)


def package_for_dataset(cfg: Config, exps: Iterable[str], dest: str | Path, dataset_id: str, title: str) -> Path:
    """Build a Kaggle dataset folder for offline inference:

    dest/src/<package>/...              this package's source
    dest/<exp>/fold<k>/best.pt          each experiment's best checkpoints
    dest/<exp>/{config.yaml,classes.json,cv.json}   (+ weights.json for an ensemble, whose members follow)
    dest/dataset-metadata.json          {"title", "id", "licenses"}
    """
    exps = list(exps)
    if not exps:
        raise UserError("upload needs at least one experiment name")
    check_dataset_id(dataset_id, title)
    dest = Path(dest)
    _fresh_dir(dest)
    package = Path(__file__).resolve().parent
    shutil.copytree(package, dest / "src" / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    queue, seen = list(exps), set()
    while queue:  # an ensemble brings its members along, so its test predictions can be recomputed offline
        exp = queue.pop(0)
        if exp in seen:
            continue
        seen.add(exp)
        run_dir = Path(cfg.output_dir) / exp
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} not found: no experiment {exp!r} under output_dir={cfg.output_dir}")
        _copy_experiment(run_dir, dest / exp)
        queue.extend(_members(run_dir))
    if Path(cfg.folds.path).is_file():  # the split the OOF predictions belong to
        shutil.copy2(cfg.folds.path, dest / "folds.csv")
        if Path(cfg.folds.path).with_suffix(".json").is_file():
            shutil.copy2(Path(cfg.folds.path).with_suffix(".json"), dest / "folds.json")
    metadata = {"title": title, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}
    atomic_write_json(dest / METADATA, metadata)
    return dest
