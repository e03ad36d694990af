"""Load benchmark of `serve`: p50 / p99 latency and throughput at 1, 8 and 32 concurrent clients, batching on
(serve.max_batch=32, serve.max_wait_ms=5) against off (serve.max_batch=1), on the demo model.

The template is rendered with its defaults, the demo competition written, the demo experiment (configs/demo.yaml:
test_resnet at 32 px, every fold) trained for one short epoch and predicted, then `serve` started as a real process
for each mode, one after the other, with the same threads. Each client sends one test image per request, waits for
the answer, sends the next; latency is measured per request at the client, throughput over the whole run.

    python benchmarks/serve_load.py                 # ~3 minutes on 2 CPU cores
    BENCH_QUICK=1 python benchmarks/serve_load.py   # fewer requests
    BENCH_THREADS=2 python benchmarks/serve_load.py # torch threads of the server (default 1)
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK", "0").lower() not in ("", "0", "false", "no")
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
CLIENTS = (1, 8, 32)
REQUESTS = {1: 60, 8: 240, 32: 480} if not QUICK else {1: 20, 8: 64, 32: 128}
MODES = {"off": ["serve.max_batch=1", "serve.max_wait_ms=0"], "on": ["serve.max_batch=32", "serve.max_wait_ms=5"]}


def sh(cmd: list[str], cwd: Path, env: dict) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_experiment(tmp: Path) -> tuple[Path, str, dict]:
    """Render, write the demo, train its experiment briefly and predict: the run `serve` serves."""
    from cookiecutter.main import cookiecutter

    project = Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(tmp / "render")))
    (pkg,) = [p.parent.name for p in (project / "src").glob("*/__init__.py")]
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(THREADS)}  # fmt: skip
    run = [sys.executable, "-m", pkg]
    short = ["train.epochs=1", "train.limit_batches=8", f"threads={THREADS}"]  # the demo's model; its accuracy aside
    sh([*run, "demo-data", "--out", "data/demo"], project, env)
    sh([*run, "folds", "-c", "configs/demo.yaml"], project, env)
    sh([*run, "train", "-c", "configs/demo.yaml", *short], project, env)
    sh([*run, "predict", "-c", "configs/demo.yaml", *short], project, env)
    return project, pkg, env


async def load(url: str, images: list[bytes], clients: int, n: int) -> tuple[list[float], float]:
    """`clients` concurrent clients, `n` requests in all; per-request latencies (s) and the wall time."""
    latencies: list[float] = []
    counter = iter(range(8))  # the warm-up's requests

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            start = time.perf_counter()
            r = await http.post(f"{url}/predict", files=[("files", ("x.png", images[i % len(images)], "image/png"))])
            latencies.append(time.perf_counter() - start)
            r.raise_for_status()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(min(clients, 4))))  # warm-up, untimed
        latencies.clear()
        counter = iter(range(n))
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, wall


def serve_and_measure(project: Path, pkg: str, env: dict, mode: list[str], images: list[bytes]) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", pkg, "serve", "-c", "configs/demo.yaml", f"serve.port={port}", f"threads={THREADS}",
           *mode]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("serve did not start within 300 s")
            time.sleep(0.2)
        return {c: asyncio.run(load(url, images, c, REQUESTS[c])) for c in CLIENTS}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        project, pkg, env = demo_experiment(Path(tmp))
        folder = project / "data" / "demo" / "test"
        images = [p.read_bytes() for p in sorted(folder.glob("*.png"))[:256]]
        results = {name: serve_and_measure(project, pkg, env, mode, images) for name, mode in MODES.items()}
    print(f"\nserve load benchmark: the demo model (configs/demo.yaml, every fold), one image per request, "
          f"{THREADS} torch thread(s), {os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    head = f"{'batching':<9} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'vs off':>7}"
    print(head + "\n" + "-" * len(head))
    for name in MODES:
        for c in CLIENTS:
            lat, wall = results[name][c]
            ms = 1000 * np.asarray(lat)
            rate = len(lat) / wall
            base = len(results["off"][c][0]) / results["off"][c][1]
            print(f"{name:<9} {c:>7} {len(lat):>8} {np.percentile(ms, 50):>8.1f} {np.percentile(ms, 99):>8.1f} "
                  f"{rate:>8.1f} {rate / base:>6.2f}x")  # fmt: skip
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
