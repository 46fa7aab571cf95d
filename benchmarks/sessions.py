"""Sessions at scale: the cost of a call that binds a new session, by live sessions.

    python -m benchmarks.sessions [--sessions 100000] [--size 4]

A real pool (``benchmarks.handlers``, ``size`` workers) serves one call per new
session key until ``--sessions`` sessions are live, timing each batch of 1,000 binds.
Binding must cost the same with 1,000 and with 100,000 live sessions (each member
keeps its own set of sessions: no scan over every binding per call). Prints the
median µs per call of the first and the last batch and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio

import corral

BATCH = 1000


async def measure(sessions: int, size: int) -> list[float]:
    per_call: list[float] = []
    async with corral.open_pool("benchmarks.handlers", size=size, session_ttl=None) as pool:
        for start in range(0, sessions, BATCH):
            began = time.perf_counter()
            for key in range(start, start + BATCH):
                await pool.call("noop", session=key)
            per_call.append((time.perf_counter() - began) / BATCH * 1e6)
        assert pool.statistics().sessions == sessions
    return per_call


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=4)
    args = parser.parse_args(argv)
    per_call = trio.run(measure, args.sessions, args.size)
    first = statistics.median(per_call[:5])
    last = statistics.median(per_call[-5:])
    print(f"live sessions      µs per new-session call (median of 5 batches of {BATCH})")
    print(f"{BATCH:>7,}-{5 * BATCH:<9,} {first:8.1f}")
    print(f"{args.sessions - 5 * BATCH:>7,}-{args.sessions:<9,} {last:8.1f}")
    print(f"ratio last/first: {last / first:.2f}")


if __name__ == "__main__":
    main()
