"""Pipelining without head-of-line blocking: a call queued behind a long one on a busy
worker is given back unrun and sent to a worker that went idle (protocol ``withdraw``,
docs/pool.md "Pipelining"). A request runs at most once."""

from __future__ import annotations

import itertools

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral

H = "tests.handlers_stream"


async def test_no_short_call_waits_behind_a_long_one_while_a_worker_is_free() -> None:
    """2 workers, one busy with a 2 s call, four callers making 10 ms calls: a short call
    that was queued behind the long one moves to the other worker as soon as that one
    is idle, so none waits for the long call."""
    latencies: list[float] = []
    with trio.fail_after(30):
        async with corral.open_pool(H, size=2, pipeline=4) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "sleep", 2.0)
                await trio.sleep(0.1)  # the long call runs
                began_all = trio.current_time()

                async def caller() -> None:
                    for _ in range(10):
                        began = trio.current_time()
                        await pool.call("sleep", 0.01)
                        latencies.append(trio.current_time() - began)

                async with trio.open_nursery() as callers:
                    for _ in range(4):
                        callers.start_soon(caller)
                short_calls_took = trio.current_time() - began_all
            moved = pool.statistics().moved
    assert len(latencies) == 40
    # Four callers share one free worker: a call waits for at most the three ahead of
    # it there (~40 ms), never for the 2 s call; the bound leaves room for a slow machine.
    assert max(latencies) < 0.8, sorted(latencies)[-5:]
    assert moved > 0  # some were queued behind the long call, and moved
    assert short_calls_took < 1.5  # they did not wait for the 2 s call


Plan = list[tuple[str, float, float]]  # (kind, seconds, cancel after)
STEPS = st.tuples(
    st.sampled_from(["short", "short", "long", "crash"]),
    st.sampled_from([0.0, 0.005, 0.02]),
    st.sampled_from([10.0, 10.0, 0.0, 0.003, 0.05]),  # mostly never cancelled
)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(plans=st.lists(st.lists(STEPS, min_size=1, max_size=6), min_size=2, max_size=5))
async def test_moved_calls_run_at_most_once_and_every_caller_gets_one_outcome(
    tmp_path_factory: pytest.TempPathFactory, plans: list[Plan]
) -> None:
    """Random long and short calls, cancels and crashes on a pipelined pool: every
    handler invocation is logged by the worker (a unique token per call); no token
    runs twice, whatever moved, and every caller gets exactly one outcome."""
    marks = tmp_path_factory.mktemp("marks") / "runs"
    marks.touch()
    tokens = (f"t{i}" for i in itertools.count())
    outcomes: dict[str, str] = {}

    async def one(pool: corral.Pool, kind: str, seconds: float, cancel_after: float) -> None:
        token = next(tokens)
        outcome = "cancelled"
        with trio.move_on_after(cancel_after):
            try:
                if kind == "crash":
                    await pool.call("record_and_crash", token)
                else:
                    await pool.call("record", token, 0.4 if kind == "long" else seconds)
                outcome = "ok"
            except corral.CorralError as exc:
                outcome = type(exc).__name__
        assert token not in outcomes
        outcomes[token] = outcome

    async def run(pool: corral.Pool, plan: Plan) -> None:
        for step in plan:
            await one(pool, *step)

    env = {"CORRAL_TEST_MARKS": str(marks)}
    with trio.fail_after(60):
        async with (
            corral.open_pool(H, size=2, pipeline=4, env=env, cancel_grace=2.0) as pool,
            trio.open_nursery() as nursery,
        ):
            for plan in plans:
                nursery.start_soon(run, pool, plan)
    runs = marks.read_text().split()
    assert len(runs) == len(set(runs)), sorted(t for t in runs if runs.count(t) > 1)
    assert len(outcomes) == sum(len(p) for p in plans)


async def test_a_crash_fails_only_the_call_that_ran_the_queued_ones_move(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Pipelining keeps crash isolation: a worker runs its requests in order, so when
    it dies (and all it wrote has been read) only its oldest unanswered call may have
    started; the calls queued behind it never ran, and go to another worker."""
    marks = tmp_path_factory.mktemp("marks") / "runs"
    marks.touch()
    results: dict[str, str] = {}

    async def one(pool: corral.Pool, token: str, fn: str, seconds: float) -> None:
        try:
            await pool.call(fn, token, seconds)
            results[token] = "ok"
        except corral.WorkerCrashed:
            results[token] = "crashed"

    env = {"CORRAL_TEST_MARKS": str(marks)}
    with trio.fail_after(30):
        async with corral.open_pool(H, size=2, pipeline=4, env=env) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, pool, "long", "record", 0.6)
                await trio.sleep(0.05)
                nursery.start_soon(one, pool, "crash", "record_then_crash", 0.3)
                await trio.sleep(0.05)
                for i in range(6):  # ties: some queue behind the crashing call
                    nursery.start_soon(one, pool, f"z{i}", "record", 0.0)
            moved = pool.statistics().moved
    assert results.pop("crash") == "crashed"
    assert set(results.values()) == {"ok"}, results
    runs = marks.read_text().split()
    assert sorted(runs) == sorted({*runs}), runs  # nothing ran twice
    assert moved > 0


async def test_a_call_that_times_out_in_the_queue_is_given_back_and_the_worker_lives() -> None:
    """request_timeout counts the time a call waits in the worker's queue; when it runs
    out there, the call is given back unrun: RequestTimeout for its caller, and the call
    ahead of it (and the worker) carry on."""
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1, pipeline=4) as pool:
            pid = pool.workers()[0].pid
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "sleep", 1.0)
                await trio.sleep(0.1)
                with pytest.raises(corral.RequestTimeout, match="given back unrun"):
                    await pool.call("greet", "late", timeout=0.2)
            assert pool.workers()[0].pid == pid
            assert pool.statistics().restarts == 0
            assert await pool.call("greet", "x") == "hello x"
