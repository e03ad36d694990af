"""The `serve` command: an HTTP server (FastAPI + uvicorn) over an experiment's fold models, answering an uploaded
image as `predict` and `make-submission` would.

Everything is read from the run folder, as predict left it: decisions.json (the TTA views and their merge, the
runtime, the model files' sha256, the thresholds, ordinal cuts and clipping of the submission), classes.json, and each
fold's checkpoint (its regression target scale). An upload is decoded as its file would be
(data/problem.upload_decoder), resized by the evaluation transform, normalised and predicted by each fold's model as
predict does (engine/inference.py), folds averaged as predict averages them; the label is the submission's cell for it
(engine/codec.format_values).

    GET  /          a page: choose or drop an image, see its top classes
    POST /predict   multipart field `files` (one or several images) -> per image its probabilities and label
    GET  /health    {"status": "ok"}
    GET  /metadata  experiment, CV, metric, classes, model sha256s, views, runtime
    GET  /docs      OpenAPI

Concurrent requests are batched (Batcher): images queue, and one worker runs up to serve.max_batch of them through
the one set of models, waiting at most serve.max_wait_ms for the batch to fill, and only while more images are on their
way. A bad request gets a 4xx and a one-line JSON error, `{"error": "..."}`; the server goes on.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from .config import Config
from .core.errors import UserError
from .core.runtime import available_cores
from .core.tasks import PIXEL_TASKS
from .data.augment import build_transforms
from .data.problem import upload_decoder
from .data.tables import data_path, read_table, read_train
from .engine.codec import format_values
from .engine.inference import activate, as_decided, fold_models, fold_predictors, model_digests
from .modeling import tta

FIELD = "files"  # the multipart field the images come in
UPLOAD_TYPES = ("image/", "application/octet-stream")  # content types a file part may declare


class BadRequest(Exception):
    """A request the server refuses: its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Model:
    """An experiment's fold models as predict runs them, with the run's decisions: images in, answers out."""

    def __init__(self, cfg: Config) -> None:
        run = cfg.run
        if cfg.task in PIXEL_TASKS:
            raise UserError(f"serve: task={cfg.task} is not served yet (it answers class scores, not masks)")
        decisions = run.read_decisions()
        if decisions.members is not None:
            raise UserError(f"serve: {run.name!r} is a blend; serve one experiment (its fold models)")
        if decisions.views is None or decisions.merge is None or decisions.runtime is None:
            raise UserError(f"{run.decisions}: made before `predict`; run `predict` for {run.name!r} first")
        cfg = as_decided(cfg, decisions.views, decisions.merge, decisions.runtime)
        self.folds = fold_models(cfg)
        digests = model_digests(cfg, self.folds)
        if decisions.models is not None and decisions.models != digests:
            raise UserError(f"{run.decisions} was decided for other model files than the run holds now (retrained or "
                            f"exported since?): run `predict` for {run.name!r} again")  # fmt: skip
        info = run.read_classes()
        self.cfg, self.decisions, self.digests = cfg, decisions, digests
        self.classes, self.positive = list(info.classes), info.positive
        self.cv = run.read_cv() if run.cv.is_file() else None
        # The submission's format needs the sample's value columns and (binary labels) the training table's labels.
        sample = read_table(data_path(cfg, cfg.data.sample_submission), cfg.data.id_col, encoding=cfg.data.encoding)
        self.value_cols, self.train = list(sample.columns[1:]), read_train(cfg)
        self.decode = upload_decoder(cfg)  # its sizes worked out once, not per upload
        self.transform = build_transforms(cfg.augment, False, cfg.model.in_chans)
        self.views = [tta.get_view(v) for v in cfg.tta.views]
        # Each fold its own predictor (torch: its own model instance; onnx: its own session), loaded once.
        self.predictors = {}
        for k in self.folds:
            load, feed = fold_predictors(cfg, len(self.classes))
            self.predictors[str(k)] = load(k)
        self.to_device = feed([]).to_device  # normalisation as predict's loader does it (never iterated)

    def prepare(self, data: bytes) -> torch.Tensor:
        """An upload -> the HWC uint8 tensor predict's test loader yields for the same file."""
        try:
            image = self.decode(data)
        except Exception as e:  # PIL: UnidentifiedImageError, OSError (truncated), DecompressionBombError...
            text = re.sub(r"<_io\.BytesIO object at \w+>", "the upload", (str(e).splitlines() or [""])[0])[:160]
            raise BadRequest(422, f"not a readable image ({type(e).__name__}: {text})") from None
        image = self.transform(image=image)["image"]
        image = image[..., None] if image.ndim == 2 else image
        return torch.from_numpy(np.ascontiguousarray(image))

    @torch.inference_mode()
    def predict(self, images: Sequence[torch.Tensor]) -> np.ndarray:
        """(N, C) predictions: every fold x the decided views, merged, folds averaged, as predict does
        (engine/inference.predict_models), with one forward per fold for all views when they keep the image's size
        (flips, rotations): the views side by side in one batch."""
        x = self.to_device({"image": torch.stack(list(images))})["image"]
        task, n = self.cfg.task, len(images)
        how = "mean" if task == "regression" else self.cfg.tta.merge
        total = None
        for predictor in self.predictors.values():
            xs = [view.apply(x.to(predictor.device)) for view in self.views]
            if len(xs) > 1 and all(v.shape == xs[0].shape for v in xs):
                outs = predictor(torch.cat(xs)).split(n)
            else:
                outs = [predictor(v) for v in xs]
            per_view = [activate(out, task, predictor.scale) for out in outs]  # class scores: nothing to invert
            pred = per_view[0] if len(per_view) == 1 else torch.as_tensor(tta.merge(per_view, how))
            total = pred if total is None else total + pred
        mean = total.cpu().numpy() / len(self.folds)
        return np.asarray(mean, dtype=np.float64).reshape(n, -1)

    def answers(self, pred: np.ndarray, names: Sequence[str]) -> list[dict]:
        """Per image: its probabilities (regression: its value) by prediction column, and its submission cells with
        the run's decisions applied; `label` is the one cell when the submission has one value column."""
        cells = format_values(self.cfg, self.decisions, pred, self.value_cols, self.classes, self.positive, self.train)
        columns = {c: [_plain(v) for v in cells[c].tolist()] for c in self.value_cols}  # once per batch, not per cell
        out = []
        for i, (name, probs) in enumerate(zip(names, pred.tolist(), strict=True)):
            row = {c: values[i] for c, values in columns.items()}
            out.append({
                "file": name,
                "probabilities": dict(zip(self.classes, probs, strict=True)),
                "label": row[self.value_cols[0]] if len(row) == 1 else row,
                "submission": row,
            })  # fmt: skip
        return out

    def metadata(self) -> dict:
        d, cfg = self.decisions, self.cfg
        return {
            "experiment": self.cfg.run.name,
            "task": cfg.task,
            "cv": d.cv,
            "cv_from": d.cv_from,
            "metric": d.metric,
            "higher_is_better": d.higher_is_better,
            "format": d.format,
            "classes": self.classes,
            "value_columns": self.value_cols,
            "folds": self.folds,
            "models": self.digests,
            "views": list(cfg.tta.views),
            "merge": cfg.tta.merge,
            "runtime": d.runtime,
            "image_size": cfg.augment.image_size,
            "in_chans": cfg.model.in_chans,
            "serve": {"max_batch": cfg.serve.max_batch, "max_wait_ms": cfg.serve.max_wait_ms,
                      "max_bytes": cfg.serve.max_bytes, "max_files": cfg.serve.max_files},
        }  # fmt: skip


def _plain(v: Any) -> Any:
    """A table cell as JSON: numpy scalars as Python numbers, text as text."""
    return v.item() if isinstance(v, np.generic) else v


class Batcher:
    """Concurrent requests' images, queued and run together: one worker takes up to `max_batch` queued images and
    runs `run(items)` on one thread, so the one model instance is never used by two batches at once. `max_batch=1`
    serves each image on its own.

    The worker waits (at most `max_wait_s` after taking the first image) for more only while more are on their way:
    requests being received or decoded (`arriving`), or fewer queued than the last batch held (its clients, answered,
    are sending their next images). A lone client's image is run at once, never held for a batch that cannot come;
    images that arrive while a batch runs are queued and taken together by the next one, without any wait."""

    def __init__(self, run: Callable[[list], list], max_batch: int, max_wait_s: float) -> None:
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.pending: deque[tuple[Any, asyncio.Future]] = deque()
        self.changed = asyncio.Event()  # an image queued, or a request gave up before queuing its images
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="serve-model")
        self.arriving = 0  # requests received and not yet queued (their body read, their images decoded)
        self.batches, self.last = 0, 1  # batches run; how many images the last one held

    @contextmanager
    def receiving(self) -> Iterator[None]:
        """Around a request's reading and decoding: the worker waits for its images rather than run without them."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self.changed.set()

    async def submit(self, items: Sequence[Any]) -> list:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.pending.extend(zip(items, futures, strict=True))
        self.changed.set()
        return list(await asyncio.gather(*futures))

    def _more_coming(self) -> bool:
        queued = len(self.pending)
        return queued < self.max_batch and (self.arriving > 0 or queued < self.last)

    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self.changed.clear()
                await self.changed.wait()
            deadline = loop.time() + self.max_wait_s
            while self._more_coming() and (left := deadline - loop.time()) > 0:
                self.changed.clear()  # waiting on an event (never on the queue) loses nothing when it times out
                try:
                    await asyncio.wait_for(self.changed.wait(), left)
                except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                    break
            batch = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
            self.batches, self.last = self.batches + 1, len(batch)
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as e:  # the requests of this batch fail with it; the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(result)


OPENAPI_UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}


def build_app(model: Model) -> FastAPI:
    """The FastAPI app over `model`."""
    limits = model.cfg.serve

    def run_batch(items: list[tuple[torch.Tensor, str]]) -> list[dict]:
        pred = model.predict([image for image, _ in items])
        return model.answers(pred, [name for _, name in items])

    batcher = Batcher(run_batch, limits.max_batch, limits.max_wait_ms / 1000)
    decoders = ThreadPoolExecutor(available_cores(), thread_name_prefix="serve-decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.worker())
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)
        decoders.shutdown(wait=False, cancel_futures=True)

    meta = model.metadata()
    app = FastAPI(title=f"{meta['experiment']} ({meta['task']})", lifespan=lifespan,
                  description=f"The fold models of experiment {meta['experiment']}, CV {meta['metric']}="
                              f"{meta['cv']:.5f}, predicting as `predict` does.")  # fmt: skip
    app.state.batcher = batcher

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return error(422, f"{'.'.join(map(str, first.get('loc', [])))}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")

    @app.get("/health")
    async def health() -> dict:
        """Up and ready: the models are loaded."""
        return {"status": "ok", "batches": batcher.batches}

    @app.get("/metadata")
    async def metadata() -> dict:
        """The experiment, its CV and metric, classes, the model files' sha256, TTA views, runtime, limits."""
        return meta

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.replace("__META__", json.dumps(meta).replace("</", "<\\/")))

    @app.post("/predict", openapi_extra=OPENAPI_UPLOAD)
    async def predict(request: Request) -> JSONResponse:
        """One or several images in the multipart field `files` -> per image (in order) its probabilities by class
        and its label in the competition's submission format."""
        with batcher.receiving():  # the batch worker waits for this request's images
            uploads = await read_uploads(request)
            # Decoded off the event loop, all of a request's images in one hand-over (PIL and OpenCV release the
            # GIL): the loop goes on receiving while images decode and a batch runs.
            items = await asyncio.get_running_loop().run_in_executor(decoders, prepare, uploads)
        answer = {"experiment": meta["experiment"], "predictions": await batcher.submit(items)}
        return JSONResponse(answer)  # the answer is plain JSON already: no FastAPI encoding and validation pass

    def prepare(uploads: list[tuple[str, bytes]]) -> list[tuple[torch.Tensor, str]]:
        items = []
        for name, data in uploads:
            try:
                items.append((model.prepare(data), name))
            except BadRequest as e:
                raise BadRequest(e.status, f"{name}: {e.message}") from None
        return items

    async def read_uploads(request: Request) -> list[tuple[str, bytes]]:
        """The request's images as (name, bytes), every limit checked; a BadRequest otherwise."""
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise BadRequest(415, f"content type {kind or 'none'!r}: send multipart/form-data with the images in "
                                  f"the field {FIELD!r}")  # fmt: skip
        length = request.headers.get("content-length")
        budget = limits.max_files * (limits.max_bytes + 4096)
        if length is not None and length.isdigit() and int(length) > budget:
            raise BadRequest(413, f"request of {int(length)} bytes: at most {limits.max_files} images of "
                                  f"{limits.max_bytes} bytes each")  # fmt: skip
        try:
            form = await request.form(max_files=limits.max_files, max_fields=limits.max_files,
                                      max_part_size=limits.max_bytes + 1)  # fmt: skip
        except MultiPartException as e:
            raise BadRequest(413 if "exceed" in str(e).lower() else 400, f"multipart body: {e}") from None
        except HTTPException as e:
            raise BadRequest(400, f"multipart body: {e.detail}") from None
        try:
            unknown = sorted({key for key in form if key != FIELD})
            if unknown:
                raise BadRequest(400, f"unknown field(s) {unknown}: send the images in the field {FIELD!r}")
            parts = form.getlist(FIELD)
            if not parts:
                raise BadRequest(400, f"no file: send one or more images in the multipart field {FIELD!r}")
            uploads = []
            for n, part in enumerate(parts):
                if not isinstance(part, UploadFile):
                    raise BadRequest(400, f"{FIELD}[{n}] is a text field, not a file")
                name = part.filename or f"{FIELD}[{n}]"
                declared = part.content_type or "application/octet-stream"
                if not declared.startswith(UPLOAD_TYPES):
                    raise BadRequest(415, f"{name}: content type {declared!r} is not an image")
                data = await part.read(limits.max_bytes + 1)
                if not data:
                    raise BadRequest(400, f"{name}: empty file (0 bytes)")
                if len(data) > limits.max_bytes:
                    raise BadRequest(413, f"{name}: larger than serve.max_bytes={limits.max_bytes} bytes")
                uploads.append((name, data))
        finally:
            await form.close()
        return uploads

    return app


def run_serve(cfg: Config, log: Callable[[str], None] = print) -> None:
    """Load the experiment's fold models and serve them until stopped (Ctrl-C, SIGTERM)."""
    import uvicorn

    model = Model(cfg)
    app = build_app(model)
    meta, host, port = model.metadata(), cfg.serve.host, cfg.serve.port
    cv = meta["cv"]
    log(f"serving {meta['experiment']} ({len(model.folds)} fold(s) x {len(meta['views'])} view(s), "
        f"{meta['runtime']}; CV {meta['metric']}={cv:.5f}) on http://{host}:{port}/ (API docs: /docs); "
        f"batches of up to {cfg.serve.max_batch}, waiting up to {cfg.serve.max_wait_ms:g} ms"
        if math.isfinite(cv) else f"serving {meta['experiment']} on http://{host}:{port}/")  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>serve</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 #drop { border: 2px dashed #999; border-radius: 8px; padding: 2rem; text-align: center; cursor: pointer; }
 #drop.over { border-color: #36c; background: #eef3ff; }
 #preview { max-width: 12rem; max-height: 12rem; image-rendering: pixelated; margin: 1rem auto; display: none; }
 .row { display: flex; align-items: center; gap: .5rem; margin: .25rem 0; }
 .name { width: 8rem; text-align: right; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
 .bar { height: 1.1rem; background: #36c; border-radius: 3px; }
 .value { width: 4.5rem; font-variant-numeric: tabular-nums; }
 #error { color: #b00; }
</style>
</head>
<body>
<h1 id="title">serve</h1>
<p id="subtitle"></p>
<label id="drop">Drop an image here, or click to choose one
 <input id="file" type="file" accept="image/*" hidden>
</label>
<img id="preview" alt="">
<p>Label: <strong id="label">-</strong></p>
<div id="bars"></div>
<p id="error"></p>
<script>
const META = __META__;
const $ = (id) => document.getElementById(id);
document.title = META.experiment;
$("title").textContent = META.experiment;
$("subtitle").textContent = `${META.task}, CV ${META.metric} = ${Number(META.cv).toFixed(5)}, ` +
  `${META.folds.length} fold(s) x ${META.views.length} view(s), ${META.runtime}`;

function show(answer) {
  $("label").textContent = typeof answer.label === "object" ? JSON.stringify(answer.label) : String(answer.label);
  const bars = $("bars");
  bars.replaceChildren();
  const top = Object.entries(answer.probabilities).sort((a, b) => b[1] - a[1]).slice(0, 5);
  for (const [name, p] of top) {
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(0, Math.min(1, p)) * 20}rem`;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = Number(p).toFixed(4);
    row.append(label, bar, value);
    bars.append(row);
  }
}

async function send(file) {
  $("error").textContent = "";
  $("label").textContent = "...";
  $("preview").src = URL.createObjectURL(file);
  $("preview").style.display = "block";
  const body = new FormData();
  body.append("files", file);
  try {
    const response = await fetch("predict", { method: "POST", body });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    show(answer.predictions[0]);
  } catch (e) {
    $("label").textContent = "-";
    $("error").textContent = String(e.message || e);
  }
}

$("file").addEventListener("change", (e) => { if (e.target.files.length) send(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
