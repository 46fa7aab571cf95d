"""The pool: a supervisor of workers plus a fair checkout queue.

Each worker slot is a PERMANENT child of a one_for_one ``DynamicSupervisor``; when a
worker dies the supervisor starts a fresh one (with backoff) and the pool hands it to
the next waiting caller. Checkout is FIFO; sessions pin callers to the worker that
first served them; a circuit breaker stops the pool from hammering a start-up that
keeps failing.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from corral._errors import (
    CheckoutTimeout,
    CircuitOpen,
    CorralError,
    InvalidSpec,
    PoolClosed,
    PoolSaturated,
    SessionLost,
)
from corral._shared import collapse as _collapse
from corral._shared import reraise as _reraise
from corral.supervisor._spec import Backoff, ChildSpec, Restart
from corral.supervisor._supervisor import DynamicSupervisor
from corral.workers._circuit import Circuit, CircuitBreaker, CircuitState
from corral.workers._forkserver import ForkServer, ForkServerLauncher
from corral.workers._launch import Command, Launcher, PythonModule, as_launcher
from corral.workers._remote import SSH
from corral.workers._worker import Worker, WorkerInfo, WorkerState

logger = logging.getLogger("corral.pool")

DEFAULT_BACKOFF = Backoff(initial=0.05, maximum=2.0, multiplier=2.0, jitter=0.2, reset_after=5.0, immediate=1)
_DEFAULT = object()


@attrs.define(eq=False)
class _Placement:
    """Where workers can run (this machine, or one host): its own circuit breaker."""

    launcher: Launcher
    weight: float
    circuit: Circuit
    name: str
    live: int = 0


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


@attrs.frozen
class WorkerEvent:
    """A worker changed state (``state``), or the pool did something with it (``action``)."""

    pool: str
    worker_id: str
    pid: int | None
    state: WorkerState
    action: str  # "state", "checkout", "checkin", "recycle", "call"
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


class _Waiter:
    __slots__ = ("event", "lost", "worker")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.worker: Worker | None = None
        self.lost = False  # its session's worker died while it waited


def _check_number(name: str, value: object, *, minimum: float = 0.0, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    if not ok or value < minimum:  # type: ignore[operator]
        extra = " or None" if allow_none else ""
        raise InvalidSpec(name, f"must be a number >= {minimum}{extra}, got {value!r}")


def _check_int(name: str, value: object, *, minimum: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        extra = " or None" if allow_none else ""
        raise InvalidSpec(name, f"must be an int >= {minimum}{extra}, got {value!r}")


class Pool:
    """A supervised pool of worker processes. Create it with ``corral.open_pool``."""

    def __init__(
        self,
        handlers: str | Command | PythonModule | None,
        *,
        size: int = 4,
        min_size: int | None = None,
        lazy: bool = False,
        checkout_timeout: float | None = 60.0,
        request_timeout: float | None = None,
        init_timeout: float = 30.0,
        cancel_grace: float = 1.0,
        stop_timeout: float = 5.0,
        drain_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        max_requests: int | None = None,
        max_age: float | None = None,
        max_memory_mb: float | None = None,
        max_waiting: int | None = 10_000,
        session_ttl: float | None = 3600.0,
        restart: Restart = Restart.PERMANENT,
        max_restarts: int | None = None,
        max_seconds: float = 5.0,
        backoff: Backoff | object | None = _DEFAULT,
        circuit_breaker: CircuitBreaker | None = CircuitBreaker(),  # noqa: B008 - frozen value
        capture_stderr: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        max_frame: int = 64 * 1024 * 1024,
        name: str | None = None,
        hosts: Sequence[SSH | Command | PythonModule | str] | None = None,
        start_method: str = "spawn",
        pipeline: int = 1,
    ) -> None:
        if isinstance(handlers, str | type(None)):
            launcher: Command | PythonModule = PythonModule(handlers, env=dict(env) if env else None, cwd=cwd)
        else:
            launcher = as_launcher(handlers)
            if env is not None or cwd is not None:
                launcher = attrs.evolve(
                    launcher,
                    env={**(launcher.env or {}), **(env or {})},
                    cwd=cwd if cwd is not None else launcher.cwd,
                )
        self._launcher = launcher
        _check_int("size", size, minimum=1, allow_none=False)
        _check_int("min_size", min_size, minimum=0)
        if min_size is not None and min_size > size:
            raise InvalidSpec("min_size", f"must be <= size ({size}), got {min_size}")
        if not isinstance(lazy, bool):
            raise InvalidSpec("lazy", f"must be True or False, got {lazy!r}")
        for field, value in (
            ("checkout_timeout", checkout_timeout),
            ("request_timeout", request_timeout),
            ("max_age", max_age),
            ("max_memory_mb", max_memory_mb),
            ("session_ttl", session_ttl),
        ):
            _check_number(field, value)
        for field, value in (
            ("init_timeout", init_timeout),
            ("cancel_grace", cancel_grace),
            ("stop_timeout", stop_timeout),
            ("drain_timeout", drain_timeout),
            ("idle_timeout", idle_timeout),
            ("max_seconds", max_seconds),
        ):
            _check_number(field, value, allow_none=False)
        _check_int("max_requests", max_requests, minimum=1)
        _check_int("pipeline", pipeline, minimum=1, allow_none=False)
        self.pipeline = pipeline
        _check_int("max_waiting", max_waiting, minimum=0)
        _check_int("max_restarts", max_restarts, minimum=0)
        _check_int("max_frame", max_frame, minimum=1024, allow_none=False)
        if not isinstance(restart, Restart):
            raise InvalidSpec("restart", f"must be a corral.Restart, got {restart!r}")
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise InvalidSpec(
                "circuit_breaker", f"must be corral.CircuitBreaker(...) or None, got {circuit_breaker!r}"
            )
        if backoff is _DEFAULT:
            backoff = DEFAULT_BACKOFF
        if backoff is not None and not isinstance(backoff, Backoff):
            raise InvalidSpec("backoff", f"must be corral.Backoff(...) or None, got {backoff!r}")
        if max_restarts is None:
            # Unlimited restarts are only safe with a delay between them.
            max_restarts = sys.maxsize if backoff is not None else 10 * size
        self.name = name or "pool"
        self.size = size
        self.min_size = size if min_size is None and not lazy else (min_size or 0)
        self.lazy = lazy
        self.checkout_timeout = checkout_timeout
        self.request_timeout = request_timeout
        self.init_timeout = init_timeout
        self.cancel_grace = cancel_grace
        self.stop_timeout = stop_timeout
        self.drain_timeout = drain_timeout
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self.max_age = max_age
        self.max_memory_bytes = None if max_memory_mb is None else int(max_memory_mb * 1024 * 1024)
        self.max_waiting = max_waiting
        self.session_ttl = session_ttl
        self.restart = restart
        self.capture_stderr = capture_stderr
        self.max_frame = max_frame
        self._sup = DynamicSupervisor(
            max_children=size,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            backoff=backoff,
            name=f"{self.name}.supervisor",
        )
        if start_method not in ("spawn", "forkserver"):
            raise InvalidSpec("start_method", f'must be "spawn" or "forkserver", got {start_method!r}')
        if start_method == "forkserver" and (
            hosts is not None or not isinstance(self._launcher, PythonModule)
        ):
            raise InvalidSpec(
                "start_method",
                '"forkserver" forks local Python workers only (no hosts=, no corral.Command)',
            )
        self.start_method = start_method
        self._forkserver: ForkServerLauncher | None = None
        self._placements = self._make_placements(handlers, hosts, circuit_breaker)
        if start_method == "forkserver":
            assert isinstance(self._launcher, PythonModule)
            base = self._launcher
            server = ForkServer(base.module, base.python, base.env, base.cwd)
            self._forkserver = ForkServerLauncher(base, server)
            self._placements[0].launcher = self._forkserver
        self._placement_of: dict[Worker, _Placement] = {}
        self._slot_ids = itertools.count(1)
        self._incarnations = itertools.count(1)
        self._workers: dict[str, Worker] = {}  # live incarnations by worker id
        self._idle: deque[Worker] = deque()
        self._idle_since: dict[Worker, float] = {}
        self._waiters: deque[_Waiter] = deque()
        self._session_waiters: dict[Worker, deque[_Waiter]] = {}
        self._sessions: dict[Hashable, tuple[Worker, float]] = {}
        self._lost_sessions: set[Hashable] = set()
        self._leased: dict[Worker, int] = {}  # worker -> callers holding one of its places
        self._exclusive: set[Worker] = set()  # under an exclusive lease (pipelined workers)
        self._recycling: set[Worker] = set()
        self._unleased: dict[Worker, trio.Event] = {}  # a recycle waits for its callers
        self._pending_slots = 0
        self._closed = False
        self._open = False
        self._nursery: trio.Nursery | None = None
        self._drained = trio.Event()
        self._latencies: deque[float] = deque(maxlen=2048)
        self._served = 0
        self._failed = 0
        self._subscribers: list[Callable[[WorkerEvent], None]] = []
        self._start_faults: list[Any] = []  # corral.testing's injected start faults
        self._observers: list[Callable[[CallRecord], None]] = []

    def __repr__(self) -> str:
        return f"<Pool {self.name!r} size={self.size} workers={len(self._workers)}>"

    def _make_placements(
        self,
        handlers: str | Command | PythonModule | None,
        hosts: Sequence[SSH | Command | PythonModule | str] | None,
        breaker: CircuitBreaker | None,
    ) -> list[_Placement]:
        if hosts is None:
            return [_Placement(self._launcher, 1.0, Circuit(breaker), "local")]
        if isinstance(hosts, str) or not isinstance(hosts, Sequence) or not hosts:
            raise InvalidSpec("hosts", f"must be a non-empty list of hosts or corral.SSH(...), got {hosts!r}")
        module = handlers if isinstance(handlers, str) else None
        placements = []
        for i, host in enumerate(hosts):
            if isinstance(host, str):
                host = SSH(host)
            if isinstance(host, SSH):
                if host.module is None:
                    host = attrs.evolve(host, module=module)
                placements.append(_Placement(host, float(host.weight), Circuit(breaker), host.name))
            elif isinstance(host, Command | PythonModule):
                placements.append(_Placement(host, 1.0, Circuit(breaker), f"hosts[{i}]"))
            else:
                raise InvalidSpec(f"hosts[{i}]", f"must be a host name or corral.SSH(...), got {host!r}")
        return placements

    def _choose_placement(self) -> _Placement | None:
        """Least loaded by weight; hosts that just failed come last; open circuits never."""
        ranked = sorted(self._placements, key=lambda p: (p.circuit.failures > 0, p.live / p.weight))
        for placement in ranked:
            if placement.circuit.allow_start():
                return placement
        return None

    @property
    def _circuit_open(self) -> bool:
        return all(p.circuit.is_open for p in self._placements)

    def _retry_in(self) -> float:
        return min(p.circuit.retry_in() for p in self._placements)

    # -- events ------------------------------------------------------------------

    def subscribe(self, callback: Callable[[WorkerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every worker event; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def observe_calls(self, callback: Callable[[CallRecord], None]) -> Callable[[], None]:
        """Call ``callback(record)`` after every call (telemetry); returns the unsubscribe."""
        self._observers.append(callback)
        return lambda: self._observers.remove(callback) if callback in self._observers else None

    def _observe(self, name: str, worker: Worker, start_ns: int, error: BaseException | None) -> None:
        record = CallRecord(
            self.name,
            name,
            worker.id,
            worker.pid,
            start_ns,
            time.time_ns(),
            None if error is None else type(error).__name__,
        )
        for callback in list(self._observers):
            callback(record)

    @property
    def supervisor(self) -> DynamicSupervisor:
        """The supervisor that restarts the workers (its events, its children)."""
        return self._sup

    def _emit(self, worker: Worker, action: str, detail: str = "") -> None:
        if self._subscribers:
            event = WorkerEvent(self.name, worker.id, worker.pid, worker.state, action, detail)
            for callback in list(self._subscribers):
                callback(event)
        if action != "call" and logger.isEnabledFor(logging.DEBUG):
            logger.debug("[%s] %s %s %s %s", self.name, worker.id, action, worker.state.name, detail)

    # -- worker slots ----------------------------------------------------------

    async def _slot(self, *, task_status: trio.TaskStatus[Worker]) -> None:
        """One supervised slot: a fresh Worker each time the supervisor (re)starts it."""
        placement = self._choose_placement()
        if placement is None:
            raise CircuitOpen(
                f"pool {self.name!r}: workers keep failing to start; next try in {self._retry_in():.1f} s"
            )
        worker = Worker(
            placement.launcher,
            worker_id=f"w{next(self._incarnations)}",
            init_timeout=self.init_timeout,
            request_timeout=self.request_timeout,
            cancel_grace=self.cancel_grace,
            stop_timeout=self.stop_timeout,
            max_frame=self.max_frame,
            capture_stderr=self.capture_stderr,
            on_state=self._on_worker_state,
            pipeline=self.pipeline,
        )
        self._workers[worker.id] = worker
        self._placement_of[worker] = placement
        placement.live += 1
        fault = self._start_faults.pop(0) if self._start_faults else None
        try:
            if fault is not None:  # corral.testing: this start fails or waits
                await fault.wrap(worker.run)(task_status=task_status)
                return
            await worker.run(task_status=task_status)
        finally:
            placement.live -= 1
            self._forget(worker)
            self._placement_of.pop(worker, None)
            if worker.ready_at is None:
                placement.circuit.record_failure()
                self._wake_for_circuit()

    def _on_worker_state(self, worker: Worker, old: WorkerState, new: WorkerState) -> None:
        if self._subscribers or logger.isEnabledFor(logging.DEBUG):
            self._emit(worker, "state", f"{old.name} -> {new.name}")
        if new is WorkerState.READY:
            if old is WorkerState.STARTING:
                if worker in self._placement_of:
                    self._placement_of[worker].circuit.record_success()
                for _ in range(worker.depth):  # one place per request it may hold
                    self._checkin(worker)
            elif worker not in self._leased and worker.depth == 1:
                # Back from an interrupted call whose caller has left.
                self._checkin(worker)
        elif new in (WorkerState.FAILED, WorkerState.STOPPED):
            self._forget(worker)

    def _forget(self, worker: Worker) -> None:
        if self._workers.pop(worker.id, None) is None:
            return
        self._leased.pop(worker, None)
        self._exclusive.discard(worker)
        self._recycling.discard(worker)
        self._remove_places(worker)
        if worker in self._unleased:
            self._unleased.pop(worker).set()
        for session, (bound, _) in list(self._sessions.items()):
            if bound is worker:
                del self._sessions[session]
                self._lost_sessions.add(session)
        for waiter in self._session_waiters.pop(worker, ()):
            waiter.lost = True
            waiter.event.set()  # woken without a worker: SessionLost
        if self._closed and not self._leased:
            self._drained.set()

    def _wake_for_circuit(self) -> None:
        """When the circuit opens, callers waiting for a new worker fail fast."""
        if not self._circuit_open or self._workers:
            return
        while self._waiters:
            self._waiters.popleft().event.set()

    async def _add_slot(self) -> None:
        spec = ChildSpec(
            f"slot{next(self._slot_ids)}",
            self._slot,
            restart=self.restart,
            shutdown=self.stop_timeout + 2.0,
        )
        await self._sup.start_child(spec)

    def _ensure_capacity(self) -> None:
        """Lazy pools: start workers for waiting callers, up to ``size``."""
        if not self.lazy or self._closed or self._nursery is None or self._circuit_open:
            return
        while (
            self._pending_slots < len(self._waiters)
            and self._sup.count_children().specs + self._pending_slots < self.size
        ):
            self._pending_slots += 1
            self._nursery.start_soon(self._add_slot_on_demand)

    async def _add_slot_on_demand(self) -> None:
        try:
            await self._add_slot()
        except CorralError as exc:
            logger.warning("[%s] a worker failed to start: %s", self.name, exc.__cause__ or exc)
        finally:
            self._pending_slots -= 1
        if self._waiters:
            self._wake_for_circuit()
            self._ensure_capacity()

    async def _recycle(self, worker: Worker) -> None:
        """A planned replacement (max_requests, max_age, max_memory_mb): not a restart."""
        self._recycling.add(worker)
        self._remove_places(worker)
        self._emit(worker, "recycle")
        if worker in self._leased:  # pipelining: callers (an exclusive lease) still hold places
            self._unleased[worker] = done = trio.Event()
            await done.wait()
            if worker.id not in self._workers:
                return
        slot = self._slot_of(worker)
        if slot is None:
            worker.stop()
            return
        try:
            await self._sup.terminate_child(slot)
            if not self._closed and self._sup.count_children().specs < max(self.min_size, 1):
                await self._add_slot()
            elif not self._closed and self._waiters:
                self._ensure_capacity()
                if self._pending_slots == 0 and self._sup.count_children().specs < self.size:
                    await self._add_slot()
        except CorralError as exc:
            logger.warning("[%s] recycling %s: %s", self.name, worker.id, exc)

    # -- checkout --------------------------------------------------------------

    def _remove_places(self, worker: Worker) -> None:
        while worker in self._idle:
            self._idle.remove(worker)
        self._idle_since.pop(worker, None)

    def _hold(self, worker: Worker) -> None:
        self._leased[worker] = self._leased.get(worker, 0) + 1

    def _unhold(self, worker: Worker) -> None:
        n = self._leased.get(worker, 0) - 1
        if n > 0:
            self._leased[worker] = n
        else:
            self._leased.pop(worker, None)
            if worker in self._unleased:
                self._unleased.pop(worker).set()

    def _checkin(self, worker: Worker) -> None:
        """One place on a worker is free: hand it to the first waiter that may use it.
        (A worker has one place, or ``pipeline`` places when it pipelines requests.)"""
        if not worker.available or worker.id not in self._workers or worker in self._recycling:
            return
        if self._recycle_due(worker):
            self._nursery_start(self._recycle, worker)
            return
        if worker in self._exclusive:  # its lease holder alone may use it
            self._idle.append(worker)
            return
        queue = self._session_waiters.get(worker)
        while queue:
            waiter = queue.popleft()
            if not waiter.event.is_set():
                self._lease(worker, waiter)
                return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.event.is_set():
                self._lease(worker, waiter)
                return
        self._idle.append(worker)
        self._idle_since[worker] = trio.current_time()

    def _lease(self, worker: Worker, waiter: _Waiter) -> None:
        self._hold(worker)
        waiter.worker = worker
        waiter.event.set()

    def _recycle_due(self, worker: Worker) -> bool:
        if self._closed:
            return False
        if self.max_requests is not None and worker.served >= self.max_requests:
            return True
        if (
            self.max_age is not None
            and worker.served  # never before a first call: max_age=0 looped start/recycle
            and worker.ready_at is not None
            and trio.current_time() - worker.ready_at >= self.max_age
        ):
            return True
        if self.max_memory_bytes is not None and worker.served:  # a fresh worker serves once first
            rss = worker.rss_bytes()
            if rss is not None and rss > self.max_memory_bytes:
                return True
        return False

    def _check_open(self) -> None:
        if self._closed or not self._open:
            raise PoolClosed(
                f"pool {self.name!r} is closed; use it inside its `async with corral.open_pool(...)` block"
            )

    async def _acquire(self, session: Hashable | None, timeout: float | None) -> Worker:
        self._check_open()
        if session is not None:
            if session in self._lost_sessions:
                self._lost_sessions.discard(session)
                raise SessionLost(
                    f"the worker that held session {session!r} died; its state is gone. "
                    "The next call binds the session to a new worker."
                )
            bound = self._sessions.get(session)
            if bound is not None:
                worker, last = bound
                if self.session_ttl is not None and trio.current_time() - last > self.session_ttl:
                    del self._sessions[session]
                else:
                    return await self._acquire_specific(session, worker, timeout)
        worker = await self._acquire_any(timeout, spread=session is not None)
        if session is not None:
            self._sessions[session] = (worker, trio.current_time())
        return worker

    def _take_idle(self, spread: bool = False) -> Worker | None:
        """LIFO (the warmest worker: hot caches, an awake CPU), except for a new session,
        which goes to the idle worker holding the fewest sessions so that state, memory
        and the cost of one crash are spread over the pool."""
        if spread and len(self._idle) > 1:
            load: dict[Worker, int] = {}
            for bound, _ in self._sessions.values():
                load[bound] = load.get(bound, 0) + 1
            best = min(reversed(self._idle), key=lambda w: load.get(w, 0))
            self._idle.remove(best)
            self._idle.append(best)
        if self.pipeline > 1 and len(self._idle) > 1 and not spread:
            # Pipelining: the worker holding the fewest requests, so that a call waits
            # behind another only when every worker is busy.
            held = self._leased
            best = min(reversed(self._idle), key=lambda w: held.get(w, 0))
            if best is not self._idle[-1]:
                self._idle.remove(best)
                self._idle.append(best)
        skipped: list[Worker] = []
        try:
            while self._idle:
                worker = self._idle.pop()
                if worker in self._exclusive:
                    skipped.append(worker)
                    continue
                if worker not in self._idle:
                    self._idle_since.pop(worker, None)
                if worker.available and worker.alive and worker.id in self._workers:
                    self._hold(worker)
                    return worker
            return None
        finally:
            self._idle.extend(reversed(skipped))

    async def _acquire_any(self, timeout: float | None, *, spread: bool = False) -> Worker:
        await trio.lowlevel.checkpoint_if_cancelled()  # before leasing: a cancel leaks no worker
        worker = self._take_idle(spread)
        if worker is not None:
            return worker  # the call itself schedules
        if self._circuit_open and not self._workers:
            raise CircuitOpen(
                f"pool {self.name!r}: workers keep failing to start; calls fail fast for "
                f"{self._retry_in():.1f} s more"
            )
        if self.max_waiting is not None and len(self._waiters) >= self.max_waiting:
            raise PoolSaturated(
                f"pool {self.name!r}: {len(self._waiters)} callers already wait for a worker "
                f"(max_waiting={self.max_waiting}); shed load or raise max_waiting"
            )
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._ensure_capacity()
        return await self._wait(waiter, timeout, None)

    async def _acquire_specific(self, session: Hashable, worker: Worker, timeout: float | None) -> Worker:
        if worker.available and not worker.alive:
            # It died and the pool has not noticed yet: unbind now, so it is lost once.
            del self._sessions[session]
            raise SessionLost(f"the worker that held session {session!r} died; its state is gone")
        if worker in self._idle and worker not in self._exclusive:
            await trio.lowlevel.checkpoint_if_cancelled()  # before leasing: a cancel leaks no worker
            self._idle.remove(worker)
            if worker not in self._idle:
                self._idle_since.pop(worker, None)
            self._hold(worker)
            self._sessions[session] = (worker, trio.current_time())
            return worker
        waiter = _Waiter()
        self._session_waiters.setdefault(worker, deque()).append(waiter)
        got = await self._wait(waiter, timeout, session)
        self._sessions[session] = (got, trio.current_time())
        return got

    async def _wait(self, waiter: _Waiter, timeout: float | None, session: Hashable | None) -> Worker:
        if timeout is None:
            timeout = self.checkout_timeout
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await waiter.event.wait()
        except BaseException:
            if waiter.worker is not None:  # handed a worker just as we were cancelled
                self._release(waiter.worker)
            self._abandon(waiter)
            raise
        if waiter.worker is None:
            self._abandon(waiter)
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} closed while the caller waited")
            if waiter.lost:
                self._lost_sessions.discard(session)
                raise SessionLost(f"the worker that held session {session!r} died while the caller waited")
            if self._circuit_open and not self._workers:
                raise CircuitOpen(f"pool {self.name!r}: workers keep failing to start")
            raise CheckoutTimeout(
                f"pool {self.name!r}: no worker became free within checkout_timeout={timeout} s "
                f"({len(self._workers)} workers, {len(self._waiters)} callers waiting)"
            )
        return waiter.worker

    def _abandon(self, waiter: _Waiter) -> None:
        waiter.event.set()  # set without a worker: _checkin skips it
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _release(self, worker: Worker) -> None:
        self._unhold(worker)
        if self._subscribers:
            self._emit(worker, "checkin")
        if worker.available:
            self._checkin(worker)
        # else: an interrupted call is unwinding (checked in when READY) or it died.
        if self._closed and not self._leased:
            self._drained.set()

    # -- the API ---------------------------------------------------------------

    async def call(
        self, name: str, *args: Any, session: Hashable | None = None, timeout: float | None = None
    ) -> Any:
        """Run ``name(*args)`` from the handler module in a worker; return its result.

        ``session`` pins the call to the worker that served that session before.
        ``timeout`` overrides ``request_timeout`` for this call.
        """
        if not isinstance(name, str):
            raise TypeError(f"pool.call() takes the handler's name as a str, got {name!r}")
        worker = await self._acquire(session, None)
        return await self._call_on(worker, "call", name, args, timeout)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run a picklable callable in a worker (Python runtime only); return its result."""
        worker = await self._acquire(None, None)
        return await self._call_on(worker, "apply", fn, args, timeout)

    async def _call_on(self, worker: Worker, kind: str, target: Any, args: Any, timeout: float | None) -> Any:
        start = trio.current_time()
        start_ns = time.time_ns() if self._observers else 0
        try:
            if kind == "call":
                result = await worker.call(target, *args, timeout=timeout)
            else:
                result = await worker.run_sync(target, *args, timeout=timeout)
        except BaseException as exc:
            if isinstance(exc, CorralError):
                self._failed += 1
            if self._observers:
                self._observe(
                    target if kind == "call" else getattr(target, "__name__", "run_sync"),
                    worker,
                    start_ns,
                    exc,
                )
            raise
        finally:
            self._release(worker)
        self._served += 1
        self._latencies.append(trio.current_time() - start)
        if self._observers:
            self._observe(
                target if kind == "call" else getattr(target, "__name__", "run_sync"), worker, start_ns, None
            )
        return result

    @asynccontextmanager
    async def checkout(
        self, session: Hashable | None = None, timeout: float | None = None
    ) -> AsyncIterator[Lease]:
        """An exclusive lease on one worker for several calls."""
        worker = await self._acquire(session, timeout)
        lease = Lease(worker, self)
        exclusive = worker.depth > 1
        if exclusive:  # a pipelining worker: no new requests from others until the end
            self._exclusive.add(worker)
        self._emit(worker, "checkout")
        try:
            yield lease
        finally:
            lease._valid = False
            if exclusive:
                self._exclusive.discard(worker)
                held = self._idle.count(worker)
                self._remove_places(worker)
                for _ in range(held):  # its places go to whoever waited meanwhile
                    self._checkin(worker)
            self._release(worker)

    def workers(self) -> list[WorkerInfo]:
        """A frozen ``WorkerInfo`` per live worker (id, pid, state, calls served). Never waits."""
        return [w.info() for w in self._workers.values()]

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool, cheap and safe to log or export. Never waits."""
        by_state = {state.name: 0 for state in WorkerState}
        for w in self._workers.values():
            by_state[w.state.name] += 1
        lat = sorted(self._latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, int(p * len(lat)))]

        return PoolStatistics(
            size=self.size,
            workers_by_state=by_state,
            waiting=sum(1 for w in self._waiters if not w.event.is_set())
            + sum(1 for q in self._session_waiters.values() for w in q if not w.event.is_set()),
            served=self._served,
            failed=self._failed,
            restarts=sum(info.restarts for info in self._sup.which_children()),
            circuit=self._circuit_summary(),
            latency_p50=pct(0.50),
            latency_p90=pct(0.90),
            latency_p99=pct(0.99),
            sessions=len(self._sessions),
        )

    @property
    def circuit_state(self) -> CircuitState:
        """The breaker's state (with several hosts: the healthiest host's)."""
        states = [p.circuit.state for p in self._placements]
        for state in (CircuitState.CLOSED, CircuitState.HALF_OPEN):
            if state in states:
                return state
        return CircuitState.OPEN

    def _circuit_summary(self) -> str:
        if len(self._placements) == 1:
            return self._placements[0].circuit.state.value
        return ", ".join(f"{p.name}: {p.circuit.state.value}" for p in self._placements)

    # -- running ---------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._forkserver is not None:
                await nursery.start(self._run_forkserver)
            await nursery.start(self._sup.run)
            if not self.lazy:
                await self._start_eagerly()
            elif self.min_size:
                await self._start_eagerly(self.min_size)
            self._open = True
            nursery.start_soon(self._housekeeping)
            task_status.started()

    async def _run_forkserver(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Keep a fork-server template running; a new one replaces one that died (its
        workers die with it, by PDEATHSIG, and the supervisor restarts them)."""
        assert self._forkserver is not None
        launcher = self._forkserver
        started = False
        while True:
            try:
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(launcher.server.run)
                        if not started:
                            started = True
                            task_status.started()
                except BaseExceptionGroup as group:
                    _reraise(_collapse(group))
            except CorralError as exc:
                if not started:
                    raise
                logger.warning("[%s] fork server failed: %s; starting a new one", self.name, exc)
            await trio.sleep(0.05)
            base = launcher.base
            launcher.server = ForkServer(base.module, base.python, base.env, base.cwd)

    async def _start_eagerly(self, count: int | None = None) -> None:
        """Start every worker at once; fail the open if any of them cannot start."""
        failures: list[BaseException] = []

        async def one() -> None:
            # With several hosts, a start that failed on one is tried again (the failed
            # host now ranks last): one host down does not keep the whole pool shut.
            for attempt in range(len(self._placements)):
                try:
                    await self._add_slot()
                    return
                except CorralError as exc:
                    if attempt + 1 == len(self._placements) or self._circuit_open:
                        failures.append(exc)
                        return

        async with trio.open_nursery() as nursery:
            for _ in range(count if count is not None else self.size):
                nursery.start_soon(one)
        if failures:
            raise failures[0]

    async def _housekeeping(self) -> None:
        """Idle shrink (lazy pools), age-based recycling of idle workers, session expiry."""
        while True:
            await trio.sleep(min(1.0, self.idle_timeout / 2))
            now = trio.current_time()
            if self.lazy:
                for worker, since in list(self._idle_since.items()):
                    if (
                        now - since >= self.idle_timeout
                        and len(self._workers) > self.min_size
                        and worker not in self._leased
                    ):
                        self._remove_places(worker)
                        slot = self._slot_of(worker)
                        if slot is not None:
                            self._nursery_start(self._shrink, slot)
            for worker in set(self._idle):
                if worker not in self._recycling and self._recycle_due(worker):
                    self._remove_places(worker)
                    self._nursery_start(self._recycle, worker)
            if self.session_ttl is not None:
                for session, (_, last) in list(self._sessions.items()):
                    if now - last > self.session_ttl:
                        del self._sessions[session]

    def _nursery_start(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def _slot_of(self, worker: Worker) -> Hashable | None:
        for info in self._sup.which_children():
            if info.value is worker:
                return info.id
        return None

    async def _shrink(self, slot: Hashable) -> None:
        try:
            await self._sup.terminate_child(slot)
        except CorralError:
            pass

    async def _close(self) -> None:
        """Stop taking calls, let running ones finish (drain_timeout), stop the workers."""
        self._closed = True
        for waiter in list(self._waiters):
            waiter.event.set()
        for queue in self._session_waiters.values():
            for waiter in queue:
                waiter.event.set()
        if self._leased:
            with trio.move_on_after(self.drain_timeout):
                await self._drained.wait()
        await self._sup.stop()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()


class Lease:
    """Exclusive use of one worker inside ``async with pool.checkout()``."""

    def __init__(self, worker: Worker, pool: Pool) -> None:
        self._worker = worker
        self._pool = pool
        self._valid = True

    @property
    def id(self) -> str:
        """The leased worker's id (as in ``pool.workers()`` and its logger's name)."""
        return self._worker.id

    @property
    def pid(self) -> int | None:
        """The leased worker's process id."""
        return self._worker.pid

    def _check(self) -> Worker:
        if not self._valid:
            raise PoolClosed("this lease has ended; take a new one with pool.checkout()")
        return self._worker

    async def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """``pool.call`` on this worker; raises ``PoolClosed`` after the lease's block."""
        return await self._check().call(name, *args, timeout=timeout)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """``pool.run_sync`` on this worker; raises ``PoolClosed`` after the lease's block."""
        return await self._check().run_sync(fn, *args, timeout=timeout)

    def __repr__(self) -> str:
        return f"<Lease of {self._worker!r}>"


@asynccontextmanager
async def open_pool(handlers: str | Command | PythonModule | None, **options: Any) -> AsyncIterator[Pool]:
    """Run a pool of supervised worker processes for the duration of the block.

    Eager (default): the body runs once every worker is READY. A pool that cannot
    open raises one ``CorralError``; leaving the block drains running calls and stops
    the workers; any use afterwards raises ``PoolClosed``.
    """
    pool = Pool(handlers, **options)
    started_at = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(pool._run)
            except BaseException:
                pool._closed = True
                raise
            logger.info(
                "[%s] open: %d worker(s) ready in %.3f s",
                pool.name,
                len(pool._workers),
                time.monotonic() - started_at,
            )
            try:
                yield pool
            finally:
                await pool._close()
    except BaseExceptionGroup as group:
        _reraise(_collapse(group))
    finally:
        pool._closed = True
        pool._open = False
