"""Two-phase stop: graces, BRUTAL_KILL, INFINITY, sequential stop; BaseExceptions
(KeyboardInterrupt, outside cancellation) tearing the tree down in reverse order.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs
import pytest
import trio
import trio.testing

import corral
from tests.sup_helpers import Kids, info, settle, supervising


@attrs.define
class Timeline:
    """What each stubborn child saw, in virtual time."""

    entries: list[tuple[str, Hashable, float]] = attrs.Factory(list)

    def add(self, what: str, id: Hashable) -> None:
        self.entries.append((what, id, trio.current_time()))

    def spec(
        self, id: Hashable, *, mode: str, linger: float = 0.0, cleanup: float = 0.0, **kwargs: object
    ) -> corral.ChildSpec:
        """mode: "deaf" asks to be told of a stop (reads stop_requested) but ignores it;
        "polite" returns ``linger`` s after it; "plain" never looks at it.

        Once cancelled, a child spends ``cleanup`` s in shielded cleanup code.
        """

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            ctx = corral.current_child()
            task_status.started()
            try:
                if mode == "polite":
                    await ctx.stop_requested.wait()
                    self.add("requested", id)
                    await trio.sleep(linger)
                    self.add("returned", id)
                    return
                if mode == "deaf":
                    assert not ctx.stop_requested.is_set()  # asks for a grace, then ignores it
                await trio.sleep_forever()
            except trio.Cancelled:
                self.add("cancelled", id)
                if cleanup:
                    with trio.CancelScope(shield=True):  # cleanup that must finish
                        await trio.sleep(cleanup)
                    self.add("cleaned", id)
                raise

        return corral.ChildSpec(id, run, **kwargs)  # type: ignore[arg-type]


async def test_child_ignoring_stop_requested_is_cancelled_after_its_grace(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    tl = Timeline()
    sup = corral.Supervisor([tl.spec("deaf", mode="deaf", shutdown=3.0)])
    with trio.fail_after(100):
        async with supervising(sup):
            await sup.terminate_child("deaf")
            assert trio.current_time() == 3.0
    assert tl.entries == [("cancelled", "deaf", 3.0)]
    last = info(sup, "deaf").last_exit
    assert last is not None and last.reason == "shutdown"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'deaf'" in m and "grace of 3.0 s" in m for m in warnings), warnings  # names it


async def test_brutal_kill_cancels_at_once(autojump_clock: trio.testing.MockClock) -> None:
    tl = Timeline()
    stop_seen: list[bool] = []

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            stop_seen.append(corral.current_child().stop_requested.is_set())

    sup = corral.Supervisor(
        [tl.spec("deaf", mode="deaf", shutdown=corral.BRUTAL_KILL), corral.ChildSpec("b", run)]
    )
    assert corral.BRUTAL_KILL == 0
    with trio.fail_after(100):
        async with supervising(sup):
            await sup.terminate_child("deaf")
            assert trio.current_time() == 0.0
    assert tl.entries == [("cancelled", "deaf", 0.0)]
    assert trio.current_time() == 0.0  # b never asked to be told of a stop: cancelled at once
    assert stop_seen == [True]


async def test_infinity_waits_however_long_it_takes(autojump_clock: trio.testing.MockClock) -> None:
    tl = Timeline()
    sup = corral.Supervisor([tl.spec("slow", mode="polite", linger=10_000.0, shutdown=corral.INFINITY)])
    with trio.fail_after(100_000):
        async with supervising(sup):
            await sup.terminate_child("slow")
    assert tl.entries == [("requested", "slow", 0.0), ("returned", "slow", 10_000.0)]
    last = info(sup, "slow").last_exit
    assert last is not None and last.reason == "normal"


async def test_child_finishing_on_stop_requested_exits_normally_within_its_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tl = Timeline()
    sup = corral.Supervisor([tl.spec("polite", mode="polite", linger=2.0, shutdown=5.0)])
    with trio.fail_after(100):
        async with supervising(sup):
            await sup.terminate_child("polite")
            assert trio.current_time() == 2.0  # not the full grace
    assert tl.entries == [("requested", "polite", 0.0), ("returned", "polite", 2.0)]
    last = info(sup, "polite").last_exit
    assert last is not None and last.reason == "normal"
    assert info(sup, "polite").state is corral.ChildState.STOPPED


async def test_stop_is_sequential_each_child_with_its_own_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tl = Timeline()
    sup = corral.Supervisor(
        [
            tl.spec("a", mode="deaf", shutdown=1.0),
            tl.spec("b", mode="polite", linger=2.0, shutdown=10.0),
            tl.spec("c", mode="deaf", shutdown=3.0),
        ]
    )
    with trio.fail_after(100):
        async with supervising(sup):
            pass
    assert tl.entries == [
        ("cancelled", "c", 3.0),
        ("requested", "b", 3.0),  # asked only once c has exited
        ("returned", "b", 5.0),
        ("cancelled", "a", 6.0),
    ]
    assert [c.last_exit.reason for c in sup.which_children() if c.last_exit] == [
        "shutdown",
        "normal",
        "shutdown",
    ]


async def test_bystanders_are_stopped_with_their_graces(autojump_clock: trio.testing.MockClock) -> None:
    kids = Kids()
    tl = Timeline()
    sup = corral.Supervisor(
        [kids.spec("a"), tl.spec("deaf", mode="deaf", shutdown=4.0)], strategy=corral.Strategy.ONE_FOR_ALL
    )
    with trio.fail_after(100):
        async with supervising(sup):
            await kids.crash("a")
            await trio.sleep(10)
            assert tl.entries == [("cancelled", "deaf", 4.0)]
            assert kids.starts["a"] == 2
            assert info(sup, "deaf").restarts == 1


# -- BaseExceptions are not crashes ------------------------------------------------------


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
async def test_base_exception_in_a_child_tears_down_in_reverse_and_propagates(
    exc_type: type[BaseException],
) -> None:
    kids = Kids()
    order: list[str] = []

    async def fatal(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.testing.wait_all_tasks_blocked()
        order.append("raise")
        raise exc_type

    sup = corral.Supervisor(
        [kids.spec("a"), kids.spec("b"), corral.ChildSpec("fatal", fatal), kids.spec("d"), kids.spec("e")],
        max_restarts=100,
    )
    with trio.fail_after(5):
        with pytest.raises(exc_type):
            async with corral.open_supervisor([corral.ChildSpec("sup", sup.run)]):
                await trio.sleep_forever()
    assert order == ["raise"]
    assert kids.of("exit") == ["e", "d", "b", "a"]  # reverse order
    assert kids.starts == {"a": 1, "b": 1, "d": 1, "e": 1}  # no restart: not a crash
    assert not sup.running


async def test_keyboard_interrupt_from_run_is_bare() -> None:
    kids = Kids()

    async def fatal(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.testing.wait_all_tasks_blocked()
        raise KeyboardInterrupt

    sup = corral.Supervisor([kids.spec("a"), corral.ChildSpec("fatal", fatal), kids.spec("c")])
    with trio.fail_after(5), pytest.raises(KeyboardInterrupt):
        await sup.run()
    assert kids.of("exit") == ["c", "a"]


async def test_outside_cancellation_cancels_children_in_reverse_without_graces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tl = Timeline()
    sup = corral.Supervisor(
        [
            tl.spec("a", mode="deaf", cleanup=1.0, shutdown=100.0),
            tl.spec("b", mode="deaf", cleanup=1.0, shutdown=100.0),
            tl.spec("c", mode="polite", linger=50.0, shutdown=100.0),
        ]
    )
    with trio.fail_after(1000):
        with trio.move_on_after(10) as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                await trio.sleep_forever()
        assert scope.cancelled_caught
    # c sees its stop request but is cancelled at once; each child is awaited
    # (its shielded cleanup finishes) before the next one is cancelled
    assert tl.entries == [
        ("requested", "c", 10.0),
        ("cancelled", "c", 10.0),
        ("cancelled", "b", 10.0),
        ("cleaned", "b", 11.0),
        ("cancelled", "a", 11.0),
        ("cleaned", "a", 12.0),
    ]
    assert not sup.running
    assert all(c.state is corral.ChildState.STOPPED for c in sup.which_children())


async def test_outside_cancellation_of_open_supervisor_and_of_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kids = Kids()
    with trio.fail_after(1000):
        with trio.move_on_after(1) as scope:
            async with corral.open_supervisor(kids.specs("a", "b", "c")):
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert kids.of("exit") == ["c", "b", "a"]

        kids.log.clear()
        sup = corral.Supervisor(kids.specs("a", "b"))
        with trio.move_on_after(1) as scope:
            await sup.run()  # run() ends with the cancellation
        assert scope.cancelled_caught
        assert kids.of("exit") == ["b", "a"]


async def test_outside_cancellation_during_an_orderly_stop_skips_the_remaining_graces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tl = Timeline()
    sup = corral.Supervisor(
        [tl.spec("a", mode="deaf", shutdown=100.0), tl.spec("b", mode="deaf", shutdown=100.0)]
    )
    with trio.fail_after(1000), trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await sup.stop()  # b's grace is 100 s; the cancellation at t=10 cuts it short
    assert tl.entries == [("cancelled", "b", 10.0), ("cancelled", "a", 10.0)]


async def test_outside_cancellation_reaches_nested_trees_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kids = Kids()
    inner = corral.Supervisor(kids.specs("i1", "i2"))
    outer = corral.Supervisor([kids.spec("o1"), corral.ChildSpec("inner", inner.run), kids.spec("o3")])
    with trio.fail_after(1000), trio.move_on_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(outer.run)
            await settle()
            await trio.sleep_forever()
    assert kids.of("exit") == ["o3", "i2", "i1", "o1"]
    assert not inner.running and not outer.running


async def test_a_child_that_never_asked_is_cancelled_at_once_and_its_finally_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """OTP: a process that does not trap exits dies at once on `shutdown`. A plain task
    that never read stop_requested costs no grace, however long its spec's."""
    cleaned: list[float] = []

    async def plain(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            while True:
                await trio.sleep(1)
        finally:
            cleaned.append(trio.current_time())

    sup = corral.Supervisor([corral.ChildSpec(f"p{i}", plain, shutdown=5.0) for i in range(3)])
    with trio.fail_after(100):
        async with supervising(sup):
            start = trio.current_time()
        assert trio.current_time() == start  # three children, no grace spent
    assert cleaned == [start, start, start]
