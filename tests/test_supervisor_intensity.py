"""Restart intensity (sliding window), escalation through nested trees, backoff.

Time-based: every test runs on ``autojump_clock`` (pytest-trio's built-in fixture,
a ``MockClock(autojump_threshold=0)``), so seconds of virtual time take no real time.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import corral
from tests.sup_helpers import Boom, InitFailed, Kids, events_of, info, settle, supervising


def crasher(starts: list[float], period: float) -> corral.ChildSpec:
    """A child that runs ``period`` seconds, then crashes; records its start times."""

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        await trio.sleep(period)
        raise Boom("crash")

    return corral.ChildSpec("crasher", run)


async def test_restarts_spread_wider_than_the_window_never_trip_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    sup = corral.Supervisor([crasher(starts, 6.0)], max_restarts=1, max_seconds=5.0)
    with trio.fail_after(1000):
        async with supervising(sup) as outcome:
            await trio.sleep(100)
            assert not outcome.done.is_set()
    assert len(starts) == 17  # started at 0, 6, ..., 96: sixteen restarts, one per window
    assert sup.which_children()[0].restarts == 16


async def test_too_many_restarts_within_the_window_escalate(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []
    sup = corral.Supervisor([crasher(starts, 1.0)], max_restarts=3, max_seconds=5.0)
    with trio.fail_after(1000):
        async with supervising(sup) as outcome:
            error = await outcome.wait()
    assert type(error) is corral.RestartIntensityExceeded  # bare
    assert (error.max_restarts, error.max_seconds) == (3, 5.0)
    assert starts == [0.0, 1.0, 2.0, 3.0]  # 3 restarts allowed; the 4th crash (t=4) escalates
    assert trio.current_time() == 4.0
    assert sup.which_children()[0].state is corral.ChildState.STOPPED


async def test_max_restarts_zero_escalates_at_the_first_crash() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"), max_restarts=0)
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await kids.crash("b")
            error = await outcome.wait()
    assert isinstance(error, corral.RestartIntensityExceeded)
    assert kids.starts == {"a": 1, "b": 1}
    assert kids.of("exit") == ["b", "a"]
    assert kids.of("stop_requested") == ["a"]  # the others are stopped in an orderly way


async def test_a_restart_exactly_max_seconds_ago_still_counts(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []
    sup = corral.Supervisor([crasher(starts, 5.0)], max_restarts=1, max_seconds=5.0)
    with trio.fail_after(1000):
        async with supervising(sup) as outcome:
            error = await outcome.wait()
    assert isinstance(error, corral.RestartIntensityExceeded)
    # restart at t=5, the next crash at t=10: the one at t=5 is exactly 5 s ago and counts
    assert starts == [0.0, 5.0]


async def test_a_restart_just_over_max_seconds_ago_does_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    sup = corral.Supervisor([crasher(starts, 5.25)], max_restarts=1, max_seconds=5.0)
    with trio.fail_after(1000):
        async with supervising(sup) as outcome:
            await trio.sleep(50)
            assert not outcome.done.is_set()
    assert len(starts) == 10


async def test_intensity_is_per_supervisor_not_per_child(autojump_clock: trio.testing.MockClock) -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b", "c"), max_restarts=2, max_seconds=10.0)
    with trio.fail_after(1000):
        async with supervising(sup) as outcome:
            await kids.crash("a")
            await kids.crash("b")
            assert not outcome.done.is_set()
            await kids.crash("c")
            assert isinstance(await outcome.wait(), corral.RestartIntensityExceeded)


async def test_failed_restart_attempts_count_and_are_retried_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"), max_restarts=3, max_seconds=5.0)
    with trio.fail_after(1000):
        async with supervising(sup) as outcome:
            kids.fail_init["a"] = 2  # the first two restart attempts fail, the third works
            await kids.crash("a")
            assert not outcome.done.is_set()
            assert info(sup, "a").state is corral.ChildState.RUNNING
            assert info(sup, "a").restarts == 1  # counts restarts, not attempts
            assert trio.current_time() == 0.0  # retried at once, no backoff
            # three attempts were counted: one more crash within the window escalates
            await kids.crash("a")
            assert isinstance(await outcome.wait(), corral.RestartIntensityExceeded)
    assert kids.starts["a"] == 4 + 0  # initial, two failed attempts, the good one


async def test_one_for_all_failed_restart_retries_the_whole_group() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b", "c"), strategy=corral.Strategy.ONE_FOR_ALL, max_restarts=5)
    with trio.fail_after(5):
        async with supervising(sup):
            kids.fail_init["b"] = 1
            kids.log.clear()
            await kids.crash("c")
            starts = kids.of("start")
            assert starts == ["a", "b", "a", "b", "c"]  # a started, b failed: all again
            assert kids.of("exit") == ["c", "b", "a", "b", "a"]
            assert all(c.state is corral.ChildState.RUNNING for c in sup.which_children())


async def test_rest_for_one_failed_restart_retries_from_the_child_that_failed() -> None:
    kids = Kids()
    sup = corral.Supervisor(
        kids.specs("a", "b", "c", "d"), strategy=corral.Strategy.REST_FOR_ONE, max_restarts=5
    )
    with trio.fail_after(5):
        async with supervising(sup):
            kids.fail_init["c"] = 1
            kids.log.clear()
            await kids.crash("b")
            assert kids.of("start") == ["b", "c", "c", "d"]
            assert all(c.state is corral.ChildState.RUNNING for c in sup.which_children())


# -- escalation through a nested tree -------------------------------------------------


async def test_inner_supervisor_exceeding_intensity_is_an_abnormal_exit_in_the_outer() -> None:
    kids = Kids()
    inner = corral.Supervisor(kids.specs("w1", "w2"), max_restarts=0, name="inner")
    outer = corral.Supervisor(
        [kids.spec("before"), corral.ChildSpec("inner", inner.run), kids.spec("after")],
        strategy=corral.Strategy.REST_FOR_ONE,
        max_restarts=1,
        name="outer",
    )
    events = events_of(outer)
    with trio.fail_after(5):
        async with supervising(outer) as outcome:
            kids.log.clear()
            await kids.crash("w1")
            # inner gave up (stopping w2), outer saw an abnormal exit of "inner" and
            # restarted it and the children after it (rest_for_one)
            assert not outcome.done.is_set()
            exited = [e for e in events if isinstance(e, corral.ChildExited) and e.child_id == "inner"]
            assert len(exited) == 1 and exited[0].exit.abnormal and not exited[0].requested
            assert isinstance(exited[0].exit.exception, corral.RestartIntensityExceeded)
            assert kids.log[:2] == [("exit", "w1"), ("stop_requested", "w2")]
            assert kids.of("start") == ["w1", "w2", "after"]
            assert info(outer, "inner").restarts == 1
            assert info(outer, "before").restarts == 0
            assert info(outer, "after").restarts == 1
            # the restarted inner started from its constructor's children
            assert [c.value for c in inner.which_children()] == ["w1#2", "w2#2"]
            assert info(outer, "inner").value is inner
            # a second escalation within the window makes the outer give up too
            await kids.crash("w2")
            error = await outcome.wait()
    assert type(error) is corral.RestartIntensityExceeded
    assert error.supervisor == "outer"


async def test_escalation_reaches_the_top_bare_through_open_supervisor() -> None:
    kids = Kids()
    inner = corral.Supervisor(kids.specs("w"), max_restarts=0, name="inner")
    with trio.fail_after(5):
        with pytest.raises(corral.RestartIntensityExceeded) as exc_info:
            async with corral.open_supervisor([corral.ChildSpec("inner", inner.run)], max_restarts=0):
                await kids.crash("w")
                await trio.sleep_forever()
    assert exc_info.value.supervisor != "inner"


async def test_nested_supervisor_stops_on_its_parents_request() -> None:
    kids = Kids()
    inner = corral.Supervisor(kids.specs("w1", "w2"), name="inner")
    spec = corral.ChildSpec("inner", inner.run)
    assert spec.shutdown == corral.INFINITY
    outer = corral.Supervisor([kids.spec("a"), spec, kids.spec("z")])
    with trio.fail_after(5):
        async with supervising(outer):
            await outer.terminate_child("inner")
            assert not inner.running
            last = info(outer, "inner").last_exit
            assert last is not None and last.reason == "normal"  # run() returned None
            assert kids.of("exit") == ["w2", "w1"]
            assert await outer.restart_child("inner") is inner
            assert [c.value for c in inner.which_children()] == ["w1#2", "w2#2"]
    assert kids.of("exit") == ["w2", "w1", "z", "w2", "w1", "a"]


# -- backoff --------------------------------------------------------------------------


async def test_backoff_delays_grow_exponentially_and_are_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        raise Boom("crash at once")

    backoff = corral.Backoff(initial=1.0, maximum=5.0, multiplier=2.0, jitter=0.0, reset_after=100.0)
    sup = corral.Supervisor(
        [corral.ChildSpec("c", run)], max_restarts=100, max_seconds=1000.0, backoff=backoff
    )
    events = events_of(sup)
    with trio.fail_after(1000):
        async with supervising(sup):
            await trio.sleep(30)
    delays = [e.delay for e in events if isinstance(e, corral.ChildRestarting)]
    assert delays[:6] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    attempts = [e.attempt for e in events if isinstance(e, corral.ChildRestarting)]
    assert attempts[:4] == [1, 2, 3, 4]
    assert starts[:5] == [0.0, 1.0, 3.0, 7.0, 12.0]


async def test_backoff_jitter_stays_within_bounds(autojump_clock: trio.testing.MockClock) -> None:
    backoff = corral.Backoff(initial=1.0, maximum=100.0, multiplier=2.0, jitter=0.5)
    for attempt in range(1, 8):
        base = min(100.0, 2.0 ** (attempt - 1))
        for _ in range(20):
            assert base * 0.5 <= backoff.delay(attempt) <= min(100.0, base * 1.5)


async def test_backoff_resets_after_the_child_stayed_up(autojump_clock: trio.testing.MockClock) -> None:
    kids = Kids()
    backoff = corral.Backoff(initial=1.0, maximum=60.0, jitter=0.0, reset_after=10.0)
    sup = corral.Supervisor(kids.specs("a"), max_restarts=10, max_seconds=1000.0, backoff=backoff)
    events = events_of(sup)
    with trio.fail_after(1000):
        async with supervising(sup):
            await kids.crash("a")
            await trio.sleep(1.5)  # the backoff (1 s), then up for 0.5 s
            await kids.crash("a")  # up for less than reset_after: the next delay doubles
            await trio.sleep(2.5)
            await trio.sleep(10)  # stays up 10 s: healthy again
            await kids.crash("a")
            await trio.sleep(1.5)
    delays = [e.delay for e in events if isinstance(e, corral.ChildRestarting)]
    assert delays == [1.0, 2.0, 1.0]


async def test_api_calls_are_not_blocked_while_a_child_waits_for_its_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kids = Kids()
    backoff = corral.Backoff(initial=50.0, maximum=50.0, jitter=0.0)
    sup = corral.Supervisor(kids.specs("a", "b"), backoff=backoff)
    with trio.fail_after(1000):
        async with supervising(sup):
            await kids.crash("a")
            assert info(sup, "a").state is corral.ChildState.RESTARTING
            assert info(sup, "a").value is None
            t0 = trio.current_time()
            assert await sup.start_child(kids.spec("c")) == "c#1"
            await sup.terminate_child("b")
            assert await sup.restart_child("b") == "b#2"
            sup.which_children()
            sup.count_children()
            assert trio.current_time() == t0  # nothing waited for the backoff
            with pytest.raises(corral.ChildRunning):
                await sup.delete_child("a")  # restarting counts as running
            await trio.sleep(51)
            assert info(sup, "a").state is corral.ChildState.RUNNING
            assert kids.starts["a"] == 2


async def test_terminate_child_waiting_for_its_backoff_cancels_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kids = Kids()
    backoff = corral.Backoff(initial=5.0, jitter=0.0)
    sup = corral.Supervisor(kids.specs("a"), backoff=backoff)
    with trio.fail_after(1000):
        async with supervising(sup):
            await kids.crash("a")
            await sup.terminate_child("a")
            assert info(sup, "a").state is corral.ChildState.STOPPED
            await trio.sleep(20)
            assert kids.starts["a"] == 1
            assert info(sup, "a").state is corral.ChildState.STOPPED


async def test_failed_restart_is_retried_after_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    kids = Kids()
    backoff = corral.Backoff(initial=1.0, jitter=0.0)
    sup = corral.Supervisor(kids.specs("a"), backoff=backoff, max_restarts=10)
    events = events_of(sup)
    with trio.fail_after(1000):
        async with supervising(sup):
            kids.fail_init["a"] = 2
            await kids.crash("a")
            await trio.sleep(100)
            await settle()
            assert info(sup, "a").state is corral.ChildState.RUNNING
    delays = [e.delay for e in events if isinstance(e, corral.ChildRestarting)]
    assert delays == [1.0, 2.0, 4.0]
    failed = [e for e in events if isinstance(e, corral.RestartFailed)]
    assert len(failed) == 2 and all(isinstance(e.exception, InitFailed) for e in failed)


def test_backoff_delay_never_overflows() -> None:
    """A large multiplier and a long crash streak cap at maximum, never OverflowError."""
    backoff = corral.Backoff(initial=0.001, maximum=0.01, multiplier=1e6, jitter=0.0)
    for attempt in (1, 2, 54, 10_000, 10**9):
        assert 0.0 <= backoff.delay(attempt) <= 0.01
    assert corral.Backoff(initial=0.5, maximum=2.0, multiplier=1.0).delay(10**9) <= 2.0
    assert corral.Backoff(initial=0.0, maximum=2.0, multiplier=3.0).delay(10**9) == 0.0
    assert corral.Backoff(initial=1e-300, maximum=1e300, multiplier=1e300, jitter=0.0).delay(3) == 1e300
    assert corral.Backoff(initial=1.0, maximum=5.0, multiplier=2.0, jitter=0.0).delay(3) == 4.0
