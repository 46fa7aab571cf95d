"""Import time and cold start, from a fresh interpreter each time.

    python -m benchmarks.cold_start [--rounds 15] [--base DIR]

Every figure comes from a new ``python`` process; the kinds of run take turns round by
round (the order rotates each round) and the report gives medians over rounds, and the
median of per-round ratios. ``--base DIR`` also runs the corral in DIR/src (an older
checkout, e.g. ``git archive <commit> | tar -x -C DIR``) as ``corral@base``, so a
change is measured before and after in the same run.

- **import**: ``python -X importtime -c "import trio; import corral"``; *own* is the
  sum of the self-times of corral's modules (``corral*``, ``_corral_child*``), reported
  next to the cumulative time of ``import trio`` in the same process (trio first: since
  ``import corral`` is lazy it imports no trio itself). *pool path* is the same for
  ``from corral import open_pool`` (what a program that opens a pool imports), and
  *supervisor path* for ``from corral import open_supervisor``.
- **cold start**: spawn of ``python`` to the first result of a 2-worker pool (defaults:
  spawned workers), timed on CLOCK_MONOTONIC across the two processes; the program
  imports trio (and ``from corral import open_pool``), opens the system and makes one
  no-op call (the floor of benchmarks/peers_systems.py: bare ``python -c`` children
  over pipes). Both then import ``benchmarks.peers_systems`` (~3 ms, in "pool + first
  call") to open their system the same way.
- ``python -c pass`` and ``python -c "import trio"``: spawn to exit, for scale.

Child processes get bytecode caching (``PYTHONPYCACHEPREFIX`` in a temporary
directory, ``PYTHONDONTWRITEBYTECODE`` removed) and one unmeasured warm-up each: an
installed package has its ``.pyc`` files; a source tree run with
``PYTHONDONTWRITEBYTECODE=1`` would compile corral on every import (~90 ms here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN = ("corral", "_corral_child", "corral_child")
X = "\u00d7"  # multiplication sign
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")

Result = dict[str, Any]
IMPORT = "import trio; import corral"
POOL_PATH = "import trio; from corral import open_pool"
SUPERVISOR_PATH = "import trio; from corral import open_supervisor"

#: The program of one cold start: SYSTEM and the import line are filled in.
COLD = """\
import json, os, sys, time
clock = lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC)
t_main = clock()
import trio
{imports}
t_import = clock()
from benchmarks.peers_systems import open_system

async def main():
    async with open_system({system!r}, 2) as caller:
        await caller.call("noop")
        t_first = clock()
        sys.stdout.write(json.dumps([t_main, t_import, t_first]) + "\\n")
        sys.stdout.flush()
        os._exit(0)  # the measurement is over; workers die with their parent

trio.run(main)
"""


def own_import_us(stderr: str) -> tuple[int, int]:
    """From ``-X importtime`` output: (sum of corral's own self-times, trio's cumulative), µs."""
    own = trio = 0
    for line in stderr.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        name = m[4]
        if name.split(".")[0] in OWN:
            own += int(m[1])
        elif name == "trio":
            trio = int(m[2])
    return own, trio


class Runner:
    def __init__(self, base: str | None, cache: str) -> None:
        self.base = base
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        env["PYTHONPATH"] = ROOT
        self.env = env

    def _env(self, base: bool) -> dict[str, str]:
        if not base:
            return self.env
        assert self.base is not None
        return {**self.env, "PYTHONPATH": os.path.join(self.base, "src") + os.pathsep + ROOT}

    def exit_ms(self, code: str) -> float:
        """Spawn to exit of ``python -c code``."""
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=self.env, cwd=ROOT, check=True)
        return (time.perf_counter() - t) * 1e3

    def importtime(self, code: str, base: bool) -> Result:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            env=self._env(base),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        own, trio = own_import_us(proc.stderr)
        return {"own_ms": own / 1e3, "trio_ms": trio / 1e3, "ratio": own / trio}

    def cold(self, system: str, base: bool = False) -> Result:
        imports = "from corral import open_pool" if system.startswith("corral") else ""
        code = COLD.format(system=system, imports=imports)
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=self._env(base), cwd=ROOT, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        t_main, t_import, t_first = json.loads(proc.stdout.strip().splitlines()[-1])
        time.sleep(0.1)  # let the workers' exit settle before the next run
        return {
            "cold_ms": (t_first - t0) / 1e6,
            "interpreter_ms": (t_main - t0) / 1e6,
            "import_ms": (t_import - t_main) / 1e6,
            "pool_ms": (t_first - t_import) / 1e6,
        }


def plan(runner: Runner) -> dict[str, Callable[[], Result]]:
    jobs: dict[str, Callable[[], Result]] = {
        "python -c pass": lambda: {"exit_ms": runner.exit_ms("pass")},
        "import trio": lambda: {"exit_ms": runner.exit_ms("import trio")},
        "floor": lambda: runner.cold("floor"),
        "corral": lambda: runner.cold("corral"),
        "import corral": lambda: runner.importtime(IMPORT, False),
        "pool path": lambda: runner.importtime(POOL_PATH, False),
        "supervisor path": lambda: runner.importtime(SUPERVISOR_PATH, False),
    }
    if runner.base is not None:
        jobs["corral@base"] = lambda: runner.cold("corral", base=True)
        jobs["import corral@base"] = lambda: runner.importtime(IMPORT, True)
        jobs["pool path@base"] = lambda: runner.importtime(POOL_PATH, True)
        jobs["supervisor path@base"] = lambda: runner.importtime(SUPERVISOR_PATH, True)
    return jobs


def measure(runner: Runner, rounds: int) -> dict[str, list[Result]]:
    jobs = plan(runner)
    names = list(jobs)
    for name in names:  # warm-up: bytecode caches, page cache
        jobs[name]()
    raw: dict[str, list[Result]] = {name: [] for name in names}
    for rnd in range(rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            raw[name].append(jobs[name]())
        print(f"round {rnd + 1}/{rounds} done", file=sys.stderr)
    return raw


def med(runs: list[Result], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def med_ratio(runs: list[Result], key: str, floor: list[Result], floor_key: str) -> float:
    return float(statistics.median(r[key] / f[floor_key] for r, f in zip(runs, floor, strict=True)))


def report(raw: dict[str, list[Result]], rounds: int) -> str:
    load = os.getloadavg()[0]
    out = [
        f"{platform.python_version()}, {os.cpu_count()} cores, {rounds} rounds, medians; "
        f"load average {load:.1f} at the end",
        "",
        "| code | `import corral`: own ms | own / `import trio` | pool path: own ms "
        "| supervisor path: own ms | "
        f"cold start ms | {X}floor | of which import ms | pool + first call ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    floor = raw["floor"]
    for suffix, label in (("@base", "before"), ("", "after")):
        if "corral" + suffix not in raw:
            continue
        imp, path, cold = raw["import corral" + suffix], raw["pool path" + suffix], raw["corral" + suffix]
        sup = raw["supervisor path" + suffix]
        out.append(
            f"| {label} | {med(imp, 'own_ms'):.1f} | {med(imp, 'ratio'):.3f} | {med(path, 'own_ms'):.1f} "
            f"| {med(sup, 'own_ms'):.1f} "
            f"| {med(cold, 'cold_ms'):.0f} | {med_ratio(cold, 'cold_ms', floor, 'cold_ms'):.2f}{X} "
            f"| {med(cold, 'import_ms'):.0f} | {med(cold, 'pool_ms'):.1f} |"
        )
    out += [
        "",
        f"floor (bare pipes): cold start {med(floor, 'cold_ms'):.0f} ms "
        f"(import {med(floor, 'import_ms'):.0f} ms, pool + first call {med(floor, 'pool_ms'):.1f} ms); "
        f"`python -c pass` {med(raw['python -c pass'], 'exit_ms'):.1f} ms; "
        f'`python -c "import trio"` {med(raw["import trio"], "exit_ms"):.0f} ms; '
        f"trio's cumulative import time under -X importtime {med(raw['import corral'], 'trio_ms'):.0f} ms",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cold_start", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--base", default=None, help="a checkout to measure as 'corral@base'")
    parser.add_argument("--out", default=None, help="write the raw results here (JSON)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="corral-pyc-") as cache:
        raw = measure(Runner(args.base, cache), args.rounds)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(raw, f, indent=1)
    print(report(raw, args.rounds))


if __name__ == "__main__":
    main()
