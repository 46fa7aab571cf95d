"""The pool, black-box, with real worker processes: opening (eager, lazy), checkout
(FIFO, timeouts, leases, sessions), recycling, argument checking, closing, statistics."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

import corral
from corral import (
    CheckoutTimeout,
    CorralError,
    InvalidSpec,
    PoolClosed,
    RemoteError,
    SessionLost,
    WorkerCrashed,
    WorkerState,
    open_pool,
)
from tests import handlers_faults
from tests.proc_util import alive, our_processes, wait_gone

FAULTS = "tests.handlers_faults"
NODE_WORKER = Path(__file__).resolve().parents[1] / "examples" / "node_worker" / "worker.js"
FAST: dict[str, Any] = {"checkout_timeout": 10.0, "stop_timeout": 2.0}


def pids_of(pool: corral.Pool) -> set[int]:
    return {info.pid for info in pool.workers() if info.pid is not None}


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


# -- opening -----------------------------------------------------------------------


async def test_eager_open_runs_body_once_every_worker_is_ready() -> None:
    before = set(our_processes())
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=3, **FAST) as pool:
            infos = pool.workers()
            assert len(infos) == 3
            assert all(i.state is WorkerState.READY for i in infos)
            pids = pids_of(pool)
            assert len(pids) == 3 and all(alive(p) for p in pids)
            assert pids <= set(our_processes()) - before
            got = {await pool.call("getpid") for _ in range(30)}
            assert got <= pids
        assert await wait_gone(pids) == []


async def test_lazy_pool_spawns_nothing_before_the_first_call() -> None:
    before = set(our_processes())
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=2, lazy=True, **FAST) as pool:
            await trio.sleep(0.1)
            assert set(our_processes()) - before == set()
            assert pool.workers() == []
            assert await pool.call("add", 1, 2) == 3
            assert 1 <= len(pool.workers()) <= 2
            for _ in range(10):
                await pool.call("echo", 0)
            assert len(set(our_processes()) - before) <= 2


async def test_lazy_start_has_no_race_with_concurrent_callers() -> None:
    started: list[str] = []
    results: list[int] = []
    with trio.fail_after(15):
        async with open_pool(FAULTS, size=3, lazy=True, **FAST) as pool:
            pool.subscribe(
                lambda ev: started.append(ev.worker_id) if ev.detail == "STARTING -> READY" else None
            )

            async def caller(i: int) -> None:
                results.append(await pool.call("slow_echo", i, 0.05))

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(caller, i)
            assert sorted(results) == list(range(20))
            assert len(started) == 3 == len(set(started))
            assert len(pool.workers()) == 3
            assert pool.statistics().restarts == 0


# -- checkout ----------------------------------------------------------------------


async def test_fifo_fairness_with_one_worker() -> None:
    order: list[int] = []
    with trio.fail_after(15):
        async with open_pool(FAULTS, size=1, pipeline=1, **FAST) as pool:

            async def caller(i: int) -> None:
                order.append(await pool.call("echo", i))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "sleep", 0.2)  # hold the only worker
                await trio.sleep(0.05)
                for i in range(12):
                    nursery.start_soon(caller, i)
                    await trio.sleep(0.005)  # arrival order is i
                await wait_for(lambda: pool.statistics().waiting == 12)
    assert order == list(range(12))


async def test_checkout_timeout() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, pipeline=1, checkout_timeout=0.2) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "sleep", 0.8)
                await trio.sleep(0.05)
                start = trio.current_time()
                with pytest.raises(CheckoutTimeout, match="checkout_timeout"):
                    await pool.call("echo", 1)
                assert 0.2 <= trio.current_time() - start < 0.6
                # checkout(timeout=) overrides it for one lease
                start = trio.current_time()
                with pytest.raises(CheckoutTimeout):
                    async with pool.checkout(timeout=0.05):
                        pass  # pragma: no cover
                assert trio.current_time() - start < 0.2
                async with pool.checkout(timeout=5) as lease:
                    assert await lease.call("echo", 2) == 2
            assert await pool.call("echo", 3) == 3


async def test_lease_is_exclusive_and_ends_with_its_block() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=2, **FAST) as pool:
            async with pool.checkout() as lease:
                pid = await lease.call("getpid")
                assert lease.pid == pid
                # while leased, every anonymous call goes to the other worker
                others = {await pool.call("getpid") for _ in range(10)}
                assert others == pids_of(pool) - {pid}
                assert await lease.call("getpid") == pid
                assert await lease.run_sync(handlers_faults.square, 4) == 16
            with pytest.raises(PoolClosed, match="lease"):
                await lease.call("getpid")


async def test_session_affinity_lost_once_then_rebinds() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=3, **FAST) as pool:
            pid = await pool.call("getpid", session="user-42")
            for _ in range(5):
                assert await pool.call("getpid", session="user-42") == pid
                await pool.call("getpid")  # anonymous calls in between
            other = await pool.call("getpid", session="user-7")
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: pid not in pids_of(pool))
            with pytest.raises(SessionLost):
                await pool.call("getpid", session="user-42")
            new = await pool.call("getpid", session="user-42")
            assert new != pid
            assert await pool.call("getpid", session="user-42") == new
            if other != pid:
                assert await pool.call("getpid", session="user-7") == other


async def test_session_call_right_after_its_worker_was_killed_fails_once() -> None:
    """The pool may not have noticed the death yet: still exactly one failure."""
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=2, **FAST) as pool:
            pid = await pool.call("getpid", session="s")
            os.kill(pid, signal.SIGKILL)
            assert await wait_gone([pid]) == []
            with pytest.raises(SessionLost):
                await pool.call("getpid", session="s")
            new = await pool.call("getpid", session="s")
            assert new != pid
            assert await pool.call("getpid", session="s") == new


# -- recycling ---------------------------------------------------------------------


async def test_max_requests_recycles_between_calls() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, max_requests=3, **FAST) as pool:
            pids = [await pool.call("getpid") for _ in range(9)]
    assert len(set(pids[0:3])) == 1 and len(set(pids[3:6])) == 1 and len(set(pids[6:9])) == 1
    assert len(set(pids)) == 3
    assert pool.statistics().failed == 0


async def test_max_age_recycles_between_calls_never_during_one() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, max_age=0.3, **FAST) as pool:
            first = await pool.call("getpid")
            # a call longer than max_age is not interrupted
            assert await pool.call("slow_echo", "kept", 0.5) == "kept"
            start = trio.current_time()
            while (pid := await pool.call("getpid")) == first:
                await trio.sleep(0.05)
                assert trio.current_time() - start < 3.0, "never recycled"
            assert pid != first and not alive(first)


# -- arguments ---------------------------------------------------------------------


def anything(value: object) -> Any:
    """A wrongly typed argument, on purpose."""
    return value


async def test_wrong_arguments_are_rejected_clearly() -> None:
    with pytest.raises(InvalidSpec, match="size") as info:
        async with open_pool(FAULTS, size=0):
            pass  # pragma: no cover
    assert info.value.field == "size"
    with pytest.raises(InvalidSpec, match="size"):
        async with open_pool(FAULTS, size=anything("2")):
            pass  # pragma: no cover
    with pytest.raises(InvalidSpec, match="handlers"):
        async with open_pool(anything(42)):
            pass  # pragma: no cover
    with pytest.raises(InvalidSpec, match="checkout_timeout"):
        async with open_pool(FAULTS, checkout_timeout=-1):
            pass  # pragma: no cover
    with pytest.raises(InvalidSpec, match="argv"):
        corral.Command(anything("node worker.js"))
    with pytest.raises(TypeError):
        async with open_pool(FAULTS, sizes=2):  # type: ignore[call-arg]
            pass  # pragma: no cover
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, **FAST) as pool:
            with pytest.raises(TypeError, match="str"):
                await pool.call(123)  # type: ignore[arg-type]
            assert await pool.call("echo", 1) == 1


# -- failures opening --------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or e in seen:
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _texts(exc: BaseException) -> str:
    parts = []
    for e in _chain(exc):
        parts.append(str(e))
        parts.append(getattr(e, "stderr_tail", ""))
        parts.append(getattr(e, "remote_traceback", ""))
    return "\n".join(parts)


@pytest.mark.parametrize(("mode", "expected"), [("fail", "init told to fail"), ("exit", "init says goodbye")])
async def test_failed_open_is_one_corral_error_quoting_the_worker(
    tmp_path: Path, mode: str, expected: str
) -> None:
    (tmp_path / "mode").write_text(mode)
    with trio.fail_after(10), pytest.raises(CorralError) as info:
        async with open_pool(
            "tests.handlers_init_control", size=3, env={"CORRAL_TEST_INIT_FILE": str(tmp_path / "mode")}
        ):
            pytest.fail("the body must not run")  # pragma: no cover
    assert not isinstance(info.value, BaseExceptionGroup)
    assert expected in _texts(info.value)


async def test_failed_open_with_init_exception() -> None:
    with trio.fail_after(10), pytest.raises(CorralError) as info:
        async with open_pool("tests.handlers_init_fails", size=2):
            pytest.fail("the body must not run")  # pragma: no cover
    assert not isinstance(info.value, BaseExceptionGroup)
    assert "database unreachable" in _texts(info.value)
    assert any(isinstance(e, RemoteError) for e in _chain(info.value))


# -- the block ---------------------------------------------------------------------


class BodyError(Exception):
    pass


async def test_body_exceptions_propagate_as_they_are() -> None:
    with trio.fail_after(10):
        with pytest.raises(BodyError, match="mine"):
            async with open_pool(FAULTS, size=1, **FAST):
                raise BodyError("mine")
        with pytest.raises(KeyError):
            async with open_pool(FAULTS, size=1, **FAST) as pool:
                await pool.call("echo", 1)
                raise KeyError("k")
        # an error from a call, raised out of the body, is bare too
        with pytest.raises(RemoteError):
            async with open_pool(FAULTS, size=1, **FAST) as pool:
                await pool.call("raise_custom", "x")


async def test_after_the_block_every_use_raises_pool_closed() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, **FAST) as pool:
            await pool.call("echo", 1)
    with pytest.raises(PoolClosed):
        await pool.call("echo", 1)
    with pytest.raises(PoolClosed):
        await pool.run_sync(handlers_faults.square, 2)
    with pytest.raises(PoolClosed):
        async with pool.checkout():
            pass  # pragma: no cover
    with pytest.raises(PoolClosed):
        await pool.call("echo", 1, session="s")


async def test_graceful_close_lets_a_running_call_finish() -> None:
    results: list[Any] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with open_pool(FAULTS, size=1, **FAST) as pool:

                async def caller() -> None:
                    results.append(await pool.call("slow_echo", "done", 0.4))

                nursery.start_soon(caller)
                await wait_for(lambda: pool.statistics().workers_by_state["BUSY"] == 1)
                start = trio.current_time()
            assert trio.current_time() - start >= 0.3
    assert results == ["done"]


async def test_cancelling_the_surrounding_scope_stops_everything_promptly() -> None:
    pids: set[int] = set()
    start = trio.current_time()
    with trio.fail_after(10):
        with trio.move_on_after(0.5):
            async with open_pool(FAULTS, size=2, **FAST) as pool, trio.open_nursery() as nursery:
                pids = pids_of(pool)
                for _ in range(2):
                    nursery.start_soon(pool.call, "sleep", 30)
                await trio.sleep(30)
    assert trio.current_time() - start < 1.5
    assert len(pids) == 2
    assert await wait_gone(pids, timeout=1.0) == []


# -- the rest of the API -------------------------------------------------------------


async def test_statistics_fields() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=2, **FAST) as pool:
            stats = pool.statistics()
            assert stats.size == 2
            assert stats.workers_by_state["READY"] == 2
            assert stats.waiting == 0 and stats.served == 0 and stats.failed == 0
            assert stats.restarts == 0
            assert stats.circuit == "closed"
            assert stats.latency_p50 is None
            for i in range(10):
                await pool.call("echo", i)
            with pytest.raises(RemoteError):
                await pool.call("raise_custom", "x")
            with pytest.raises(WorkerCrashed):
                await pool.call("exit_with", 3)
            await wait_for(
                lambda: pool.statistics().restarts == 1 and pool.statistics().workers_by_state["READY"] == 2
            )
            stats = pool.statistics()
            assert stats.served == 10
            assert stats.failed == 2
            assert stats.restarts == 1
            assert stats.latency_p50 is not None and stats.latency_p99 is not None
            assert 0 < stats.latency_p50 <= stats.latency_p90 <= stats.latency_p99  # type: ignore[operator]
            with pytest.raises(AttributeError):
                stats.served = 0  # type: ignore[misc]


async def test_run_sync_with_a_module_level_function() -> None:
    with trio.fail_after(10):
        async with open_pool(None, size=1, **FAST) as pool:
            assert await pool.run_sync(handlers_faults.square, 12) == 144
            assert await pool.run_sync(divmod, 17, 5) == (3, 2)
            with pytest.raises(RemoteError) as info:
                await pool.run_sync(handlers_faults.raise_custom, "via run_sync")
            assert isinstance(info.value.__cause__, handlers_faults.CustomError)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_node_pool_through_command() -> None:
    command = corral.Command(["node", str(NODE_WORKER)])
    with trio.fail_after(10):
        async with open_pool(command, size=2, **FAST) as pool:
            assert len(pids_of(pool)) == 2
            results = []
            async with trio.open_nursery() as nursery:

                async def caller(i: int) -> None:
                    results.append(await pool.call("add", i, 1))

                for i in range(20):
                    nursery.start_soon(caller, i)
            assert sorted(results) == list(range(1, 21))


# -- more checkout edges ---------------------------------------------------------------


async def test_cancelled_waiter_leaves_the_queue_fair() -> None:
    order: list[str] = []
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, pipeline=1, **FAST) as pool:

            async def caller(tag: str) -> None:
                order.append(await pool.call("echo", tag))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "sleep", 0.3)
                await trio.sleep(0.05)
                nursery.start_soon(caller, "a")
                await trio.sleep(0.01)
                cancelled = trio.CancelScope()

                async def doomed() -> None:
                    with cancelled:
                        await caller("doomed")

                nursery.start_soon(doomed)
                await trio.sleep(0.01)
                nursery.start_soon(caller, "b")
                await wait_for(lambda: pool.statistics().waiting == 3)
                cancelled.cancel()
                await wait_for(lambda: pool.statistics().waiting == 2)
    assert order == ["a", "b"]
    assert cancelled.cancelled_caught


async def test_pool_saturated_when_the_wait_queue_is_full() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, pipeline=1, max_waiting=2, **FAST) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "sleep", 0.3)
                await trio.sleep(0.05)
                nursery.start_soon(pool.call, "echo", 1)
                nursery.start_soon(pool.call, "echo", 2)
                await wait_for(lambda: pool.statistics().waiting == 2)
                with pytest.raises(corral.PoolSaturated, match="max_waiting"):
                    await pool.call("echo", 3)
            assert await pool.call("echo", 4) == 4


async def test_error_inside_a_checkout_block_returns_the_worker() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, **FAST) as pool:
            with pytest.raises(ZeroDivisionError):
                async with pool.checkout() as lease:
                    pid = await lease.call("getpid")
                    _ = 1 / 0
            assert await pool.call("getpid") == pid
            # a cancelled call inside a lease: the worker is interrupted and comes back
            async with pool.checkout() as lease:
                with trio.move_on_after(0.1):
                    await lease.call("sleep", 30)
            with trio.fail_after(2):
                assert await pool.call("getpid") == pid


async def test_session_through_checkout() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=3, **FAST) as pool:
            async with pool.checkout(session="s") as lease:
                pid = lease.pid
                assert await lease.call("getpid") == pid
            for _ in range(3):
                assert await pool.call("getpid", session="s") == pid
            assert pool.statistics().sessions == 1


async def test_oversized_request_is_refused_without_replacing_the_worker() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, max_frame=1 << 20, **FAST) as pool:
            (pid,) = pids_of(pool)
            with pytest.raises(corral.ProtocolError, match="max_frame"):
                await pool.call("echo", b"x" * (2 << 20))
            with pytest.raises(RemoteError, match="EncodeError"):
                await pool.call("big", 2 << 20)
            assert await pool.call("getpid") == pid
            assert pool.statistics().restarts == 0


# -- closing and shrinking ---------------------------------------------------------------


async def test_close_fails_waiting_callers_with_pool_closed_and_drains_running_ones() -> None:
    results: dict[str, Any] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, open_pool(FAULTS, size=1, pipeline=1, **FAST) as pool:

            async def caller(tag: str, *args: Any) -> None:
                try:
                    results[tag] = await pool.call(*args)
                except CorralError as exc:
                    results[tag] = exc

            nursery.start_soon(caller, "running", "slow_echo", "r", 0.3)
            await wait_for(lambda: pool.statistics().workers_by_state["BUSY"] == 1)
            nursery.start_soon(caller, "waiting", "echo", "w")
            await wait_for(lambda: pool.statistics().waiting == 1)
    assert results["running"] == "r"
    assert isinstance(results["waiting"], PoolClosed)


async def test_close_after_drain_timeout_stops_a_stuck_call() -> None:
    results: list[BaseException] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with open_pool(FAULTS, size=1, drain_timeout=0.2, stop_timeout=0.2) as pool:
                (pid,) = pids_of(pool)

                async def caller() -> None:
                    try:
                        await pool.call("sleep", 30)
                    except CorralError as exc:
                        results.append(exc)

                nursery.start_soon(caller)
                await wait_for(lambda: pool.statistics().workers_by_state["BUSY"] == 1)
                start = trio.current_time()
            assert trio.current_time() - start < 2.0
    assert len(results) == 1 and isinstance(results[0], WorkerCrashed)
    assert not alive(pid)


async def test_lazy_pool_shrinks_idle_workers() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=2, lazy=True, idle_timeout=0.2, **FAST) as pool:
            pid = await pool.call("getpid")
            await wait_for(lambda: pool.workers() == [], timeout=3.0)
            assert await wait_gone([pid]) == []
            assert await pool.call("getpid") != pid


async def test_max_memory_recycles_after_a_call() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, max_memory_mb=1, **FAST) as pool:
            pids = [await pool.call("getpid") for _ in range(3)]
    assert len(set(pids)) == 3


async def test_max_age_zero_recycles_after_every_call_without_looping() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, max_age=0, **FAST) as pool:
            pids = [await pool.call("getpid") for _ in range(3)]
    assert len(set(pids)) == 3


async def test_session_ttl_expires_the_binding() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=2, session_ttl=0.2, **FAST) as pool:
            await pool.call("getpid", session="s")
            assert pool.statistics().sessions == 1
            await trio.sleep(0.3)
            await pool.call("getpid", session="s")  # an expired session is rebound, not lost
            assert pool.statistics().sessions == 1


async def test_run_sync_of_an_unpicklable_callable_fails_and_the_pool_keeps_working() -> None:
    with trio.fail_after(10):
        async with open_pool(None, size=1, **FAST) as pool:
            (pid,) = pids_of(pool)
            with pytest.raises(Exception, match="pickle"):
                await pool.run_sync(lambda: 1)
            assert await pool.run_sync(os.getpid) == pid


async def test_a_call_cancelled_at_checkout_does_not_leak_its_worker() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, checkout_timeout=1.0) as pool:
            (pid,) = pids_of(pool)
            await pool.call("getpid", session="s")
            for _ in range(3):
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await pool.call("sleep", 10)
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await pool.call("sleep", 10, session="s")
                with trio.CancelScope() as scope:
                    scope.cancel()
                    async with pool.checkout():
                        pass  # pragma: no cover
                assert await pool.call("getpid") == pid
                assert await pool.call("getpid", session="s") == pid
