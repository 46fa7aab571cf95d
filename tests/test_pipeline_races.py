"""Pipelining under races: callers, cancellation at every point, recycling and the pool."""

from __future__ import annotations

import trio

import corral
from corral.workers import PythonModule, Worker


async def test_a_caller_cancelled_before_its_frame_was_written_spares_the_worker() -> None:
    # A runs; B's big frame fills the pipe and holds the write lock; C waits for the lock
    # and is cancelled there: nothing of C reached the pipe, so the worker must live on.
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(Worker(PythonModule("tests.handlers_basic"), pipeline=4).run)
            pid = worker.pid
            got: dict[str, object] = {}
            payload = b"x" * (2 << 20)

            async def a() -> None:
                got["a"] = await worker.call("sleep", 0.5)

            async def b() -> None:
                got["b"] = len(await worker.call("echo", payload))

            async def c() -> None:
                with trio.move_on_after(0.15) as scope:
                    await worker.call("echo", "c")
                got["c"] = "cancelled" if scope.cancelled_caught else "done"

            async with trio.open_nursery() as calls:
                calls.start_soon(a)
                await trio.sleep(0.05)
                calls.start_soon(b)
                await trio.sleep(0.05)
                calls.start_soon(c)
            assert got == {"a": 0.5, "b": len(payload), "c": "cancelled"}
            assert await worker.call("getpid") == pid
            assert worker._places.free == 4 and not worker._pending
            worker.stop()


async def test_recycling_a_pipelined_worker_fails_no_call() -> None:
    # max_requests is a planned replacement: no caller may see WorkerCrashed for it.
    with trio.fail_after(30):
        async with corral.open_pool("tests.handlers_basic", size=1, pipeline=4, max_requests=3) as pool:
            errors: list[BaseException] = []

            async def call(i: int) -> None:
                try:
                    assert await pool.call("echo", i) == i
                except corral.CorralError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(call, i)
            assert errors == []


async def test_request_timeout_fails_the_other_pipelined_calls_with_worker_crashed() -> None:
    outcomes: dict[str, str] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = Worker(PythonModule("tests.handlers_basic"), pipeline=4)

            async def run(task_status: trio.TaskStatus[Worker]) -> None:
                try:
                    await worker.run(task_status=task_status)
                except corral.RequestTimeout:
                    pass  # the worker reports the timeout as its exit

            await nursery.start(run)

            async def timed() -> None:
                try:
                    await worker.call("sleep", 5, timeout=0.2)
                except corral.RequestTimeout:
                    outcomes["timed"] = "timeout"

            async def other(i: int) -> None:
                try:
                    await worker.call("sleep", 0.1)
                    outcomes[f"o{i}"] = "ok"
                except corral.WorkerCrashed:
                    outcomes[f"o{i}"] = "crashed"

            async with trio.open_nursery() as calls:
                calls.start_soon(timed)
                await trio.sleep(0.02)
                for i in range(3):
                    calls.start_soon(other, i)
    assert outcomes == {"timed": "timeout", "o0": "crashed", "o1": "crashed", "o2": "crashed"}


async def test_max_requests_never_recycles_a_pipelined_worker_under_an_exclusive_lease() -> None:
    # A call started before the lease brings `served` to max_requests while the lease
    # holds the worker: the recycle must wait for the lease to end.
    with trio.fail_after(20):
        async with corral.open_pool("tests.handlers_basic", size=1, pipeline=2, max_requests=2) as pool:
            assert await pool.call("echo", 0) == 0  # served == 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "sleep", 0.3)
                await trio.sleep(0.05)
                async with pool.checkout() as lease:
                    await trio.sleep(0.5)  # the other call ends meanwhile: served == 2
                    assert await lease.call("echo", 2) == 2
            assert await pool.call("echo", 1) == 1


async def test_max_age_never_recycles_a_pipelined_worker_under_an_exclusive_lease() -> None:
    with trio.fail_after(20):
        async with corral.open_pool(
            "tests.handlers_basic", size=1, pipeline=2, max_age=0.2, idle_timeout=0.1
        ) as pool:
            async with pool.checkout() as lease:
                pid = await lease.call("getpid")
                await trio.sleep(0.6)  # housekeeping runs several times; the worker is old
                assert await lease.call("getpid") == pid
            assert await pool.call("echo", 1) == 1


async def test_a_cancelled_running_request_is_bounded_by_cancel_grace_behind_a_large_frame() -> None:
    # A runs and is cancelled while B's large frame fills the pipe: A's "cancel" frame
    # cannot be written until the worker reads again, i.e. until A ends. The worker must
    # not be stuck for A's whole run: after cancel_grace it is killed, like a request
    # that ignores its interrupt.
    outcome: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = Worker(PythonModule("tests.handlers_basic"), pipeline=4, cancel_grace=0.5)

            async def run(task_status: trio.TaskStatus[Worker]) -> None:
                try:
                    await worker.run(task_status=task_status)
                except corral.WorkerCrashed:
                    pass  # killed after cancel_grace: its exit

            await nursery.start(run)

            async def a() -> None:
                with trio.move_on_after(0.2):
                    await worker.call("sleep", 60)

            async def b() -> None:
                try:
                    await worker.call("echo", b"x" * (2 << 20))
                    outcome.append("ok")
                except corral.WorkerCrashed:
                    outcome.append("crashed")

            async with trio.open_nursery() as calls:
                calls.start_soon(a)
                await trio.sleep(0.05)
                calls.start_soon(b)
    assert outcome == ["crashed"]


async def test_cancellations_at_random_points_leak_no_place() -> None:
    # Calls cancelled at every stage (waiting for a place, for the write lock, queued in
    # the worker, running, being read): afterwards every place is back, once.
    import random

    rng = random.Random(7)
    with trio.fail_after(30):
        async with corral.open_pool("tests.handlers_basic", size=2, pipeline=3, cancel_grace=2.0) as pool:

            async def call(i: int) -> None:
                with trio.move_on_after(rng.choice([0, 0.001, 0.01, 0.03, 0.08, 1.0])):
                    if i % 7 == 0:
                        await pool.call("echo", b"y" * (300 << 10))
                    else:
                        await pool.call("sleep", rng.choice([0, 0.005, 0.02, 0.05]))

            async with trio.open_nursery() as nursery:
                for i in range(150):
                    nursery.start_soon(call, i)
                    if i % 10 == 0:
                        await trio.sleep(0.01)
            members = list(pool._slots.members.values())
            workers = [w for m in members if isinstance(w := m.worker, Worker)]
            with trio.fail_after(5):  # abandoned replies drain in the background
                while any(w._pending for w in workers) or pool._checkout.held:
                    await trio.sleep(0.01)
            assert len(workers) == 2
            for m, w in zip(members, workers, strict=True):
                assert w.pid == pool._slots.members[w.id].worker.pid
                assert w._places.free == 3, w
                assert pool._checkout.idle.count(m) == 3, (w, list(pool._checkout.idle))
            waiters = pool._checkout.waiters
            assert not waiters or all(x.event.is_set() for x in waiters)
            # and the pool still runs 6 calls at once
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(pool.call, "sleep", 0.3)


async def _sleep_or_crash(worker: Worker, seconds: float, outcomes: list[object]) -> None:
    try:
        outcomes.append(await worker.call("sleep", seconds))
    except corral.WorkerCrashed:
        outcomes.append("crashed")


async def test_stopping_a_pipelined_worker_answers_or_crashes_every_call_in_flight() -> None:
    # stop() queues "shutdown" behind the requests in flight: they are answered; none may
    # hang or see a ProtocolError (a reply read after _fail_pending).
    for _ in range(5):
        outcomes: list[object] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                worker = await nursery.start(Worker(PythonModule("tests.handlers_basic"), pipeline=4).run)

                async with trio.open_nursery() as calls:
                    for i in range(6):
                        calls.start_soon(_sleep_or_crash, worker, 0.02 * i, outcomes)
                    await trio.sleep(0.03)
                    worker.stop()
        assert len(outcomes) == 6 and all(o == "crashed" or isinstance(o, float) for o in outcomes)
