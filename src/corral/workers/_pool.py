"""The pool: a supervisor of workers plus a fair checkout queue (the facade).

Each worker slot is a PERMANENT child of a one_for_one ``DynamicSupervisor``; when a
worker dies the supervisor starts a fresh one (with backoff) and the pool hands it to
the next waiting caller. Checkout is FIFO; sessions pin callers to the worker that
first served them; a circuit breaker stops the pool from hammering a start-up that
keeps failing. The parts live apart (docs/internals.md has the map): the options
(``_options``), one record per worker (``_member``), places and waiters
(``_checkout``), sessions (``_sessions``), placements and breakers (``_placement``),
slots and housekeeping (``_slots``), recycling (``_recycling``), telemetry
(``_telemetry``), and the worker seam (``_seam``). This module wires them and keeps
the API: ``Pool``, ``Lease`` and ``open_pool``.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec

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
from corral._shared import collapse, reraise
from corral.supervisor._spec import Backoff, Restart
from corral.supervisor._supervisor import DynamicSupervisor
from corral.workers._checkout import Checkout
from corral.workers._circuit import CircuitBreaker, CircuitState
from corral.workers._launch import Command, PythonModule, as_launcher
from corral.workers._member import Member, Waiter
from corral.workers._options import DEFAULT_BACKOFF, DEFAULT_MAX_FRAME, PoolOptions
from corral.workers._placement import Placements
from corral.workers._release import Release
from corral.workers._requests import ProgressCallback, Withdrawn
from corral.workers._seam import PoolWorker, WorkerFactory, process_worker
from corral.workers._sessions import SessionTable
from corral.workers._slots import Slots
from corral.workers._stream import Stream
from corral.workers._telemetry import CallRecord, PoolStatistics, Telemetry, WorkerEvent
from corral.workers._worker import WorkerInfo, WorkerState

if TYPE_CHECKING:
    from corral.workers._remote import SSH
    from corral.workers._rollout import Rollout, Upgrade

P = ParamSpec("P")
_OPTION_NAMES = tuple(attrs.fields_dict(PoolOptions))

__all__ = ["CallRecord", "Lease", "Pool", "PoolStatistics", "WorkerEvent", "open_pool"]

logger = logging.getLogger("corral.pool")


def _launcher(
    handlers: str | Command | PythonModule | None, env: Mapping[str, str] | None, cwd: str | None
) -> Command | PythonModule:
    if isinstance(handlers, str | type(None)):
        return PythonModule(handlers, env=dict(env) if env else None, cwd=cwd)
    launcher = as_launcher(handlers)
    if env is None and cwd is None:
        return launcher
    return attrs.evolve(
        launcher,
        env={**(launcher.env or {}), **(env or {})},
        cwd=cwd if cwd is not None else launcher.cwd,
    )


class _Same(enum.Enum):
    SAME = "the same handlers"


_SAME = _Same.SAME
#: What ``pool.upgrade(**options)`` may change: what each new worker starts with, and
#: the limits that recycle it. The rest shapes the pool itself (its size, its queue,
#: where workers run); change those by opening a new pool.
UPGRADABLE_OPTIONS = (
    "env",
    "cwd",
    "init_timeout",
    "request_timeout",
    "cancel_grace",
    "stop_timeout",
    "max_frame",
    "capture_stderr",
    "stream_window",
    "codec",
    "max_requests",
    "max_age",
    "max_memory_mb",
)


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
        backoff: Backoff | None = DEFAULT_BACKOFF,
        circuit_breaker: CircuitBreaker | None = CircuitBreaker(),  # noqa: B008 - frozen value
        capture_stderr: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        name: str | None = None,
        hosts: Sequence[SSH | Command | PythonModule | str] | None = None,
        start_method: str = "spawn",
        pipeline: int = 4,
        stream_window: int = 8,
        on_event: Callable[[WorkerEvent], None] | None = None,
        codec: str | None = None,
        worker_factory: WorkerFactory = process_worker,
    ) -> None:
        if os.environ.get("CORRAL_LOADING_MAIN"):
            raise RuntimeError(
                "open_pool() ran while a worker loaded your main script for run_sync: put the "
                'code that opens pools under `if __name__ == "__main__":`'
            )
        launcher = _launcher(handlers, env, cwd)
        # One source of truth: the keyword arguments above are PoolOptions' fields
        # (tests/test_pool_logic.py checks names and defaults never drift).
        given = locals()
        options = PoolOptions(**{name: given[name] for name in _OPTION_NAMES})
        self.name = name or "pool"
        placements = Placements(launcher, handlers, hosts, circuit_breaker, start_method, init_timeout)
        release = Release(1, handlers, placements, options)
        self._checkout = Checkout(pipeline)
        self._sessions = SessionTable(session_ttl)
        self._telemetry = Telemetry(self.name)
        if on_event is not None:  # before any worker exists: it sees every event
            self._telemetry.subscribe(on_event)
        self._slots = Slots(
            self.name,
            release,
            self._checkout,
            self._sessions,
            self._telemetry,
            worker_factory,
        )
        self._open = False
        self._rollout: Upgrade | None = None  # the upgrade under way
        self._versions = 1  # the last version number handed out

    @property
    def options(self) -> PoolOptions:
        """The options new workers start with (``upgrade()`` may change some)."""
        return self._slots.options

    @property
    def _placements(self) -> Placements:
        return self._slots.placements

    @property
    def version(self) -> int:
        """The version new workers start from: 1 at open, +1 per ``upgrade()`` that went
        through (a rolled-back upgrade uses a number, too)."""
        return self._slots.release.number

    @property
    def size(self) -> int:
        """The most workers this pool runs at once."""
        return self.options.size

    def __repr__(self) -> str:
        return f"<Pool {self.name!r} size={self.size} workers={len(self._slots.members)}>"

    # -- events ------------------------------------------------------------------

    def subscribe(self, callback: Callable[[WorkerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every worker event; returns the unsubscribe function."""
        return self._telemetry.subscribe(callback)

    def observe_calls(self, callback: Callable[[CallRecord], None]) -> Callable[[], None]:
        """Call ``callback(record)`` after every call (telemetry); returns the unsubscribe."""
        return self._telemetry.observe_calls(callback)

    @property
    def supervisor(self) -> DynamicSupervisor:
        """The supervisor that restarts the workers (its events, its children)."""
        return self._slots.sup

    # -- the API ---------------------------------------------------------------

    async def call(
        self,
        name: str,
        *args: Any,
        session: Hashable | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``name(*args, **kwargs)`` from the handler module in a worker; return its
        result.

        ``session`` pins the call to the worker that served that session before.
        ``timeout`` overrides ``request_timeout`` for this call. ``on_progress`` is
        called with each `Progress` the handler reports (``corral_child.progress``).
        Those three names are corral's: a handler argument of the same name must be
        passed positionally.
        """
        if not isinstance(name, str):
            raise TypeError(f"pool.call() takes the handler's name as a str, got {name!r}")
        member = await self._acquire(session, None)
        return await self._call_on(member, "call", name, args, timeout, kwargs, on_progress, session is None)

    async def run_sync(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run a picklable callable in a worker (Python runtime only); return its result."""
        if self.options.codec == "json":
            raise TypeError(
                f"pool {self.name!r} speaks JSON (codec='json'): run_sync would send a pickled "
                "function; call a handler by name with pool.call() instead"
            )
        member = await self._acquire(None, None)
        return await self._call_on(member, "apply", fn, args, timeout, kwargs, on_progress)

    @asynccontextmanager
    async def stream(
        self,
        name: str,
        *args: Any,
        session: Hashable | None = None,
        timeout: float | None = None,
        chunk_timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Stream]:
        """Run a handler that yields (a generator) in a worker, and iterate over its chunks::

            async with pool.stream("generate", prompt, max_tokens=50) as chunks:
                async for token in chunks:
                    print(token, end="")

        The worker holds at most ``stream_window`` chunks ahead of you (credit: a slow
        consumer slows the generator down, and nothing piles up). Leaving the block
        early, or being cancelled, stops the generator in the worker (its ``finally``
        runs) and the worker serves on. ``timeout`` bounds the whole stream (default
        ``request_timeout``), ``chunk_timeout`` each wait for the next chunk. The worker
        is yours alone for the block's duration, as with ``checkout``.
        """
        if not isinstance(name, str):
            raise TypeError(f"pool.stream() takes the handler's name as a str, got {name!r}")
        member = await self._acquire(session, None)
        telemetry = self._telemetry
        worker = member.worker
        start = trio.current_time()
        start_ns = time.time_ns() if telemetry.observers else 0
        error: BaseException | None = None
        try:
            with self._exclusively(member):
                async with worker.stream(
                    name,
                    *args,
                    timeout=timeout,
                    chunk_timeout=chunk_timeout,
                    on_progress=on_progress,
                    **kwargs,
                ) as chunks:
                    yield chunks
        except BaseException as exc:
            error = exc
            if isinstance(exc, CorralError):
                telemetry.failed += 1
            raise
        finally:
            self._release(member)
            if error is None:
                telemetry.served += 1
                telemetry.latencies.append(trio.current_time() - start)
            if telemetry.observers:  # one record per stream, as per call
                telemetry.observe(name, worker, start_ns, error)

    async def _call_on(
        self,
        member: Member,
        kind: str,
        target: Any,
        args: Any,
        timeout: float | None,
        kwargs: dict[str, Any],
        on_progress: ProgressCallback | None,
        movable: bool = True,
    ) -> Any:
        telemetry = self._telemetry
        worker = member.worker
        start = trio.current_time()
        start_ns = time.time_ns() if telemetry.observers else 0
        held: Member | None = member
        try:
            while True:
                try:
                    result = await worker.submit(kind, target, args, kwargs, timeout, on_progress, movable)
                    break
                except Withdrawn:
                    # It waited behind another call while a worker went idle: it was
                    # given back unrun, and goes wherever a place is free first.
                    telemetry.moved += 1
                    self._release(member)
                    held = None
                    member = held = await self._acquire(None, None)
                    worker = member.worker
        except BaseException as exc:
            if isinstance(exc, CorralError):
                telemetry.failed += 1
            if telemetry.observers:
                telemetry.observe(_call_name(kind, target), worker, start_ns, exc)
            raise
        finally:
            if held is not None:
                self._release(held)
        telemetry.served += 1
        telemetry.latencies.append(trio.current_time() - start)
        if telemetry.observers:
            telemetry.observe(_call_name(kind, target), worker, start_ns, None)
        return result

    @asynccontextmanager
    async def checkout(
        self, session: Hashable | None = None, timeout: float | None = None
    ) -> AsyncIterator[Lease]:
        """An exclusive lease on one worker for several calls."""
        member = await self._acquire(session, timeout)
        lease = Lease(member.worker, self)
        self._telemetry.emit(member.worker, "checkout")
        try:
            with self._exclusively(member):
                yield lease
        finally:
            lease._valid = False
            self._release(member)

    @contextmanager
    def _exclusively(self, member: Member) -> Iterator[None]:
        """No new requests from others on a pipelining worker until the block ends (a
        lease, a stream); then its free places go to whoever waited meanwhile."""
        if member.worker.depth == 1 or member.exclusive:
            yield
            return
        member.exclusive = True
        try:
            yield
        finally:
            member.exclusive = False
            held = self._checkout.idle.count(member)
            self._checkout.remove_places(member)
            for _ in range(held):
                self._slots.checkin(member)

    def workers(self) -> list[WorkerInfo]:
        """A frozen ``WorkerInfo`` per live worker (id, pid, state, calls served, the
        version it runs). Never waits."""
        return [attrs.evolve(m.worker.info(), version=m.release.number) for m in self._slots.members.values()]

    def end_session(self, session: Hashable) -> None:
        """The session is over: forget its binding, so its worker no longer holds it (an
        upgrade with ``sessions="wait"`` waits for exactly this). Its next call, if any,
        starts a new session. The worker keeps whatever state your handlers left."""
        member = self._sessions.lookup_quietly(session)
        self._sessions.unbind(session)
        self._sessions.forget_lost(session)
        if member is not None:  # its callers queued for that worker go wherever is free
            self._checkout.move_session_waiters(member, session)

    # -- upgrades ----------------------------------------------------------------

    async def upgrade(
        self,
        handlers: str | Command | PythonModule | _Same | None = _SAME,
        *,
        surge: int = 1,
        unavailable: int = 0,
        probation: float = 1.0,
        sessions: str = "wait",
        session_deadline: float = 30.0,
        **options: Any,
    ) -> Rollout:
        """Replace every worker with one of a new version, without failing a call.

        The new version is ``handlers`` (default: the same module or command, which new
        workers load from disk again) with ``options`` changed (any of
        ``UPGRADABLE_OPTIONS``: env, cwd, timeouts, recycling limits...). Workers are
        replaced in batches: at most ``surge`` over the pool's count and ``unavailable``
        under it; each new worker must be READY and live ``probation`` seconds before
        an old one drains (its calls finish) and stops. A new worker takes calls as soon
        as it is READY. Sessions on an old worker: ``"wait"`` until they end
        (``end_session`` or ``session_ttl``), up to ``session_deadline`` seconds for the
        whole upgrade, then move; ``"move"`` at once (``SessionLost`` once, as a crash).

        A new worker that cannot start (its ``init()`` raised, say) or dies on probation
        judges the version failing: the pool rolls back to the old version and this
        raises ``UpgradeFailed`` (the cause chained). Returns the finished ``Rollout``.
        docs/pool.md, "Upgrading without downtime".
        """
        from corral.workers._rollout import Upgrade, check_upgrade  # on first use: most pools never upgrade

        self._check_open()
        check_upgrade(surge, unavailable, probation, sessions, session_deadline)
        running = self._rollout
        if running is not None and running.abandoned:
            await running.finished.wait()  # the rollback of a cancelled upgrade, first
            self._check_open()
        elif running is not None:
            raise RuntimeError(
                f"pool {self.name!r} is already upgrading to version {running.new.number}; "
                "wait for that upgrade() to return before starting another"
            )
        new = self._new_release(handlers, options)
        rollout = Upgrade(
            self._slots,
            new,
            surge=surge,
            unavailable=unavailable,
            probation=probation,
            sessions=sessions,
            session_deadline=session_deadline,
        )
        # The rollout is the pool's work, not the caller's: a caller cancelled halfway
        # must not leave old workers half drained. It runs in the pool's nursery; a
        # cancelled caller leaves at once, and the rollout rolls itself back.
        self._rollout = rollout
        outcome: list[Rollout | BaseException] = []

        async def drive() -> None:
            try:
                outcome.append(await rollout.run())
            except trio.Cancelled:
                raise  # the pool closes: the caller gets PoolClosed
            except BaseException as exc:
                if isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None:
                    raise  # the same, from the rollout's own nurseries
                outcome.append(exc)  # for the caller; nobody's, if it was cancelled
            finally:
                self._rollout = None
                rollout.finished.set()

        assert self._slots.nursery is not None
        self._slots.nursery.start_soon(drive)
        try:
            await rollout.finished.wait()
        except BaseException:
            if not outcome:
                rollout.abandon()
            raise
        if self._slots.closed or not outcome:
            raise PoolClosed(f"pool {self.name!r} closed during the upgrade")
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _new_release(self, handlers: object, changes: dict[str, Any]) -> Release:
        """The next version, validated before anything changes (a bad field: InvalidSpec)."""
        for field in changes:
            if field not in UPGRADABLE_OPTIONS:
                why = "is not an option" if field not in _OPTION_NAMES else "cannot change in an upgrade"
                allowed = ", ".join(UPGRADABLE_OPTIONS)
                raise InvalidSpec(
                    field, f"{why}; upgrade() changes the handlers and these options: {allowed}"
                )
        current = self._slots.release
        options = attrs.evolve(current.options, **changes)
        if options.hosts is not None:
            _check_hosts_upgrade(options.hosts, handlers, changes)
        if isinstance(handlers, _Same):
            handlers = current.handlers
        launcher = _launcher(handlers, options.env, options.cwd)  # type: ignore[arg-type]
        if isinstance(launcher, PythonModule) and launcher.module is not None:
            from corral.workers._protocol import refresh_bytecode

            refresh_bytecode(launcher.module)
        placements = Placements(
            launcher,
            handlers,
            options.hosts,
            options.circuit_breaker,
            options.start_method,
            options.init_timeout,
        )
        return Release(self._next_version(), handlers, placements, options)

    def _next_version(self) -> int:
        self._versions += 1
        return self._versions

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool, cheap and safe to log or export. Never waits."""
        members = list(self._slots.members.values())
        by_state = {state.name: 0 for state in WorkerState}
        for m in members:
            by_state[m.worker.state.name] += 1
        by_state["RESTARTING"] = self._slots.restarting()  # a dead worker's slot, not yet back
        telemetry = self._telemetry
        p50, p90, p99 = telemetry.percentiles(0.50, 0.90, 0.99)
        return PoolStatistics(
            size=self.size,
            workers_by_state=by_state,
            waiting=self._checkout.queued,
            served=telemetry.served,
            failed=telemetry.failed,
            restarts=telemetry.restart_attempts,
            circuit=self._placements.circuit_summary(),
            latency_p50=p50,
            latency_p90=p90,
            latency_p99=p99,
            sessions=len(self._sessions),
            start_failures=telemetry.start_failures,
            exits=dict(telemetry.exits),
            moved=telemetry.moved,
            version=self.version,
            rollout=self._slots.rollout,
        )

    @property
    def circuit_state(self) -> CircuitState:
        """The breaker's state (with several hosts: the healthiest host's)."""
        return self._placements.circuit_state

    # -- checkout ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._slots.closed or not self._open:
            raise PoolClosed(
                f"pool {self.name!r} is closed; use it inside its `async with corral.open_pool(...)` block"
            )

    async def _acquire(
        self, session: Hashable | None, timeout: float | None, *, again: bool = False
    ) -> Member:
        """A place for a caller (of ``session``'s worker, if bound). ``again``: a session
        caller that waited, was moved (its session ended, or its worker let it go) and
        looks again: it was admitted already, and keeps its turn."""
        self._check_open()
        if session is not None:
            member = self._sessions.lookup(session, trio.current_time())
            if member is not None:
                return await self._acquire_specific(session, member, timeout, again=again)
        member = await self._acquire_any(timeout, spread=session is not None, again=again)
        if session is not None:
            self._sessions.bind(session, member, trio.current_time())
        return member

    async def _acquire_any(
        self, timeout: float | None, *, spread: bool = False, again: bool = False
    ) -> Member:
        await trio.lowlevel.checkpoint_if_cancelled()  # before leasing: a cancel leaks no worker
        member = self._checkout.take_idle(spread)
        if member is not None:
            return member  # the call itself schedules
        slots = self._slots
        if self._placements.circuit_open and not slots.members:
            raise CircuitOpen(
                f"pool {self.name!r}: workers keep failing to start; calls fail fast for "
                f"{self._placements.retry_in():.1f} s more (the cause is the last failure)"
            ) from self._placements.last_failure
        if not again:
            self._check_saturation()
        waiter = self._checkout.enqueue(self._checkout.waiters, front=again)
        slots.ensure_capacity()
        got = await self._wait(waiter, timeout, None)
        assert got is not None, "only a session's waiter moves"
        return got

    async def _acquire_specific(
        self, session: Hashable, member: Member, timeout: float | None, *, again: bool = False
    ) -> Member:
        worker = member.worker
        idle = member in self._checkout.idle and not member.exclusive
        if (worker.available or idle) and not (worker.available and worker.alive):
            # It died, or is being killed (a pipelined worker whose request timed out
            # still has idle places), and the pool has not noticed yet: unbind now, so
            # the session is lost once and that worker is never handed out.
            self._checkout.remove_places(member)
            self._sessions.unbind(session)
            raise SessionLost(f"the worker that held session {session!r} died; its state is gone")
        if idle:
            await trio.lowlevel.checkpoint_if_cancelled()  # before leasing: a cancel leaks no worker
            self._checkout.take_place_of(member)
            self._sessions.bind(session, member, trio.current_time())
            return member
        if (
            member.keeps_sessions
            and not member.exclusive
            and member.holders < worker.depth
            and worker.available
        ):
            # An upgrade retires it once its sessions end: it serves their callers alone.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._checkout.hold(member)
            self._sessions.bind(session, member, trio.current_time())
            return member
        if not again:
            self._check_saturation()
        waiter = self._checkout.enqueue(member.session_waiters, session, front=again)
        budget = self.options.checkout_timeout if timeout is None else timeout
        waited_from = trio.current_time()
        got = await self._wait(waiter, timeout, session)
        if got is None:  # the session ended, or its worker (an upgrade retires it) let it go
            left = None if budget is None else max(0.0, budget - (trio.current_time() - waited_from))
            return await self._acquire(session, left, again=True)
        self._sessions.bind(session, got, trio.current_time())
        return got

    def _check_saturation(self) -> None:
        """``max_waiting`` counts every waiter, for any worker or for a session's."""
        max_waiting = self.options.max_waiting
        queued = self._checkout.queued
        if max_waiting is not None and queued >= max_waiting:
            raise PoolSaturated(
                f"pool {self.name!r}: {queued} callers already wait for a worker "
                f"(max_waiting={max_waiting}); shed load or raise max_waiting"
            )

    async def _wait(self, waiter: Waiter, timeout: float | None, session: Hashable | None) -> Member | None:
        if timeout is None:
            timeout = self.options.checkout_timeout
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await waiter.event.wait()
        except BaseException:
            if waiter.member is not None:  # handed a worker just as we were cancelled
                self._release(waiter.member)
            self._checkout.abandon(waiter)
            raise
        if waiter.member is None:
            self._checkout.abandon(waiter)
            if waiter.moved:
                return None
            raise self._turned_away(waiter, timeout, session)
        return waiter.member

    def _turned_away(self, waiter: Waiter, timeout: float | None, session: Hashable | None) -> CorralError:
        """Why a waiter was woken without a worker."""
        if self._slots.closed:
            return PoolClosed(f"pool {self.name!r} closed while the caller waited")
        if waiter.lost:
            self._sessions.forget_lost(session)
            return SessionLost(f"the worker that held session {session!r} died while the caller waited")
        members = self._slots.members
        if self._placements.circuit_open and not members:
            error = CircuitOpen(f"pool {self.name!r}: workers keep failing to start")
            error.__cause__ = self._placements.last_failure
            return error
        return CheckoutTimeout(
            f"pool {self.name!r}: no worker became free within checkout_timeout={timeout} s "
            f"({len(members)} workers, {len(self._checkout.waiters)} callers waiting)"
        )

    def _release(self, member: Member) -> None:
        self._checkout.unhold(member)
        if self._telemetry.subscribers:
            self._telemetry.emit(member.worker, "checkin")
        if member.worker.available:
            self._slots.checkin(member)
        # else: an interrupted call is unwinding (checked in when READY) or it died.
        self._slots.note_release()

    # -- running ---------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        slots = self._slots
        async with trio.open_nursery() as nursery:
            slots.nursery = nursery
            if self._placements.forkserver is not None:
                await slots.start_template(slots.release)
            await nursery.start(slots.sup.run)
            initial = self.options.size if not self.options.lazy else self.options.effective_min_size
            if initial:
                await slots.start_eagerly(initial)
            self._open = True
            nursery.start_soon(slots.housekeeping)
            task_status.started()

    async def _close(self) -> None:
        """Stop taking calls, let running ones finish (drain_timeout), stop the workers."""
        slots = self._slots
        slots.closed = True
        self._checkout.turn_away_all(list(slots.members.values()))
        if self._checkout.held:
            with trio.move_on_after(self.options.drain_timeout):
                await slots.drained.wait()
        await slots.sup.stop()
        assert slots.nursery is not None
        slots.nursery.cancel_scope.cancel()


def _check_hosts_upgrade(hosts: Sequence[object], handlers: object, changes: dict[str, Any]) -> None:
    """With ``hosts=``, each host runs what it names: an upgrade may reload it from disk,
    or give hosts without a module of their own a new module name, nothing more."""
    from corral.workers._remote import SSH

    own = [h for h in hosts if not (isinstance(h, str) or (isinstance(h, SSH) and h.module is None))]
    changed = [f for f in ("env", "cwd") if f in changes]
    if changed or (not isinstance(handlers, _Same) and (own or not isinstance(handlers, str))):
        field = changed[0] if changed else "handlers"
        raise InvalidSpec(
            field,
            "cannot change in an upgrade of a pool with hosts=: each host runs what it names "
            "(its own launcher, env and cwd). Upgrade with the same handlers (reloaded from disk), "
            "give hosts without a module of their own a new module name, or open a new pool",
        )


def _call_name(kind: str, target: Any) -> str:
    return str(target) if kind == "call" else getattr(target, "__name__", "run_sync")


class Lease:
    """Exclusive use of one worker inside ``async with pool.checkout()``."""

    def __init__(self, worker: PoolWorker, pool: Pool) -> None:
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

    def _check(self) -> PoolWorker:
        if not self._valid:
            raise PoolClosed("this lease has ended; take a new one with pool.checkout()")
        return self._worker

    async def call(
        self,
        name: str,
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """``pool.call`` on this worker; raises ``PoolClosed`` after the lease's block."""
        return await self._check().call(name, *args, timeout=timeout, on_progress=on_progress, **kwargs)

    async def run_sync(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """``pool.run_sync`` on this worker; raises ``PoolClosed`` after the lease's block."""
        return await self._check().run_sync(fn, *args, timeout=timeout, on_progress=on_progress, **kwargs)

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
        """``pool.stream`` on this worker; raises ``PoolClosed`` after the lease's block."""
        worker = self._check()
        async with worker.stream(
            name, *args, timeout=timeout, chunk_timeout=chunk_timeout, on_progress=on_progress, **kwargs
        ) as chunks:
            yield chunks

    def __repr__(self) -> str:
        return f"<Lease of {self._worker!r}>"


_PoolContext = AbstractAsyncContextManager[Pool]


def _takes_arguments_of(
    source: Callable[P, object],
) -> Callable[[Callable[..., _PoolContext]], Callable[P, _PoolContext]]:
    """Give ``open_pool`` the typed signature of ``Pool`` (one source, no drift)."""

    def wrap(fn: Callable[..., _PoolContext]) -> Any:
        fn.__signature__ = inspect.signature(source)  # type: ignore[attr-defined]
        return fn

    return wrap


@_takes_arguments_of(Pool)
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
                pool._slots.closed = True
                raise
            logger.info(
                "[%s] open: %d worker(s) ready in %.3f s",
                pool.name,
                len(pool._slots.members),
                time.monotonic() - started_at,
            )
            try:
                yield pool
            finally:
                await pool._close()
    except BaseExceptionGroup as group:
        reraise(collapse(group))
    finally:
        was_open = pool._open
        pool._slots.closed = True
        pool._open = False
        pool._slots.reaper.close()
        if was_open:
            logger.info("[%s] closed (it was open %.3f s)", pool.name, time.monotonic() - started_at)
