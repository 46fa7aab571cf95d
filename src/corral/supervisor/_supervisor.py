"""The supervisor: OTP's ``supervisor`` behaviour, as a Trio task.

Three parts, as in ``supervisor.erl``: the API (``run``, ``start_child`` ...), the
manager loop that reacts to child exits, and the internals (start, stop, restart).

Concurrency model: every child runs in its own task inside the supervisor's nursery,
under its own cancel scope. Child exits arrive as messages on an unbounded channel;
one manager loop handles them. Everything that changes the set of children (the
manager and the API calls) holds one FIFO lock, so state changes happen in OTP's
order; read-only calls (``which_children``) never wait.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from corral._errors import (
    AlreadyPresent,
    ChildRunning,
    ChildStartError,
    InvalidSpec,
    MaxChildren,
    NotFound,
    RestartIntensityExceeded,
    SupervisorNotRunning,
)
from corral._shared import collapse, reraise
from corral._validate import check, integer, number
from corral.supervisor._context import ChildContext, Shutdown, _get_current, _set_current
from corral.supervisor._events import (
    AutoShutdownTriggered,
    ChildExited,
    ChildRestarting,
    ChildStarted,
    ExitReason,
    IntensityExceeded,
    RestartFailed,
    Subscriber,
    SupervisorEvent,
    SupervisorStopped,
    log_event,
)
from corral.supervisor._records import Child, ChildCounts, ChildInfo, ChildState, Run
from corral.supervisor._spec import AutoShutdown, Backoff, ChildSpec, Restart, Strategy

_names = itertools.count(1)
logger = logging.getLogger("corral.supervisor")


# -- messages to the manager loop -------------------------------------------------


# The private records below are plain classes: attrs compiles each class's generated
# methods when the module is imported (~0.5 ms a class), and these need none of them.


class _Exited:
    __slots__ = ("run",)

    def __init__(self, run: Run) -> None:
        self.run = run


class _Retry:
    """Start ``child``'s group again: after its backoff (``counted``: the attempt was
    counted when scheduled), or at once after a failed attempt (OTP's
    ``try_again_restart``: counted when handled, like any restart)."""

    __slots__ = ("child", "counted", "token")

    def __init__(self, child: Child, token: object, counted: bool = True) -> None:
        self.child = child
        self.token = token
        self.counted = counted


class _Stop:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_Message = _Exited | _Retry | _Stop


class _Escalate(Exception):
    """Internal: restart intensity exceeded while handling a message (for ``child``)."""

    def __init__(self, child: Child) -> None:
        super().__init__(child.id)
        self.child = child


class _StartFailed:
    """What a child's task hands to ``nursery.start`` when it died before started()."""

    __slots__ = ()


class _Status:
    """The ``task_status`` a child sees: records its value, then reparents it."""

    def __init__(self, real: trio.TaskStatus[Any], run: Run, nursery: trio.Nursery) -> None:
        self._real = real
        self._run = run
        self._nursery = nursery
        self._task = trio.lowlevel.current_task()
        self.called = False

    def started(self, value: object = None) -> None:
        if self.called:
            raise RuntimeError("task_status.started() called twice")
        self.called = True
        self._run.value = value
        if self._run.restart:  # counted before anyone can use what the child offers
            self._run.child.restarts += 1
        self._real.started(value)
        if self._task.parent_nursery is self._nursery:
            # From now on only the supervisor cancels this child, in its own order.
            self._run.scope.shield = True


class _Intensity:
    """OTP's restart intensity: at most ``max_restarts`` within ``max_seconds``."""

    __slots__ = ("max_restarts", "max_seconds", "stamps")

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.stamps: deque[float] = deque()

    def add(self, now: float) -> bool:
        """Record a restart at ``now``; False when that makes one too many."""
        threshold = now - self.max_seconds
        while self.stamps and self.stamps[0] < threshold:
            self.stamps.popleft()
        self.stamps.append(now)
        return len(self.stamps) <= self.max_restarts


class _Children:
    """The children in start order, indexed by id (ids are unique within a supervisor).

    A list would make every id lookup, append and remove O(n): adding or terminating
    children one by one under a large supervisor went quadratic. A dict keeps insertion
    order, so iteration is still start order.
    """

    __slots__ = ("_by_id",)

    def __init__(self, children: Iterable[Child] = ()) -> None:
        self._by_id: dict[Hashable, Child] = {child.id: child for child in children}

    def find(self, id: Hashable) -> Child | None:
        return self._by_id.get(id)

    def append(self, child: Child) -> None:
        assert child.id not in self._by_id, child.id
        self._by_id[child.id] = child

    def insert_before(self, child: Child, before: Child) -> None:
        """Put ``child`` just in front of ``before`` in start order (O(n): rare)."""
        assert child.id not in self._by_id and before in self, (child.id, before.id)
        order = list(self._by_id.items())
        at = order.index((before.id, before))
        order.insert(at, (child.id, child))
        self._by_id = dict(order)

    def remove(self, child: Child) -> None:
        if self._by_id.get(child.id) is not child:
            raise ValueError(f"{child!r} is not a child")
        del self._by_id[child.id]

    def index(self, child: Child) -> int:
        return list(self._by_id.values()).index(child)

    def __contains__(self, child: object) -> bool:
        return isinstance(child, Child) and self._by_id.get(child.id) is child

    def __getitem__(self, where: slice) -> list[Child]:
        return list(self._by_id.values())[where]

    def __iter__(self) -> Iterator[Child]:
        return iter(self._by_id.values())

    def __reversed__(self) -> Iterator[Child]:
        return reversed(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)


def _check_options(
    strategy: object,
    max_restarts: object,
    max_seconds: object,
    auto_shutdown: object,
    backoff: object,
    name: object,
) -> None:
    if not isinstance(strategy, Strategy):
        raise InvalidSpec(
            "strategy", f"must be Strategy.ONE_FOR_ONE, ONE_FOR_ALL or REST_FOR_ONE, got {strategy!r}"
        )
    check(max_restarts, integer(minimum=0, field="max_restarts"))
    check(max_seconds, number(minimum=0, strict=True, what="a number of seconds", field="max_seconds"))
    if not isinstance(auto_shutdown, AutoShutdown):
        raise InvalidSpec(
            "auto_shutdown",
            f"must be AutoShutdown.NEVER, ANY_SIGNIFICANT or ALL_SIGNIFICANT, got {auto_shutdown!r}",
        )
    if backoff is not None and not isinstance(backoff, Backoff):
        raise InvalidSpec("backoff", f"must be None or corral.Backoff(...), got {backoff!r}")
    if name is not None and not isinstance(name, str):
        raise InvalidSpec("name", f"must be a str or None, got {name!r}")


class Supervisor:
    """An OTP supervisor for Trio tasks.

    Start it with ``await nursery.start(sup.run)`` (returns once every child has
    started) or ``async with corral.open_supervisor(...)``. It restarts children as
    its strategy says, and gives up — stopping every child and raising
    ``RestartIntensityExceeded`` from ``run()`` — when they crash too often.
    """

    _dynamic = False  # DynamicSupervisor forgets children that stop for good
    _corral_supervisor = True  # a ChildSpec whose start is our bound run is a supervisor (_spec.py)

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
        backoff: Backoff | None = None,
        name: str | None = None,
    ) -> None:
        _check_options(strategy, max_restarts, max_seconds, auto_shutdown, backoff, name)
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self.auto_shutdown = auto_shutdown
        self.backoff = backoff
        self.name = name if name is not None else f"supervisor-{next(_names)}"
        specs = tuple(children)
        seen: set[Hashable] = set()
        for spec in specs:
            self._check_spec(spec)
            if spec.id in seen:
                raise InvalidSpec("id", f"duplicate child id {spec.id!r}; ids must be unique")
            seen.add(spec.id)
        self._specs = specs
        self._children = _Children(Child(spec) for spec in specs)
        self._subscribers: list[Subscriber] = []
        self._faults: dict[Hashable, list[Any]] = {}  # corral.testing's injected start faults
        self._rng = random.Random()
        self._running = False
        self._nursery: trio.Nursery | None = None
        self._aux: set[trio.CancelScope] = set()
        self._lock = trio.Lock()
        self._inbox_send, self._inbox = trio.open_memory_channel[_Message](math.inf)
        self._finished = trio.Event()
        self._failure: BaseException | None = None
        self._intensity = _Intensity(max_restarts, self.max_seconds)
        self._abandoned: set[Run] = set()  # stops whose caller gave up before the child exited
        self._ending = False  # it is stopping itself: calls get SupervisorNotRunning

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} {self.strategy.value} children={len(self._children)}>"

    def _check_spec(self, spec: object) -> None:
        if not isinstance(spec, ChildSpec):
            raise InvalidSpec("children", f"each child must be a corral.ChildSpec, got {spec!r}")
        if spec.significant and self.auto_shutdown is AutoShutdown.NEVER:
            raise InvalidSpec(
                "significant",
                f"child {spec.id!r} is significant but auto_shutdown is NEVER; pass "
                "auto_shutdown=AutoShutdown.ANY_SIGNIFICANT or ALL_SIGNIFICANT",
            )

    # -- events ------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _emit(self, event: SupervisorEvent) -> None:
        log_event(event)
        for callback in list(self._subscribers):
            callback(event)

    # -- the API -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, then supervise them until stopped.

        Returns ``None`` after ``stop()``, a parent's stop request or an auto shutdown.
        Raises ``ChildStartError`` when a child fails to start (the others are stopped
        first) and ``RestartIntensityExceeded`` when restarts come too fast.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running; a supervisor runs once at a time")
        self._reset()
        self._running = True
        parent = _get_current()
        try:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        async with self._lock:
                            await self._start_initial()
                        if parent is not None:
                            self._spawn_aux(self._watch_parent, parent)
                        task_status.started(self)
                        await self._manage()
                    except ChildStartError:
                        raise  # _start_initial already stopped the others, in order
                    except BaseException:
                        with trio.CancelScope(shield=True):
                            await self._kill_all()
                        raise
                    finally:
                        self._cancel_aux()
            except BaseExceptionGroup as group:
                reraise(collapse(group))
        finally:
            self._running = False
            self._nursery = None
            self._finished.set()
        failure, self._failure = self._failure, None
        if failure is not None:
            reraise(failure)

    async def stop(self) -> None:
        """Stop every child in reverse start order (each with its grace); wait for it."""
        if not self._running:
            return
        self._inbox_send.send_nowait(_Stop("stop"))
        await self._finished.wait()

    async def start_child(self, spec: ChildSpec, *, before: Hashable | None = None) -> object:
        """Add and start a child; returns what it passed to ``task_status.started()``.

        It goes after the existing children (OTP), or, with ``before=id``, just in
        front of that child: its place in start order, in the reverse stop order and in
        ``rest_for_one`` (how ``corral run`` adds a child where its config file has it).

        A place inside a group waiting for its restart (a backoff, or a retry after a
        failed start: ``one_for_all`` with any child RESTARTING, ``rest_for_one`` with
        one before it) joins that restart: the child is RESTARTING and starts with the
        group, in order, as OTP restarts a group as the whole it is; the call returns
        None at once, without starting it (a failed start is then a failed restart).
        """
        self._check_spec(spec)
        async with self._locked():
            if self._find(spec.id) is not None:
                raise AlreadyPresent(spec.id)
            successor = None if before is None else self._get(before)
            self._check_capacity()
            child = Child(spec, starting=True)  # holds its id and place, invisible until started
            if successor is None:
                self._children.append(child)
            else:
                self._children.insert_before(child, successor)
            if self._restart_pending(child):
                child.starting = False
                child.joined = True
                child.to(ChildState.RESTARTING)
                return None
        # The start itself runs outside the lock: a slow child delays only its caller,
        # and several start_child calls proceed concurrently.
        try:
            if self._nursery is None or self._ending:
                raise SupervisorNotRunning(f"{self.name!r} stopped while the child was starting")
            try:
                return await self._start(child, restart=False)
            except RuntimeError as exc:  # its nursery closed meanwhile
                if self._ending or self._nursery is None:
                    raise SupervisorNotRunning(f"{self.name!r} stopped while the child was starting") from exc
                raise
        except BaseException:
            if child in self._children:
                self._children.remove(child)
            raise
        finally:
            child.starting = False

    async def terminate_child(self, id: Hashable) -> None:
        """Stop a child (two-phase) and keep its spec; a stopped child is a no-op."""
        async with self._locked():
            child = self._get(id)
            if child.state is ChildState.RESTARTING:
                self._cancel_retry(child)
            await self._stop_child(child)
            child.to(ChildState.STOPPED)
            if child.spec.restart is Restart.TEMPORARY or self._dynamic:
                self._children.remove(child)

    async def restart_child(self, id: Hashable) -> object:
        """Start a stopped child again (not counted as a restart)."""
        async with self._locked():
            child = self._get(id)
            if child.state is not ChildState.STOPPED:
                raise ChildRunning(id, child.state.value)
            self._check_capacity()
            return await self._start(child, restart=False)

    async def delete_child(self, id: Hashable) -> None:
        """Forget a stopped child's spec."""
        async with self._locked():
            child = self._get(id)
            if child.state is not ChildState.STOPPED:
                raise ChildRunning(id, child.state.value)
            self._children.remove(child)

    def which_children(self) -> list[ChildInfo]:
        """A snapshot of every child, in start order. Never waits."""
        return [child.info() for child in self._children if not child.starting]

    def count_children(self) -> ChildCounts:
        """How many specs, how many RUNNING, split by kind. Never waits."""
        children = [c for c in self._children if not c.starting]
        supervisors = sum(1 for c in children if c.spec.is_supervisor)
        return ChildCounts(
            specs=len(children),
            active=sum(1 for c in children if c.state is ChildState.RUNNING),
            supervisors=supervisors,
            workers=len(children) - supervisors,
        )

    @property
    def running(self) -> bool:
        """True while ``run()`` is active (the dynamic API works only then)."""
        return self._running

    # -- helpers for the API ---------------------------------------------------

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        if not self._running or self._ending:
            raise SupervisorNotRunning(
                f"{self.name!r} is not running; start it with nursery.start(sup.run) "
                "or corral.open_supervisor()"
            )
        async with self._lock:
            if not self._running or self._nursery is None or self._ending:
                raise SupervisorNotRunning(f"{self.name!r} stopped while the call waited")
            yield

    def _find(self, id: Hashable) -> Child | None:
        return self._children.find(id)

    def _get(self, id: Hashable) -> Child:
        child = self._find(id)
        if child is None or child.starting:
            raise NotFound(id)
        return child

    def _check_capacity(self) -> None:
        pass

    # -- the manager loop ------------------------------------------------------

    def _reset(self) -> None:
        self._children = _Children(Child(spec) for spec in self._specs)
        self._inbox_send, self._inbox = trio.open_memory_channel[_Message](math.inf)
        self._finished = trio.Event()
        self._failure = None
        self._ending = False
        self._intensity = _Intensity(self.max_restarts, self.max_seconds)
        self._abandoned = set()

    async def _watch_parent(self, parent: ChildContext) -> None:
        await parent.stop_requested.wait()
        self._inbox_send.send_nowait(_Stop("stop"))

    async def _manage(self) -> None:
        async for message in self._inbox:
            async with self._lock:
                try:
                    done = await self._handle(message)
                except _Escalate as escalate:
                    self._ending = True  # before the lock is released: late calls fail
                    child = escalate.child
                    last = child.last_exit.exception if child.last_exit is not None else None
                    limits = (self.name, self.max_restarts, self.max_seconds)
                    self._emit(IntensityExceeded(*limits, child.id, child.failures, last))
                    await self._stop_all()
                    self._failure = RestartIntensityExceeded(*limits, child.id, child.failures)
                    self._failure.__cause__ = last
                    self._emit(SupervisorStopped(self.name, "intensity"))
                    return
                if done:
                    return

    async def _handle(self, message: _Message) -> bool:
        """React to one message; True when the supervisor is finished."""
        if isinstance(message, _Stop):
            self._ending = True
            await self._stop_all()
            self._emit(SupervisorStopped(self.name, message.reason))
            return True
        if isinstance(message, _Retry):
            child = message.child
            if child.retry_token is message.token and child.state is ChildState.RESTARTING:
                child.retry_token = None
                if message.counted:
                    await self._attempt(child)
                else:
                    await self._restart(child)
            return False
        return await self._on_exit(message.run)

    async def _on_exit(self, run: Run) -> bool:
        child = run.child
        if child.run is not run:
            return False  # already handled: it was stopped on purpose
        if run.stopping:  # stopped on purpose, but whoever stopped it gave up waiting
            self._stopped_for_good(child, run)
            return False
        assert run.exit is not None
        child.run = None
        child.last_exit = run.exit
        self._emit(ChildExited(self.name, child.id, run.exit, requested=False))
        if not self._wants_restart(child.spec.restart, run.exit):
            child.to(ChildState.STOPPED)
            if child.spec.restart is Restart.TEMPORARY or self._dynamic:
                self._children.remove(child)
            if child.spec.significant and self._auto_shutdown_due():
                self._ending = True
                self._emit(AutoShutdownTriggered(self.name, child.id))
                await self._stop_all()
                self._emit(SupervisorStopped(self.name, "auto_shutdown"))
                return True
            return False
        if self.backoff is not None and (trio.current_time() - run.started_at >= self.backoff.reset_after):
            child.failures = 0
        child.failures += 1
        child.to(ChildState.RESTARTING)
        await self._restart(child)
        return False

    @staticmethod
    def _wants_restart(restart: Restart, exit: ExitReason) -> bool:
        if restart is Restart.PERMANENT:
            return True
        if restart is Restart.TRANSIENT:
            return exit.abnormal
        return False

    def _auto_shutdown_due(self) -> bool:
        if self.auto_shutdown is AutoShutdown.ANY_SIGNIFICANT:
            return True
        if self.auto_shutdown is AutoShutdown.ALL_SIGNIFICANT:
            return not any(c.spec.significant and c.state is not ChildState.STOPPED for c in self._children)
        return False

    # -- restarts --------------------------------------------------------------

    def _group(self, child: Child) -> list[Child]:
        """The children a crash of ``child`` restarts, in start order.

        As OTP's ``restart_multiple_children``: every child of the group, also one that
        was stopped (by ``terminate_child`` or a TRANSIENT normal exit) — the group is
        restarted as the whole it was specified to be. Temporary children never return.
        """
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        start = 0 if self.strategy is Strategy.ONE_FOR_ALL else self._children.index(child)
        return [c for c in self._children[start:] if not c.starting]

    async def _restart(self, child: Child) -> None:
        """One automatic restart attempt of ``child`` (and its group), counted.

        A backoff turns the attempt into a timer, so the supervisor keeps serving
        meanwhile; a failed attempt is retried as a new message (``_attempt``).
        """
        if not self._intensity.add(trio.current_time()):
            raise _Escalate(child)
        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.run is not None:
                await self._stop_child(other)
                if other.spec.restart is Restart.TEMPORARY:
                    other.to(ChildState.STOPPED)
                    self._children.remove(other)
                    continue
            other.to(ChildState.RESTARTING)
        delay = self.backoff.delay(child.failures, self._rng) if self.backoff else 0.0
        self._emit(ChildRestarting(self.name, child.id, delay, child.failures))
        if delay > 0:
            self._schedule_retry(child, delay)
            return
        await self._attempt(child)

    async def _attempt(self, child: Child) -> None:
        """Start the group; if a start fails, try again as a message to ourselves
        (OTP's ``try_again_restart``): calls and stops that already wait run first."""
        failed = await self._start_group(child)
        if failed is not None:
            failed.retry_token = token = object()
            self._inbox_send.send_nowait(_Retry(failed, token, counted=False))

    async def _start_group(self, child: Child) -> Child | None:
        """Start every RESTARTING child of the group; the one that failed, if any."""
        for member in [c for c in self._group(child) if c.state is ChildState.RESTARTING]:
            joined, member.joined = member.joined, False
            try:
                await self._start(member, restart=not joined)  # counts the restart once it is up
            except ChildStartError as exc:
                assert exc.__cause__ is not None
                self._emit(RestartFailed(self.name, member.id, exc.__cause__))
                if joined:  # it never ran: refused, as start_child refuses it (not a restart)
                    member.to(ChildState.STOPPED)
                    self._children.remove(member)
                    continue
                member.failures += 1
                return member
        return None

    def _restart_pending(self, child: Child) -> bool:
        """A restart of the group ``child``'s place is in waits (see ``start_child``)."""
        if self.strategy is Strategy.ONE_FOR_ONE:
            return False
        if self.strategy is Strategy.ONE_FOR_ALL:
            others = list(self._children)
        else:
            others = self._children[: self._children.index(child)]
        return any(c.state is ChildState.RESTARTING for c in others if c is not child and not c.starting)

    def _schedule_retry(self, child: Child, delay: float) -> None:
        token = object()
        child.retry_token = token

        async def fire() -> None:
            await trio.sleep(delay)
            self._inbox_send.send_nowait(_Retry(child, token))

        self._spawn_aux(fire)

    def _spawn_aux(self, fn: Callable[..., Any], *args: Any) -> None:
        """Timers and watchers: cancelled together when the supervisor stops."""
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._aux.add(scope)

        async def aux() -> None:
            try:
                with scope:
                    await fn(*args)
            finally:
                self._aux.discard(scope)

        self._nursery.start_soon(aux)

    def _cancel_aux(self) -> None:
        for scope in list(self._aux):
            scope.cancel()

    def _cancel_retry(self, child: Child) -> None:
        """Terminating a child that is waiting to restart: hand its timer on."""
        if child.retry_token is None:
            return
        child.retry_token = None
        for other in self._group(child):
            if other is not child and other.state is ChildState.RESTARTING:
                other.retry_token = token = object()
                self._inbox_send.send_nowait(_Retry(other, token, counted=False))
                return

    # -- starting and stopping children ----------------------------------------

    async def _start(self, child: Child, *, restart: bool) -> object:
        assert self._nursery is not None
        run = Run(child, ChildContext(child.id, self.name, trio.Event()), restart=restart)
        child.run = run
        result = await self._nursery.start(self._child_main, run)
        if isinstance(result, _StartFailed):
            assert run.exit is not None
            child.run = None
            child.last_exit = run.exit
            cause = run.exit.exception
            raise ChildStartError(child.id, repr(cause)) from cause
        run.started_at = trio.current_time()
        child.to(ChildState.RUNNING)
        self._emit(ChildStarted(self.name, child.id, result, restart))
        return result

    async def _child_main(self, run: Run, *, task_status: trio.TaskStatus[Any]) -> None:
        _set_current(run.ctx)
        assert self._nursery is not None
        status = _Status(task_status, run, self._nursery)
        spec = run.child.spec
        start = spec.start
        faults = self._faults.get(spec.id)
        if faults:  # corral.testing: make this start fail or wait
            start = faults.pop(0).wrap(start)
        try:
            with run.scope:
                try:
                    await start(*spec.args, task_status=status)
                except Shutdown as exc:
                    run.exit = ExitReason("shutdown", exc)
                except Exception as exc:
                    run.exit = ExitReason("abnormal", exc)
                else:
                    run.exit = ExitReason("normal")
            if run.injected is not None:
                run.exit = ExitReason("abnormal", run.injected)
            elif run.exit is None:  # our own cancel scope caught the cancellation
                run.exit = ExitReason("shutdown")
        finally:
            if run.exit is None:  # a BaseException is tearing everything down
                run.exit = ExitReason("shutdown")
            run.done.set()
        if not status.called:
            if run.exit.exception is None:
                run.exit = ExitReason(
                    "abnormal",
                    RuntimeError("the child returned without calling task_status.started()"),
                )
            task_status.started(_StartFailed())
            return
        if not run.stopping or run in self._abandoned:
            self._inbox_send.send_nowait(_Exited(run))

    async def _stop_child(self, child: Child) -> None:
        """Two-phase stop: ask, wait up to the grace, then cancel. Always waits."""
        run = child.run
        if run is None:
            return
        run.stopping = True
        run.ctx._request_stop()
        grace = child.spec.shutdown
        try:
            if grace <= 0 or not run.ctx.asked:  # OTP: a process not trapping exits dies at once
                run.scope.cancel()
            elif grace != math.inf:
                with trio.move_on_after(grace):
                    await run.done.wait()
                if not run.done.is_set():
                    logger.warning(
                        "[%s] child %r did not stop within its shutdown grace of %s s; cancelled",
                        self.name,
                        child.id,
                        grace,
                    )
                run.scope.cancel()
            await run.done.wait()
        except BaseException:
            # The caller gave up waiting (cancelled, or it is the child stopping
            # itself): cancel the child now and finish the stop without the caller,
            # so no half-stopped child is left looking RUNNING.
            run.scope.cancel()
            if run.done.is_set():
                self._stopped_for_good(child, run)
            else:
                self._abandoned.add(run)  # _child_main reports its exit to the manager
            raise
        self._record_stop(child, run)

    def _record_stop(self, child: Child, run: Run) -> None:
        child.run = None
        assert run.exit is not None
        child.last_exit = run.exit
        self._emit(ChildExited(self.name, child.id, run.exit, requested=True))

    def _stopped_for_good(self, child: Child, run: Run) -> None:
        """Finish a stop whose caller is gone: as terminate_child would have."""
        self._abandoned.discard(run)
        self._record_stop(child, run)
        child.retry_token = None
        child.to(ChildState.STOPPED)
        if (child.spec.restart is Restart.TEMPORARY or self._dynamic) and child in self._children:
            self._children.remove(child)

    async def _stop_all(self) -> None:
        """Orderly stop of everything, in reverse start order."""
        self._cancel_aux()
        for child in reversed(list(self._children)):
            child.retry_token = None
            await self._stop_child(child)
            child.to(ChildState.STOPPED)

    async def _kill_all(self) -> None:
        """Outside cancellation: no graces, but still one child at a time, in reverse."""
        for child in reversed(list(self._children)):
            run = child.run
            if run is not None:
                run.stopping = True
                run.ctx._request_stop()
                run.scope.cancel()
                await run.done.wait()
                child.run = None
                child.last_exit = run.exit
            if child.state is not ChildState.STOPPED:
                child.to(ChildState.STOPPED)
        self._emit(SupervisorStopped(self.name, "cancelled"))

    async def _start_initial(self) -> None:
        for child in list(self._children):
            try:
                await self._start(child, restart=False)
            except ChildStartError:
                await self._stop_all()
                self._emit(SupervisorStopped(self.name, "start_failed"))
                raise


class DynamicSupervisor(Supervisor):
    """A one_for_one supervisor for children added at run time (Elixir's).

    Children that stop for good — terminated, or exited without being restarted —
    are forgotten, so their ids can be reused. ``max_children`` bounds how many run.
    """

    _dynamic = True

    def __init__(
        self,
        *,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        backoff: Backoff | None = None,
        name: str | None = None,
    ) -> None:
        check(max_children, integer(minimum=0, optional=True, field="max_children"))
        super().__init__(
            (),
            strategy=Strategy.ONE_FOR_ONE,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            backoff=backoff,
            name=name,
        )
        self.max_children = max_children

    def _check_capacity(self) -> None:
        if self.max_children is None:
            return
        active = sum(1 for c in self._children if c.state is not ChildState.STOPPED or c.starting)
        if active >= self.max_children:
            raise MaxChildren(
                f"{self.name!r} already runs max_children={self.max_children} children; "
                "terminate one first or raise max_children"
            )


@asynccontextmanager
async def open_supervisor(children: Sequence[ChildSpec] = (), **options: Any) -> AsyncIterator[Supervisor]:
    """Run a Supervisor for the duration of the block; leaving it is an orderly stop.

    Errors from the tree (``ChildStartError``, ``RestartIntensityExceeded``) come out
    of the ``async with`` bare, as do exceptions from the body.
    """
    sup = Supervisor(children, **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            try:
                yield sup
            finally:
                await sup.stop()
    except BaseExceptionGroup as group:
        # One level only: run() raises bare already, and a group the body raised
        # itself must come out as it is, not flattened nor wrapped.
        meaningful = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        if len(group.exceptions) == 1 or len(meaningful) == 1:
            reraise((meaningful or list(group.exceptions))[0])
        raise
