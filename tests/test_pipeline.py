"""Pipelining: several requests in flight per worker, each failing or cancelled alone."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.workers import Command, PythonModule, Worker
from tests.pool_actions import ACTIONS


async def _collect(n: int, fn: object) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(fn, i)  # type: ignore[arg-type]


async def test_many_concurrent_calls_each_get_their_own_reply() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(Worker(PythonModule("tests.handlers_basic"), pipeline=4).run)
            assert worker.depth == 4
            results: dict[int, object] = {}

            async def call(i: int) -> None:
                results[i] = await worker.call("echo", i)

            await _collect(60, call)
            assert results == {i: i for i in range(60)}
            assert worker.served == 60 and worker.state is corral.WorkerState.READY
            worker.stop()


async def test_cancelling_a_queued_request_drops_it_and_spares_the_others() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(Worker(PythonModule("tests.handlers_basic"), pipeline=4).run)
            pid = worker.pid
            done: list[object] = []

            async def slow() -> None:
                done.append(await worker.call("sleep", 0.4))

            async def queued() -> None:
                with trio.move_on_after(0.1) as scope:
                    await worker.call("getpid")  # waits in the worker behind `slow`
                assert scope.cancelled_caught
                done.append("cancelled")

            async with trio.open_nursery() as calls:
                calls.start_soon(slow)
                await trio.sleep(0.05)
                calls.start_soon(queued)
            assert done == ["cancelled", 0.4]
            assert await worker.call("getpid") == pid  # the same process, still serving
            worker.stop()


async def test_cancelling_the_running_request_interrupts_only_it() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(Worker(PythonModule("tests.handlers_basic"), pipeline=4).run)
            pid = worker.pid
            behind: list[int] = []

            async def running() -> None:
                with trio.move_on_after(0.1):
                    await worker.call("sleep", 30)

            async def queued(i: int) -> None:
                behind.append(await worker.call("echo", i))

            async with trio.open_nursery() as calls:
                calls.start_soon(running)
                await trio.sleep(0.03)
                for i in range(3):
                    calls.start_soon(queued, i)
            assert sorted(behind) == [0, 1, 2]  # interrupted: the sleep, not a queued call
            assert worker.pid == pid and await worker.call("echo", "x") == "x"
            worker.stop()


async def test_a_crash_fails_every_request_the_worker_held() -> None:
    with trio.fail_after(20):
        worker = Worker(PythonModule("tests.handlers_basic"), pipeline=4)
        failed: list[int] = []

        async def victim(i: int) -> None:
            with pytest.raises(corral.WorkerCrashed):
                await worker.call("sleep", 10)
            failed.append(i)

        with pytest.RaisesGroup(corral.WorkerCrashed):  # run() itself ends with the crash
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                async with trio.open_nursery() as calls:
                    for i in range(4):
                        calls.start_soon(victim, i)
                    await trio.sleep(0.2)
                    assert worker.pid is not None
                    os.kill(worker.pid, signal.SIGKILL)
        assert sorted(failed) == [0, 1, 2, 3]


# A protocol-1 worker in a few lines, without the "pipeline" capability.
_PLAIN_WORKER = """
import json, os, struct, sys
def read():
    header = sys.stdin.buffer.read(4)
    if len(header) < 4:
        sys.exit(0)
    return json.loads(sys.stdin.buffer.read(struct.unpack(">I", header)[0]))
def write(msg):
    data = json.dumps(msg).encode()
    sys.stdout.buffer.write(struct.pack(">I", len(data)) + data)
    sys.stdout.buffer.flush()
write({"t": "hello", "protocol": 1, "pid": os.getpid(), "codecs": ["json"], "capabilities": ["call", "ping"]})
read()
write(["ready", 0, {"pid": os.getpid()}])
while True:
    msg = read()
    if msg[0] == "shutdown":
        sys.exit(0)
    write(["pong", msg[1]] if msg[0] == "ping" else ["ok", msg[1], sum(msg[3])])
"""


async def test_a_worker_without_the_capability_takes_one_request_at_a_time(tmp_path: Path) -> None:
    script = tmp_path / "plain_worker.py"
    script.write_text(_PLAIN_WORKER)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(Worker(Command([sys.executable, str(script)]), pipeline=4).run)
            assert worker.depth == 1
            assert await worker.call("add", 2, 3) == 5
            worker.stop()


async def test_a_node_worker_pipelines_and_is_cancelled_by_name() -> None:
    """The Node.js worker offers "pipeline": a cancel frame abandons its running call at
    once, and the SIGINT that may follow is ignored (it could hit the next call)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(
                Worker(Command(["node", "examples/node_worker/worker.js"]), pipeline=4, cancel_grace=5).run
            )
            assert worker.depth == 4
            pid = worker.pid
            results: dict[int, object] = {}

            async def call(i: int) -> None:
                results[i] = await worker.call("add", i, 1)

            await _collect(40, call)
            assert results == {i: i + 1 for i in range(40)}
            for _ in range(3):
                with trio.move_on_after(0.2) as scope:
                    await worker.call("sleep", 30)
                assert scope.cancelled_caught
                assert await worker.call("sleep", 0.3) == 0.3  # no late SIGINT hits it
            assert worker.pid == pid and worker.state is corral.WorkerState.READY
            worker.stop()


async def test_a_pipelined_pool_serves_sessions_leases_and_survives_crashes() -> None:
    with trio.fail_after(30):
        async with corral.open_pool("tests.handlers_basic", size=2, pipeline=4) as pool:
            results: list[int] = []

            async def call(i: int) -> None:
                results.append(await pool.call("echo", i))

            await _collect(40, call)
            assert sorted(results) == list(range(40))
            first = await pool.call("getpid", session="s")
            assert await pool.call("getpid", session="s") == first
            async with pool.checkout() as lease:
                assert await lease.call("getpid") == lease.pid == await lease.call("getpid")
            outcomes: list[str] = []

            async def sleeper(i: int) -> None:
                try:
                    await pool.call("sleep", 0.3)
                    outcomes.append("ok")
                except corral.WorkerCrashed:
                    outcomes.append("crashed")

            async with trio.open_nursery() as calls:
                for i in range(8):
                    calls.start_soon(sleeper, i)
                await trio.sleep(0.1)
                os.kill(pool.workers()[0].pid or 0, signal.SIGKILL)
            # Only the call the killed worker was running fails: the three queued behind
            # it never started, and moved to the other worker (docs/pool.md, Pipelining).
            assert outcomes.count("crashed") == 1 and outcomes.count("ok") == 7
            assert pool.statistics().moved >= 3
            assert await pool.call("echo", "still serving") == "still serving"


async def test_an_exclusive_lease_keeps_a_pipelined_worker_to_itself() -> None:
    with trio.fail_after(30):
        async with corral.open_pool("tests.handlers_basic", size=1, pipeline=4) as pool:
            order: list[str] = []

            async def other() -> None:
                await pool.call("echo", 1)
                order.append("other")

            async with trio.open_nursery() as nursery, pool.checkout() as lease:
                nursery.start_soon(other)
                await trio.sleep(0.2)  # the other caller must wait for the lease to end
                await lease.call("echo", 2)
                order.append("lease")
            assert order == ["lease", "other"]


def test_pipeline_must_be_a_positive_int() -> None:
    with pytest.raises(corral.InvalidSpec, match="pipeline"):
        corral.Pool("tests.handlers_basic", pipeline=0)


# -- random mixes on pipelined workers -----------------------------------------------------


@settings(
    max_examples=int(os.environ.get("CORRAL_TEST_EXAMPLES", "6")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plans=st.lists(st.lists(ACTIONS, max_size=8), min_size=1, max_size=5))
async def test_random_mixes_never_wedge_a_pipelined_pool(plans: list[list[tuple[str, Any]]]) -> None:
    """Several requests share a worker, so a crash or a timeout also fails the others it
    held (WorkerCrashed) — but every call ends, with its own answer or that error."""

    async def run_plan(pool: corral.Pool, plan: list[tuple[str, Any]]) -> None:
        for kind, arg in plan:
            try:
                if kind == "echo":
                    assert await pool.call("echo", arg) == arg
                elif kind == "error":
                    with pytest.raises(corral.RemoteError) as info:
                        await pool.call("raise_custom", arg)
                    assert info.value.remote_message == arg
                elif kind == "crash":
                    with pytest.raises(corral.WorkerCrashed):
                        await pool.call("exit_with", arg)
                elif kind == "cancel":
                    with trio.move_on_after(arg):
                        await pool.call("sleep", 10)
                else:
                    with pytest.raises((corral.RequestTimeout, corral.WorkerCrashed)):
                        await pool.call("sleep", 10, timeout=arg)
            except corral.WorkerCrashed:
                pass  # it shared a worker with a crash or a timeout

    quick = corral.Backoff(initial=0.01, maximum=0.05, jitter=0.0)
    with trio.fail_after(30):
        async with corral.open_pool(
            "tests.handlers_faults",
            size=2,
            pipeline=3,
            backoff=quick,
            max_restarts=1000,
            checkout_timeout=5.0,
            cancel_grace=0.3,
        ) as pool:
            async with trio.open_nursery() as nursery:
                for plan in plans:
                    nursery.start_soon(run_plan, pool, plan)
            assert [await pool.call("echo", i) for i in range(10)] == list(range(10))
            assert len(pool.workers()) <= 2


async def test_a_cancelled_request_that_was_still_queued_never_runs() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(Worker(PythonModule("tests.handlers_pipeline"), pipeline=4).run)

            async def first() -> None:
                await worker.call("mark", "first", 1.0)  # ample time for the cancel frame, under load too

            async def second() -> None:
                with trio.move_on_after(0.1):
                    await worker.call("mark", "second")

            async with trio.open_nursery() as calls:
                calls.start_soon(first)
                await trio.sleep(0.02)
                calls.start_soon(second)
            assert await worker.call("mark", "third") == "third"
            assert await worker.call("marks") == ["first", "third"]
            worker.stop()
