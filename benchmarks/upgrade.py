"""Rolling upgrades under load: failed calls, time to roll out, latency while it runs.

    python -m benchmarks.upgrade [--upgrades 10] [--size 4] [--callers 8]

Eight callers call a 1 ms handler in a tight loop on a pool of four workers while the
pool is upgraded ``--upgrades`` times (each upgrade rewrites the handler module with
the next version number, in place, as a deploy does), for each configuration:
spawn at ``pipeline=1`` and at the default ``pipeline=4``, and the fork server.
Prints, per configuration: calls served and failed, every call after each rollout
served by the new version or not, the median and worst time from ``upgrade()`` to
its return, and the calls' p50/p99 latency during rollouts against outside them.
``probation`` is 0.5 s, so a rollout of four workers takes at least 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

import corral

HANDLERS = """
import time
VERSION = {version}

def work():
    time.sleep(0.001)
    return VERSION
"""


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


async def run(config: str, folder: Path, upgrades: int, size: int, callers: int) -> dict[str, object]:
    module = f"bench_upgrade_{config.replace('=', '').replace(' ', '_')}"
    path = folder / f"{module}.py"
    path.write_text(HANDLERS.format(version=1))
    options: dict[str, object] = {"size": size}
    if config == "forkserver":
        options["start_method"] = "forkserver"
    elif config == "pipeline=1":
        options["pipeline"] = 1
    inside: list[float] = []
    outside: list[float] = []
    failed = 0
    stale = 0  # calls answered by an old version after a rollout returned
    rolling = False
    current = 1
    durations: list[float] = []
    async with corral.open_pool(module, **options) as pool:  # type: ignore[arg-type]
        stop = False

        async def caller() -> None:
            nonlocal failed, stale
            while not stop:
                start = time.perf_counter()
                try:
                    version = await pool.call("work")
                except corral.CorralError:
                    failed += 1
                    continue
                (inside if rolling else outside).append(time.perf_counter() - start)
                if not rolling and version != current:
                    stale += 1

        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
            await trio.sleep(1.0)
            for version in range(2, upgrades + 2):
                path.write_text(HANDLERS.format(version=version))
                rolling = True
                start = time.perf_counter()
                await pool.upgrade(probation=0.5)
                durations.append(time.perf_counter() - start)
                current = version
                rolling = False
                await trio.sleep(0.5)
            stop = True
    return {
        "config": config,
        "served": len(inside) + len(outside),
        "failed": failed,
        "stale": stale,
        "rollout_median_s": statistics.median(durations),
        "rollout_max_s": max(durations),
        "p50_inside_ms": _percentile(inside, 0.5) * 1000,
        "p99_inside_ms": _percentile(inside, 0.99) * 1000,
        "p50_outside_ms": _percentile(outside, 0.5) * 1000,
        "p99_outside_ms": _percentile(outside, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--upgrades", type=int, default=10)
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--callers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sys.path.insert(0, folder)
        print(
            f"{'config':<12} {'served':>8} {'failed':>6} {'stale':>5} {'rollout s (med/max)':>20} "
            f"{'p50/p99 ms during':>18} {'p50/p99 ms outside':>19}"
        )
        for config in ("pipeline=1", "pipeline=4", "forkserver"):
            r = trio.run(run, config, Path(folder), args.upgrades, args.size, args.callers)
            print(
                f"{r['config']:<12} {r['served']:>8} {r['failed']:>6} {r['stale']:>5} "
                f"{r['rollout_median_s']:>10.2f} / {r['rollout_max_s']:<7.2f} "
                f"{r['p50_inside_ms']:>8.2f} / {r['p99_inside_ms']:<7.2f} "
                f"{r['p50_outside_ms']:>8.2f} / {r['p99_outside_ms']:<7.2f}"
            )


if __name__ == "__main__":
    main()
