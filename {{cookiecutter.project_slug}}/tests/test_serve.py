"""`serve`: a real server process over a tiny demo experiment answers as `predict` and `make-submission` do, under
200 concurrent requests; bad requests get a 4xx with a one-line JSON error and the server stays up; the web page
predicts an uploaded image in a real browser (Playwright driving Debian's chromium); the batcher batches."""

import asyncio
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.serve import Batcher, Model

from conftest import TINY

PKG = cli.__package__
SRC = str(Path(cli.__file__).parents[1])
CHROMIUM = "/usr/bin/chromium"
# Launch flags for chromium on a machine without network (docs: PITFALLS; its background connections are refused).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip
MAX_BYTES, MAX_FILES = 4096, 4  # the served limits: demo images are a few hundred bytes
TTA = "tta:\n  views: [identity, vflip]\n"  # two views, merged as predict merges them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 300) -> None:
    """Poll /health until it answers (the models are loaded), the process ends, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"serve did not answer /health within {deadline_s} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, new_project):
    """A tiny 2-fold experiment trained, predicted and submitted through the CLI, then `serve` as a real process on
    127.0.0.1; terminated at the end whatever happened."""
    root = tmp_path_factory.mktemp("serve")
    cfg = new_project(root, "multiclass", n_folds=2, extra=TINY + TTA)
    path = root / "configs" / "exp.yaml"
    for args in (["train", "-c", path], ["predict", "-c", path], ["make-submission", "-c", path]):
        assert cli.main([str(a) for a in args]) == 0
    port, log = free_port(), root / "serve.log"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", PKG, "serve", "-c", str(path), f"serve.port={port}", f"serve.max_bytes={MAX_BYTES}",
           f"serve.max_files={MAX_FILES}"]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield {"url": url, "cfg": cfg, "root": root, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def expected(served) -> tuple[pd.DataFrame, pd.Series, Path]:
    """predict's test_pred.csv and make-submission's labels, by id; the test images' folder."""
    root = served["root"]
    pred = pd.read_csv(root / "outputs" / "exp" / "test_pred.csv", dtype={"id": str}).set_index("id")
    sub = pd.read_csv(root / "submissions" / "exp.csv", dtype=str).set_index("id")["label"]
    return pred, sub, root / "data" / "test"


# A model of four batches gives near-uniform probabilities: two classes can lie closer than the float noise between
# one batch composition and another (the server batches requests as they come, predict by tta.batch_size), so the
# label is compared with make-submission's where the top two probabilities are farther apart than that noise.
TIE = 1e-5


def clear_winner(pred: pd.DataFrame, image_id: str) -> bool:
    top = np.sort(pred.loc[image_id].to_numpy())[-2:]
    return bool(top[1] - top[0] > TIE)


@pytest.mark.e2e
def test_200_concurrent_requests_answer_as_predict_and_the_submission(served):
    pred, sub, folder = expected(served)
    ids = list(pred.index)
    # Requests of one image, and every tenth of three: 200 requests, in flight together.
    requests = [[ids[(3 * n + j) % len(ids)] for j in range(3 if n % 10 == 0 else 1)] for n in range(200)]

    def ask(batch: list[str]) -> tuple[list[str], httpx.Response]:
        files = [("files", (f"{i}.png", (folder / f"{i}.png").read_bytes(), "image/png")) for i in batch]
        return batch, client.post(f"{served['url']}/predict", files=files)

    with httpx.Client(timeout=300) as client, ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, requests))
    assert len(answers) == 200
    compared = 0
    for batch, response in answers:
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [a["file"] for a in got] == [f"{i}.png" for i in batch]
        for image_id, answer in zip(batch, got, strict=True):
            probs = pd.Series(answer["probabilities"])
            np.testing.assert_allclose(probs[pred.columns].to_numpy(), pred.loc[image_id].to_numpy(), atol=1e-5)
            assert answer["label"] == answer["submission"]["label"] == str(probs.idxmax())
            if clear_winner(pred, image_id):
                assert answer["label"] == sub.loc[image_id]
                compared += 1
    assert compared > 100  # most images have a clear winner: the labels were compared
    assert httpx.get(f"{served['url']}/health").json()["status"] == "ok"


@pytest.mark.e2e
def test_metadata_names_the_experiment_its_cv_and_models(served):
    meta = httpx.get(f"{served['url']}/metadata").json()
    decisions = json.loads((served["root"] / "outputs" / "exp" / "decisions.json").read_text())
    assert meta["experiment"] == "exp" and meta["cv"] == pytest.approx(decisions["cv"])
    assert meta["metric"] == decisions["metric"] and meta["views"] == ["identity", "vflip"]
    assert meta["models"] == decisions["models"] and meta["runtime"] == "torch"
    assert meta["classes"] == [str(c) for c in range(10)]
    assert httpx.get(f"{served['url']}/docs").status_code == 200
    assert "/predict" in httpx.get(f"{served['url']}/openapi.json").json()["paths"]


def png(size: int = 16, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def image(name: str = "a.png", data: bytes | None = None, kind: str = "image/png") -> tuple:
    return ("files", (name, png() if data is None else data, kind))


BOUNDARY = "b0undary"
EMPTY_MULTIPART = {"content": f"--{BOUNDARY}--\r\n".encode(),
                   "headers": {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}}  # fmt: skip
BAD = {
    "not an image": ({"files": [image(data=b"this is not an image, only text")]}, 422),
    "truncated image": ({"files": [image(data=png(48)[:400])]}, 422),
    "too large": ({"files": [image(data=png(40) + b"\0" * MAX_BYTES)]}, 413),
    "empty file": ({"files": [image(data=b"")]}, 400),
    "no file": (EMPTY_MULTIPART, 400),
    "too many files": ({"files": [image(f"{n}.png") for n in range(MAX_FILES + 1)]}, 400),
    "unknown field": ({"files": [image(), ("picture", ("b.png", png(), "image/png"))]}, 400),
    "text in the files field": ({"data": {"files": "hello"}, "files": [image()]}, 400),
    "part not an image type": ({"files": [image(kind="text/plain")]}, 415),
    "json body": ({"json": {"files": ["a.png"]}}, 415),
    "no boundary": ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400),
}


@pytest.mark.e2e
@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_request_gets_its_4xx_and_one_line_json_and_the_server_goes_on(served, kind):
    request, status = BAD[kind]
    response = httpx.post(f"{served['url']}/predict", timeout=60, **request)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and body["error"] and "\n" not in body["error"]
    assert httpx.get(f"{served['url']}/health").json()["status"] == "ok"
    ok = httpx.post(f"{served['url']}/predict", files=[image()], timeout=60)
    assert ok.status_code == 200 and served["proc"].poll() is None


@pytest.mark.e2e
def test_wrong_method_and_unknown_path_answer_json_errors(served):
    for response, status in ((httpx.get(f"{served['url']}/predict"), 405), (httpx.get(f"{served['url']}/x"), 404)):
        assert response.status_code == status and list(response.json()) == ["error"]


@pytest.mark.e2e
@pytest.mark.browser
def test_the_page_predicts_an_uploaded_image_in_a_real_browser(served):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: the browser test drives Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    pred, sub, folder = expected(served)
    image_id = next(i for i in pred.index if clear_winner(pred, i))
    meta = httpx.get(f"{served['url']}/metadata").json()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{served['url']}/")
            expect(page.locator("#title")).to_have_text("exp")
            expect(page.locator("#subtitle")).to_contain_text(f"{meta['cv']:.5f}")
            page.set_input_files("#file", str(folder / f"{image_id}.png"))
            expect(page.locator("#label")).to_have_text(sub.loc[image_id], timeout=60_000)
            expect(page.locator("#bars .row")).to_have_count(5)
            top = pred.loc[image_id].sort_values(ascending=False, kind="stable").index[0]
            expect(page.locator("#bars .row .name").first).to_have_text(top)
        finally:
            browser.close()


def test_the_batcher_runs_queued_requests_together_up_to_max_batch():
    """Images queued before the worker looks are taken together, at most max_batch at a time, each answer to its
    own request (no waiting involved: max_wait 0)."""
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [10 * i for i in items]

    async def main() -> list:
        batcher = Batcher(run, max_batch=4, max_wait_s=0)
        requests = [asyncio.ensure_future(batcher.submit(items)) for items in ([1], [2, 3], [4], [5, 6, 7])]
        await asyncio.sleep(0)  # every request queued
        worker = asyncio.create_task(batcher.worker())
        answers = await asyncio.gather(*requests)
        worker.cancel()
        return answers

    assert asyncio.run(main()) == [[10], [20, 30], [40], [50, 60, 70]]
    assert seen == [[1, 2, 3, 4], [5, 6, 7]]
    seen.clear()

    async def one_at_a_time() -> list:
        batcher = Batcher(run, max_batch=1, max_wait_s=0)
        requests = [asyncio.ensure_future(batcher.submit([i])) for i in range(3)]
        await asyncio.sleep(0)
        worker = asyncio.create_task(batcher.worker())
        answers = await asyncio.gather(*requests)
        worker.cancel()
        return answers

    assert asyncio.run(one_at_a_time()) == [[0], [10], [20]] and seen == [[0], [1], [2]]


def test_the_batcher_waits_only_for_images_on_their_way():
    """A lone request runs at once, however long max_wait is (nothing else is coming); a request still being
    received when the worker takes the first image is waited for and joins its batch. (The 60 s guard only keeps a
    regression from hanging the suite: nothing here depends on how fast it runs.)"""
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [10 * i for i in items]

    async def main() -> tuple[list, list]:
        batcher = Batcher(run, max_batch=8, max_wait_s=3600)
        worker = asyncio.create_task(batcher.worker())
        alone = await asyncio.wait_for(batcher.submit([1]), 60)
        with batcher.receiving():  # a second request, still being read, when the first is queued
            first = asyncio.ensure_future(batcher.submit([2]))
            for _ in range(5):
                await asyncio.sleep(0)  # the worker takes image 2 and waits: one request is on its way
            assert seen == [[1]] and not first.done()
            second = asyncio.ensure_future(batcher.submit([3, 4]))
            await asyncio.sleep(0)  # its images queued before it counts as arrived
        together = await asyncio.wait_for(asyncio.gather(first, second), 60)
        worker.cancel()
        return alone, together

    alone, together = asyncio.run(main())
    assert alone == [10] and together == [[20], [30, 40]]
    assert seen == [[1], [2, 3, 4]]


def test_serve_refuses_segmentation_and_bad_limits_in_one_line(tmp_path, new_project):
    cfg = new_project(tmp_path, "multiclass", n_folds=2, images=False, extra=TINY)
    with pytest.raises(UserError, match="task=segmentation is not served"):
        Model(dataclasses.replace(cfg, task="segmentation"))
    for key in ("serve.max_batch=0", "serve.max_bytes=0", "serve.max_files=0", "serve.max_wait_ms=-1"):
        with pytest.raises(UserError, match=key.split("=")[0]):
            config.load(tmp_path / "configs" / "exp.yaml", [key])
