"""The pool under faults: crashes, garbage on the channel, timeouts, cancellation, the
circuit breaker, and crash isolation under concurrency (a killer task)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral import (
    CircuitBreaker,
    CircuitOpen,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    WorkerCrashed,
    WorkerState,
    open_pool,
)
from corral._shared import IllegalTransition
from corral.workers._circuit import TRANSITIONS as CIRCUIT_TRANSITIONS
from corral.workers._circuit import Circuit
from tests.pool_actions import ACTIONS
from tests.proc_util import alive, wait_gone

FAULTS = "tests.handlers_faults"
INIT_CONTROL = "tests.handlers_init_control"
FAST: dict[str, Any] = {"checkout_timeout": 10.0, "stop_timeout": 2.0}
QUICK_BACKOFF = corral.Backoff(initial=0.01, maximum=0.05, jitter=0.0)


def pids_of(pool: corral.Pool) -> set[int]:
    return {info.pid for info in pool.workers() if info.pid is not None}


def ready(pool: corral.Pool) -> int:
    return pool.statistics().workers_by_state["READY"]


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


# -- a crash fails only its call; a fresh worker takes over ---------------------------


@pytest.mark.parametrize(
    ("handler", "args"),
    [("exit_with", (9,)), ("segfault", ()), ("kill_self", (signal.SIGKILL,))],
)
async def test_crash_fails_one_call_and_the_worker_is_replaced(handler: str, args: tuple[Any, ...]) -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=2, **FAST) as pool:
            before = pids_of(pool)
            with pytest.raises(WorkerCrashed):
                await pool.call(handler, *args)
            await wait_for(lambda: ready(pool) == 2 and len(pids_of(pool) - before) == 1)
            assert [await pool.call("add", i, 1) for i in range(20)] == list(range(1, 21))
            assert pool.statistics().restarts == 1


async def test_replacement_serves_quickly_after_a_crash() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, **FAST) as pool:
            with pytest.raises(WorkerCrashed):
                await pool.call("exit_with", 1)
            start = trio.current_time()
            assert await pool.call("echo", "back") == "back"
            assert trio.current_time() - start < 1.0  # default backoff 0.05 s + a start


@pytest.mark.parametrize("kind", ["huge", "junk", "stray"])
async def test_garbage_from_a_worker_is_protocol_error_and_a_fresh_worker(kind: str) -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, **FAST) as pool:
            (old,) = pids_of(pool)
            with pytest.raises(ProtocolError):
                await pool.call("garbage_reply", kind)
            assert await pool.call("echo", 5) == 5
            assert pids_of(pool) != {old}
            assert await wait_gone([old]) == []


async def test_unknown_handler_and_unencodable_result_keep_the_pool_working() -> None:
    with trio.fail_after(10):
        async with open_pool("tests.handlers_basic", size=1, **FAST) as pool:
            (pid,) = pids_of(pool)
            with pytest.raises(RemoteError, match="UnknownHandler"):
                await pool.call("nope")
            with pytest.raises(RemoteError, match="EncodeError"):
                await pool.call("unencodable")
            assert await pool.call("getpid") == pid


async def test_request_timeout_replaces_the_worker_and_kills_its_group() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, request_timeout=0.3, **FAST) as pool:
            async with pool.checkout() as lease:
                pid = await lease.call("getpid")
                grandchild = await lease.call("spawn_grandchild")
                with pytest.raises(RequestTimeout):
                    await lease.call("sleep", 30)
            assert await wait_gone([pid, grandchild]) == []
            new = await pool.call("getpid")
            assert new != pid
            assert await pool.call("sleep", 0.1, timeout=2) == 0.1


async def test_cancelled_call_worker_is_interrupted_and_reused() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, **FAST) as pool:
            (pid,) = pids_of(pool)
            start = trio.current_time()
            with trio.move_on_after(0.1):
                await pool.call("sleep", 30)
            assert trio.current_time() - start < 0.5
            assert await pool.call("getpid") == pid
            assert pool.statistics().restarts == 0


async def test_cancelled_call_of_a_stubborn_handler_replaces_the_worker() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, cancel_grace=0.2, **FAST) as pool:
            (pid,) = pids_of(pool)
            start = trio.current_time()
            with trio.move_on_after(0.1):
                await pool.call("stubborn_sleep", 30)
            assert trio.current_time() - start < 0.5
            new = await pool.call("getpid")  # waits for the replacement
            assert new != pid
            assert await wait_gone([pid]) == []
            assert trio.current_time() - start < 3.0


# -- circuit breaker -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_circuit_opens_fails_fast_then_half_open_trial(tmp_path: Path, mode: str) -> None:
    control = tmp_path / "mode"
    control.write_text(mode)
    attempts: list[str] = []
    with trio.fail_after(15):
        async with open_pool(
            INIT_CONTROL,
            size=2,
            lazy=True,
            init_timeout=0.3,
            circuit_breaker=CircuitBreaker(threshold=3, cooldown=0.5),
            env={"CORRAL_TEST_INIT_FILE": str(control)},
            **FAST,
        ) as pool:
            pool.subscribe(
                lambda ev: attempts.append(ev.detail) if ev.detail.startswith("STARTING") else None
            )
            with pytest.raises(CircuitOpen):
                await pool.call("echo", 1)
            assert attempts == ["STARTING -> FAILED"] * 3
            assert pool.statistics().circuit == "open"
            # open: fail fast, no start attempted
            start = trio.current_time()
            for _ in range(5):
                with pytest.raises(CircuitOpen):
                    await pool.call("echo", 1)
            assert trio.current_time() - start < 0.1
            assert len(attempts) == 3
            # after the cooldown one trial start; it fails: open again
            await trio.sleep(0.55)
            with pytest.raises(CircuitOpen):
                await pool.call("echo", 1)
            assert len(attempts) == 4
            assert pool.statistics().circuit == "open"
            # the cause is fixed; after the cooldown the trial succeeds and closes it
            control.write_text("ok")
            await trio.sleep(0.55)
            assert await pool.call("echo", 2) == 2
            assert pool.statistics().circuit == "closed"
            assert attempts[4] == "STARTING -> READY"
            assert [await pool.call("echo", i) for i in range(5)] == list(range(5))


async def test_circuit_opens_when_replacements_keep_failing(tmp_path: Path) -> None:
    control = tmp_path / "mode"
    control.write_text("ok")
    with trio.fail_after(15):
        async with open_pool(
            INIT_CONTROL,
            size=1,
            backoff=QUICK_BACKOFF,
            circuit_breaker=CircuitBreaker(threshold=2, cooldown=0.5),
            env={"CORRAL_TEST_INIT_FILE": str(control)},
            **FAST,
        ) as pool:
            (pid,) = pids_of(pool)
            control.write_text("fail")
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: pool.statistics().circuit == "open")
            start = trio.current_time()
            with pytest.raises(CircuitOpen):
                await pool.call("echo", 1)
            assert trio.current_time() - start < 0.1
            control.write_text("ok")
            with trio.fail_after(3):
                while True:
                    try:
                        assert await pool.call("echo", 2) == 2
                        break
                    except CircuitOpen:
                        await trio.sleep(0.05)
            assert pool.statistics().circuit == "closed"


async def test_circuit_breaker_none_never_opens(tmp_path: Path) -> None:
    control = tmp_path / "mode"
    control.write_text("fail")
    with trio.fail_after(10):
        async with open_pool(
            INIT_CONTROL,
            size=1,
            lazy=True,
            circuit_breaker=None,
            checkout_timeout=0.5,
            env={"CORRAL_TEST_INIT_FILE": str(control)},
        ) as pool:
            with pytest.raises(corral.CheckoutTimeout):
                await pool.call("echo", 1)
            assert pool.statistics().circuit == "closed"


def test_circuit_moves_outside_its_table_raise_illegal_transition() -> None:
    for old, new in itertools.product(corral.CircuitState, corral.CircuitState):
        circuit = Circuit(CircuitBreaker(), state=old)
        if new in CIRCUIT_TRANSITIONS[old]:
            circuit._to(new)
            assert circuit.state is new
        else:
            with pytest.raises(IllegalTransition, match=f"circuit: {old.name} -> {new.name}"):
                circuit._to(new)
            assert circuit.state is old


# -- crash isolation under concurrency --------------------------------------------------


async def test_crash_isolation_under_a_killer_task() -> None:
    rng = random.Random(1234)
    outcomes = {"ok": 0, "crashed": 0}
    kills = 0
    with trio.fail_after(60):
        # backoff=None: replacements start at once, so the test is about isolation, not delays
        async with open_pool(
            FAULTS, size=4, backoff=None, max_restarts=1_000_000, checkout_timeout=30.0
        ) as pool:

            async def caller(c: int) -> None:
                for i in range(300):
                    value = (c, i)
                    try:
                        result = await pool.call("slow_echo", value, 0.001)
                    except WorkerCrashed:
                        outcomes["crashed"] += 1
                    else:
                        assert result == value
                        outcomes["ok"] += 1

            async def killer() -> None:
                # Each kill costs a fresh interpreter; on 2 cores, 50 restarts/s starve the
                # callers, so the chaos lasts 2 s (~100 kills), then the calls finish cleanly.
                nonlocal kills
                end = trio.current_time() + 2.0
                while trio.current_time() < end:
                    await trio.sleep(0.02)
                    live = [
                        i.pid
                        for i in pool.workers()
                        if i.pid is not None and i.state in (WorkerState.READY, WorkerState.BUSY)
                    ]
                    if live:
                        try:
                            os.kill(rng.choice(live), signal.SIGKILL)
                            kills += 1
                        except ProcessLookupError:
                            pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                async with trio.open_nursery() as callers:
                    for c in range(8):
                        callers.start_soon(caller, c)
                nursery.cancel_scope.cancel()
            assert outcomes["ok"] + outcomes["crashed"] == 8 * 300
            assert kills >= 20
            assert outcomes["crashed"] >= 1
            await wait_for(lambda: ready(pool) == 4, timeout=5)
            assert [await pool.call("echo", i) for i in range(100)] == list(range(100))
            assert all(alive(p) for p in pids_of(pool))


async def test_exit_mid_reply_is_a_clear_error_and_a_fresh_worker() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, **FAST) as pool:
            (old,) = pids_of(pool)
            with pytest.raises((WorkerCrashed, ProtocolError)) as info:
                await pool.call("half_reply")
            assert str(old) in str(info.value)
            assert await pool.call("getpid") != old


# -- random mixes of good and bad calls ------------------------------------------------


@settings(
    max_examples=int(os.environ.get("CORRAL_TEST_EXAMPLES", "6")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plans=st.lists(st.lists(ACTIONS, max_size=8), min_size=1, max_size=4))
async def test_random_mixes_never_wedge_the_pool(plans: list[list[tuple[str, Any]]]) -> None:
    async def run_plan(pool: corral.Pool, plan: list[tuple[str, Any]]) -> None:
        for kind, arg in plan:
            if kind == "echo":
                assert await pool.call("echo", arg) == arg
            elif kind == "error":
                with pytest.raises(RemoteError) as info:
                    await pool.call("raise_custom", arg)
                assert info.value.remote_message == arg
            elif kind == "crash":
                with pytest.raises(WorkerCrashed) as crash:
                    await pool.call("exit_with", arg)
                assert crash.value.exit_code == arg
            elif kind == "cancel":
                with trio.move_on_after(arg):
                    await pool.call("sleep", 10)
            else:
                with pytest.raises(RequestTimeout):
                    await pool.call("sleep", 10, timeout=arg)

    with trio.fail_after(30):
        async with open_pool(
            FAULTS, size=2, backoff=QUICK_BACKOFF, max_restarts=1000, checkout_timeout=3.0, cancel_grace=0.3
        ) as pool:
            async with trio.open_nursery() as nursery:
                for plan in plans:
                    nursery.start_soon(run_plan, pool, plan)
            assert [await pool.call("echo", i) for i in range(10)] == list(range(10))
            assert len(pool.workers()) <= 2


async def test_a_segfault_explains_itself() -> None:
    """faulthandler in the runtime: the crash report quotes the Python stack."""
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, **FAST) as pool:
            with pytest.raises(WorkerCrashed) as info:
                await pool.call("segfault")
    assert info.value.signal == "SIGSEGV"
    assert "Fatal Python error: Segmentation fault" in info.value.stderr_tail
    assert "in segfault" in info.value.stderr_tail  # the handler's own frame


async def test_a_command_worker_behind_a_forking_wrapper_serves() -> None:
    """`sh -c "python -m _corral_child mod; exit $?"`: the worker's direct parent is the
    shell, not the pool; CORRAL_PARENT_PID names the pool, which is alive."""
    wrapped = corral.Command(
        ["sh", "-c", f"{sys.executable} -m _corral_child tests.handlers_basic; exit $?"],
        codecs=("pickle", "json"),
    )
    with trio.fail_after(20):
        async with open_pool(wrapped, size=1, **FAST) as pool:
            assert await pool.call("echo", 42) == 42


@pytest.mark.parametrize("pipeline", [1, 4])
async def test_a_result_the_parent_cannot_decode_fails_only_its_call(pipeline: int) -> None:
    with trio.fail_after(20):
        async with open_pool(FAULTS, size=1, pipeline=pipeline, **FAST) as pool:
            pid = await pool.call("getpid", session="s")
            async with trio.open_nursery() as nursery:
                queued: list[Any] = []

                async def behind() -> None:
                    queued.append(await pool.call("slow_echo", "queued", 0.2))

                if pipeline > 1:
                    nursery.start_soon(behind)
                    await trio.sleep(0.05)
                with pytest.raises(corral.RemoteError) as info:
                    await pool.call("worker_only_object", session="s")
            assert info.value.remote_type == "DecodeError"
            assert "corral_worker_only" in str(info.value)
            assert await pool.call("getpid", session="s") == pid  # same worker, session kept
            assert queued == (["queued"] if pipeline > 1 else [])


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_slow_frame_cannot_pin_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header announcing 60 MiB, then a trickle: the parent holds only what arrived,
    and a frame that stalls is a ProtocolError (the worker is replaced)."""
    from corral.workers import _channel

    monkeypatch.setattr(_channel, "FRAME_STALL", 1.0)
    trickle = corral.Command([sys.executable, "tests/rogue_worker.py", "trickle"])
    with trio.fail_after(20):
        async with open_pool(trickle, size=1, **FAST) as pool:
            before = _rss()
            grew = 0

            async def watch() -> None:
                nonlocal grew
                while True:
                    grew = max(grew, _rss() - before)
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                with pytest.raises(corral.ProtocolError, match="stalled"):
                    await pool.call("anything")
                nursery.cancel_scope.cancel()
    assert grew < 16 << 20, f"the parent grew by {grew >> 20} MiB"
