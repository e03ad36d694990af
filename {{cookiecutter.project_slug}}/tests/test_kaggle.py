"""Kaggle calls with only the client object replaced: the exact arguments sent and the files produced."""

import json
import sys
import types
import zipfile
from pathlib import Path

import pytest
import requests

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import Decisions, Run
from {{ cookiecutter.package_name }}.kaggle import api as kaggle_api
from {{ cookiecutter.package_name }}.kaggle import offline


class Response:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class FakeApi:
    """Records each call as (method, args, kwargs); `existing` holds the datasets that dataset_status finds."""

    def __init__(self, existing=(), fail=None):
        self.calls, self.existing, self.fail = [], set(existing), fail

    def _record(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        if self.fail:
            raise self.fail if isinstance(self.fail, Exception) else RuntimeError(self.fail)

    def competition_download_files(self, competition, path=None, **kwargs):
        self._record("competition_download_files", competition, path=path, **kwargs)
        with zipfile.ZipFile(Path(path) / f"{competition}.zip", "w") as zf:
            zf.writestr("train.csv", "id,label\na,1\n")
            zf.writestr("train/a.png", b"png")

    def competition_submit(self, **kwargs):
        self._record("competition_submit", **kwargs)
        return Response(message="Successfully submitted")

    def dataset_status(self, dataset):
        self.calls.append(("dataset_status", (dataset,), {}))
        if dataset not in self.existing:
            raise http_error(404, "Not Found")
        return "ready"

    def dataset_create_new(self, *args, **kwargs):
        self._record("dataset_create_new", *args, **kwargs)
        return Response(error=None, url="https://www.kaggle.com/datasets/me/new-models")

    def dataset_create_version(self, *args, **kwargs):
        self._record("dataset_create_version", *args, **kwargs)
        return Response(error="", url="")

    def kernels_push(self, *args, **kwargs):
        self._record("kernels_push", *args, **kwargs)
        return Response(error="", url="https://www.kaggle.com/code/me/infer")


@pytest.fixture
def api(monkeypatch):
    fake = FakeApi(existing={"me/old-models"})
    monkeypatch.setattr(kaggle_api, "_client", lambda: fake)
    return fake


def test_download_unzips_and_removes_the_zip(api, tmp_path):
    dest = kaggle_api.download("digit-recognizer", tmp_path / "data")
    assert dest == tmp_path / "data"
    assert api.calls == [("competition_download_files", ("digit-recognizer",), {"path": str(dest), "quiet": False})]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["train", "train.csv", "train/a.png"]


def test_submit_sends_file_message_and_competition(api, tmp_path):
    file = tmp_path / "sub.csv"
    file.write_text("id,label\na,1\n")
    assert (
        kaggle_api.competition_submit("digit-recognizer", file, "exp001 CV accuracy=0.99") == "Successfully submitted"
    )
    kwargs = {"file_name": str(file), "message": "exp001 CV accuracy=0.99", "competition": "digit-recognizer"}
    assert api.calls == [("competition_submit", (), kwargs)]
    with pytest.raises(UserError, match="not found"):
        kaggle_api.competition_submit("digit-recognizer", tmp_path / "missing.csv", "m")
    assert len(api.calls) == 1


PROJECT = Path(cli.__file__).parents[2]  # src/<package>/cli.py -> the project, with its configs/


def test_the_demo_config_never_submits_to_the_competition(api, tmp_path, new_project, capsys):
    """`make submit EXP=demo` would send the digits demo's predictions to the competition the repo is for: the demo
    config names no competition, and submit refuses it in one line, before anything is sent."""
    demo = config.load(PROJECT / "configs" / "demo.yaml")
    assert demo.competition == "" and config.load(PROJECT / "configs" / "exp001.yaml").competition
    new_project(tmp_path, demo.task, n_folds=2, images=False, extra=f"base: {PROJECT / 'configs' / 'demo.yaml'}\n")
    demo_cfg = tmp_path / "configs" / "exp.yaml"  # the demo's config, on this test's data and outputs
    file = tmp_path / "data" / "sample_submission.csv"  # a file in the competition's format
    capsys.readouterr()
    for extra in ([], ["--dry-run"]):
        code = cli.main(["submit", "-c", str(demo_cfg), str(file), "-m", "demo", *extra])
        out, err = capsys.readouterr()
        if extra:  # a dry run says where it would go, and sends nothing either
            assert code == 0 and "(no competition set)" in out
        else:
            assert code == 2 and err.count("\n") == 1 and "'competition' is empty" in err, err
    assert api.calls == []
    assert not (tmp_path / "submissions" / "log.csv").exists()
    # The same command with a competition named is sent: the competition alone stopped it.
    assert cli.main(["submit", "-c", str(demo_cfg), str(file), "-m", "demo", "competition=digit-recognizer"]) == 0
    sent = [(name, kwargs["competition"]) for name, _, kwargs in api.calls]
    assert sent == [("competition_submit", "digit-recognizer")]


@pytest.mark.parametrize("existing", [False, True])
def test_dataset_created_or_versioned_with_sub_folders(api, tmp_path, existing):
    folder = tmp_path / "upload"
    folder.mkdir()
    dataset_id = "me/old-models" if existing else "me/new-models"
    (folder / "dataset-metadata.json").write_text(json.dumps({"id": dataset_id}))
    url = kaggle_api.dataset_create_or_version(folder, "exp001 + exp002")
    assert api.calls[0] == ("dataset_status", (dataset_id,), {})
    if existing:
        assert api.calls[1] == (
            "dataset_create_version",
            (str(folder),),
            {"version_notes": "exp001 + exp002", "quiet": False, "dir_mode": "zip"},
        )
        assert url == "https://www.kaggle.com/datasets/me/old-models"
    else:
        assert api.calls[1] == (
            "dataset_create_new",
            (str(folder),),
            {"public": False, "quiet": False, "dir_mode": "zip"},
        )
        assert url == "https://www.kaggle.com/datasets/me/new-models"


def test_kernel_push(api, tmp_path):
    (tmp_path / "kernel-metadata.json").write_text("{}")
    assert kaggle_api.kernel_push(tmp_path) == ("https://www.kaggle.com/code/me/infer", None)
    assert api.calls == [("kernels_push", (str(tmp_path),), {})]


def test_api_errors_become_one_line_user_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(kaggle_api, "_client", lambda: FakeApi(fail=http_error(403, "Forbidden")))
    file = tmp_path / "sub.csv"
    file.write_text("id\n")
    with pytest.raises(UserError, match="accept the competition rules"):
        kaggle_api.competition_submit("c", file, "m")
    response = Response(error="The requested slug is already in use")
    monkeypatch.setattr(FakeApi, "dataset_create_new", lambda self, *a, **k: response)
    monkeypatch.setattr(kaggle_api, "_client", lambda: FakeApi())
    (tmp_path / "dataset-metadata.json").write_text(json.dumps({"id": "me/new-models"}))
    with pytest.raises(UserError, match="already in use"):
        kaggle_api.dataset_create_or_version(tmp_path, "m")


@pytest.fixture
def fresh_kaggle(monkeypatch, tmp_path):
    """The real kaggle package imported afresh (it authenticates at import), with no credentials of this machine:
    HOME and KAGGLE_CONFIG_DIR point at an empty folder and the KAGGLE_* variables are unset."""
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / ".kaggle"))
    loaded = {k: m for k, m in sys.modules.items() if k == "kaggle" or k.startswith("kaggle.")}
    for k in loaded:
        del sys.modules[k]
    yield monkeypatch
    for k in [k for k in sys.modules if k == "kaggle" or k.startswith("kaggle.")]:
        del sys.modules[k]
    sys.modules.update(loaded)


def test_real_kaggle_package_imports_offline_with_credentials_in_the_environment(fresh_kaggle, capsys):
    fresh_kaggle.setenv("KAGGLE_USERNAME", "dummy-user")
    fresh_kaggle.setenv("KAGGLE_KEY", "dummy-key")
    api = kaggle_api._client()
    from kaggle.api.kaggle_api_extended import KaggleApi

    assert isinstance(api, KaggleApi) and api is sys.modules["kaggle"].api and api._authenticated
    assert capsys.readouterr().out == ""


def test_real_kaggle_package_without_credentials_names_the_fix_on_one_line(fresh_kaggle, capsys):
    with pytest.raises(UserError) as err:
        kaggle_api._client()
    message = str(err.value)
    assert message.startswith("Kaggle credentials not found") and "KAGGLE_USERNAME" in message
    assert "\n" not in message and "import" not in message
    assert capsys.readouterr().out == ""  # kaggle's page of login help is not shown


def test_kaggle_import_failure_names_the_missing_module_not_the_credentials(fresh_kaggle):
    fresh_kaggle.setenv("KAGGLE_USERNAME", "dummy-user")
    fresh_kaggle.setenv("KAGGLE_KEY", "dummy-key")
    fresh_kaggle.setitem(sys.modules, "six", None)  # what a fresh install without six looks like to kaggle 2.2.5
    with pytest.raises(UserError) as err:
        kaggle_api._client()
    message = str(err.value)
    assert "ModuleNotFoundError" in message and "six" in message and "pip install six" in message
    assert "credentials" not in message and "\n" not in message


def test_client_without_credentials_names_the_fix_not_the_secret(monkeypatch):
    """kaggle >= 2 imports unauthenticated, and authenticate() exits."""

    class Unauthenticated:
        _authenticated = False

        def authenticate(self):
            print("Authentication required to call the Kaggle API.\n\nFirst, you will need a Kaggle account.")
            raise SystemExit(1)

    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=Unauthenticated()))
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-key")
    with pytest.raises(UserError) as err:
        kaggle_api._client()
    assert "KAGGLE_API_TOKEN" in str(err.value) and "s3cr3t" not in str(err.value)
    ok = types.SimpleNamespace(_authenticated=True)
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=ok))
    assert kaggle_api._client() is ok


def http_error(status: int, reason: str) -> requests.HTTPError:
    """What kaggle 2.x raises when the server refuses a call: requests' HTTPError with the response."""
    response = requests.Response()
    response.status_code, response.reason = status, reason
    return requests.HTTPError(
        f"{status} Client Error: {reason} for url: https://api.kaggle.com/v1/x", response=response
    )


@pytest.mark.parametrize(
    ("status", "reason", "says"),
    [
        (401, "Unauthorized", "credentials were not accepted"),
        (403, "Forbidden", "accept the competition rules"),
        (404, "Not Found", "check the competition, dataset or kernel id"),
        (429, "Too Many Requests", "wait a few minutes"),
    ],
)
def test_a_refused_call_says_why_in_one_line(monkeypatch, tmp_path, status, reason, says):
    monkeypatch.setattr(kaggle_api, "_client", lambda: FakeApi(fail=http_error(status, reason)))
    file = tmp_path / "sub.csv"
    file.write_text("id\n")
    with pytest.raises(UserError) as err:
        kaggle_api.competition_submit("c", file, "m")
    message = str(err.value)
    assert message.startswith(f"kaggle submit refused (HTTP {status}): ") and says in message
    assert "\n" not in message and "credentials not found" not in message


NO_NETWORK = requests.ConnectionError(
    "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded with url: /v1/competitions "
    "(Caused by NameResolutionError(\"Failed to resolve 'api.kaggle.com'\"))"
)


@pytest.mark.parametrize("call", ["submit", "download", "dataset status"])
def test_no_network_is_no_connection_not_an_http_status(monkeypatch, tmp_path, call):
    """Without network requests' text holds port=443: a status comes only from an HTTP response, never that text."""
    api = FakeApi(fail=NO_NETWORK)
    if call == "dataset status":
        api.dataset_status = lambda dataset: (_ for _ in ()).throw(NO_NETWORK)
    monkeypatch.setattr(kaggle_api, "_client", lambda: api)
    file = tmp_path / "sub.csv"
    file.write_text("id\n")
    (tmp_path / "dataset-metadata.json").write_text(json.dumps({"id": "me/new-models"}))
    run = {"submit": lambda: kaggle_api.competition_submit("c", file, "m"),
           "download": lambda: kaggle_api.download("c", tmp_path / "data"),
           "dataset status": lambda: kaggle_api.dataset_create_or_version(tmp_path, "m")}[call]  # fmt: skip
    with pytest.raises(UserError) as err:
        run()
    message = str(err.value)
    assert "no connection to kaggle.com (ConnectionError: HTTPSConnectionPool(host='api.kaggle.com'" in message
    assert "HTTP 443" not in message and "refused" not in message and "\n" not in message


def test_dataset_status_refused_is_not_taken_for_a_new_dataset(monkeypatch, tmp_path):
    class Refusing(FakeApi):
        def dataset_status(self, dataset):
            self.calls.append(("dataset_status", (dataset,), {}))
            raise http_error(401, "Unauthorized")

    api = Refusing()
    monkeypatch.setattr(kaggle_api, "_client", lambda: api)
    (tmp_path / "dataset-metadata.json").write_text(json.dumps({"id": "me/new-models"}))
    with pytest.raises(UserError, match=r"refused \(HTTP 401\)"):
        kaggle_api.dataset_create_or_version(tmp_path, "m")
    assert [c[0] for c in api.calls] == ["dataset_status"]  # nothing created


def fake_run(root: Path, exp: str, folds: int = 2) -> Path:
    """`folds` finished folds (best.pt + oof.csv), and one more killed mid-training (best.pt only)."""
    run = root / "outputs" / exp
    for k in range(folds + 1):
        (run / f"fold{k}").mkdir(parents=True)
        (run / f"fold{k}" / "best.pt").write_bytes(f"{exp} fold {k}".encode())
        (run / f"fold{k}" / "last.pt").write_bytes(b"not uploaded")
        if k < folds:
            (run / f"fold{k}" / "oof.csv").write_text("id,fold,0,1\n")
    (run / "config.yaml").write_text(f"exp: {exp}\n")
    (run / "classes.json").write_text('{"task": "multiclass", "classes": ["0", "1"], "positive": null}')
    Run(run).write_decisions(decided())
    return run


def decided(members: list[str] | None = None) -> Decisions:
    """decisions.json of a predicted experiment (one view, torch) or, with `members`, of a blend."""
    way = {} if members else {"views": ["identity"], "merge": "mean", "runtime": "torch"}
    return Decisions(metric="accuracy", higher_is_better=True, cv=0.5, cv_from="oof.csv", format="label", **way,
                     members=members)  # fmt: skip


@pytest.fixture
def cfg(tmp_path):
    yaml = tmp_path / "exp001.yaml"
    yaml.write_text(f"output_dir: {tmp_path / 'outputs'}\nfolds:\n  n_folds: 3\n")
    return config.load(yaml)


def test_package_for_dataset_layout(cfg, tmp_path, capsys):
    fake_run(tmp_path, "exp001")
    fake_run(tmp_path, "exp002", folds=1)
    ens = tmp_path / "outputs" / "blend1"
    ens.mkdir()
    (ens / "weights.json").write_text(json.dumps({"method": "mean", "members": ["exp002"], "weights": [1.0]}))
    (ens / "classes.json").write_text("{}")
    Run(ens).write_decisions(decided(["exp002"]))
    dest = offline.package_for_dataset(
        cfg, ["exp001", "blend1"], tmp_path / "upload", "me/my-models", "My models", allow_partial=True
    )
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    files = [f for f in files if not f.startswith("src/")]
    assert files == [
        "blend1/classes.json",
        "blend1/decisions.json",
        "blend1/weights.json",
        "dataset-metadata.json",
        "exp001/classes.json",
        "exp001/config.yaml",
        "exp001/decisions.json",
        "exp001/fold0/best.pt",
        "exp001/fold0/oof.csv",
        "exp001/fold1/best.pt",
        "exp001/fold1/oof.csv",
        "exp002/classes.json",
        "exp002/config.yaml",
        "exp002/decisions.json",
        "exp002/fold0/best.pt",
        "exp002/fold0/oof.csv",
    ]  # the unfinished fold (exp001/fold2, exp002/fold1) stays home
    assert (dest / "exp001" / "fold1" / "best.pt").read_bytes() == b"exp001 fold 1"
    package = Path(kaggle_api.__file__).parents[1]
    copied = dest / "src" / package.name

    def python_files(root: Path) -> list[str]:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts)

    assert python_files(copied) == python_files(package)
    assert {p.suffix for p in copied.rglob("*") if p.is_file()} == {".py"}
    assert not list(copied.rglob("__pycache__"))
    meta = json.loads((dest / "dataset-metadata.json").read_text())
    assert meta == {"title": "My models", "id": "me/my-models", "licenses": [{"name": "CC0-1.0"}]}
    assert capsys.readouterr().out.splitlines() == [  # what was left out, and nothing else
        "exp001: fold(s) [2] not finished; upload uses fold(s) [0, 1] only (--allow-partial)",
        "exp002: fold(s) [1, 2] not finished; upload uses fold(s) [0] only (--allow-partial)",
    ]
    again = offline.package_for_dataset(cfg, ["exp002"], dest, "me/my-models", "My models", allow_partial=True)
    assert not (again / "exp001").exists() and (again / "exp002" / "fold0" / "best.pt").is_file()  # replaced


def test_upload_of_an_unfinished_experiment_stops_naming_its_folds_unless_allowed(cfg, tmp_path):
    fake_run(tmp_path, "exp001")  # folds 0 and 1 finished, fold 2 killed
    fake_run(tmp_path, "exp002", folds=1)
    ens = tmp_path / "outputs" / "blend1"
    ens.mkdir()
    (ens / "weights.json").write_text(json.dumps({"method": "mean", "members": ["exp002"], "weights": [1.0]}))
    Run(ens).write_decisions(decided(["exp002"]))
    previous = offline.package_for_dataset(cfg, ["exp001"], tmp_path / "up", "me/my-models", "My models", True)
    before = sorted(p.relative_to(previous).as_posix() for p in previous.rglob("*"))
    with pytest.raises(UserError) as err:
        offline.package_for_dataset(cfg, ["exp001"], tmp_path / "up", "me/my-models", "My models")
    assert "exp001: fold(s) [2] of 3 not finished" in str(err.value) and "--allow-partial" in str(err.value)
    with pytest.raises(UserError, match=r"exp002: fold\(s\) \[1, 2\] of 3"):  # an ensemble's members too
        offline.package_for_dataset(cfg, ["blend1"], tmp_path / "up", "me/my-models", "My models")
    assert sorted(p.relative_to(previous).as_posix() for p in previous.rglob("*")) == before  # nothing lost


def test_package_for_dataset_refusals(cfg, tmp_path):
    fake_run(tmp_path, "exp001")
    for bad_id in ("my-models", "me/abc", "me/Has_Caps"):
        with pytest.raises(UserError, match="dataset id"):
            offline.package_for_dataset(cfg, ["exp001"], tmp_path / "up", bad_id, "My models")
    with pytest.raises(UserError, match="title"):
        offline.package_for_dataset(cfg, ["exp001"], tmp_path / "up", "me/my-models", "abc")
    with pytest.raises(UserError, match="not found"):
        offline.package_for_dataset(cfg, ["exp009"], tmp_path / "up", "me/my-models", "My models")
    (tmp_path / "outputs" / "untrained").mkdir()
    with pytest.raises(UserError, match=r"best\.pt"):
        offline.package_for_dataset(cfg, ["untrained"], tmp_path / "up2", "me/my-models", "My models")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an upload folder"):
        offline.package_for_dataset(cfg, ["exp001"], precious, "me/my-models", "My models", allow_partial=True)
    assert (precious / "notes.txt").read_text() == "keep me"
