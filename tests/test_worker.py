"""One Worker, black-box, with real subprocesses: calls, errors, crashes, timeouts,
cancellation, init failures, two-phase stop, the state table, a non-Python worker."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import corral
from corral import (
    Command,
    CorralError,
    InitTimeout,
    ProtocolError,
    PythonModule,
    RemoteError,
    RequestTimeout,
    Worker,
    WorkerCrashed,
    WorkerState,
)
from corral.workers._worker import TRANSITIONS, IllegalTransition
from tests import handlers_faults, handlers_init_fails
from tests.proc_util import alive, wait_gone

ROOT = Path(__file__).resolve().parents[1]
FAULTS = "tests.handlers_faults"
INIT_CONTROL = "tests.handlers_init_control"


class Run:
    """A worker running in the background; ``error`` is what its run() raised."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.done = trio.Event()

    async def ended(self, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            await self.done.wait()


async def _run(run: Run, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
    try:
        await run.worker.run(task_status=task_status)
    except CorralError as exc:
        if run.worker.ready_at is None:
            raise  # a start failure: nursery.start() raises it
        run.error = exc
    finally:
        run.done.set()


@asynccontextmanager
async def running(module: str | None = FAULTS, launcher: Any = None, **options: Any) -> AsyncIterator[Run]:
    worker = Worker(launcher or PythonModule(module), **options)
    run = Run(worker)
    async with trio.open_nursery() as nursery:
        await nursery.start(_run, run)
        try:
            yield run
        finally:
            worker.stop()


async def wait_state(worker: Worker, *states: WorkerState, timeout: float = 2.0) -> None:
    with trio.fail_after(timeout):
        while worker.state not in states:
            await trio.sleep(0.005)


def control_env(tmp_path: Path, mode: str) -> dict[str, str]:
    path = tmp_path / "init_mode"
    path.write_text(mode)
    return {"CORRAL_TEST_INIT_FILE": str(path)}


# -- basics ------------------------------------------------------------------------


async def test_ready_with_pid_and_calls() -> None:
    with trio.fail_after(10):
        async with running() as run:
            w = run.worker
            assert w.state is WorkerState.READY
            assert isinstance(w.pid, int) and alive(w.pid)
            assert await w.call("getpid") == w.pid
            assert await w.call("echo", {"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
            assert await w.call("add", 2, 3) == 5
            assert await w.call("add", "a", "b") == "ab"
            await w.ping()
            assert await w.run_sync(handlers_faults.square, 7) == 49
            info = w.info()
            assert (info.pid, info.state, info.served) == (w.pid, WorkerState.READY, 6)
            pid = w.pid
        assert w.info().state is WorkerState.STOPPED
        assert not alive(pid)
        assert run.error is None


async def test_live_worker_imports_neither_trio_nor_attrs() -> None:
    with trio.fail_after(10):
        async with running() as run:
            mods = set(await run.worker.call("modules"))
    assert "tests.handlers_faults" in mods
    assert not {"trio", "attrs", "attr", "corral"} & mods


async def test_big_payload_roundtrip() -> None:
    data = os.urandom(8 * 1024 * 1024)
    with trio.fail_after(10):
        async with running() as run:
            assert await run.worker.call("echo", data) == data
            assert await run.worker.call("echo", b"") == b""


# -- errors from handlers ----------------------------------------------------------


async def test_remote_error_carries_type_message_traceback_and_cause() -> None:
    with trio.fail_after(10):
        async with running() as run:
            with pytest.raises(RemoteError) as info:
                await run.worker.call("raise_custom", "bad input 42")
            err = info.value
            assert err.remote_type == "tests.handlers_faults.CustomError"
            assert err.remote_message == "bad input 42"
            assert "raise_custom" in err.remote_traceback
            assert "CustomError: bad input 42" in err.remote_traceback
            assert isinstance(err.__cause__, handlers_faults.CustomError)
            assert err.__cause__.args == ("bad input 42",)
            assert "Remote traceback" in str(err)
            # an exception that cannot be pickled still arrives as text
            with pytest.raises(RemoteError) as info2:
                await run.worker.call("raise_unpicklable", "no pickle")
            assert info2.value.remote_type == "tests.handlers_faults.UnpicklableError"
            assert info2.value.remote_message == "no pickle"
            assert info2.value.__cause__ is None
            assert await run.worker.call("echo", 1) == 1
            assert run.worker.state is WorkerState.READY


async def test_unknown_handler_and_unencodable_result_keep_worker_serving() -> None:
    with trio.fail_after(10):
        async with running("tests.handlers_basic") as run:
            w = run.worker
            with pytest.raises(RemoteError) as info:
                await w.call("no_such_handler", 1)
            assert info.value.remote_type == "UnknownHandler"
            assert "no_such_handler" in info.value.remote_message
            with pytest.raises(RemoteError) as info2:
                await w.call("unencodable")
            assert info2.value.remote_type == "EncodeError"
            assert "function" in info2.value.remote_message
            assert await w.call("add", 1, 2) == 3
            assert w.state is WorkerState.READY


async def test_result_larger_than_max_frame_is_a_remote_error() -> None:
    with trio.fail_after(10):
        async with running("tests.handlers_basic", max_frame=1 << 20) as run:
            with pytest.raises(RemoteError) as info:
                await run.worker.call("big", 2 << 20)
            assert info.value.remote_type == "EncodeError"
            assert await run.worker.call("big", 10) == b"x" * 10


async def test_request_larger_than_max_frame_is_refused_and_worker_survives() -> None:
    with trio.fail_after(10):
        async with running(max_frame=1 << 20) as run:
            w = run.worker
            with pytest.raises(ProtocolError, match="max_frame"):
                await w.call("echo", b"x" * (2 << 20))
            assert await w.call("echo", 5) == 5
            assert run.error is None


async def test_prints_reach_logging_and_ring_buffer_not_the_channel(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corral.worker")
    with trio.fail_after(10):
        async with running() as run:
            w = run.worker
            assert await w.call("noisy", "tag1") == "tag1"
            assert await w.call("add", 1, 1) == 2
            wanted = ["tag1 print", "tag1 sys.stdout", "tag1 fd1", "garbage", "tag1 stderr"]
            while not all(any(x in line for line in w.stderr_tail) for x in wanted):
                await trio.sleep(0.01)
    records = [r for r in caplog.records if r.name == f"corral.worker.{w.id}"]
    text = "\n".join(r.getMessage() for r in records)
    for x in wanted:
        assert x in text
    assert f"[pid {w.pid}]" in text


# -- crashes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "args", "exit_code", "sig", "tail"),
    [
        ("exit_with", (7,), 7, None, "exiting with 7 on purpose"),
        ("segfault", (), None, "SIGSEGV", "about to dereference NULL"),
        ("kill_self", (signal.SIGKILL,), None, "SIGKILL", None),
        ("kill_self", (signal.SIGTERM,), None, "SIGTERM", None),
    ],
)
async def test_crash_is_worker_crashed(
    handler: str, args: tuple[Any, ...], exit_code: int | None, sig: str | None, tail: str | None
) -> None:
    with trio.fail_after(10):
        async with running() as run:
            w = run.worker
            pid = w.pid
            assert pid is not None
            with pytest.raises(WorkerCrashed) as info:
                await w.call(handler, *args)
            err = info.value
            assert (err.exit_code, err.signal) == (exit_code, sig)
            assert str(pid) in str(err)
            if tail is not None:
                assert tail in err.stderr_tail
                assert tail in str(err)
            await run.ended()
            assert w.state is WorkerState.FAILED
            assert isinstance(run.error, WorkerCrashed)
            assert not alive(pid)
            with pytest.raises(WorkerCrashed):
                await w.call("echo", 1)


async def test_external_sigkill_during_call() -> None:
    with trio.fail_after(10):
        async with running() as run:
            w = run.worker
            assert w.pid is not None

            async def killer() -> None:
                await trio.sleep(0.1)
                assert w.pid is not None
                os.kill(w.pid, signal.SIGKILL)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                with pytest.raises(WorkerCrashed) as info:
                    await w.call("sleep", 30)
            assert info.value.signal == "SIGKILL"
            assert info.value.exit_code is None
            await run.ended()
            assert w.state is WorkerState.FAILED
            assert w.last_exit == "killed by SIGKILL"


async def test_garbage_on_reply_channel_is_protocol_error() -> None:
    for kind in ("huge", "junk", "stray"):
        with trio.fail_after(10):
            async with running() as run:
                w = run.worker
                pid = w.pid
                assert pid is not None
                with pytest.raises(ProtocolError):
                    await w.call("garbage_reply", kind)
                await run.ended()
                assert w.state is WorkerState.FAILED
                assert not alive(pid)


# -- timeouts and cancellation -----------------------------------------------------


async def test_request_timeout_kills_the_process_group() -> None:
    with trio.fail_after(10):
        async with running(request_timeout=0.3) as run:
            w = run.worker
            grandchild = await w.call("spawn_grandchild")
            assert alive(grandchild)
            start = trio.current_time()
            with pytest.raises(RequestTimeout):
                await w.call("sleep", 30)
            assert 0.25 <= trio.current_time() - start < 1.5
            assert w.pid is not None
            assert await wait_gone([w.pid, grandchild]) == []
            await run.ended()
            assert w.state is WorkerState.FAILED
            assert isinstance(run.error, RequestTimeout)


async def test_per_call_timeout_overrides_request_timeout() -> None:
    with trio.fail_after(10):
        async with running(request_timeout=0.2) as run:
            assert await run.worker.call("sleep", 0.4, timeout=5) == 0.4
            with pytest.raises(RequestTimeout):
                await run.worker.call("sleep", 30, timeout=0.1)


async def test_cancelled_call_returns_promptly_and_worker_is_ready_again() -> None:
    states: list[tuple[WorkerState, WorkerState]] = []
    with trio.fail_after(10):
        async with running(on_state=lambda w, old, new: states.append((old, new))) as run:
            w = run.worker
            pid = w.pid
            with trio.fail_after(0.5), trio.move_on_after(0.1):
                await w.call("sleep", 30)
            await wait_state(w, WorkerState.READY, timeout=1.0)
            assert pid is not None and w.pid == pid and alive(pid)
            assert await w.call("echo", "after") == "after"
            assert run.error is None
    assert states[:3] == [
        (WorkerState.STARTING, WorkerState.READY),
        (WorkerState.READY, WorkerState.BUSY),
        (WorkerState.BUSY, WorkerState.READY),
    ]


async def test_cancelled_call_of_a_stubborn_handler_kills_the_worker_after_grace() -> None:
    with trio.fail_after(10):
        async with running(cancel_grace=0.3) as run:
            w = run.worker
            pid = w.pid
            assert pid is not None
            start = trio.current_time()
            with trio.fail_after(0.5), trio.move_on_after(0.1):
                await w.call("stubborn_sleep", 30)
            assert trio.current_time() - start < 0.5
            await run.ended()
            assert 0.3 <= trio.current_time() - start < 2.5
            assert w.state is WorkerState.FAILED
            assert isinstance(run.error, WorkerCrashed)
            assert "cancel_grace" in str(run.error)
            assert not alive(pid)
            assert any("interrupt ignored" in line for line in w.stderr_tail)


# -- start-up ----------------------------------------------------------------------


async def test_init_failure_is_remote_error() -> None:
    worker = Worker(PythonModule("tests.handlers_init_fails"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(RemoteError) as info:
                await nursery.start(worker.run)
    err = info.value
    assert err.remote_type == "tests.handlers_init_fails.InitProblem"
    assert err.remote_message == "database unreachable"
    assert isinstance(err.__cause__, handlers_init_fails.InitProblem)
    assert worker.state is WorkerState.FAILED
    assert worker.last_exit is not None and "init failed" in worker.last_exit
    assert worker.pid is not None and not alive(worker.pid)


async def test_init_hang_is_init_timeout(tmp_path: Path) -> None:
    worker = Worker(PythonModule(INIT_CONTROL, env=control_env(tmp_path, "hang")), init_timeout=0.4)
    start = trio.current_time()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(InitTimeout) as info:
                await nursery.start(worker.run)
    assert 0.4 <= trio.current_time() - start < 2.0
    assert "init_timeout" in str(info.value)
    assert "init mode hang" in str(info.value)  # the worker's own output is quoted
    assert worker.state is WorkerState.FAILED
    assert worker.pid is not None and not alive(worker.pid)


async def test_init_exit_is_worker_crashed_with_output(tmp_path: Path) -> None:
    worker = Worker(PythonModule(INIT_CONTROL, env=control_env(tmp_path, "exit")))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(WorkerCrashed) as info:
                await nursery.start(worker.run)
    assert info.value.exit_code == 5
    assert "init says goodbye" in info.value.stderr_tail
    assert worker.state is WorkerState.FAILED


async def test_slow_init_within_timeout_succeeds(tmp_path: Path) -> None:
    start = trio.current_time()
    with trio.fail_after(10):
        async with running(launcher=PythonModule(INIT_CONTROL, env=control_env(tmp_path, "slow:0.3"))) as run:
            assert trio.current_time() - start >= 0.3
            assert await run.worker.call("echo", 3) == 3


async def test_missing_program_is_worker_crashed() -> None:
    worker = Worker(Command(["/nonexistent/corral-worker"]))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(WorkerCrashed, match="could not start"):
                await nursery.start(worker.run)
    assert worker.state is WorkerState.FAILED


async def test_program_printing_text_on_stdout_is_protocol_error() -> None:
    worker = Worker(Command(["sh", "-c", "echo hello world; sleep 5"]), init_timeout=5)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ProtocolError):
                await nursery.start(worker.run)
    assert worker.state is WorkerState.FAILED


async def test_worker_runs_only_once() -> None:
    with trio.fail_after(10):
        async with running() as run:
            with pytest.raises(RuntimeError, match="already ran"):
                await run.worker.run()


# -- stopping ----------------------------------------------------------------------


async def test_stop_is_graceful_exit_code_zero() -> None:
    states: list[WorkerState] = []
    worker = Worker(PythonModule(FAULTS), on_state=lambda w, old, new: states.append(new))
    run = Run(worker)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(_run, run)
            pid = worker.pid
            worker.stop()
            await run.ended()
    assert run.error is None
    assert states == [WorkerState.READY, WorkerState.STOPPING, WorkerState.STOPPED]
    assert worker.last_exit == "exit code 0"
    assert pid is not None and not alive(pid)


async def test_stop_of_a_busy_worker_escalates_to_sigterm() -> None:
    worker = Worker(PythonModule(FAULTS), stop_timeout=0.3)
    run = Run(worker)
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await worker.call("sleep", 30)
        except CorralError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(_run, run)
            nursery.start_soon(caller)
            await wait_state(worker, WorkerState.BUSY)
            start = trio.current_time()
            worker.stop()
            await run.ended()
            assert 0.3 <= trio.current_time() - start < 2.0
    assert worker.state is WorkerState.STOPPED
    assert worker.last_exit == "killed by SIGTERM"
    assert len(errors) == 1 and isinstance(errors[0], WorkerCrashed)


# -- the state table ---------------------------------------------------------------

EXPECTED = {
    WorkerState.STARTING: {WorkerState.READY, WorkerState.STOPPING, WorkerState.FAILED},
    WorkerState.READY: {WorkerState.BUSY, WorkerState.STOPPING, WorkerState.FAILED},
    WorkerState.BUSY: {WorkerState.READY, WorkerState.STOPPING, WorkerState.FAILED},
    WorkerState.STOPPING: {WorkerState.STOPPED, WorkerState.FAILED},
    WorkerState.STOPPED: set(),
    WorkerState.FAILED: set(),
}


def test_transition_table() -> None:
    assert {k: set(v) for k, v in TRANSITIONS.items()} == EXPECTED
    seen: list[tuple[WorkerState, WorkerState]] = []
    for old, new in itertools.product(WorkerState, WorkerState):
        worker = Worker(PythonModule(FAULTS), on_state=lambda w, a, b: seen.append((a, b)))
        worker.state = old
        if new is old:
            worker._to(new)  # staying put is a no-op, never reported
            assert not seen
        elif new in EXPECTED[old]:
            worker._to(new)
            assert worker.state is new
            assert seen.pop() == (old, new)
        else:
            with pytest.raises(IllegalTransition, match=f"{old.name} -> {new.name}"):
                worker._to(new)
            assert worker.state is old
            assert not seen


# -- a worker in another language ----------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_node_worker_through_command() -> None:
    launcher = corral.Command(["node", "examples/node_worker/worker.js"], cwd=str(ROOT))
    with trio.fail_after(10):
        async with running(launcher=launcher) as run:
            w = run.worker
            assert w.state is WorkerState.READY and w.pid is not None
            assert await w.call("add", 2, 3) == 5
            assert await w.call("echo", {"x": [1, "two"]}) == {"x": [1, "two"]}
            with pytest.raises(RemoteError) as info:
                await w.call("fail", "nope")
            assert info.value.remote_message == "nope"
            with pytest.raises(RemoteError) as info2:
                await w.call("missing")
            assert info2.value.remote_type == "UnknownHandler"
            await w.ping()
            assert await w.call("sleep", 0.01) == 0.01
        assert w.info().state is WorkerState.STOPPED


async def test_capture_stderr_false_keeps_the_ring_buffer_but_does_not_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="corral.worker")
    with trio.fail_after(10):
        async with running(capture_stderr=False) as run:
            w = run.worker
            with pytest.raises(WorkerCrashed) as info:
                await w.call("exit_with", 4)
    assert "exiting with 4 on purpose" in info.value.stderr_tail
    assert not [r for r in caplog.records if r.name == f"corral.worker.{w.id}"]


async def test_stderr_flood_without_newline_stays_bounded_and_fast() -> None:
    with trio.fail_after(10):
        async with running(capture_stderr=False) as run:
            w = run.worker
            start = trio.current_time()
            assert await w.call("stderr_flood", 32_000_000, False) == 32_000_000
            with trio.fail_after(3):  # quadratic buffering took ~10 s here
                while "flood done" not in w.stderr_tail:
                    await trio.sleep(0.01)
            assert trio.current_time() - start < 3
            assert max(len(line) for line in w.stderr_tail) <= 128 * 1024
            assert await w.call("echo", 1) == 1
