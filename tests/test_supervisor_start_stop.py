"""Start and stop order, synchronous init, ChildStartError, current_child, re-running.

Rule by rule, in the spirit of OTP's supervisor_SUITE: DESIGN.md §2.
"""

from __future__ import annotations

import pytest
import trio

import corral
from tests.sup_helpers import Boom, InitFailed, Kids, events_of, settle, supervising


async def test_children_start_in_list_order_each_awaited() -> None:
    """Each start returns only after the child called started(): strictly in order."""
    log: list[str] = []

    async def slow(name: str, *, task_status: trio.TaskStatus[str]) -> None:
        log.append(f"begin {name}")
        await trio.sleep(0.01)  # a start that takes a while: the next one must wait
        log.append(f"ready {name}")
        task_status.started(name)
        await corral.current_child().stop_requested.wait()

    specs = [corral.ChildSpec(n, slow, args=(n,)) for n in "abc"]
    with trio.fail_after(5):
        async with corral.open_supervisor(specs) as sup:
            assert log == ["begin a", "ready a", "begin b", "ready b", "begin c", "ready c"]
            assert [c.id for c in sup.which_children()] == ["a", "b", "c"]
            assert [c.value for c in sup.which_children()] == ["a", "b", "c"]


async def test_nursery_start_returns_the_supervisor_once_children_run() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            value = await nursery.start(sup.run)
            assert value is sup
            assert sup.count_children().active == 2
            await sup.stop()
    assert kids.of("start") == ["a", "b"]


async def test_stop_is_in_reverse_start_order() -> None:
    kids = Kids()
    with trio.fail_after(5):
        async with corral.open_supervisor(kids.specs("a", "b", "c")):
            pass
    assert kids.of("start") == ["a", "b", "c"]
    assert kids.of("exit") == ["c", "b", "a"]
    assert kids.of("stop_requested") == ["c", "b", "a"]


async def test_stop_returns_none_and_every_child_has_exited() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await sup.stop()
            assert kids.of("exit") == ["b", "a"]
            assert not sup.running
            assert all(c.state is corral.ChildState.STOPPED for c in sup.which_children())
            assert all(c.value is None for c in sup.which_children())


async def test_run_returns_none_after_stop() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    result: list[object] = []

    async def runner(*, task_status: trio.TaskStatus[corral.Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        result.append(await sup.run(task_status=task_status))  # type: ignore[func-returns-value]

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner)
            await sup.stop()
    assert result == [None]


async def test_stop_request_is_observable_then_the_next_child_is_asked() -> None:
    """Sequential stop: c is asked first; b only after c has exited."""
    seen: list[tuple[str, bool]] = []
    events: dict[str, trio.Event] = {}

    async def child(name: str, *, task_status: trio.TaskStatus[None]) -> None:
        ctx = corral.current_child()
        events[name] = ctx.stop_requested
        task_status.started()
        await ctx.stop_requested.wait()
        # what the others see at the moment this one is asked to stop
        seen.append((name, all(not e.is_set() for n, e in events.items() if n != name)))
        await trio.sleep(0.01)

    specs = [corral.ChildSpec(n, child, args=(n,)) for n in "abc"]
    with trio.fail_after(5):
        async with corral.open_supervisor(specs):
            pass
    # c asked while nobody else was; b asked after c exited (c's event is still set)
    assert [name for name, _ in seen] == ["c", "b", "a"]
    assert seen[0] == ("c", True)


async def test_start_failure_stops_started_children_in_reverse_and_raises_bare() -> None:
    kids = Kids(fail_init={"c": 1})
    sup = corral.Supervisor(kids.specs("a", "b", "c", "d"))
    with trio.fail_after(5):
        with pytest.raises(corral.ChildStartError) as info:
            await sup.run()
    exc = info.value
    assert type(exc) is corral.ChildStartError  # bare, not an ExceptionGroup
    assert exc.child_id == "c"
    assert isinstance(exc.__cause__, InitFailed)
    assert kids.of("start") == ["a", "b", "c"]  # d never started
    assert kids.of("exit") == ["c", "b", "a"]  # c died; then b, a in reverse
    assert not sup.running


async def test_start_failure_from_nursery_start_and_open_supervisor_is_bare() -> None:
    kids = Kids(fail_init={"b": 2})
    with trio.fail_after(5):
        with pytest.raises(corral.ChildStartError) as info:
            async with corral.open_supervisor(kids.specs("a", "b")):
                raise AssertionError("the body must not run")  # pragma: no cover
        assert isinstance(info.value.__cause__, InitFailed)
        assert kids.of("exit") == ["b", "a"]

        sup = corral.Supervisor(kids.specs("a", "b"))
        error: BaseException | None = None
        with pytest.raises(ExceptionGroup) as info2:
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(sup.run)
                except corral.ChildStartError as exc:
                    error = exc
                    raise
        assert error is not None and isinstance(error.__cause__, InitFailed)
        assert info2.group_contains(corral.ChildStartError)


async def test_child_returning_before_started_is_a_start_failure() -> None:
    async def lazy(*, task_status: trio.TaskStatus[None]) -> None:
        return

    with trio.fail_after(5), pytest.raises(corral.ChildStartError) as info:
        await corral.Supervisor([corral.ChildSpec("lazy", lazy)]).run()
    assert info.value.child_id == "lazy"
    assert isinstance(info.value.__cause__, Exception)


async def test_start_failure_emits_events() -> None:
    kids = Kids(fail_init={"b": 1})
    sup = corral.Supervisor(kids.specs("a", "b"))
    events = events_of(sup)
    with trio.fail_after(5), pytest.raises(corral.ChildStartError):
        await sup.run()
    started = [e for e in events if isinstance(e, corral.ChildStarted)]
    exited = [e for e in events if isinstance(e, corral.ChildExited)]
    assert [(e.child_id, e.restart) for e in started] == [("a", False)]
    assert [(e.child_id, e.requested) for e in exited] == [("a", True)]
    stopped = [e for e in events if isinstance(e, corral.SupervisorStopped)]
    assert [e.reason for e in stopped] == ["start_failed"]


async def test_current_child_works_before_started_and_in_spawned_tasks() -> None:
    seen: list[object] = []

    async def child(*, task_status: trio.TaskStatus[None]) -> None:
        seen.append(corral.current_child().id)  # first line, before started()
        ctx = corral.current_child()
        assert ctx.supervisor == "the-sup"
        assert not ctx.stop_requested.is_set()

        async def helper() -> None:
            seen.append(corral.current_child().id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(helper)
        task_status.started()
        await ctx.stop_requested.wait()

    with trio.fail_after(5):
        async with corral.open_supervisor([corral.ChildSpec(("x", 1), child)], name="the-sup"):
            pass
    assert seen == [("x", 1), ("x", 1)]


async def test_current_child_outside_any_child_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="outside a supervised child"):
        corral.current_child()
    # also from a task of the supervisor's owner, while a supervisor runs
    kids = Kids()
    with trio.fail_after(5):
        async with corral.open_supervisor(kids.specs("a")):
            with pytest.raises(RuntimeError):
                corral.current_child()


async def test_body_exception_propagates_as_it_is_after_orderly_stop() -> None:
    kids = Kids()
    error = ValueError("from the body")
    with trio.fail_after(5), pytest.raises(ValueError) as info:
        async with corral.open_supervisor(kids.specs("a", "b")):
            raise error
    assert info.value is error
    assert kids.of("exit") == ["b", "a"]
    assert kids.of("stop_requested") == ["b", "a"]  # orderly: asked, not just cancelled


async def test_run_may_be_called_again_and_starts_from_the_constructor_children() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a", "b"))
    with trio.fail_after(5):
        async with supervising(sup):
            await sup.start_child(kids.spec("extra"))
            await kids.crash("a")
            assert [c.id for c in sup.which_children()] == ["a", "b", "extra"]
            assert sup.which_children()[0].restarts == 1
        async with supervising(sup):
            children = sup.which_children()
            assert [c.id for c in children] == ["a", "b"]  # run-time children not restored
            assert [c.restarts for c in children] == [0, 0]
            assert [c.value for c in children] == ["a#3", "b#2"]
    assert kids.of("start") == ["a", "b", "extra", "a", "a", "b"]


async def test_run_twice_at_once_is_refused() -> None:
    kids = Kids()
    sup = corral.Supervisor(kids.specs("a"))
    with trio.fail_after(5):
        async with supervising(sup):
            with pytest.raises(RuntimeError, match="already running"):
                await sup.run()
            await settle()
            assert sup.running


async def test_child_crash_during_stop_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def grumpy(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await corral.current_child().stop_requested.wait()
        raise Boom("I do not want to stop")

    sup = corral.Supervisor([corral.ChildSpec("grumpy", grumpy)])
    with trio.fail_after(5):
        async with supervising(sup) as outcome:
            pass
        assert await outcome.wait() is None
    last = sup.which_children()[0].last_exit
    assert last is not None and last.reason == "abnormal" and isinstance(last.exception, Boom)
    assert "I do not want to stop" in caplog.text


async def test_body_exception_group_propagates_as_it_is() -> None:
    kids = Kids()
    error = ExceptionGroup("the body's own group", [ValueError("a"), KeyError("b")])
    single = ExceptionGroup("one inside", [ValueError("c")])
    for raised in (error, single):
        with trio.fail_after(5), pytest.raises(ExceptionGroup) as info:
            async with corral.open_supervisor(kids.specs("a")):
                raise raised
        # trio's cancel scope re-derives a group on its way out (split), so compare
        # the group's message and leaves: neither flattened nor wrapped
        assert type(info.value) is ExceptionGroup
        assert info.value.message == raised.message
        assert info.value.exceptions == raised.exceptions
