"""Supervisor overhead: starting and stopping N children, and restarts per second.

    python -m benchmarks.supervisor_overhead [--sizes 1000,10000,100000] [--rounds 3] [--no-docs]

Prints a markdown table and (unless ``--no-docs``) rewrites the "Supervisor overhead"
section of docs/benchmarks.md. Every measurement runs in a fresh interpreter, so heap
size and peak RSS of one do not leak into the next; each figure is the best of
``--rounds`` runs, since a shared machine adds noise only upwards.

- start + stop: ``nursery.start(sup.run)`` with N idle children (each returns when its
  stop is requested), then ``sup.stop()`` (sequential, reverse order). The floor is
  bare trio doing the same shape of work: N ``nursery.start`` calls, then cancelling
  the tasks one at a time in reverse order, awaiting each.
- restarts/s: a one_for_one child that crashes right after ``started()``, with
  ``max_restarts`` out of reach, alone or beside 10,000 idle siblings. The supervisor's
  logger is set to ERROR (events are still built and delivered) so stderr does not
  dominate the figure.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import trio

import corral
from corral import ChildSpec, Supervisor

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN = "<!-- supervisor-overhead:begin (python -m benchmarks.supervisor_overhead rewrites this block) -->"
END = "<!-- supervisor-overhead:end -->"
HEADING = "## Supervisor overhead"


# -- measurements (each in its own interpreter) ----------------------------------------


async def _idle(*, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()
    await corral.current_child().stop_requested.wait()


async def _start_stop(n: int) -> dict[str, float]:
    sup = Supervisor([ChildSpec(i, _idle) for i in range(n)])
    gc.collect()
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        started = time.perf_counter()
        await sup.stop()
    stopped = time.perf_counter()
    return {"start": started - began, "stop": stopped - started}


async def _floor(n: int) -> dict[str, float]:
    async def task(done: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            done.set()

    gc.collect()
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        tasks: list[tuple[trio.CancelScope, trio.Event]] = []
        for _ in range(n):
            scope, done = trio.CancelScope(), trio.Event()

            async def run(
                scope: trio.CancelScope = scope,
                done: trio.Event = done,
                *,
                task_status: trio.TaskStatus[None],
            ) -> None:
                with scope:
                    await task(done, task_status=task_status)

            await nursery.start(run)
            tasks.append((scope, done))
        started = time.perf_counter()
        for scope, done in reversed(tasks):
            scope.cancel()
            await done.wait()
    stopped = time.perf_counter()
    return {"start": started - began, "stop": stopped - started}


async def _restarts(siblings: int, seconds: float) -> dict[str, float]:
    logging.getLogger("corral.supervisor").setLevel(logging.ERROR)
    starts = 0

    async def crasher(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal starts
        starts += 1
        task_status.started()
        raise RuntimeError("crash")

    specs = [ChildSpec(f"idle-{i}", _idle) for i in range(siblings)]
    specs.append(ChildSpec("crasher", crasher))
    sup = Supervisor(specs, max_restarts=10**9, max_seconds=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        gc.collect()
        began, first = time.perf_counter(), starts
        while time.perf_counter() - began < seconds:
            await trio.sleep(0.05)
        elapsed, count = time.perf_counter() - began, starts - first
        await sup.stop()
    return {"restarts_per_s": count / elapsed, "restarts": count}


def _measure_here(kind: str, n: int, seconds: float) -> dict[str, float]:
    result: dict[str, float]
    if kind == "supervisor":
        result = trio.run(_start_stop, n)
    elif kind == "floor":
        result = trio.run(_floor, n)
    elif kind == "restarts":
        result = trio.run(_restarts, n, seconds)
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _measure_once(kind: str, n: int, seconds: float) -> dict[str, float]:
    """One measurement in a fresh interpreter (bounded: 10 minutes)."""
    argv = [sys.executable, "-m", "benchmarks.supervisor_overhead", "--one", kind, str(n), str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    data: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return data


def _measure(kind: str, n: int, seconds: float, rounds: int) -> dict[str, float]:
    """The best of ``rounds`` fresh-interpreter runs (the machine may be busy)."""
    runs = [_measure_once(kind, n, seconds) for _ in range(rounds)]
    if kind == "restarts":
        return max(runs, key=lambda r: r["restarts_per_s"])
    return min(runs, key=lambda r: r["start"] + r["stop"])


# -- the report ---------------------------------------------------------------------------


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    uname = " ".join(platform.uname())
    try:
        uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "n/a"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Run: {when}; {cpu}, {cores} cores; `{uname}`; Python {platform.python_version()}; "
        f"trio {trio.__version__}; load average at the start {load}."
    )


def _us(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:.1f}"


def _report(sizes: list[int], seconds: float, rounds: int) -> str:
    machine = _machine()
    lines = [
        "| children | start s | stop s | start µs/child | stop µs/child | floor start µs/child "
        "| floor stop µs/child | overhead vs floor | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        sup = _measure("supervisor", n, seconds, rounds)
        floor = _measure("floor", n, seconds, rounds)
        ratio = (sup["start"] + sup["stop"]) / (floor["start"] + floor["stop"])
        lines.append(
            f"| {n:,} | {sup['start']:.2f} | {sup['stop']:.2f} | {_us(sup['start'], n)} | "
            f"{_us(sup['stop'], n)} | {_us(floor['start'], n)} | {_us(floor['stop'], n)} | "
            f"{ratio:.1f}\u00d7 | {sup['peak_rss_mib']:.0f} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "| crash loop (one_for_one) | restarts/s | µs/restart |",
        "|---|---:|---:|",
    ]
    for siblings in (0, 10_000):
        res = _measure("restarts", siblings, seconds, rounds)
        rate = res["restarts_per_s"]
        label = "the crashing child alone" if not siblings else f"beside {siblings:,} idle siblings"
        lines.append(f"| {label} | {rate:,.0f} | {1e6 / rate:.1f} |")
        print(lines[-1], flush=True)
    best = f"Best of {rounds} runs, each in a fresh interpreter."
    return "\n".join([f"{machine} {best}", "", *lines, ""])


def _update_docs(block: str) -> None:
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n"
    section = f"{BEGIN}\n\n{block}\n{END}"
    if BEGIN in text and END in text:
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{_INTRO}\n\n{section}\n"
    DOCS.write_text(text, encoding="utf-8")


_INTRO = (
    "`python -m benchmarks.supervisor_overhead` (`make bench`). Start + stop: "
    "`nursery.start(sup.run)` with N idle children, then `sup.stop()` (sequential, reverse "
    "order). The floor is bare trio doing the same shape of work (N `nursery.start` calls, "
    "then cancelling each task in reverse order, awaiting it). Restarts/s: a one_for_one "
    "child that crashes right after `started()`, `max_restarts` out of reach; the "
    "supervisor's logger at ERROR. Each figure is the best of 3 runs, each in a fresh "
    "interpreter; per-child "
    "figures staying flat as N grows is what shows the cost is linear."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated numbers of children")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each crash loop")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (the best is kept)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "N", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        kind, n, seconds = args.one
        print(json.dumps(_measure_here(kind, int(n), float(seconds))))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    block = _report(sizes, args.seconds, args.rounds)
    print()
    print(block)
    if not args.no_docs:
        _update_docs(block)
        print(f"updated {DOCS}")


if __name__ == "__main__":
    main()
