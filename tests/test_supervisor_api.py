"""The dynamic API and its errors, InvalidSpec, count_children, auto_shutdown with
significant children, DynamicSupervisor.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

import corral
from tests.sup_helpers import Boom, InitFailed, Kids, events_of, info, settle, supervising

P, T, TMP = corral.Restart.PERMANENT, corral.Restart.TRANSIENT, corral.Restart.TEMPORARY
RUNNING, STOPPED = corral.ChildState.RUNNING, corral.ChildState.STOPPED
ANY, ALL = corral.AutoShutdown.ANY_SIGNIFICANT, corral.AutoShutdown.ALL_SIGNIFICANT


async def _noop(*, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()  # pragma: no cover


# -- dynamic children ---------------------------------------------------------------


async def test_start_child_returns_the_started_value_and_appends() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup):
            assert await sup.start_child(kids.spec("b")) == "b#1"
            assert [(c.id, c.state) for c in sup.which_children()] == [("a", RUNNING), ("b", RUNNING)]
    assert kids.of("exit") == ["b", "a"]  # run-time children stop in reverse start order too


async def test_start_child_before_puts_it_in_place_for_start_stop_and_rest_for_one() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "c"), strategy=corral.Strategy.REST_FOR_ONE)
    with trio.fail_after(5):
        async with supervising(sup):
            assert await sup.start_child(kids.spec("b"), before="c") == "b#1"
            assert await sup.start_child(kids.spec("first"), before="a") == "first#1"
            assert [c.id for c in sup.which_children()] == ["first", "a", "b", "c"]
            await kids.crash("b")  # rest_for_one: b and what comes after it, c
            assert kids.starts == {"first": 1, "a": 1, "b": 2, "c": 2}
            del kids.log[:]
    assert kids.of("exit") == ["c", "b", "a", "first"]  # reverse of the order it has now


@pytest.mark.parametrize(
    ("strategy", "before"),
    [(corral.Strategy.REST_FOR_ONE, None), (corral.Strategy.ONE_FOR_ALL, "a")],
)
async def test_start_child_into_a_group_waiting_for_its_restart_starts_with_it_in_order(
    autojump_clock: trio.testing.MockClock, strategy: corral.Strategy, before: str | None
) -> None:
    """a crashed and its group waits out its backoff: a child added inside that group
    is RESTARTING and starts with it, in order (not now, before the children it comes
    after); start_child returns None at once. No restart is spent on it."""
    kids = Kids()
    backoff = corral.Backoff(initial=1.0, maximum=1.0, jitter=0)
    sup = corral.Supervisor(kids.specs("a", "b"), strategy=strategy, backoff=backoff, max_restarts=2)
    with trio.fail_after(5):
        async with supervising(sup):
            await kids.crash("a")
            assert await sup.start_child(kids.spec("c"), before=before) is None
            assert [c.state for c in sup.which_children()] == [corral.ChildState.RESTARTING] * 3
            assert kids.starts == {"a": 1, "b": 1}
            del kids.log[:]
            await trio.sleep(1.5)
            order = ["c", "a", "b"] if before == "a" else ["a", "b", "c"]
            assert kids.of("start") == order
            assert [(c.id, c.state) for c in sup.which_children()] == [(i, RUNNING) for i in order]
            await kids.crash("b")  # the second restart allowed is still there: not spent on c
            await trio.sleep(1.5)
            assert sup.running


async def test_start_child_before_an_unknown_id_is_not_found_and_keeps_nothing() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup):
            with pytest.raises(corral.NotFound) as exc_info:
                await sup.start_child(kids.spec("b"), before="nope")
            assert exc_info.value.child_id == "nope"
            assert [c.id for c in sup.which_children()] == ["a"] and kids.starts == {"a": 1}
            with pytest.raises(corral.AlreadyPresent):  # the id is checked first
                await sup.start_child(kids.spec("a"), before="nope")


async def test_start_child_with_an_id_in_use_is_already_present() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b", restart=T))
    with trio.fail_after(5):
        async with supervising(sup):
            with pytest.raises(corral.AlreadyPresent) as exc_info:
                await sup.start_child(kids.spec("a"))  # running
            assert exc_info.value.child_id == "a"
            assert "delete_child" in str(exc_info.value)
            await kids.exit("b")
            with pytest.raises(corral.AlreadyPresent):
                await sup.start_child(kids.spec("b"))  # stopped, spec kept
            assert kids.starts == {"a": 1, "b": 1}


async def test_unknown_ids_are_not_found() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup):
            for call in (sup.terminate_child, sup.restart_child, sup.delete_child):
                with pytest.raises(corral.NotFound) as exc_info:
                    await call("nope")
                assert exc_info.value.child_id == "nope"


async def test_restart_or_delete_of_a_running_child_is_child_running() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup):
            with pytest.raises(corral.ChildRunning, match="terminate_child"):
                await sup.restart_child("a")
            with pytest.raises(corral.ChildRunning):
                await sup.delete_child("a")
            assert kids.starts["a"] == 1 and info(sup, "a").state is RUNNING


async def test_terminate_keeps_the_spec_then_restart_and_delete() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"))
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await sup.terminate_child("a")
            assert kids.of("stop_requested") == ["a"]
            assert (info(sup, "a").state, info(sup, "a").value) == (STOPPED, None)
            await sup.terminate_child("a")  # a stopped child: a no-op
            assert kids.of("exit") == ["a"]
            assert await sup.restart_child("a") == "a#2"
            assert [c.id for c in sup.which_children()] == ["a", "b"]  # keeps its place
            await sup.terminate_child("a")
            await sup.delete_child("a")
            assert [c.id for c in sup.which_children()] == ["b"]
            with pytest.raises(corral.NotFound):
                await sup.restart_child("a")
            await sup.start_child(kids.spec("a"))  # the id is free again
            assert [c.id for c in sup.which_children()] == ["b", "a"]
            assert not outcome.done.is_set()


async def test_terminate_of_a_temporary_child_forgets_it() -> None:
    kids = Kids()
    sup = corral.Supervisor([kids.spec("tmp", restart=TMP)])
    with trio.fail_after(5):
        async with supervising(sup):
            await sup.terminate_child("tmp")
            assert sup.which_children() == []


async def test_terminate_is_never_a_crash() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"), max_restarts=0, strategy=corral.Strategy.ONE_FOR_ALL)
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await sup.terminate_child("b")
            await settle()
            assert not outcome.done.is_set()
            assert info(sup, "a").state is RUNNING and kids.starts["a"] == 1


async def test_failed_start_child_keeps_no_spec_and_raises_bare() -> None:
    kids = Kids(fail_init={"bad": 1})
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            with pytest.raises(corral.ChildStartError) as exc_info:
                await sup.start_child(kids.spec("bad"))
            assert type(exc_info.value) is corral.ChildStartError
            assert isinstance(exc_info.value.__cause__, InitFailed)
            assert exc_info.value.child_id == "bad"
            assert [c.id for c in sup.which_children()] == ["a"]
            assert await sup.start_child(kids.spec("bad")) == "bad#2"  # no AlreadyPresent
            assert not outcome.done.is_set()


async def test_failed_restart_child_leaves_it_stopped() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"))
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await sup.terminate_child("a")
            kids.fail_init["a"] = 1
            with pytest.raises(corral.ChildStartError) as exc_info:
                await sup.restart_child("a")
            assert isinstance(exc_info.value.__cause__, InitFailed)
            a = info(sup, "a")
            assert (a.state, a.value, a.restarts) == (STOPPED, None, 0)
            assert a.last_exit is not None and isinstance(a.last_exit.exception, InitFailed)
            assert [c.id for c in sup.which_children()] == ["a", "b"]
            assert await sup.restart_child("a") == "a#3"
            assert not outcome.done.is_set()


async def test_api_on_a_supervisor_that_is_not_running() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    with pytest.raises(corral.CorralError):
        await sup.start_child(kids.spec("b"))
    await sup.stop()  # a no-op
    assert [c.state for c in sup.which_children()] == [STOPPED]
    assert sup.count_children() == corral.ChildCounts(specs=1, active=0, supervisors=0, workers=1)


async def test_errors_are_corral_errors() -> None:
    for cls in (
        corral.ChildStartError,
        corral.RestartIntensityExceeded,
        corral.AlreadyPresent,
        corral.NotFound,
        corral.ChildRunning,
        corral.MaxChildren,
        corral.InvalidSpec,
    ):
        assert issubclass(cls, corral.CorralError)
    assert issubclass(corral.InvalidSpec, ValueError)


# -- count_children -----------------------------------------------------------------


async def test_count_children_counts_supervisors_as_supervisors() -> None:
    kids = Kids()
    inner = corral.Supervisor(kids.specs("w"))
    spec = corral.ChildSpec("inner", inner.run)
    assert spec.shutdown == corral.INFINITY == math.inf
    assert kids.spec("x").shutdown == 5.0
    assert corral.ChildSpec("inner2", inner.run, shutdown=2.0).shutdown == 2.0
    sup = corral.Supervisor([kids.spec("a"), spec, kids.spec("b", restart=T)])
    with trio.fail_after(5):
        async with supervising(sup):
            assert sup.count_children() == corral.ChildCounts(specs=3, active=3, supervisors=1, workers=2)
            await kids.exit("b")
            assert sup.count_children() == corral.ChildCounts(specs=3, active=2, supervisors=1, workers=2)
            await sup.terminate_child("inner")
            assert sup.count_children() == corral.ChildCounts(specs=3, active=1, supervisors=1, workers=2)


async def test_dynamic_supervisor_nested_counts_as_supervisor() -> None:
    inner = corral.DynamicSupervisor()
    assert corral.ChildSpec("dyn", inner.run).shutdown == corral.INFINITY
    sup = corral.Supervisor([corral.ChildSpec("dyn", inner.run)])
    with trio.fail_after(5):
        async with supervising(sup):
            assert sup.count_children().supervisors == 1


async def test_a_spec_declared_a_supervisor_counts_as_one_and_waits_for_it() -> None:
    kids = Kids()

    async def tree_of_its_own(*, task_status: trio.TaskStatus[None]) -> None:
        async with corral.open_supervisor(kids.specs("w")):
            task_status.started()
            await corral.current_child().stop_requested.wait()

    declared = corral.ChildSpec("own", tree_of_its_own, is_supervisor=True)
    assert declared.is_supervisor and declared.shutdown == corral.INFINITY
    assert not corral.ChildSpec("plain", tree_of_its_own).is_supervisor
    assert corral.ChildSpec("plain", tree_of_its_own).shutdown == 5.0
    assert corral.ChildSpec("own2", tree_of_its_own, is_supervisor=True, shutdown=1.0).shutdown == 1.0
    sup = corral.Supervisor([kids.spec("a"), declared])
    with trio.fail_after(5):
        async with supervising(sup):
            assert sup.count_children() == corral.ChildCounts(specs=2, active=2, supervisors=1, workers=1)
    assert kids.of("exit") == ["w", "a"]


async def test_a_supervisor_run_declared_not_a_supervisor_is_a_worker() -> None:
    kids = Kids()
    inner = corral.Supervisor(kids.specs("w"))
    spec = corral.ChildSpec("inner", inner.run, is_supervisor=False)
    assert spec.shutdown == 5.0
    sup = corral.Supervisor([spec])
    with trio.fail_after(5):
        async with supervising(sup):
            assert sup.count_children() == corral.ChildCounts(specs=1, active=1, supervisors=0, workers=1)


def test_the_run_of_a_supervisor_subclass_is_a_supervisor_by_default() -> None:
    class Custom(corral.Supervisor):
        async def run(
            self, *, task_status: trio.TaskStatus[corral.Supervisor] = trio.TASK_STATUS_IGNORED
        ) -> None:
            await super().run(task_status=task_status)  # pragma: no cover

    assert corral.ChildSpec("custom", Custom().run).is_supervisor
    assert corral.ChildSpec("custom", Custom().run).shutdown == corral.INFINITY
    assert not corral.ChildSpec("stop", Custom().stop).is_supervisor  # only its run starts a tree


# -- InvalidSpec ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"shutdown": -1.0}, "shutdown"),
        ({"shutdown": math.nan}, "shutdown"),
        ({"shutdown": "5"}, "shutdown"),
        ({"restart": "permanent"}, "restart"),
        ({"significant": True}, "significant"),  # with PERMANENT
        ({"significant": True, "restart": P}, "significant"),
        ({"significant": 1, "restart": T}, "significant"),
        ({"is_supervisor": "yes"}, "is_supervisor"),
        ({"id": ["not", "hashable"]}, "id"),
        ({"start": "not callable"}, "start"),
    ],
)
def test_invalid_child_spec_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = {"id": "x", "start": _noop, **kwargs}
    with pytest.raises(corral.InvalidSpec) as exc_info:
        corral.ChildSpec(**fields)
    assert exc_info.value.field == field
    assert field in str(exc_info.value)
    assert isinstance(exc_info.value, ValueError)


def test_significant_non_permanent_specs_are_valid() -> None:
    assert corral.ChildSpec("x", _noop, restart=T, significant=True).significant
    assert corral.ChildSpec("y", _noop, restart=TMP, significant=True).significant
    assert corral.ChildSpec("z", _noop, shutdown=corral.BRUTAL_KILL).shutdown == 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"strategy": "one_for_one"}, "strategy"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"max_restarts": 1.5}, "max_restarts"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"max_seconds": -2.0}, "max_seconds"),
        ({"auto_shutdown": "never"}, "auto_shutdown"),
        ({"backoff": 1.0}, "backoff"),
        ({"name": 42}, "name"),
    ],
)
def test_invalid_supervisor_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(corral.InvalidSpec) as exc_info:
        corral.Supervisor((), **options)
    assert exc_info.value.field == field
    assert str(exc_info.value).startswith(field)


def test_duplicate_ids_are_rejected_at_construction() -> None:
    kids = Kids()
    with pytest.raises(corral.InvalidSpec) as exc_info:
        corral.Supervisor(kids.specs("a", "b", "a"))
    assert exc_info.value.field == "id"
    assert "'a'" in str(exc_info.value)


def test_non_spec_children_are_rejected() -> None:
    with pytest.raises(corral.InvalidSpec) as exc_info:
        corral.Supervisor([_noop])  # type: ignore[list-item]
    assert exc_info.value.field == "children"


async def test_significant_child_under_never_is_rejected() -> None:
    kids = Kids()
    with pytest.raises(corral.InvalidSpec) as exc_info:
        corral.Supervisor([kids.spec("s", restart=T, significant=True)])
    assert exc_info.value.field == "significant"
    assert "auto_shutdown" in str(exc_info.value)
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup):
            with pytest.raises(corral.InvalidSpec):
                await sup.start_child(kids.spec("s", restart=T, significant=True))
            assert [c.id for c in sup.which_children()] == ["a"]


def test_invalid_backoff_and_dynamic_options() -> None:
    with pytest.raises(corral.InvalidSpec) as exc_info:
        corral.Backoff(multiplier=0.5)
    assert "multiplier" in exc_info.value.field
    with pytest.raises(corral.InvalidSpec) as exc_info:
        corral.Backoff(jitter=2.0)
    assert "jitter" in exc_info.value.field
    with pytest.raises(corral.InvalidSpec) as exc_info:
        corral.DynamicSupervisor(max_children=-1)
    assert exc_info.value.field == "max_children"


# -- auto_shutdown --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "how"), [(T, "normal"), (T, "shutdown"), (TMP, "normal"), (TMP, "crash")]
)
async def test_any_significant_child_exiting_for_good_shuts_the_supervisor_down(
    restart: corral.Restart, how: Any
) -> None:
    kids = Kids()
    sup = corral.Supervisor(
        [kids.spec("a"), kids.spec("sig", restart=restart, significant=True), kids.spec("c")],
        auto_shutdown=ANY,
    )
    events = events_of(sup)
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await kids.exit("sig", how)
            assert outcome.done.is_set()
            assert await outcome.wait() is None  # run() returned None
            assert not sup.running
    assert kids.of("exit") == ["sig", "c", "a"]
    triggered = [e for e in events if isinstance(e, corral.AutoShutdownTriggered)]
    assert [e.child_id for e in triggered] == ["sig"]
    stopped = [e for e in events if isinstance(e, corral.SupervisorStopped)]
    assert [e.reason for e in stopped] == ["auto_shutdown"]


async def test_significant_transient_crash_is_restarted_not_a_shutdown() -> None:
    kids = Kids()
    sup = corral.Supervisor([kids.spec("sig", restart=T, significant=True)], auto_shutdown=ANY)
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await kids.crash("sig")
            assert not outcome.done.is_set()
            assert info(sup, "sig").restarts == 1


async def test_all_significant_waits_for_the_last_significant_child() -> None:
    kids = Kids()
    sup = corral.Supervisor(
        [
            kids.spec("s1", restart=T, significant=True),
            kids.spec("plain", restart=T),
            kids.spec("s2", restart=TMP, significant=True),
        ],
        auto_shutdown=ALL,
    )
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await kids.exit("s1")
            await kids.exit("plain")
            assert not outcome.done.is_set()
            await kids.exit("s2", "crash")
            assert outcome.done.is_set() and await outcome.wait() is None


async def test_manual_terminate_of_a_significant_child_never_triggers_auto_shutdown() -> None:
    kids = Kids()
    sup = corral.Supervisor(
        [kids.spec("s1", restart=T, significant=True), kids.spec("s2", restart=T, significant=True)],
        auto_shutdown=ANY,
    )
    events = events_of(sup)
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await sup.terminate_child("s1")
            await settle()
            assert not outcome.done.is_set()
            assert not any(isinstance(e, corral.AutoShutdownTriggered) for e in events)
            assert info(sup, "s2").state is RUNNING

    sup = corral.Supervisor(
        [kids.spec("s1", restart=T, significant=True), kids.spec("s2", restart=T, significant=True)],
        auto_shutdown=ALL,
    )
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            await sup.terminate_child("s1")
            await sup.terminate_child("s2")  # all significant children gone, but by hand
            await settle()
            assert not outcome.done.is_set()


async def test_auto_shutdown_of_a_nested_supervisor_is_a_normal_exit_for_its_parent() -> None:
    kids = Kids()
    inner = corral.Supervisor(
        [kids.spec("sig", restart=T, significant=True), kids.spec("w")], auto_shutdown=ANY
    )
    outer = corral.Supervisor([corral.ChildSpec("inner", inner.run, restart=T)])
    with trio.fail_after(5):
        async with supervising(outer) as outcome:
            await kids.exit("sig")
            last = info(outer, "inner").last_exit
            assert last is not None and last.reason == "normal"
            assert info(outer, "inner").state is STOPPED  # transient, normal exit: not restarted
            assert not outcome.done.is_set()


# -- DynamicSupervisor ----------------------------------------------------------------


async def test_dynamic_supervisor_max_children() -> None:
    kids = Kids()
    sup = corral.DynamicSupervisor(max_children=2)
    with trio.fail_after(5):
        async with supervising(sup):
            assert sup.which_children() == []
            await sup.start_child(kids.spec("a"))
            await sup.start_child(kids.spec("b"))
            with pytest.raises(corral.MaxChildren, match="max_children=2"):
                await sup.start_child(kids.spec("c"))
            assert kids.starts["c"] == 0
            await sup.terminate_child("a")
            assert await sup.start_child(kids.spec("c")) == "c#1"
            with pytest.raises(corral.AlreadyPresent):
                await sup.start_child(kids.spec("b"))
    assert kids.of("exit") == ["a", "c", "b"]


async def test_dynamic_supervisor_forgets_children_that_stop_for_good() -> None:
    kids = Kids()
    sup = corral.DynamicSupervisor()
    with trio.fail_after(5):
        async with supervising(sup):
            await sup.start_child(kids.spec("perm"))
            await sup.start_child(kids.spec("trans", restart=T))
            await sup.start_child(kids.spec("tmp", restart=TMP))
            await sup.start_child(kids.spec("killed"))
            await kids.crash("perm")  # restarted: kept
            await kids.exit("trans")  # stopped for good: forgotten
            await kids.crash("tmp")  # forgotten
            await sup.terminate_child("killed")  # forgotten
            assert [(c.id, c.restarts) for c in sup.which_children()] == [("perm", 1)]
            assert await sup.start_child(kids.spec("trans")) == "trans#2"  # the id is free


async def test_dynamic_supervisor_intensity_and_bare_errors() -> None:
    kids = Kids()
    sup = corral.DynamicSupervisor(max_restarts=1)
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            kids.fail_init["bad"] = 1
            with pytest.raises(corral.ChildStartError):
                await sup.start_child(kids.spec("bad"))
            await sup.start_child(kids.spec("a"))
            await kids.crash("a")
            await kids.crash("a")
            error = await outcome.wait()
    assert type(error) is corral.RestartIntensityExceeded


async def test_max_children_counts_restarting_children(autojump_clock: trio.testing.MockClock) -> None:
    kids = Kids()
    sup = corral.DynamicSupervisor(max_children=1, backoff=corral.Backoff(initial=10.0, jitter=0.0))
    with trio.fail_after(100):
        async with supervising(sup):
            await sup.start_child(kids.spec("a"))
            await kids.crash("a")  # waiting for its backoff
            with pytest.raises(corral.MaxChildren):
                await sup.start_child(kids.spec("b"))


async def test_dynamic_supervisor_as_a_child_of_a_supervisor() -> None:
    kids = Kids()
    dyn = corral.DynamicSupervisor()
    with trio.fail_after(5):
        async with corral.open_supervisor([kids.spec("a"), corral.ChildSpec("dyn", dyn.run)]) as sup:
            await dyn.start_child(kids.spec("d1"))
            await dyn.start_child(kids.spec("d2"))
            assert sup.count_children().supervisors == 1
    assert kids.of("exit") == ["d2", "d1", "a"]


async def test_terminate_of_a_deaf_child_in_a_dynamic_supervisor_uses_its_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kids = Kids(deaf={"deaf"})
    sup = corral.DynamicSupervisor()
    with trio.fail_after(100):
        async with supervising(sup):
            await sup.start_child(kids.spec("deaf", shutdown=2.0))
            await sup.terminate_child("deaf")
            assert trio.current_time() == 2.0
            assert sup.which_children() == []
            with pytest.raises(corral.NotFound):
                await sup.terminate_child("deaf")
    assert issubclass(Boom, Exception)


async def test_cancelled_terminate_child_still_stops_the_child_for_good(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller giving up must not leave a half-stopped child that looks RUNNING."""
    kids = Kids(deaf={"a"})
    sup = corral.Supervisor([kids.spec("a", shutdown=10.0), kids.spec("b")])
    with trio.fail_after(100):
        async with supervising(sup) as outcome:
            with trio.move_on_after(1) as scope:
                await sup.terminate_child("a")
            assert scope.cancelled_caught
            await trio.sleep(20)
            a = info(sup, "a")
            assert (a.state, a.value, a.restarts) == (STOPPED, None, 0)
            assert kids.starts["a"] == 1 and kids.of("exit") == ["a"]  # not restarted
            assert sup.count_children().active == 1
            assert await sup.restart_child("a") == "a#2"  # usable again
            assert not outcome.done.is_set()


async def test_a_child_terminating_itself_is_recorded_as_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = corral.Supervisor()
    after: list[str] = []

    async def quitter(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(1)
        await sup.terminate_child("quitter")
        after.append("unreachable")  # pragma: no cover

    with trio.fail_after(100):
        async with supervising(sup) as outcome:
            await sup.start_child(corral.ChildSpec("quitter", quitter, shutdown=corral.BRUTAL_KILL))
            await trio.sleep(5)
            q = info(sup, "quitter")
            assert (q.state, q.value) == (STOPPED, None)
            assert q.last_exit is not None and q.last_exit.reason == "shutdown"
            assert sup.count_children().active == 0
            assert not outcome.done.is_set()
    assert after == []
