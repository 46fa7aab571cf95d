"""Where corral's per-call time goes, against the floor (bare pipes), no-op and 1 MiB echo.

    python -m benchmarks.peers_profile [--calls N] [--no-pyspy]

Three views, each in fresh interpreters:

1. CPU per call: wall time, parent CPU (getrusage) and worker CPU (/proc/<pid>/stat)
   per call, corral vs the floor: what is extra, and on which side of the pipe.
2. cProfile of the parent's hot path (corral no-op and echo): the Python functions
   per call, by own time (cProfile inflates tiny functions; read the ranking, not the µs).
3. py-spy (if installed), sampling parent and workers together: share of CPU samples
   by source line, so syscalls (os.write/os.read/epoll) are told apart from Python work.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from benchmarks.peers_metrics import descendants
from benchmarks.peers_systems import open_system, prepare

X = "\u00d7"  # multiplication sign
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _loop(system: str, what: str, calls: int, profiler: cProfile.Profile | None) -> dict[str, float]:
    data = os.urandom(MIB)
    args: tuple[Any, ...] = (data,) if what == "echo" else ()
    name = "echo" if what == "echo" else "noop"
    callers = 8 if what == "noop8" else 1  # noop8: 8 callers share 2 workers
    async with open_system(system, 2 if callers > 1 else 1) as caller:

        async def run(n: int) -> None:
            for _ in range(n):
                await caller.call(name, *args)

        async def many(n: int) -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(callers):
                    nursery.start_soon(run, n // callers)

        await many(min(200 * callers, calls))
        kids = descendants()
        c0 = {pid: _cpu_of(pid) for pid in kids}
        s0 = _self_cpu()
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await many(calls)
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - t0
        s1 = _self_cpu()
        child = sum(_cpu_of(pid) - c0.get(pid, 0.0) for pid in kids)
    return {
        "wall_us": wall / calls * 1e6,
        "parent_cpu_us": (s1 - s0) / calls * 1e6,
        "child_cpu_us": child / calls * 1e6,
    }


def one(system: str, what: str, calls: int, mode: str) -> None:
    """In a fresh interpreter: print CPU-per-call figures, or a cProfile report."""
    prepare(system)
    profiler = cProfile.Profile() if mode == "cprofile" else None
    result = trio.run(_loop, system, what, calls, profiler)
    if profiler is None:
        print("CPU " + " ".join(f"{k}={v:.2f}" for k, v in result.items()))
        return
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    print(
        f"cProfile, {system} {what}: own time per call (µs) and calls per call; total "
        f"{result['wall_us']:.1f} µs/call under the profiler"
    )
    for (filename, _, func), (_, ncalls, tottime, *_rest) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: -item[1][2],
    )[:18]:
        where = re.sub(r".*/(site-packages|src)/", "", filename)
        print(f"  {tottime / calls * 1e6:7.2f} µs  {ncalls / calls:5.2f}{X}  {func}  ({where})")


def _sub(argv: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers_profile", *argv], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return proc.stdout


def cpu_table(calls: int, repeats: int) -> str:
    rows = ["| case | wall µs/call | parent CPU µs/call | worker CPU µs/call |", "|---|---:|---:|---:|"]
    for what, n in (("noop", calls), ("noop8", calls), ("echo", max(50, calls // 50))):
        for system in ("floor", "corral"):
            samples: dict[str, list[float]] = collections.defaultdict(list)
            for _ in range(repeats):
                line = _sub(["--one", system, what, str(n), "cpu"]).strip().splitlines()[-1]
                for part in line.split()[1:]:
                    k, v = part.split("=")
                    samples[k].append(float(v))
            med = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
            rows.append(
                f"| {system} {what} | {med['wall_us']:.1f} | {med['parent_cpu_us']:.1f} | "
                f"{med['child_cpu_us']:.1f} |"
            )
    return "\n".join(rows)


def pyspy(what: str, calls: int) -> str:
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(exe):
        return "py-spy not installed"
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.txt")
        cmd = [
            exe,
            "record",
            "--subprocesses",
            "--nonblocking",
            "--rate",
            "1000",
            "--format",
            "raw",
            "-o",
            raw,
            "--",
            sys.executable,
            "-m",
            "benchmarks.peers_profile",
            "--one",
            "corral",
            what,
            str(calls),
            "cpu",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if not os.path.exists(raw):
            return f"py-spy failed: {proc.stderr[-500:]}"
        own: collections.Counter[tuple[str, str]] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        with open(raw) as f:
            lines = f.read().splitlines()
        for line in lines:
            stack, count = line.rstrip("\n").rsplit(" ", 1)
            frames = stack.split(";")
            side = "worker" if len(frames) > 1 and frames[1].startswith("process ") else "parent"
            frames = [f for f in frames if not f.startswith("process ")]
            # only the measured loop: skip start-up and imports
            if not any("_serve" in f or "_loop" in f for f in frames):
                continue
            total[side] += int(count)
            own[(side, re.sub(r"\(.*/(site-packages|src)/", "(", frames[-1]))] += int(count)
    out = [f"py-spy, corral {what}: share of the sampled CPU of each side (samples: {dict(total)})"]
    for side in ("parent", "worker"):
        for (s, frame), n in own.most_common():
            if s == side and n >= 0.02 * total[side]:
                out.append(f"  {side:<6} {n / total[side] * 100:5.1f}%  {frame}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers_profile")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-pyspy", action="store_true")
    parser.add_argument("--one", nargs=4, metavar=("SYSTEM", "WHAT", "CALLS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        system, what, calls, mode = args.one
        one(system, what, int(calls), mode)
        return
    print(cpu_table(args.calls, args.repeats), flush=True)
    print()
    for what, n in (("noop", args.calls), ("noop8", args.calls), ("echo", max(50, args.calls // 50))):
        print(_sub(["--one", "corral", what, str(n), "cprofile"]), flush=True)
    if not args.no_pyspy:
        for what, n in (("noop", args.calls * 2), ("echo", max(100, args.calls // 20))):
            print(pyspy(what, n), flush=True)
            print()


if __name__ == "__main__":
    main()
