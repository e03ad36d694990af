"""Timing and reporting for benchmarks/run.py: interleaved repeats, medians, ratios, the table."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


@dataclasses.dataclass
class Row:
    bench: str
    variant: str
    seconds: float
    ratio: float | None  # seconds / the baseline's seconds; None where a ratio means nothing
    notes: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


SINGLE_RUN: set[str] = set()  # variants measured once because they were too slow to repeat; their notes say so


def side_by_side(
    variants: dict[str, Callable[[], Any]],
    device: torch.device,
    warmup: int,
    repeats: int,
    slow_s: float | None = None,
) -> dict[str, float]:
    """Median seconds of each variant, after `warmup` untimed runs of each.

    The variants take turns within each repeat, in a rotating order, so that a change of machine load or clock
    during the run falls on all of them alike. A variant whose last warm-up run took more than `slow_s` keeps that
    run as its only sample (bf16 on a CPU without bf16 instructions takes ~50x longer than fp32).
    """
    warm = {name: [timed(fn, device) for _ in range(warmup)] for name, fn in variants.items()}
    times = {name: w[-1:] if slow_s and w and w[-1] > slow_s else [] for name, w in warm.items()}
    SINGLE_RUN.update(name for name, t in times.items() if t)
    names = [name for name in variants if not times[name]]
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(variants[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


def repeat(fn: Callable[[], Any], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            fn()

    return run


def with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], None]:
    """`fn` run with `n` torch intra-op threads (the setting is restored after)."""

    def run() -> None:
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            fn()
        finally:
            torch.set_num_threads(old)

    return run


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The pipeline prints a line per epoch (and progress bars on a terminal): keep them out of the table."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def group(
    bench: str,
    medians: dict[str, float],
    baseline: str,
    notes: dict[str, str] | None = None,
    per: float = 1.0,
    no_ratio: tuple[str, ...] = (),
) -> list[Row]:
    """The rows of one comparison, baseline first. Times are divided by `per` (e.g. seconds per training step)."""
    notes = notes or {}
    base, rows = medians[baseline], []
    for n in [baseline, *[n for n in medians if n != baseline]]:
        note = "; ".join(filter(None, [notes.get(n, ""), "one run (too slow to repeat)" if n in SINGLE_RUN else ""]))
        rows.append(Row(bench, n, medians[n] / per, None if n in no_ratio else medians[n] / base, note))
    return rows


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def print_table(rows: list[Row]) -> None:
    """benchmark | variant | median time | ratio to baseline | notes; the benchmark named once per group."""
    head = ("benchmark", "variant", "median time", "ratio to baseline", "notes")
    cells = []
    for i, r in enumerate(rows):
        bench = "" if i and r.bench == rows[i - 1].bench else r.bench
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        cells.append((bench, r.variant, fmt_time(r.seconds), ratio, r.notes))
    w = [max(len(c[i]) for c in [head, *cells]) for i in range(4)]

    def line(c: tuple[str, ...]) -> str:
        return f"{c[0]:<{w[0]}} | {c[1]:<{w[1]}} | {c[2]:>{w[2]}} | {c[3]:>{w[3]}} | {c[4]}".rstrip()

    print(line(head))
    print("-+-".join("-" * n for n in [*w, len(head[4])]))
    for i, c in enumerate(cells):
        if i and c[0]:
            print()
        print(line(c))
