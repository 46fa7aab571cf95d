"""Pool logic on MockClock with fake workers (no processes): exact times, exact orders.

Each test drives ``open_pool(..., worker_factory=script.factory)``; the fake workers'
handlers ("sleep", "echo") run on the trio clock.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio.testing import MockClock

import corral
from corral.workers._options import PoolOptions
from corral.workers._pool import Pool
from corral.workers._sessions import SessionTable
from tests.fake_worker import Script


@asynccontextmanager
async def fake_pool(script: Script, **options: Any) -> AsyncIterator[Pool]:
    options.setdefault("backoff", None)
    async with corral.open_pool("fake", worker_factory=script.factory, **options) as pool:
        yield pool


async def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(trio time when it ended, its result or the exception it raised)."""
    try:
        result: Any = await fn(*args, **kwargs)
    except corral.CorralError as exc:
        result = exc
    return trio.current_time(), result


async def test_waiters_are_served_first_come_first_served(autojump_clock: MockClock) -> None:
    script = Script()
    done: list[tuple[int, float]] = []
    async with fake_pool(script, size=1) as pool:

        async def caller(i: int) -> None:
            await pool.call("sleep", 10)
            done.append((i, trio.current_time()))

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(caller, i)
                await trio.sleep(1)  # arrive at t = 0, 1, 2, 3
    assert done == [(0, 10.0), (1, 20.0), (2, 30.0), (3, 40.0)]


async def test_checkout_timeout_fires_exactly(autojump_clock: MockClock) -> None:
    async with fake_pool(Script(), size=1, checkout_timeout=2.5) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(pool.call, "sleep", 100)
        await trio.sleep(1)
        ended, result = await timed(pool.call, "echo", 1)
        assert isinstance(result, corral.CheckoutTimeout)
        assert ended == 3.5
        nursery.cancel_scope.cancel()


async def test_max_waiting_turns_away_the_caller_over_the_limit(
    autojump_clock: MockClock,
) -> None:
    async with fake_pool(Script(), size=1, max_waiting=2) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(pool.call, "sleep", 100)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(2):
            nursery.start_soon(pool.call, "echo", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().waiting == 2
        start = trio.current_time()
        with pytest.raises(corral.PoolSaturated, match="max_waiting=2"):
            await pool.call("echo", 1)
        assert trio.current_time() == start  # at once, not after a wait
        nursery.cancel_scope.cancel()


async def test_a_session_sticks_to_its_worker_and_is_lost_once(
    autojump_clock: MockClock,
) -> None:
    script = Script()
    async with fake_pool(script, size=3) as pool:
        await pool.call("echo", 1, session="a")
        first = next(w for w in script.made if w.calls)
        for _ in range(5):
            await pool.call("echo", 1, session="a")
        assert len(first.calls) == 6
        first.crash()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(corral.SessionLost):
            await pool.call("echo", 1, session="a")
        assert await pool.call("echo", 2, session="a") == 2  # bound to a new worker
        assert pool.statistics().sessions == 1


async def test_new_sessions_spread_over_idle_workers(autojump_clock: MockClock) -> None:
    script = Script()
    async with fake_pool(script, size=3) as pool:
        for key in "abc":
            await pool.call("echo", 1, session=key)
        assert sorted(len(w.calls) for w in script.made) == [1, 1, 1]


async def test_a_waiter_for_a_session_whose_worker_dies_gets_session_lost(
    autojump_clock: MockClock,
) -> None:
    script = Script()
    async with fake_pool(script, size=2) as pool, trio.open_nursery() as nursery:
        await pool.call("echo", 1, session="s")
        worker = next(w for w in script.made if w.calls)
        nursery.start_soon(partial(timed, pool.call, "sleep", 50, session="s"))
        await trio.testing.wait_all_tasks_blocked()
        ended: list[Any] = []

        async def second() -> None:
            ended.append(await timed(pool.call, "echo", 2, session="s"))

        nursery.start_soon(second)
        await trio.sleep(5)
        worker.crash()
        await trio.testing.wait_all_tasks_blocked()
        assert len(ended) == 1
        assert ended[0][0] == 5.0
        assert isinstance(ended[0][1], corral.SessionLost)
        nursery.cancel_scope.cancel()


async def test_the_circuit_opens_after_threshold_failures_and_calls_fail_fast(
    autojump_clock: MockClock,
) -> None:
    script = Script()
    breaker = corral.CircuitBreaker(threshold=2, cooldown=30.0)
    async with fake_pool(script, size=1, lazy=True, circuit_breaker=breaker, max_restarts=100) as pool:
        script.start_error = corral.WorkerCrashed("cannot start")
        for _ in range(2):
            with pytest.raises(corral.CorralError):
                await pool.call("echo", 1)
        assert pool.circuit_state is corral.CircuitState.OPEN
        start = trio.current_time()
        with pytest.raises(corral.CircuitOpen):
            await pool.call("echo", 1)
        assert trio.current_time() == start
        script.start_error = None
        await trio.sleep(30)  # the cooldown: one trial start, which succeeds
        assert await pool.call("echo", 7) == 7
        assert pool.statistics().circuit == "closed"


async def test_max_requests_recycles_between_calls_and_fails_none(
    autojump_clock: MockClock,
) -> None:
    script = Script()
    async with fake_pool(script, size=1, max_requests=2) as pool:
        results = [await pool.call("echo", i) for i in range(6)]
        assert results == list(range(6))
        assert [len(w.calls) for w in script.made] == [2, 2, 2]
        assert pool.statistics().restarts == 0  # a recycle is not a restart


async def test_max_memory_recycles_a_worker_that_grew(autojump_clock: MockClock) -> None:
    script = Script(rss=10 << 20)
    async with fake_pool(script, size=1, max_memory_mb=100) as pool:
        await pool.call("echo", 1)
        script.rss = 200 << 20
        await pool.call("echo", 2)  # served, then found too big
        await pool.call("echo", 3)
        assert [len(w.calls) for w in script.made] == [2, 1]


async def test_a_crash_fails_only_its_call_and_the_slot_restarts(
    autojump_clock: MockClock,
) -> None:
    script = Script()
    async with fake_pool(script, size=2) as pool, trio.open_nursery() as nursery:
        results: list[Any] = []

        async def record(*args: Any) -> None:
            results.append(await timed(pool.call, *args))

        nursery.start_soon(record, "sleep", 10)
        nursery.start_soon(record, "sleep", 20)
        await trio.sleep(1)
        busy = [w for w in script.made if w.calls]
        busy[0].crash()
        await trio.sleep(30)
        assert sorted(type(r).__name__ for _, r in results) == ["WorkerCrashed", "int"]
        assert len(script.made) == 3
        assert pool.statistics().restarts == 1
        assert await pool.call("echo", 1) == 1


async def test_lazy_pool_starts_on_demand_and_shrinks_when_idle(
    autojump_clock: MockClock,
) -> None:
    script = Script(start_delay=0.5)
    async with fake_pool(script, size=3, lazy=True, idle_timeout=10.0) as pool:
        assert script.made == []
        assert await pool.call("echo", 1) == 1
        assert trio.current_time() == 0.5  # one start's delay
        assert len(pool.workers()) == 1
        await trio.sleep(12)
        assert pool.workers() == []


async def test_closing_drains_running_calls_and_turns_waiters_away(
    autojump_clock: MockClock,
) -> None:
    script = Script()
    results: list[tuple[float, Any]] = []
    async with trio.open_nursery() as nursery:
        async with fake_pool(script, size=1, drain_timeout=30.0) as pool:

            async def record(*args: Any) -> None:
                results.append(await timed(pool.call, *args))

            nursery.start_soon(record, "sleep", 10)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(record, "echo", 1)
            await trio.testing.wait_all_tasks_blocked()
        closed_at = trio.current_time()
    assert closed_at == 10.0  # the running call finished first
    assert results[0][0] == 0.0  # the waiter was turned away at once
    assert isinstance(results[0][1], corral.PoolClosed)
    assert results[1] == (10.0, 10)
    with pytest.raises(corral.PoolClosed):
        await pool.call("echo", 1)


def test_pool_and_open_pool_take_exactly_the_pool_options() -> None:
    """One source of truth: Pool's keyword arguments are PoolOptions' fields, with the
    same defaults, and open_pool shows Pool's signature."""
    params = inspect.signature(Pool).parameters
    options = {f.name: f for f in attrs.fields(PoolOptions)}
    assert [n for n in params if n not in ("handlers", "worker_factory")] == list(options)
    for name, field in options.items():
        default: Any = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        assert params[name].default == default, name
    assert inspect.signature(corral.open_pool) == inspect.signature(Pool)


async def test_max_waiting_counts_callers_waiting_for_a_session(autojump_clock: MockClock) -> None:
    """Every waiter counts toward max_waiting, also those queued for a session's worker."""
    async with (
        fake_pool(Script(), size=2, max_waiting=100, checkout_timeout=None) as pool,
        trio.open_nursery() as nursery,
    ):
        await pool.call("echo", 0, session="hot")
        outcomes: list[Any] = []

        async def caller() -> None:
            outcomes.append((await timed(pool.call, "sleep", 1, session="hot"))[1])

        for _ in range(300):
            nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().waiting == 100
        assert sum(isinstance(o, corral.PoolSaturated) for o in outcomes) == 199  # 1 runs, 100 wait
    assert outcomes.count(1) == 101


async def test_lost_sessions_expire_with_session_ttl(autojump_clock: MockClock) -> None:
    script = Script()
    async with fake_pool(script, size=1, session_ttl=1.0) as pool:
        for i in range(5000):
            await pool.call("echo", i, session=f"user-{i}")
        script.made[0].crash()
        await trio.sleep(0.1)
        with pytest.raises(corral.SessionLost):
            await pool.call("echo", 1, session="user-1")
        await trio.sleep(5)  # longer than session_ttl: the records of lost sessions are gone
        assert len(pool._sessions.lost) == 0
        assert await pool.call("echo", 2, session="user-2") == 2  # no stale SessionLost


async def test_lost_session_records_are_bounded_in_count(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SessionTable, "MAX_LOST", 500)
    script = Script()
    async with fake_pool(script, size=1, session_ttl=None) as pool:
        for round_ in range(3):
            for i in range(300):
                await pool.call("echo", i, session=(round_, i))
            next(w for w in script.made if w.state.name == "READY").crash()
            await trio.sleep(0.1)
        assert len(pool._sessions.lost) == 500
        with pytest.raises(corral.SessionLost):  # the newest are kept
            await pool.call("echo", 1, session=(2, 299))
        assert await pool.call("echo", 1, session=(0, 0)) == 1  # the oldest went first


class _CountingDict(dict[Any, Any]):
    """A dict that counts the scans over it (iterations, values(), items())."""

    scans = 0

    def __iter__(self) -> Any:
        _CountingDict.scans += 1
        return super().__iter__()

    def values(self) -> Any:
        _CountingDict.scans += 1
        return super().values()

    def items(self) -> Any:
        _CountingDict.scans += 1
        return super().items()


async def test_binding_a_session_never_scans_the_other_sessions(autojump_clock: MockClock) -> None:
    """O(1) per call whatever the number of live sessions (benchmarks/sessions.py has the
    figures): neither binding, nor spreading, nor losing a worker scans every binding."""
    script = Script()
    async with fake_pool(script, size=4, session_ttl=None) as pool:
        pool._sessions.bound = _CountingDict()
        _CountingDict.scans = 0
        for i in range(2000):
            await pool.call("echo", i, session=i)
        script.made[0].crash()
        await trio.sleep(1)
        assert _CountingDict.scans == 0
        assert len(pool._sessions) == 1500


async def test_a_slot_whose_restarts_keep_failing_is_counted(autojump_clock: MockClock) -> None:
    """A crashed worker whose restarts fail shows as RESTARTING, and every attempt counts."""
    script = Script()
    backoff = corral.Backoff(initial=1.0, maximum=1.0, jitter=0.0)
    async with fake_pool(script, size=1, backoff=backoff, circuit_breaker=None, max_restarts=100) as pool:
        script.start_error = corral.WorkerCrashed("cannot start")
        script.made[0].crash()
        await trio.sleep(3.5)  # attempts at t = 1, 2, 3 fail
        stats = pool.statistics()
        assert stats.workers_by_state["RESTARTING"] == 1
        assert sum(stats.workers_by_state.values()) == 1
        assert stats.restarts == 4  # counted when scheduled, as the intensity counts: t = 0, 1, 2, 3
        assert stats.start_failures == 3
        assert stats.exits == {"crashed": 1, "start_failed": 3}
        script.start_error = None
        await trio.sleep(1)
        assert pool.statistics().workers_by_state["READY"] == 1


async def test_a_slot_restarting_into_a_starting_worker_is_counted_once(autojump_clock: MockClock) -> None:
    script = Script(start_delay=1.0)
    async with fake_pool(script, size=2) as pool:
        script.made[0].crash()
        await trio.sleep(0.5)  # its replacement is STARTING (1 s), the slot RESTARTING
        stats = pool.statistics()
        assert stats.workers_by_state["STARTING"] == 1
        assert stats.workers_by_state["RESTARTING"] == 0
        assert sum(stats.workers_by_state.values()) == 2
