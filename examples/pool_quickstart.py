"""A tour of corral's worker pool in one minute of reading and one second of running.

Calls handlers from ``examples/handlers.py`` in two worker processes: a parallel map,
a session that keeps state in its worker, an exclusive lease, a handler error, a crash
the pool shrugs off, a cancelled call, and the statistics at the end.

Run it from the repository root: ``python -m examples.pool_quickstart``.
"""

from __future__ import annotations

import logging

import trio

import corral


async def predict_all(pool: corral.Pool, xs: list[float]) -> list[float]:
    """A parallel map: one task per input, the pool spreads them over its workers."""
    results: list[float] = [0.0] * len(xs)

    async def one(i: int) -> None:
        results[i] = await pool.call("predict", xs[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(xs)):
            nursery.start_soon(one, i)
    return results


async def main() -> None:
    async with corral.open_pool("examples.handlers", size=2, request_timeout=5.0) as pool:
        print("workers:", [(w.id, w.pid) for w in pool.workers()])
        print("predict:", await predict_all(pool, [0.0, 1.0, 2.0, 3.0]))

        # Session affinity: the same worker, so its module-level counter goes up.
        visits = [await pool.call("count", "alice", session="alice") for _ in range(3)]
        print("alice's visits:", visits)

        # An exclusive lease: nobody else uses this worker until the block ends.
        async with pool.checkout() as worker:
            print(f"leased {worker.id}: add ->", await worker.call("add", 40, 2))

        # A handler error comes back as RemoteError; the worker keeps serving.
        try:
            await pool.call("fail", "no such user")
        except corral.RemoteError as exc:
            print(f"RemoteError: {exc.remote_type}: {exc.remote_message}")

        # A crash fails that one call; the supervisor starts a replacement.
        try:
            await pool.call("crash", 7)
        except corral.WorkerCrashed as exc:
            print(f"WorkerCrashed: exit code {exc.exit_code}")
        print("still serving:", await pool.call("add", 1, 2))

        # A cancelled call returns at once; its worker is interrupted, not lost.
        with trio.move_on_after(0.05):
            await pool.call("slow", 10.0)
        print("after a cancelled call:", await pool.call("add", 2, 2))

        stats = pool.statistics()
        print(
            f"served={stats.served} failed={stats.failed} restarts={stats.restarts} "
            f"circuit={stats.circuit} workers={stats.workers_by_state['READY']} READY"
        )
    print("closed: every worker process has exited")


if __name__ == "__main__":
    logging.getLogger("corral").setLevel(logging.CRITICAL)  # quiet: the prints tell the story
    trio.run(main)
