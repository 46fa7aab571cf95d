"""Shared helpers for the supervisor rule-by-rule suite (tests/test_supervisor_*.py).

``Kids`` is a family of recording children driven by the test: each child logs its
start and its end, passes ``"<id>#<n>"`` (n = how many times it started) to
``task_status.started()``, then waits until the test tells it how to exit
(``kids.exit(id, "crash")``) or, when polite, until its stop is requested.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import trio
import trio.testing

import corral

How = Literal["normal", "shutdown", "crash", "keyboard_interrupt"]


class Boom(Exception):
    """The abnormal exit of a test child."""


class InitFailed(Exception):
    """A test child failed before calling task_status.started()."""


async def settle() -> None:
    """Let the tree react to what just happened (every task blocked again)."""
    await trio.testing.wait_all_tasks_blocked()


@attrs.define(eq=False)
class _Trigger:
    event: trio.Event = attrs.Factory(trio.Event)
    how: How = "normal"


@attrs.define(eq=False)
class Kids:
    """A family of test children sharing one log.

    ``log`` holds ``("start", id)``, ``("exit", id)`` (the child's code ended, for
    whatever reason) and ``("stop_requested", id)`` entries, in order.
    """

    log: list[tuple[str, Hashable]] = attrs.Factory(list)
    starts: collections.Counter[Hashable] = attrs.Factory(collections.Counter)
    #: id -> how many of its next starts fail before started() (a big number: always)
    fail_init: dict[Hashable, int] = attrs.Factory(dict)
    #: ids that read stop_requested (so they get the grace) but ignore it: they run on
    #: until their grace is over and they are cancelled
    deaf: set[Hashable] = attrs.Factory(set)
    _triggers: dict[Hashable, _Trigger] = attrs.Factory(dict)

    def spec(self, id: Hashable, **kwargs: Any) -> corral.ChildSpec:
        return corral.ChildSpec(id, self.child, args=(id,), **kwargs)

    def specs(self, *ids: Hashable, **kwargs: Any) -> list[corral.ChildSpec]:
        return [self.spec(id, **kwargs) for id in ids]

    def of(self, kind: str) -> list[Hashable]:
        """The ids of the log entries of one kind, in order."""
        return [id for k, id in self.log if k == kind]

    async def child(self, id: Hashable, *, task_status: trio.TaskStatus[str]) -> None:
        self.starts[id] += 1
        n = self.starts[id]
        ctx = corral.current_child()
        assert ctx.id == id
        self.log.append(("start", id))
        if self.fail_init.get(id, 0) > 0:
            self.fail_init[id] -= 1
            self.log.append(("exit", id))
            raise InitFailed(f"{id} failed to start (start #{n})")
        trigger = self._triggers[id] = _Trigger()
        task_status.started(f"{id}#{n}")
        try:
            async with trio.open_nursery() as nursery:
                if id not in self.deaf:
                    nursery.start_soon(self._listen, ctx, trigger)
                else:
                    assert not ctx.stop_requested.is_set()  # asks to be told, then ignores it
                await trigger.event.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.log.append(("exit", id))
        if trigger.how == "shutdown":
            raise corral.Shutdown(f"{id} shut down")
        if trigger.how == "crash":
            raise Boom(f"{id} crashed")
        if trigger.how == "keyboard_interrupt":
            raise KeyboardInterrupt

    async def _listen(self, ctx: corral.ChildContext, trigger: _Trigger) -> None:
        await ctx.stop_requested.wait()
        self.log.append(("stop_requested", ctx.id))
        trigger.event.set()

    async def exit(self, id: Hashable, how: How = "normal") -> None:
        """Make the running child ``id`` exit that way, then let the tree react."""
        trigger = self._triggers[id]
        assert not trigger.event.is_set(), f"{id!r} is not running"
        trigger.how = how
        trigger.event.set()
        await settle()

    async def crash(self, id: Hashable) -> None:
        await self.exit(id, "crash")


@attrs.define(eq=False)
class Outcome:
    """What a supervisor's ``run()`` ended with."""

    done: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None

    async def wait(self) -> BaseException | None:
        await self.done.wait()
        return self.error


async def _supervise(
    sup: corral.Supervisor, outcome: Outcome, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    started = False

    class _Status:
        def started(self, value: object = None) -> None:
            nonlocal started
            started = True
            task_status.started()

    try:
        await sup.run(task_status=_Status())
    except Exception as exc:
        outcome.error = exc
    finally:
        outcome.done.set()
        if not started:
            task_status.started()


@asynccontextmanager
async def supervising(sup: corral.Supervisor) -> AsyncIterator[Outcome]:
    """Run ``sup`` in a nursery (its startup awaited); stop it on the way out.

    The outcome records what ``run()`` raised (an ``Exception``), so tests can check
    it is bare; BaseExceptions propagate.
    """
    outcome = Outcome()
    async with trio.open_nursery() as nursery:
        await nursery.start(_supervise, sup, outcome)
        try:
            yield outcome
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(60):
                await sup.stop()


def events_of(sup: corral.Supervisor) -> list[corral.SupervisorEvent]:
    """Subscribe to ``sup``; the returned list fills with its events."""
    events: list[corral.SupervisorEvent] = []
    sup.subscribe(events.append)
    return events


def states(sup: corral.Supervisor) -> dict[Hashable, corral.ChildState]:
    return {info.id: info.state for info in sup.which_children()}


def info(sup: corral.Supervisor, id: Hashable) -> corral.ChildInfo:
    for child in sup.which_children():
        if child.id == id:
            return child
    raise AssertionError(f"{id!r} not in which_children(): {sup.which_children()!r}")
