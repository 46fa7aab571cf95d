"""What a pool tells the world: worker events, call records, statistics.

Subscribers and observers are plain callbacks, called synchronously where the thing
happens; with none registered, the hot path pays one truth test.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from corral.workers._seam import PoolWorker
from corral.workers._worker import WorkerState

if TYPE_CHECKING:
    from corral.workers._rollout import Rollout

logger = logging.getLogger("corral.pool")


@attrs.frozen
class PoolStatistics:
    """A cheap snapshot, safe to log. Latencies are seconds over the last calls."""

    size: int
    workers_by_state: dict[str, int]
    waiting: int
    served: int
    failed: int
    restarts: int
    circuit: str
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    sessions: int
    #: Workers that never became READY (at open, on demand or on restart).
    start_failures: int = 0
    #: Workers that ended, by reason: "stopped" (asked to), "crashed", "start_failed".
    exits: dict[str, int] = attrs.Factory(dict)
    #: Calls that waited in a busy worker's queue and were moved, unrun, to a free one.
    moved: int = 0
    #: The version new workers start from: 1 at open, +1 for each ``pool.upgrade()``
    #: that went through.
    version: int = 1
    #: The upgrade under way, else the last one (None before the first).
    rollout: Rollout | None = None


@attrs.frozen
class WorkerEvent:
    """A worker changed state (``state``), or the pool did something with it (``action``)."""

    pool: str
    worker_id: str  # "" for a step of an upgrade that concerns no single worker
    pid: int | None
    state: WorkerState | None  # None when worker_id is ""
    #: "state", "progress" (start-up), "checkout", "checkin", "recycle", "call",
    #: "upgrade" (a step of ``pool.upgrade()``: detail says which)
    action: str
    detail: str = ""


@attrs.frozen
class CallRecord:
    """One finished call, for telemetry: times are ``time.time_ns()``."""

    pool: str
    name: str
    worker_id: str
    pid: int | None
    start_ns: int
    end_ns: int
    error: str | None  # the exception's type name, or None

    @property
    def duration(self) -> float:
        """Seconds from the call's start to its end."""
        return (self.end_ns - self.start_ns) / 1e9


def _unsubscriber(callbacks: list[Callable[..., None]], callback: Callable[..., None]) -> Callable[[], None]:
    callbacks.append(callback)
    return lambda: callbacks.remove(callback) if callback in callbacks else None


class Telemetry:
    """A pool's counters, latency window, event subscribers and call observers (a plain
    class: attrs compiles each class's generated methods at import, ~0.5 ms a class)."""

    __slots__ = (
        "exits",
        "failed",
        "latencies",
        "moved",
        "observers",
        "pool_name",
        "restart_attempts",
        "served",
        "start_failures",
        "subscribers",
    )

    def __init__(self, pool_name: str) -> None:
        self.pool_name = pool_name
        self.served = 0
        self.failed = 0
        self.restart_attempts = 0  # every automatic restart attempt, failed ones included
        self.start_failures = 0
        self.moved = 0  # queued calls given back by a busy worker and sent to a free one
        self.exits: dict[str, int] = {}
        self.latencies: deque[float] = deque(maxlen=2048)
        self.subscribers: list[Callable[[WorkerEvent], None]] = []
        self.observers: list[Callable[[CallRecord], None]] = []

    def worker_ended(self, reason: str) -> None:
        self.exits[reason] = self.exits.get(reason, 0) + 1
        if reason == "start_failed":
            self.start_failures += 1

    def subscribe(self, callback: Callable[[WorkerEvent], None]) -> Callable[[], None]:
        return _unsubscriber(self.subscribers, callback)

    def observe_calls(self, callback: Callable[[CallRecord], None]) -> Callable[[], None]:
        return _unsubscriber(self.observers, callback)

    def emit(self, worker: PoolWorker, action: str, detail: str = "") -> None:
        if self.subscribers:
            self._publish(WorkerEvent(self.pool_name, worker.id, worker.pid, worker.state, action, detail))
        if action != "call" and logger.isEnabledFor(logging.DEBUG):
            logger.debug("[%s] %s %s %s %s", self.pool_name, worker.id, action, worker.state.name, detail)

    def emit_pool(self, action: str, detail: str) -> None:
        """An event about the pool itself (a step of an upgrade), logged at INFO."""
        logger.info("[%s] %s", self.pool_name, detail)
        if self.subscribers:
            self._publish(WorkerEvent(self.pool_name, "", None, None, action, detail))

    def _publish(self, event: WorkerEvent) -> None:
        for callback in list(self.subscribers):
            callback(event)

    def observe(self, name: str, worker: PoolWorker, start_ns: int, error: BaseException | None) -> None:
        record = CallRecord(
            self.pool_name,
            name,
            worker.id,
            worker.pid,
            start_ns,
            time.time_ns(),
            None if error is None else type(error).__name__,
        )
        for callback in list(self.observers):
            callback(record)

    def percentiles(self, *ps: float) -> list[float | None]:
        lat = sorted(self.latencies)
        return [lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None for p in ps]
