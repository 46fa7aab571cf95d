"""A worker with no process, behind the pool's worker seam (``worker_factory=``).

Its handlers are coroutines on the trio clock, so pool logic (FIFO, sessions, the
breaker, recycling, saturation, close) is tested on ``MockClock`` with exact times,
as trio tests its own scheduling. What only real processes show stays in the other
tests.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

import corral
from corral import RemoteError, RequestTimeout, WorkerCrashed
from corral.workers._launch import Launcher
from corral.workers._options import WorkerOptions
from corral.workers._requests import Progress, ProgressCallback
from corral.workers._seam import StateCallback
from corral.workers._stream import Stream
from corral.workers._worker import TRANSITIONS, WorkerInfo, WorkerState

_pids = itertools.count(10_000)


async def _sleep(seconds: float) -> float:
    await trio.sleep(seconds)
    return seconds


async def _echo(value: object) -> object:
    await trio.lowlevel.checkpoint()
    return value


HANDLERS: dict[str, Callable[..., Awaitable[Any]]] = {"sleep": _sleep, "echo": _echo}


@attrs.define
class Script:
    """How the fake workers a factory makes behave; change it between starts."""

    start_delay: float = 0.0
    start_error: BaseException | None = None  # every start fails with it
    fail_starts: int = 0  # the next N starts fail
    pipelining: bool = False  # honours options.pipeline (else depth 1)
    rss: int | None = None
    made: list[FakeWorker] = attrs.Factory(list)

    def factory(
        self, launcher: Launcher, options: WorkerOptions, worker_id: str, on_state: StateCallback
    ) -> FakeWorker:
        worker = FakeWorker(self, options, worker_id, on_state)
        self.made.append(worker)
        return worker


class FakeWorker:
    """Follows the ``PoolWorker`` contract and the real worker's transition table."""

    def __init__(
        self, script: Script, options: WorkerOptions, worker_id: str, on_state: StateCallback
    ) -> None:
        self.script = script
        self.options = options
        self.id = worker_id
        self.pid: int | None = next(_pids)
        self.state = WorkerState.STARTING
        self.served = 0
        self.ready_at: float | None = None
        self.on_progress: Callable[[Any, Progress], None] | None = None
        self.started_at = time.time()
        self.last_exit: str | None = None
        self.calls: list[tuple[str, float]] = []  # (handler, trio time it started)
        self._on_state = on_state
        self._ended = trio.Event()
        self._crash: BaseException | None = None
        self._scopes: set[trio.CancelScope] = set()
        self._depth = options.pipeline if script.pipelining else 1

    def _to(self, new: WorkerState) -> None:
        if new is self.state:
            return
        assert new in TRANSITIONS[self.state], (self.state, new)
        old, self.state = self.state, new
        self._on_state(self, old, new)

    @property
    def available(self) -> bool:
        if self._ended.is_set():
            return False
        return self.state is WorkerState.READY or (self.state is WorkerState.BUSY and self._depth > 1)

    @property
    def alive(self) -> bool:
        return self._crash is None

    @property
    def depth(self) -> int:
        return self._depth

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.id, self.pid, self.state, self.served, self.started_at, self.last_exit)

    def rss_bytes(self) -> int | None:
        return self.script.rss

    def stop(self) -> None:
        self._ended.set()

    async def _stop_when_asked(self) -> None:
        await corral.current_child().stop_requested.wait()  # as the real worker does
        self.stop()

    def crash(self, how: str = "killed by SIGKILL") -> None:
        """The process died: calls in flight fail with WorkerCrashed."""
        self._crash = WorkerCrashed(f"worker {self.id} {how}", signal="SIGKILL")
        self.last_exit = how
        for scope in self._scopes:
            scope.cancel()
        self._ended.set()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        script = self.script
        await trio.sleep(script.start_delay)
        if script.fail_starts or script.start_error is not None:
            script.fail_starts = max(0, script.fail_starts - 1)
            self._to(WorkerState.FAILED)
            self.last_exit = "start failed"
            raise script.start_error or WorkerCrashed(f"worker {self.id} exited with code 1 during start-up")
        self._to(WorkerState.READY)
        self.ready_at = trio.current_time()
        task_status.started(self)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_asked)
                await self._ended.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self._crash is not None:
                self._to(WorkerState.FAILED)
            else:
                self._to(WorkerState.STOPPING)
                self._to(WorkerState.STOPPED)
                self.last_exit = "stopped"
        if self._crash is not None:
            raise self._crash

    async def call(
        self,
        name: str,
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        if self.state not in (WorkerState.READY, WorkerState.BUSY) or self._ended.is_set():
            raise WorkerCrashed(f"worker {self.id} is {self.state.name}; it takes no calls")
        handler = HANDLERS.get(name)
        if handler is None:
            raise RemoteError("AttributeError", f"no handler {name!r}")
        self.calls.append((name, trio.current_time()))
        self._to(WorkerState.BUSY)
        limit = timeout if timeout is not None else self.options.request_timeout
        scope = trio.CancelScope(deadline=trio.current_time() + limit if limit is not None else float("inf"))
        self._scopes.add(scope)
        try:
            with scope:
                result = await handler(*args, **kwargs)
        finally:
            self._scopes.discard(scope)
            if not self._scopes and self.state is WorkerState.BUSY and not self._ended.is_set():
                self._to(WorkerState.READY)
        if self._crash is not None:
            raise self._crash
        if scope.cancelled_caught:
            self.crash("killed after a request timeout")
            raise RequestTimeout(f"worker {self.id}: {name} took longer than {limit} s")
        self.served += 1
        return result

    async def run_sync(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        await trio.lowlevel.checkpoint()
        self.served += 1
        return fn(*args, **kwargs)

    async def submit(
        self,
        kind: str,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
        movable: bool,
    ) -> Any:
        if kind == "call":
            return await self.call(target, *args, timeout=timeout, **kwargs)
        return await self.run_sync(target, *args, timeout=timeout, **kwargs)

    def withdraw_one(self) -> bool:
        return False  # one request at a time: nothing ever waits in a fake worker's queue

    @asynccontextmanager
    async def stream(
        self,
        name: str,
        *args: Any,
        timeout: float | None = None,
        chunk_timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Stream]:
        raise TypeError("the fake worker does not stream (tests of streams use real workers)")
        yield  # pragma: no cover


class Versions:
    """A factory for pool upgrades: remembers which version (the handler module's name)
    each worker runs, and the most workers the pool had at once (counted as each new one
    is made, once ``pool`` is set). Starts of ``fail_version`` fail, through a script of
    their own: a start of it cancelled before it failed leaves no failure behind for
    another version's."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.of: dict[str, str] = {}
        self.pool: corral.Pool | None = None
        self.most_live = 0
        self.fail_version: str | None = None

    def factory(
        self, launcher: Launcher, options: WorkerOptions, worker_id: str, on_state: StateCallback
    ) -> FakeWorker:
        version = launcher.inner.module  # type: ignore[attr-defined]
        script = self.script
        if version == self.fail_version:
            script = Script(pipelining=script.pipelining, start_error=WorkerCrashed("init failed"))
        worker = script.factory(launcher, options, worker_id, on_state)
        self.of[worker_id] = version
        if self.pool is not None:
            self.most_live = max(self.most_live, len(self.pool.workers()) + 1)
        return worker
