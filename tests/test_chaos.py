"""Chaos: random SIGKILL / SIGSTOP / SIGCONT of workers, fork-server templates and the
handlers' own children, under 8 callers, with pipeline 1 and 4 and both start methods.

Afterwards: every call was answered (a result or a documented CorralError), leaving the
pool returned within its bounds, no process is left and no fd leaked (the autouse
fixture of conftest.py), and the parent's memory is back within 10 % of a warmed-up
baseline. ``CORRAL_CHAOS_SECONDS`` lengthens each run (default 3 s per combination).
"""

from __future__ import annotations

import os
import random
import signal
from typing import Any

import pytest
import trio

import corral
from tests.proc_util import alive

SECONDS = float(os.environ.get("CORRAL_CHAOS_SECONDS", "3"))
#: What a call may end with under chaos: documented CorralErrors only.
EXPECTED = (
    corral.WorkerCrashed,
    corral.RequestTimeout,
    corral.CheckoutTimeout,
    corral.CircuitOpen,
    corral.SessionLost,
)


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _chaos_round(start_method: str, pipeline: int, seconds: float, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    grandchildren: list[int] = []
    stopped: set[int] = set()
    async with corral.open_pool(
        "tests.handlers_faults",
        size=3,
        start_method=start_method,
        pipeline=pipeline,
        request_timeout=1.5,
        cancel_grace=0.3,
        init_timeout=5.0,
        checkout_timeout=8.0,
        stop_timeout=1.0,
        backoff=corral.Backoff(initial=0.01, maximum=0.2, jitter=0.1),
        circuit_breaker=None,
    ) as pool:

        async def caller(i: int) -> None:
            local = random.Random(seed * 100 + i)
            while True:
                what = local.random()
                try:
                    if what < 0.5:
                        result: Any = await pool.call("echo", i, session=f"s{i}" if i % 3 == 0 else None)
                        assert result == i
                    elif what < 0.8:
                        await pool.call("sleep", local.choice([0.0, 0.01, 0.05]))
                    elif what < 0.9:
                        grandchildren.append(await pool.call("spawn_grandchild"))
                    else:
                        with trio.move_on_after(local.choice([0.001, 0.02])):
                            await pool.call("sleep", 0.1)
                    outcomes["ok"] = outcomes.get("ok", 0) + 1
                except EXPECTED as exc:
                    outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1

        def victims() -> list[int]:
            pids = [w.pid for w in pool.workers() if w.pid is not None]
            forkserver = pool._placements.forkserver
            if forkserver is not None and forkserver.server.pid is not None:
                pids.append(forkserver.server.pid)
            return pids + [p for p in grandchildren if alive(p)]

        async def chaos() -> None:
            while True:
                await trio.sleep(rng.uniform(0.05, 0.25))
                pids = victims()
                if not pids:
                    continue
                pid = rng.choice(pids)
                sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGSTOP])
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
                if sig == signal.SIGSTOP:
                    stopped.add(pid)
                    if rng.random() < 0.5:  # some come back, the others time out
                        await trio.sleep(rng.uniform(0.05, 0.5))
                        try:
                            os.kill(pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(caller, i)
            nursery.start_soon(chaos)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()
        # the pool still serves once the chaos stops
        with trio.fail_after(15):
            while True:
                try:
                    assert await pool.call("echo", "after") == "after"
                    break
                except EXPECTED:
                    await trio.sleep(0.05)
    for pid in stopped:  # a stopped process that survived would fail the leak check
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    return outcomes


@pytest.mark.parametrize("pipeline", [1, 4])
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
async def test_chaos_every_call_is_answered_and_nothing_is_left(start_method: str, pipeline: int) -> None:
    with trio.fail_after(SECONDS * 3 + 60):
        await _chaos_round(start_method, pipeline, 0.5, seed=1)  # warm-up: imports, caches
        baseline = _rss()
        outcomes = await _chaos_round(start_method, pipeline, SECONDS, seed=hash((start_method, pipeline)))
    print(start_method, pipeline, outcomes)
    assert outcomes.get("ok", 0) > 0, outcomes
    assert _rss() <= baseline * 1.10, (baseline, _rss())
