"""Cancels at random points: how many workers does a misdirected signal cost?

    python -m benchmarks.cancel_storm [--cancels 10000] [--pipeline 1] [--node]

Four callers at a time call ``sleep`` for 0, 1 or 3 ms or 30 s, each under a random
timeout of 0 to 4 ms, on a pool of two workers, until ``--cancels`` calls have been
cancelled at random points of their lives (queued, being written, just taken by the
worker, running, answered but not read). A 30 s call must be interrupted: if its
signal is lost (it landed before the worker took the call), it runs on past
``cancel_grace`` (0.5 s) and costs its worker. With named cancels (protocol 1.1,
docs/protocol.md §6) no signal is lost or misdirected. Prints the cancels, the calls
that completed and the workers restarted, for the Python runtime and, with
``--node``, the Node.js worker of examples/node_worker.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import trio

import corral

NODE_WORKER = Path(__file__).resolve().parents[1] / "examples" / "node_worker" / "worker.js"


async def storm(
    handlers: corral.PythonModule | corral.Command, unit: float, cancels: int, pipeline: int
) -> str:
    rng = random.Random(1)
    cancelled = completed = 0
    began = time.perf_counter()
    async with corral.open_pool(handlers, size=2, pipeline=pipeline, cancel_grace=0.5) as pool:

        async def one() -> None:
            nonlocal cancelled, completed
            with trio.move_on_after(rng.uniform(0, 0.004)) as scope:
                await pool.call("sleep", rng.choice([0, 0, 0.001, 0.003, 30.0]) * unit)
                completed += 1
            if scope.cancelled_caught:
                cancelled += 1

        while cancelled < cancels:
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(one)
        await pool.call("sleep", 0)
        stats = pool.statistics()
    elapsed = time.perf_counter() - began
    return (
        f"{cancelled:>7,} cancelled {completed:>7,} completed  workers restarted: {stats.restarts}"
        f"  exits: {stats.exits or '{}'}  ({elapsed:.0f} s)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cancels", type=int, default=10_000)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--node", action="store_true", help="also the Node.js worker")
    args = parser.parse_args(argv)
    python = corral.PythonModule("benchmarks.handlers")
    print("python runtime ", trio.run(storm, python, 1.0, args.cancels, args.pipeline))
    if args.node:
        node = shutil.which("node")
        if node is None:
            raise SystemExit("node is not installed")
        worker = corral.Command([node, str(NODE_WORKER)])
        print("node worker    ", trio.run(storm, worker, 1.0, args.cancels, args.pipeline))


if __name__ == "__main__":
    main()
