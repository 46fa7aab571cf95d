"""A failed restart yields to what already waits (OTP's ``try_again_restart``), and
calls that arrive while a supervisor ends itself fail with SupervisorNotRunning.

Named after supervisor_SUITE's cases where one exists; checked against a real OTP 25.
"""

from __future__ import annotations

from collections.abc import Hashable

import pytest
import trio
import trio.testing
from trio.testing import MockClock

import corral
from tests.sup_helpers import Boom, Kids, settle, states, supervising

RESTARTING, STOPPED, RUNNING = (
    corral.ChildState.RESTARTING,
    corral.ChildState.STOPPED,
    corral.ChildState.RUNNING,
)


class Deadlock:
    """OTP's supervisor_deadlock: starts fine until ``fail_start``, then each start
    takes 2 s and fails (8 restarts in 10 s are never reached: a restart loop)."""

    def __init__(self) -> None:
        self.fail_start = False
        self.crash = trio.Event()
        self.starts = 0

    async def child(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.starts += 1
        if self.fail_start:
            await trio.sleep(2)
            raise Boom("init failed")
        self.crash = trio.Event()
        task_status.started()
        await self.crash.wait()
        raise Boom("crash")

    def spec(self, id: Hashable = "child1") -> corral.ChildSpec:
        return corral.ChildSpec(id, self.child, shutdown=corral.BRUTAL_KILL)


async def test_hanging_restart_loop(autojump_clock: MockClock) -> None:
    dead = Deadlock()
    sup = corral.Supervisor(max_restarts=8, max_seconds=10)
    async with supervising(sup) as outcome:
        await sup.start_child(dead.spec())
        dead.fail_start = True
        dead.crash.set()
        await trio.sleep(2.5)  # one attempt failed; the next one runs
        # Each call waits at most for the attempt under way (2 s), as a gen_server call.
        with trio.fail_after(2.1), pytest.raises(corral.AlreadyPresent):
            await sup.start_child(dead.spec())
        with trio.fail_after(2.1), pytest.raises(corral.ChildRunning):
            await sup.restart_child("child1")
        with trio.fail_after(2.1), pytest.raises(corral.ChildRunning):
            await sup.delete_child("child1")
        assert states(sup) == {"child1": RESTARTING}
        assert sup.count_children() == corral.ChildCounts(specs=1, active=0, supervisors=0, workers=1)
        with trio.fail_after(2.1):
            await sup.terminate_child("child1")
        starts = dead.starts
        await trio.sleep(10)
        assert states(sup) == {"child1": STOPPED}
        assert dead.starts == starts  # no further attempts
        dead.fail_start = False
        await sup.restart_child("child1")
        dead.fail_start = True
        dead.crash.set()
        await trio.sleep(2.5)
        with trio.fail_after(2.1):
            await sup.stop()  # the supervisor is not stuck in its restart loop
    assert outcome.error is None


async def test_hanging_restart_loop_rest_for_one(autojump_clock: MockClock) -> None:
    kids = Kids()
    dead = Deadlock()
    sup = corral.Supervisor(strategy=corral.Strategy.REST_FOR_ONE, max_restarts=8, max_seconds=10)
    async with supervising(sup):
        await sup.start_child(kids.spec("child1"))
        await sup.start_child(dead.spec("child2"))
        await sup.start_child(kids.spec("child3"))
        dead.fail_start = True
        dead.crash.set()
        await trio.sleep(2.5)
        # Each call waits at most for the attempt under way (2 s), as a gen_server call.
        with trio.fail_after(2.1), pytest.raises(corral.AlreadyPresent):
            await sup.start_child(dead.spec("child2"))
        with trio.fail_after(2.1), pytest.raises(corral.ChildRunning):
            await sup.restart_child("child2")
        with trio.fail_after(2.1), pytest.raises(corral.ChildRunning):
            await sup.delete_child("child2")
        assert states(sup) == {"child1": RUNNING, "child2": RESTARTING, "child3": RESTARTING}
        with trio.fail_after(2.1):
            await sup.terminate_child("child2")
        await trio.sleep(10)
        assert states(sup)["child2"] is STOPPED
        assert states(sup)["child1"] is RUNNING
        dead.fail_start = False
        await sup.restart_child("child2")
        assert states(sup)["child2"] is RUNNING


async def test_a_terminate_queued_behind_a_crash_runs_before_the_retry(autojump_clock: MockClock) -> None:
    """One child whose next start fails once, crashing while terminate_child is queued:
    OTP reports start_failed and leaves the child stopped, and with intensity 1 it lives."""
    fails = {"left": 1}
    crash = trio.Event()
    release = trio.Event()

    async def child(*, task_status: trio.TaskStatus[None]) -> None:
        if fails["left"]:
            fails["left"] -= 1
            await release.wait()  # the crash is being handled: the terminate queues now
            raise Boom("start failed")
        task_status.started()
        await crash.wait()
        raise Boom("crash")

    sup = corral.Supervisor(max_restarts=1, max_seconds=10)
    events: list[corral.SupervisorEvent] = []
    sup.subscribe(events.append)
    fails["left"] = 0
    async with supervising(sup) as outcome:
        await sup.start_child(corral.ChildSpec("c", child, shutdown=corral.BRUTAL_KILL))
        fails["left"] = 1
        crash.set()
        await settle()  # the manager is in the restart attempt, holding the lock
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.terminate_child, "c")
            await settle()  # queued behind the attempt
            release.set()
        assert states(sup) == {"c": STOPPED}
        assert [type(e).__name__ for e in events].count("RestartFailed") == 1
        assert [type(e).__name__ for e in events].count("ChildStarted") == 1  # never again
    assert outcome.error is None  # intensity 1 was not exceeded


@pytest.mark.parametrize("call", ["delete_child", "start_child", "restart_child", "terminate_child"])
async def test_calls_while_the_supervisor_ends_itself_raise_supervisor_not_running(
    autojump_clock: MockClock, call: str
) -> None:
    kids = Kids(deaf={"b"})  # b takes its whole grace (1 s) to stop
    sup = corral.Supervisor([kids.spec("a"), kids.spec("b", shutdown=1.0)], max_restarts=0)
    async with supervising(sup) as outcome:
        results: list[BaseException | None] = []

        async def late_call() -> None:
            try:
                if call == "start_child":
                    await sup.start_child(kids.spec("c"))
                elif call == "restart_child":
                    await sup.restart_child("b")
                else:
                    await getattr(sup, call)("b")
                results.append(None)
            except corral.CorralError as exc:
                results.append(exc)

        trigger = kids._triggers["a"]
        trigger.how = "crash"
        trigger.event.set()  # intensity 0: the supervisor ends itself, stopping b
        await trio.sleep(0.5)  # ... and is still waiting for b
        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_call)
        assert isinstance(await outcome.wait(), corral.RestartIntensityExceeded)
        assert len(results) == 1 and isinstance(results[0], corral.SupervisorNotRunning), results
