"""Load benchmark of `serve`: p50 / p99 latency and throughput at 1, 8 and 32 concurrent clients, batching on
(serve.max_batch=32, serve.max_wait_ms=5) against off (serve.max_batch=1), on the demo model.

The template is rendered with its defaults, the demo competition written, the demo experiment (configs/demo.yaml:
test_resnet at 32 px, every fold) trained for one short epoch and predicted, then `serve` started as a real process
for each mode, both at once (an idle server costs nothing), with the same threads. Each client sends one test image per
request, waits for the answer, sends the next; latency is measured per request at the client, throughput over the
whole run. The modes take turns, in a rotating order, for BENCH_REPEATS rounds (default 3, quick 1): the table shows
medians, so a burst of load from another process falls on both modes alike.

The client is light on purpose: it shares the machine's cores with the server, so it must not be what limits the
throughput. One thread per client, each with its own keep-alive connection (http.client, from the standard library;
the threads wait on sockets, without the GIL), and each multipart body built once before timing. The table's last
column is the client's own CPU (its process's CPU seconds over the wall time: 0.10 = a tenth of one core).

Also printed: the model alone (no HTTP), every fold and view as serve runs them, at batch 1 and batch 32, in
images/s: the most batching can give on this machine for this model, whatever the server does.

    python benchmarks/serve_load.py                 # ~4 minutes on 2 CPU cores
    BENCH_QUICK=1 python benchmarks/serve_load.py   # fewer requests, one round
    BENCH_THREADS=2 python benchmarks/serve_load.py # torch threads of the server (default 1)
"""

from __future__ import annotations

import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK", "0").lower() not in ("", "0", "false", "no")
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
CLIENTS = (1, 8, 32)
REQUESTS = {1: 100, 8: 320, 32: 640} if not QUICK else {1: 20, 8: 64, 32: 128}
REPEATS = int(os.environ.get("BENCH_REPEATS", "1" if QUICK else "3"))
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


def multipart(data: bytes) -> tuple[bytes, dict]:
    """A /predict request's body and headers for one PNG, built once (not timed)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def load(port: int, bodies: list[tuple[bytes, dict]], clients: int, n: int) -> dict:
    """`clients` concurrent clients (threads, one keep-alive connection each), `n` requests in all: the latencies
    (s), the wall time and the client process's CPU time over the run."""
    lock, latencies, errors = threading.Lock(), [], []
    counter = iter(range(n))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body, headers = bodies[i % len(bodies)]
                start = time.perf_counter()
                conn.request("POST", "/predict", body, headers)
                response = conn.getresponse()
                response.read()
                latencies.append(time.perf_counter() - start)
                if response.status != 200:
                    errors.append(response.status)
        except Exception as e:
            errors.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    cpu, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed at {clients} clients: {errors[:3]}")
    return {"latencies": latencies, "wall": wall, "client_cpu": cpu / wall}


def start_server(project: Path, pkg: str, env: dict, mode: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", pkg, "serve", "-c", "configs/demo.yaml", f"serve.port={port}", f"threads={THREADS}",
           *mode]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("serve did not start within 300 s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(project: Path, pkg: str, env: dict, images: list[bytes]) -> dict:
    """Both modes' servers at once; every (clients, mode) run REPEATS times, modes in a rotating order."""
    bodies = [multipart(data) for data in images]
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        for name, mode in MODES.items():
            servers[name] = start_server(project, pkg, env, mode)
        for _proc, port in servers.values():
            load(port, bodies, 4, 16)  # warm-up, untimed: first-call costs, kernel selection at a few batch sizes
        for r in range(REPEATS):
            for c in CLIENTS:
                names = list(MODES)[r % len(MODES) :] + list(MODES)[: r % len(MODES)]
                for name in names:
                    runs.setdefault((name, c), []).append(load(servers[name][1], bodies, c, REQUESTS[c]))
    finally:
        for proc, _ in servers.values():
            stop(proc)
    return runs


def model_bound(project: Path, pkg: str, env: dict) -> str:
    """The served model alone (serve.Model.predict: every fold and view, normalisation, activation), 32 images one
    at a time against one batch of 32, in a fresh process with the server's threads: images/s of each."""
    code = f"""
import pathlib, statistics, time, torch
from {pkg}.config import load
from {pkg}.serve import Model
torch.set_num_threads({THREADS})
model = Model(load("configs/demo.yaml", ["threads={THREADS}"]))
x = [model.prepare(p.read_bytes()) for p in sorted(pathlib.Path("data/demo/test").glob("*.png"))[:32]]
runs = {{1: lambda: [model.predict(x[i:i + 1]) for i in range(32)], 32: lambda: model.predict(x)}}
times = {{b: [] for b in runs}}
for r in range({3 if QUICK else 15} + 1):
    for b, run in runs.items():
        start = time.perf_counter(); run(); times[b].append(time.perf_counter() - start)
one, batch = (32 / statistics.median(times[b][1:]) for b in runs)
print(f"model alone ({{len(model.folds)}} fold(s) x {{len(model.views)}} view(s)): batch 1 {{one:.0f}} images/s, "
      f"batch 32 {{batch:.0f}} images/s: {{batch / one:.1f}}x, the most batching can give here")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"model bound failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def main() -> int:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        project, pkg, env = demo_experiment(Path(tmp))
        folder = project / "data" / "demo" / "test"
        images = [p.read_bytes() for p in sorted(folder.glob("*.png"))[:256]]
        runs = measure(project, pkg, env, images)
        bound = model_bound(project, pkg, env)
    print(f"\nserve load benchmark: the demo model (configs/demo.yaml, every fold), one image per request, "
          f"{THREADS} torch thread(s), {os.cpu_count()} CPU(s), medians of {REPEATS} round(s); "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    head = (f"{'batching':<9} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'vs off':>7} "
            f"{'client CPU':>10}")  # fmt: skip
    print(head + "\n" + "-" * len(head))

    def median(name: str, c: int, what: str) -> float:
        values = []
        for run in runs[(name, c)]:
            ms = 1000 * np.asarray(run["latencies"])
            values.append({"p50": np.percentile(ms, 50), "p99": np.percentile(ms, 99),
                           "rate": len(ms) / run["wall"], "cpu": run["client_cpu"]}[what])  # fmt: skip
        return float(statistics.median(values))

    for name in MODES:
        for c in CLIENTS:
            rate = median(name, c, "rate")
            print(f"{name:<9} {c:>7} {REQUESTS[c]:>8} {median(name, c, 'p50'):>8.1f} {median(name, c, 'p99'):>8.1f} "
                  f"{rate:>8.1f} {rate / median('off', c, 'rate'):>6.2f}x {median(name, c, 'cpu'):>10.2f}")  # fmt: skip
    print(bound)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
