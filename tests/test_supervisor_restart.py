"""Exit reason x restart type, strategies, bystanders, which_children, events.

Rule by rule, in the spirit of OTP's supervisor_SUITE: DESIGN.md §2.
"""

from __future__ import annotations

import pytest
import trio

import corral
from tests.sup_helpers import Boom, How, Kids, events_of, info, states, supervising

P, T, TMP = corral.Restart.PERMANENT, corral.Restart.TRANSIENT, corral.Restart.TEMPORARY
RUNNING, STOPPED = corral.ChildState.RUNNING, corral.ChildState.STOPPED

# (restart type, how the child exits, restarted?, reason recorded)
CASES = [
    (P, "normal", True, "normal"),
    (P, "shutdown", True, "shutdown"),
    (P, "crash", True, "abnormal"),
    (T, "normal", False, "normal"),
    (T, "shutdown", False, "shutdown"),
    (T, "crash", True, "abnormal"),
    (TMP, "normal", False, "normal"),
    (TMP, "shutdown", False, "shutdown"),
    (TMP, "crash", False, "abnormal"),
]


@pytest.mark.parametrize(("restart", "how", "restarted", "reason"), CASES)
async def test_exit_reason_x_restart_type(
    restart: corral.Restart, how: How, restarted: bool, reason: str
) -> None:
    kids = Kids()
    sup = corral.Supervisor([kids.spec("x", restart=restart), kids.spec("other")])
    events = events_of(sup)
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await kids.exit("x", how)
            assert not outcome.done.is_set()  # the supervisor itself goes on
            exited = [e for e in events if isinstance(e, corral.ChildExited) and e.child_id == "x"]
            assert [(e.exit.reason, e.requested) for e in exited] == [(reason, False)]
            if restarted:
                x = info(sup, "x")
                assert (x.state, x.restarts, x.value) == (RUNNING, 1, "x#2")
                assert x.last_exit is not None and x.last_exit.reason == reason
            elif restart is TMP:
                assert [c.id for c in sup.which_children()] == ["other"]  # forgotten
            else:
                x = info(sup, "x")
                assert (x.state, x.restarts, x.value) == (STOPPED, 0, None)
                assert x.last_exit is not None and x.last_exit.reason == reason
            assert info(sup, "other").restarts == 0  # one_for_one: nobody else touched
        assert await outcome.wait() is None
    assert kids.starts["x"] == (2 if restarted else 1)
    assert kids.starts["other"] == 1


async def test_shutdown_payload_is_kept_in_last_exit() -> None:
    payload = {"why": "maintenance"}

    async def leaver(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        raise corral.Shutdown("info", payload)

    sup = corral.Supervisor([corral.ChildSpec("leaver", leaver, restart=T)])
    with trio.fail_after(5):
        async with supervising(sup):
            await trio.testing.wait_all_tasks_blocked()
            last = info(sup, "leaver").last_exit
            assert last is not None
            assert last.reason == "shutdown" and not last.abnormal
            assert isinstance(last.exception, corral.Shutdown)
            assert last.exception.args == ("info", payload)
            assert "info" in str(last)
            assert info(sup, "leaver").state is STOPPED  # shutdown: a transient stays down


async def test_last_exit_records_the_exception_of_a_crash() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup):
            assert info(sup, "a").last_exit is None
            await kids.crash("a")
            last = info(sup, "a").last_exit
            assert last is not None and last.abnormal and isinstance(last.exception, Boom)
            assert info(sup, "a").value == "a#2"


# -- strategies -------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_dead_child() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b", "c"), strategy=corral.Strategy.ONE_FOR_ONE)
    with trio.fail_after(5):
        async with supervising(sup):
            kids.log.clear()
            await kids.crash("b")
            assert kids.log == [("exit", "b"), ("start", "b")]
            assert [c.restarts for c in sup.which_children()] == [0, 1, 0]
            assert [c.value for c in sup.which_children()] == ["a#1", "b#2", "c#1"]


async def test_one_for_all_stops_the_others_in_reverse_then_restarts_all_in_order() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b", "c", "d"), strategy=corral.Strategy.ONE_FOR_ALL)
    with trio.fail_after(5):
        async with supervising(sup):
            kids.log.clear()
            await kids.crash("b")
            assert kids.log == [
                ("exit", "b"),
                ("stop_requested", "d"),
                ("exit", "d"),
                ("stop_requested", "c"),
                ("exit", "c"),
                ("stop_requested", "a"),
                ("exit", "a"),
                ("start", "a"),
                ("start", "b"),
                ("start", "c"),
                ("start", "d"),
            ]
            # bystander restarts count too
            assert [c.restarts for c in sup.which_children()] == [1, 1, 1, 1]
            assert all(c.state is RUNNING for c in sup.which_children())


async def test_rest_for_one_restarts_the_dead_child_and_those_after_it() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b", "c", "d"), strategy=corral.Strategy.REST_FOR_ONE)
    with trio.fail_after(5):
        async with supervising(sup):
            kids.log.clear()
            await kids.crash("b")
            assert kids.log == [
                ("exit", "b"),
                ("stop_requested", "d"),
                ("exit", "d"),
                ("stop_requested", "c"),
                ("exit", "c"),
                ("start", "b"),
                ("start", "c"),
                ("start", "d"),
            ]
            assert [c.restarts for c in sup.which_children()] == [0, 1, 1, 1]
            kids.log.clear()
            await kids.crash("d")  # the last one: only itself
            assert kids.log == [("exit", "d"), ("start", "d")]


@pytest.mark.parametrize("strategy", [corral.Strategy.ONE_FOR_ALL, corral.Strategy.REST_FOR_ONE])
async def test_temporary_bystander_is_stopped_and_forgotten(strategy: corral.Strategy) -> None:
    kids = Kids()
    sup = corral.Supervisor(
        [kids.spec("a"), kids.spec("b"), kids.spec("tmp", restart=TMP), kids.spec("d")], strategy=strategy
    )
    with trio.fail_after(5):
        async with supervising(sup):
            await kids.crash("b")
            assert [c.id for c in sup.which_children()] == ["a", "b", "d"]
            assert kids.starts["tmp"] == 1
            assert kids.of("stop_requested")[:2] == ["d", "tmp"]  # stopped in order, then forgotten
            assert all(c.state is RUNNING for c in sup.which_children())


@pytest.mark.parametrize("strategy", [corral.Strategy.ONE_FOR_ALL, corral.Strategy.REST_FOR_ONE])
async def test_temporary_child_crashing_does_not_touch_the_others(strategy: corral.Strategy) -> None:
    kids = Kids()
    sup = corral.Supervisor(
        [kids.spec("a"), kids.spec("tmp", restart=TMP), kids.spec("c")], strategy=strategy
    )
    with trio.fail_after(5):
        async with supervising(sup):
            kids.log.clear()
            await kids.crash("tmp")
            assert kids.log == [("exit", "tmp")]
            assert [c.id for c in sup.which_children()] == ["a", "c"]


async def test_restart_child_is_not_counted_but_automatic_restarts_are() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup):
            await kids.crash("a")
            await sup.terminate_child("a")
            assert info(sup, "a").restarts == 1
            assert await sup.restart_child("a") == "a#3"
            assert info(sup, "a").restarts == 1
            assert info(sup, "a").state is RUNNING


async def test_which_children_values_and_order() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b", "c", restart=T))
    with trio.fail_after(5):
        async with supervising(sup):
            await kids.exit("b")
            await sup.start_child(kids.spec("d"))
            children = sup.which_children()
            assert [c.id for c in children] == ["a", "b", "c", "d"]
            assert [c.state for c in children] == [RUNNING, STOPPED, RUNNING, RUNNING]
            assert [c.value for c in children] == ["a#1", None, "c#1", "d#1"]
            assert children[1].last_exit is not None and children[1].last_exit.reason == "normal"
            assert children[1].last_exit.exception is None
            assert children[0].spec.restart is T
            assert states(sup)["b"] is STOPPED
            # a manual terminate records why it ended too
            await sup.terminate_child("c")
            last = info(sup, "c").last_exit
            assert last is not None and last.reason == "normal"  # the child returned on its stop request


# -- events -------------------------------------------------------------------------


async def test_events_for_a_crash_and_a_restart() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"), name="ev")
    events = events_of(sup)
    with trio.fail_after(5):
        async with supervising(sup):
            await kids.crash("a")
    kinds = [(type(e).__name__, getattr(e, "child_id", None)) for e in events]
    assert kinds == [
        ("ChildStarted", "a"),
        ("ChildStarted", "b"),
        ("ChildExited", "a"),
        ("ChildRestarting", "a"),
        ("ChildStarted", "a"),
        ("ChildExited", "b"),
        ("ChildExited", "a"),
        ("SupervisorStopped", None),
    ]
    assert all(e.supervisor == "ev" for e in events)
    started = [e for e in events if isinstance(e, corral.ChildStarted)]
    assert [(e.value, e.restart) for e in started] == [("a#1", False), ("b#1", False), ("a#2", True)]
    exited = [e for e in events if isinstance(e, corral.ChildExited)]
    assert [e.requested for e in exited] == [False, True, True]
    assert isinstance(exited[0].exit.exception, Boom)
    restarting = next(e for e in events if isinstance(e, corral.ChildRestarting))
    assert (restarting.delay, restarting.attempt) == (0.0, 1)
    stopped = events[-1]
    assert isinstance(stopped, corral.SupervisorStopped) and stopped.reason == "stop"


async def test_events_restart_failed_and_intensity_exceeded() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"), max_restarts=2)
    events = events_of(sup)
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            kids.fail_init["a"] = 100
            await kids.crash("a")
            error = await outcome.wait()
    assert isinstance(error, corral.RestartIntensityExceeded)
    failed = [e for e in events if isinstance(e, corral.RestartFailed)]
    assert len(failed) == 2 and all(e.child_id == "a" for e in failed)
    assert all(type(e.exception).__name__ == "InitFailed" for e in failed)
    exceeded = [e for e in events if isinstance(e, corral.IntensityExceeded)]
    assert [(e.max_restarts, e.max_seconds) for e in exceeded] == [(2, 5.0)]
    stopped = [e for e in events if isinstance(e, corral.SupervisorStopped)]
    assert [e.reason for e in stopped] == ["intensity"]


async def test_unsubscribe_stops_the_events() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    events: list[corral.SupervisorEvent] = []
    unsubscribe = sup.subscribe(events.append)
    with trio.fail_after(5):
        async with supervising(sup):
            unsubscribe()
            await kids.crash("a")
    assert [type(e) for e in events] == [corral.ChildStarted]
