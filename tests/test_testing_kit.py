"""corral.testing: injected faults take the same paths as real ones."""

from __future__ import annotations

import signal

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings

import corral
import corral.testing
from corral.testing.strategies import Fault, apply_schedule, crash_schedules


async def forever(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started("up")
    await corral.current_child().stop_requested.wait()


async def test_crash_child_is_an_abnormal_exit_and_restarts() -> None:
    with trio.fail_after(5):
        async with corral.open_supervisor([corral.ChildSpec("a", forever)]) as sup:
            events: list[corral.SupervisorEvent] = []
            sup.subscribe(events.append)
            corral.testing.crash_child(sup, "a", ValueError("injected"))
            await trio.testing.wait_all_tasks_blocked()
            [info] = sup.which_children()
            assert info.state is corral.ChildState.RUNNING
            assert info.restarts == 1
            assert info.last_exit is not None and info.last_exit.reason == "abnormal"
            assert isinstance(info.last_exit.exception, ValueError)
            assert any(isinstance(e, corral.ChildExited) and e.exit.abnormal for e in events)


async def test_an_injected_crash_under_intensity_zero_escalates() -> None:
    with trio.fail_after(5):
        sup = corral.Supervisor([corral.ChildSpec("a", forever)], max_restarts=0)
        with pytest.RaisesGroup(corral.RestartIntensityExceeded):  # our nursery wraps run()'s error
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                corral.testing.crash_child(sup, "a")
                await trio.sleep_forever()


async def test_fail_next_start_makes_restart_child_fail_once() -> None:
    with trio.fail_after(5):
        async with corral.open_supervisor([corral.ChildSpec("a", forever)]) as sup:
            await sup.terminate_child("a")
            corral.testing.fail_next_start(sup, "a", error=OSError("disk gone"))
            with pytest.raises(corral.ChildStartError) as info:
                await sup.restart_child("a")
            assert isinstance(info.value.__cause__, OSError)
            assert await sup.restart_child("a") == "up"


async def test_delay_next_start_delays_only_that_start(autojump_clock: trio.testing.MockClock) -> None:
    async with corral.open_supervisor([corral.ChildSpec("a", forever)]) as sup:
        await sup.terminate_child("a")
        corral.testing.delay_next_start(sup, "a", seconds=30)
        before = trio.current_time()
        await sup.restart_child("a")
        assert trio.current_time() - before >= 30


async def test_pool_fault_injection_kill_and_failed_start() -> None:
    with trio.fail_after(20):
        async with corral.open_pool("tests.handlers_basic", size=1) as pool:
            first = await pool.call("getpid")
            corral.testing.fail_next_start(pool)  # the replacement's first start fails
            info = corral.testing.kill_worker(pool, sig=signal.SIGKILL)
            assert info.pid == first
            while True:  # the pool recovers: a retry after the backoff starts a worker
                try:
                    pid = await pool.call("getpid")
                    break
                except corral.CorralError:
                    await trio.sleep(0.02)
            assert pid != first


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=crash_schedules(["a", "b", "c"], max_faults=8))
def test_a_one_for_one_tree_survives_any_sparse_crash_schedule(schedule: list[Fault]) -> None:
    """The worked example from docs/testing.md: with generous intensity, any schedule of
    crashes leaves every child running, and restarts add up."""

    async def main() -> None:
        children = [corral.ChildSpec(i, forever) for i in "abc"]
        async with corral.open_supervisor(children, max_restarts=100, max_seconds=1) as sup:
            applied = await apply_schedule(sup, schedule)
            await trio.testing.wait_all_tasks_blocked()
            infos = sup.which_children()
            assert all(i.state is corral.ChildState.RUNNING for i in infos)
            crashes = sum(1 for f in applied if f.kind == "crash")
            assert sum(i.restarts for i in infos) >= crashes

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
