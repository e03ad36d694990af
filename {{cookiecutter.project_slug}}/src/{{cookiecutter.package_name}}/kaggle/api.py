"""Every network call to Kaggle, in one place (the upload folder itself is built in offline.py).

`import kaggle` reads the credentials as it is imported, so it happens only inside `_client()`: the rest of the
package (and its tests) never needs a Kaggle account. Nothing here prints, logs or writes a credential.
Dataset uploads use `dir_mode="zip"`: Kaggle's default ("skip") silently drops sub-folders such as `src/`.
"""

from __future__ import annotations

import contextlib
import io
import re
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import Config
from ..core.errors import UserError
from ..core.runs import read_json
from .submissions import check_submission_file, default_message, log_submission

CREDENTIALS_HELP = (
    "Kaggle credentials not found: set KAGGLE_API_TOKEN (or ~/.kaggle/access_token), or "
    "KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json); see kaggle.com > Settings > API"
)
DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]{4,48}[a-z0-9]$")
METADATA = "dataset-metadata.json"  # the upload folder's own file, read by `kaggle datasets create`
# What Kaggle means when it refuses a call, by HTTP status.
REFUSALS = {
    400: "Kaggle rejected the request (check the ids and files sent)",
    401: "the credentials were not accepted: create a new API token at kaggle.com > Settings > API",
    403: "not allowed: accept the competition rules on kaggle.com (Join Competition) and check the account's access",
    404: "not found: check the competition, dataset or kernel id (and that this account can see it)",
    409: "conflict: the id is already taken or a previous version is still being processed",
    429: "too many requests: wait a few minutes and retry",
}


def _client() -> Any:
    """The authenticated `kaggle.api` object: the single place that imports (and so authenticates) kaggle.

    Three failures, three messages: the package does not import (not installed, or a dependency it does not
    declare is missing), no credentials, or (in `_call`) Kaggle refuses a call."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # kaggle prints a page of login help when it finds no token
            import kaggle
    except ImportError as e:  # ModuleNotFoundError too: kaggle 2.2.5 imports six without declaring it
        missing = getattr(e, "name", None) or "kaggle"
        raise UserError(
            f"the kaggle package cannot be imported ({type(e).__name__}: {e}); install what is missing: "
            f"pip install {missing} (or reinstall this project: pip install -e .)"
        ) from None
    except (Exception, SystemExit) as e:  # older kaggle versions authenticate (and fail) at import
        raise UserError(f"{CREDENTIALS_HELP} ({type(e).__name__})") from None
    api = kaggle.api
    # kaggle >= 2 swallows a failed authentication at import; authenticate() then prints help and calls exit(1).
    if not getattr(api, "_authenticated", True):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                api.authenticate()
        except (Exception, SystemExit):
            raise UserError(CREDENTIALS_HELP) from None
    return api


def _http_status(e: BaseException) -> int | None:
    """The HTTP status of a refused call, from the response a requests.HTTPError carries; None without one. Never
    read from the error's text: without network it holds `HTTPSConnectionPool(host='api.kaggle.com', port=443)`,
    where a number is a port, not a status (PITFALLS)."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def _refused(what: str, e: BaseException) -> UserError:
    """One line for a failed call: what was refused and what to do (the text holds no credentials)."""
    first = (str(e).splitlines() or [type(e).__name__])[0][:300]
    status = _http_status(e)
    if status is not None:
        meaning = REFUSALS.get(status, "server error: retry later" if status >= 500 else "refused")
        return UserError(f"kaggle {what} refused (HTTP {status}): {meaning} [{first}]")
    if any(word in type(e).__name__ for word in ("Connection", "Timeout", "MaxRetry", "NameResolution")):
        return UserError(f"kaggle {what} failed: no connection to kaggle.com ({type(e).__name__}: {first[:200]}); "
                         "check the network")  # fmt: skip
    return UserError(f"kaggle {what} failed: {first}")


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one API call; an HTTP or API error becomes a one-line UserError (the text holds no credentials)."""
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        raise _refused(what, e) from None


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


def competition_submit(competition: str, file: str | Path, message: str) -> str:
    """Submit `file` to `competition`; returns Kaggle's answer (empty when it says nothing)."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{file}: submission file not found")
    api = _client()
    response = _call("submit", api.competition_submit, file_name=str(file), message=message, competition=competition)
    return str(getattr(response, "message", "") or "")


def submit(
    cfg: Config,
    path: str | Path,
    message: str | None = None,
    dry_run: bool = False,
    competition: str | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Check the file against the sample submission, then send it to Kaggle with the CV in the message.

    `competition` defaults to the config's `competition` key."""
    path = Path(path)
    competition = competition or cfg.competition
    if not competition and not dry_run:  # before anything else: the demo configs name none on purpose
        raise UserError("config key 'competition' is empty: nothing to submit to (the demo configs never name one); "
                        "set it to the Kaggle slug")  # fmt: skip
    check_submission_file(cfg, path)
    message = message if message is not None else default_message(cfg, path.stem)
    if dry_run:
        log(f"dry run: would submit {path} to {competition or '(no competition set)'} with message {message!r}")
        return message
    answer = competition_submit(competition, path, message)
    log_submission(cfg, path, message, competition)
    log(f"submitted {path} to {competition}: {message}" + (f" ({answer})" if answer else ""))
    return message


def competition_submissions(competition: str, page_size: int = 100, max_pages: int = 50) -> list[dict]:
    """The team's submissions to `competition` (newest first), as plain rows: ref, file_name, date (UTC, ISO 8601),
    description, status, public_score and private_score (floats, None while unscored or hidden), total_bytes."""
    api = _client()
    rows: list[dict] = []
    for page in range(1, max_pages + 1):
        got = _call("submissions", api.competition_submissions, competition, page_number=page, page_size=page_size)
        rows += [_submission_row(s) for s in got or [] if s is not None]
        if len(got or []) < page_size:
            break
    return rows


def _submission_row(s: Any) -> dict:
    def field(*names: str) -> Any:  # kaggle >= 2 names fields in snake_case, older clients in camelCase
        return next((getattr(s, n) for n in names if getattr(s, n, None) is not None), None)

    date, status = field("date"), field("status")
    if isinstance(date, datetime):
        date = (date if date.tzinfo else date.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")
    return {
        "ref": field("ref"),
        "file_name": field("file_name", "fileName"),
        "date": None if date is None else str(date),
        "description": field("description") or "",
        "status": str(getattr(status, "name", status) or ""),  # an enum (SubmissionStatus.COMPLETE) in kaggle 2
        "public_score": _score(field("public_score", "publicScore")),
        "private_score": _score(field("private_score", "privateScore")),
        "total_bytes": field("total_bytes", "totalBytes"),
    }


def _score(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # "" or None: pending, failed, or not public yet
        return None


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
    except Exception as e:
        if _http_status(e) != 404:  # refused for another reason (credentials, network): say that one
            raise _refused("datasets status", e) from None
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


def kernel_push(folder: str | Path) -> tuple[str, int | None]:
    """Push the notebook in `folder` (with its kernel-metadata.json); returns the kernel's URL and the version number
    Kaggle gave this push (None when it says none)."""
    folder = Path(folder)
    if not (folder / "kernel-metadata.json").is_file():
        raise UserError(f"{folder / 'kernel-metadata.json'} not found: the folder must hold the kernel's metadata")
    api = _client()
    response = _call("kernels push", api.kernels_push, str(folder))
    _check_response("kernels push", response)
    version = getattr(response, "version_number", None)
    return str(getattr(response, "url", "") or ""), int(version) if version else None


KERNEL_DONE = {"complete"}
KERNEL_FAILED = {"error", "cancel_requested", "cancel_acknowledged"}


def kernel_status(kernel: str) -> tuple[str, str]:
    """The kernel's run status, lower case (queued, running, complete, error...), and Kaggle's failure message."""
    api = _client()
    response = _call("kernels status", api.kernels_status, kernel)
    status = getattr(response, "status", "")
    name = str(getattr(status, "name", status) or "").lower()
    return name, str(getattr(response, "failure_message", "") or "")


def competition_submit_code(competition: str, kernel: str, version: int | None, message: str,
                            file_name: str = "submission.csv") -> str:  # fmt: skip
    """Submit the output `file_name` of `kernel`'s run `version` to a code competition; returns Kaggle's answer."""
    api = _client()
    response = _call("submit (code)", api.competition_submit_code, file_name=file_name, message=message,
                     competition=competition, kernel=kernel, kernel_version=version)  # fmt: skip
    return str(getattr(response, "message", "") or "")
