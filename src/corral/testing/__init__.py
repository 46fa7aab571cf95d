"""Fault injection for your own supervision trees and pools.

Restart logic is only trustworthy once it has been watched failing. These helpers
make the failures happen on purpose, in tests, through the same paths real failures
take: a crashed child is an abnormal exit, a failed start is a start that raised, a
killed worker is a process that got a signal.

``corral.testing.strategies`` (needs hypothesis) generates crash schedules for
property-based tests of your tree.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import attrs
import trio

from corral._errors import NotFound
from corral.supervisor._records import ChildState
from corral.supervisor._supervisor import Supervisor
from corral.workers._pool import Pool
from corral.workers._slots import FaultInjector
from corral.workers._worker import WorkerInfo, WorkerState

__all__ = [
    "InjectedFault",
    "StartFault",
    "crash_child",
    "delay_next_start",
    "fail_next_start",
    "kill_worker",
    "stop_worker",
]


class InjectedFault(Exception):
    """The default exception of an injected crash or failed start."""


@attrs.frozen
class StartFault:
    """What happens to one upcoming start: wait ``delay`` seconds, then fail with
    ``error`` (or start normally when ``error`` is None)."""

    delay: float = 0.0
    error: BaseException | None = None

    def wrap(self, start: Callable[..., Awaitable[object]]) -> Callable[..., Awaitable[object]]:
        async def faulty(*args: Any, **kwargs: Any) -> object:
            if self.delay:
                await trio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            return await start(*args, **kwargs)

        return faulty


def crash_child(sup: Supervisor, child_id: Hashable, error: BaseException | None = None) -> None:
    """Make a running child exit abnormally with ``error`` right now.

    The child is cancelled, and its supervisor sees the same abnormal exit as if the
    child had raised ``error`` itself: restart type, strategy and intensity apply.
    """
    child = sup._find(child_id)
    if child is None or child.starting:
        raise NotFound(child_id)
    run = child.run
    if run is None or child.state is not ChildState.RUNNING:
        raise RuntimeError(f"child {child_id!r} is {child.state.value}, not running: nothing to crash")
    run.injected = error if error is not None else InjectedFault(f"injected crash of {child_id!r}")
    run.scope.cancel()


def _add_fault(target: Supervisor | Pool, child_id: Hashable | None, fault: StartFault, times: int) -> None:
    if isinstance(target, Pool):
        slots = target._slots  # faults go through the pool's worker factory
        injector = slots.factory if isinstance(slots.factory, FaultInjector) else FaultInjector(slots.factory)
        injector.faults.extend([fault] * times)
        slots.factory = injector
        return
    if child_id is None:
        raise TypeError("a Supervisor needs the child_id whose next start should fail")
    target._faults.setdefault(child_id, []).extend([fault] * times)


def fail_next_start(
    target: Supervisor | Pool,
    child_id: Hashable | None = None,
    *,
    error: BaseException | None = None,
    times: int = 1,
) -> None:
    """The next ``times`` starts of that child (or of any worker of a pool) fail."""
    exc = error if error is not None else InjectedFault("injected start failure")
    _add_fault(target, child_id, StartFault(0.0, exc), times)


def delay_next_start(
    target: Supervisor | Pool, child_id: Hashable | None = None, *, seconds: float, times: int = 1
) -> None:
    """The next ``times`` starts of that child (or of any pool worker) wait first."""
    _add_fault(target, child_id, StartFault(seconds, None), times)


def _pick(pool: Pool, worker_id: str | None, rng: random.Random | None) -> WorkerInfo:
    live = [
        w for w in pool.workers() if w.pid is not None and w.state in (WorkerState.READY, WorkerState.BUSY)
    ]
    if worker_id is not None:
        live = [w for w in live if w.id == worker_id]
        if not live:
            raise NotFound(worker_id)
    if not live:
        raise RuntimeError("no live worker to pick")
    return (rng or random).choice(live)


def kill_worker(
    pool: Pool,
    worker_id: str | None = None,
    *,
    sig: int = signal.SIGKILL,
    rng: random.Random | None = None,
) -> WorkerInfo:
    """Send ``sig`` to one live worker's process (a random one unless named)."""
    info = _pick(pool, worker_id, rng)
    assert info.pid is not None
    os.kill(info.pid, sig)
    return info


def stop_worker(pool: Pool, worker_id: str | None = None, *, rng: random.Random | None = None) -> WorkerInfo:
    """SIGSTOP one worker: it hangs (calls on it time out) until killed or continued."""
    return kill_worker(pool, worker_id, sig=signal.SIGSTOP, rng=rng)
