"""pool.upgrade() logic on MockClock with fake workers: random pools, loads and
failures, checked against the rules of docs/pool.md ("Upgrading without downtime").

Each example runs its own ``trio.run`` on a virtual clock (autojump), so a rollout of
minutes takes milliseconds and every time bound is exact.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from tests.fake_worker import Script, Versions

OUTCOMES = ("ok", "start_fails", "dies_on_probation")


@settings(
    max_examples=int(os.environ.get("CORRAL_TEST_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    size=st.integers(1, 4),
    surge=st.integers(0, 2),
    unavailable=st.integers(0, 2),
    pipelining=st.booleans(),
    probation=st.sampled_from([0.0, 0.5, 2.0]),
    outcome=st.sampled_from(OUTCOMES),
    calls=st.lists(st.floats(0.0, 1.0), max_size=6),
    start_delay=st.sampled_from([0.0, 0.2]),
)
def test_a_rollout_keeps_its_bounds_and_ends_on_one_version(
    size: int,
    surge: int,
    unavailable: int,
    pipelining: bool,
    probation: float,
    outcome: str,
    calls: list[float],
    start_delay: float,
) -> None:
    if surge + unavailable == 0:
        surge = 1
    script = Script(pipelining=pipelining, start_delay=start_delay)
    versions = Versions(script)
    failures: list[BaseException] = []
    serving: list[int] = []  # workers taking calls, at every event of the upgrade

    async def main() -> None:
        async with corral.open_pool("v1", size=size, worker_factory=versions.factory) as pool:
            versions.pool = pool

            def count_serving(event: corral.WorkerEvent) -> None:
                members = pool._slots.members.values()
                usable = (corral.WorkerState.READY, corral.WorkerState.BUSY)
                serving.append(
                    sum(m.worker.state in usable and not (m.retired or m.recycling) for m in members)
                )

            async def caller(seconds: float) -> None:
                while True:
                    try:
                        await pool.call("sleep", seconds)
                    except corral.CorralError as exc:
                        failures.append(exc)
                    await trio.sleep(0.01)

            def kill_a_new_one(event: corral.WorkerEvent) -> None:
                new_one = versions.of.get(event.worker_id) == "v2"
                if new_one and event.detail.endswith(("READY -> BUSY", "STARTING -> READY")):
                    worker = next(w for w in script.made if w.id == event.worker_id)
                    worker.crash("exited with code 3")

            async with trio.open_nursery() as nursery:
                for seconds in calls:
                    nursery.start_soon(caller, seconds)
                await trio.sleep(0.1)
                pool.subscribe(count_serving)
                if outcome == "start_fails":
                    script.fail_starts = 1
                elif outcome == "dies_on_probation":
                    pool.subscribe(kill_a_new_one)
                try:
                    rollout = await pool.upgrade(
                        "v2", surge=surge, unavailable=unavailable, probation=probation
                    )
                except corral.UpgradeFailed as exc:
                    assert outcome != "ok"
                    assert exc.failed_calls <= surge + unavailable
                    expected = "v1"
                else:
                    assert outcome == "ok", "a version that failed is never done"
                    assert rollout.phase == "done" and rollout.replaced == rollout.total == size
                    expected = "v2"
                nursery.cancel_scope.cancel()

            if outcome == "ok":  # (a failing version is stopped at once: fewer serve then)
                assert min(serving) >= size - unavailable, "unavailable bounds the workers missing"
            assert versions.most_live <= size + surge, "surge bounds the workers alive at once"
            infos = pool.workers()
            assert {versions.of[w.id] for w in infos} == {expected}
            assert len(infos) == size
            assert pool.version == (2 if expected == "v2" else 1)
            if outcome != "dies_on_probation":
                assert failures == []
            else:
                assert len(failures) <= surge + unavailable
                assert all(isinstance(f, corral.WorkerCrashed) for f in failures)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_each_step_of_a_rollout_is_an_event_and_a_log_line(caplog: Any) -> None:
    """docs/pool.md: started, each new worker READY ("N of M"), probation passed, each old
    one draining, N of M replaced, done; and for a failing version, rolling back and
    rolled back. Pool-level steps carry no worker."""
    caplog.set_level(logging.INFO, logger="corral.pool")
    script = Script()
    versions = Versions(script)
    steps: list[tuple[str, str]] = []

    async def main() -> None:
        async with corral.open_pool("v1", size=2, worker_factory=versions.factory) as pool:
            pool.subscribe(
                lambda e: (
                    steps.append((e.worker_id, e.detail.split(": ", 1)[1])) if e.action == "upgrade" else None
                )
            )
            await pool.upgrade("v2", probation=0.5)
            script.fail_starts = 1
            with pytest.raises(corral.UpgradeFailed):
                await pool.upgrade("v3", probation=0.5)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    details = [detail for _, detail in steps]
    assert details[:11] == [
        "started: 2 worker(s), surge 1, unavailable 0",
        "new worker READY (1 of 2)",
        "probation passed (0.5 s)",
        "draining v1 worker",
        "1 of 2 replaced",
        "new worker READY (2 of 2)",
        "probation passed (0.5 s)",
        "draining v1 worker",
        "2 of 2 replaced",
        "done: 2 worker(s) replaced",
        "started: 2 worker(s), surge 1, unavailable 0",
    ]
    assert details[11].startswith("rolling back: ") and details[-1] == "rolled back: the pool serves on v2"
    for worker_id, detail in steps:  # a worker's step names it; the pool's own names none
        assert bool(worker_id) == detail.startswith(("new worker", "draining")), (worker_id, detail)
    logged = [r.getMessage() for r in caplog.records if "upgrade v" in r.getMessage()]
    assert len(logged) == len(steps)
