"""The seam between the pool and its workers (trio-parallel's ``_abc.py`` idea).

The pool never builds a worker itself: it asks its factory for one, then uses it only
through ``PoolWorker``. ``Worker`` (one OS process) is the real thing; tests put a fake
behind the same seam to check the pool's logic on ``MockClock`` with no processes;
``corral.testing`` wraps the factory to inject start faults.

The contract:

- ``run(task_status=...)`` follows ``nursery.start``: it reports the worker once READY,
  then returns when the worker stopped (or raises when it died).
- ``on_state(worker, old, new)`` is called for every state change, synchronously;
  ``on_progress(worker, progress)``, once the pool has set it, for every start-up
  progress report.
- ``available`` is True when it takes a request now (no syscall); ``alive`` may ask
  the OS whether its process still exists.
- ``depth`` is how many requests it holds at once once READY (1, or ``pipeline``).
- ``call``/``run_sync`` raise corral's errors bare; ``stop()`` asks for a graceful end.
- ``submit(..., movable=True)`` is a call the pool may move to another worker while it is still
  queued (``withdraw_one``): it raises ``Withdrawn`` then, having never run.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import trio

from corral.workers._launch import Launcher
from corral.workers._options import WorkerOptions
from corral.workers._requests import Progress, ProgressCallback
from corral.workers._stream import Stream
from corral.workers._worker import Worker, WorkerInfo, WorkerState

StateCallback = Callable[[Any, WorkerState, WorkerState], None]


class PoolWorker(Protocol):
    """What the pool needs of a worker."""

    id: str
    pid: int | None
    state: WorkerState
    served: int
    ready_at: float | None
    on_progress: Callable[[Any, Progress], None] | None

    @property
    def available(self) -> bool: ...
    @property
    def alive(self) -> bool: ...
    @property
    def depth(self) -> int: ...
    def info(self) -> WorkerInfo: ...
    def rss_bytes(self) -> int | None: ...
    def stop(self) -> None: ...
    async def run(self, *, task_status: trio.TaskStatus[Any] = ...) -> None: ...
    async def call(
        self,
        name: str,
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any: ...
    async def run_sync(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any: ...
    async def submit(
        self,
        kind: str,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
        movable: bool,
    ) -> Any: ...
    def withdraw_one(self) -> bool: ...
    def stream(
        self,
        name: str,
        *args: Any,
        timeout: float | None = None,
        chunk_timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> AbstractAsyncContextManager[Stream]: ...


class WorkerFactory(Protocol):
    """Makes one worker incarnation; the pool calls it for every (re)start."""

    def __call__(
        self, launcher: Launcher, options: WorkerOptions, worker_id: str, on_state: StateCallback
    ) -> PoolWorker: ...


def process_worker(
    launcher: Launcher, options: WorkerOptions, worker_id: str, on_state: StateCallback
) -> PoolWorker:
    """The default factory: a real worker process."""
    return Worker.from_options(launcher, options, worker_id=worker_id, on_state=on_state)
