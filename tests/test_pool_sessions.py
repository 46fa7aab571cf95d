"""Sessions whose worker dies while several callers wait for it."""

from __future__ import annotations

import os
import signal

import pytest
import trio

import corral


async def test_every_caller_waiting_on_a_dead_session_worker_gets_session_lost() -> None:
    with trio.fail_after(30):
        async with corral.open_pool("tests.handlers_basic", size=2, pipeline=1) as pool:
            pid = await pool.call("getpid", session="s")
            outcomes: list[str] = []

            async def waiting_call() -> None:
                try:
                    await pool.call("getpid", session="s")
                    outcomes.append("served")
                except corral.SessionLost:
                    outcomes.append("lost")

            async def busy_call() -> None:
                with pytest.raises(corral.WorkerCrashed):
                    await pool.call("sleep", 10, session="s")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy_call)
                await trio.sleep(0.2)  # the session's worker is busy; the next two queue for it
                nursery.start_soon(waiting_call)
                nursery.start_soon(waiting_call)
                await trio.sleep(0.2)
                os.kill(pid, signal.SIGKILL)
            assert outcomes == ["lost", "lost"]
            assert await pool.call("getpid", session="s") != pid  # rebound


async def test_after_a_request_timeout_on_a_pipelined_session_worker_the_next_call_is_session_lost() -> None:
    with trio.fail_after(20):
        async with corral.open_pool(
            "tests.handlers_basic", size=1, pipeline=4, checkout_timeout=10.0
        ) as pool:
            await pool.call("echo", 1, session="s")
            with pytest.raises(corral.RequestTimeout):
                await pool.call("sleep", 5, session="s", timeout=0.2)
            with pytest.raises(corral.SessionLost):
                await pool.call("echo", 2, session="s")
            assert await pool.call("echo", 3, session="s") == 3  # bound to the new worker
