"""The pool's members and the supervisor slots that run them.

Each slot is a PERMANENT (by default) child of a one_for_one ``DynamicSupervisor``;
every (re)start of a slot asks the factory for a fresh worker incarnation, records it
as a ``Member`` and runs it. When it ends, its record is removed in one place
(``forget``): its places, its holders, its sessions (lost), its sessions' waiters.
The pool's lifecycle flags (``closed``, the nursery) live here, because every slot
operation depends on them. Housekeeping (idle shrink of lazy pools, age recycling,
session expiry) runs once a second.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import trio

from corral._errors import CircuitOpen, CorralError
from corral._shared import collapse, reraise
from corral.supervisor._events import ChildRestarting, SupervisorEvent
from corral.supervisor._records import ChildState
from corral.supervisor._spec import ChildSpec, Restart
from corral.supervisor._supervisor import DynamicSupervisor
from corral.workers._checkout import Checkout
from corral.workers._launch import Launcher
from corral.workers._member import Member, wait_holders_gone
from corral.workers._options import PoolOptions, WorkerOptions
from corral.workers._placement import Placements, PoolLauncher
from corral.workers._reaper import Reaper
from corral.workers._recycling import recycle, recycle_due
from corral.workers._release import Release
from corral.workers._requests import Progress
from corral.workers._seam import PoolWorker, StateCallback, WorkerFactory
from corral.workers._sessions import SessionTable
from corral.workers._telemetry import Telemetry
from corral.workers._worker import WorkerState

if TYPE_CHECKING:
    from corral.workers._rollout import Rollout

logger = logging.getLogger("corral.pool")


# _FaultyStart and FaultInjector are plain classes: attrs compiles each class's
# generated methods when the module is imported (~0.5 ms a class).


class _FaultyStart:
    """A worker whose start goes through an injected fault (``corral.testing``)."""

    __slots__ = ("_run", "_worker")

    def __init__(self, worker: PoolWorker, run: Callable[..., Any]) -> None:
        self._worker = worker
        self._run = run

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await self._run(task_status=task_status)

    @property
    def on_progress(self) -> Callable[[Any, Progress], None] | None:
        return self._worker.on_progress

    @on_progress.setter
    def on_progress(self, hook: Callable[[Any, Progress], None] | None) -> None:
        self._worker.on_progress = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._worker, name)


class FaultInjector:
    """A factory that makes the next starts go through ``corral.testing``'s faults."""

    __slots__ = ("factory", "faults")

    def __init__(self, factory: WorkerFactory) -> None:
        self.factory = factory
        self.faults: list[Any] = []  # StartFault, in order

    def __call__(
        self, launcher: Launcher, options: WorkerOptions, worker_id: str, on_state: StateCallback
    ) -> PoolWorker:
        worker = self.factory(launcher, options, worker_id, on_state)
        if not self.faults:
            return worker
        fault = self.faults.pop(0)
        return _FaultyStart(worker, fault.wrap(worker.run))


def _exit_reason(worker: PoolWorker) -> str:
    if worker.ready_at is None:
        return "start_failed"
    return "stopped" if worker.state is WorkerState.STOPPED else "crashed"


class Slots:
    """Members by worker id, the supervisor of their slots, and capacity decisions."""

    def __init__(
        self,
        name: str,
        release: Release,
        checkout: Checkout,
        sessions: SessionTable,
        telemetry: Telemetry,
        factory: WorkerFactory,
    ) -> None:
        self.name = name
        #: The version new slots start from (each slot keeps its own: ``run_slot``).
        self.release = release
        options = release.options
        self.checkout = checkout
        self.sessions = sessions
        self.telemetry = telemetry
        self.factory = factory
        self.sup = DynamicSupervisor(
            max_children=options.size,
            max_restarts=options.effective_max_restarts,
            max_seconds=options.max_seconds,
            backoff=options.backoff,
            name=f"{name}.supervisor",
        )
        self.members: dict[str, Member] = {}  # live incarnations by worker id
        self.retiring: set[Hashable] = set()  # slots an upgrade drains: no new calls
        #: Slots being added, by release: the supervisor lists a child only once started.
        self.starting: dict[Hashable, Release] = {}
        self.short = 0  # housekeeping passes in a row that found an eager pool short
        #: Workers the pool itself stopped without a replacement yet (a recycle during an
        #: upgrade, an old worker a rollback could not start): owed whatever ``restart``.
        self.owed = 0
        self.rollout: Rollout | None = None  # the upgrade under way, else the last one
        self._slot_ids = itertools.count(1)
        self._incarnations = itertools.count(1)
        self.pending = 0  # slots being added on demand (lazy pools)
        self.closed = False
        self.nursery: trio.Nursery | None = None
        self.drained = trio.Event()  # closed, and nobody holds a place
        self.reaper = Reaper()  # kills workers' groups if the parent dies (_reaper.py)
        self.sup.subscribe(self._on_supervisor_event)

    @property
    def options(self) -> PoolOptions:
        """The current release's options (the pool-wide ones never change)."""
        return self.release.options

    @property
    def placements(self) -> Placements:
        """Where the current release's workers start, and their circuit breakers."""
        return self.release.placements

    def start_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)

    # -- one slot --------------------------------------------------------------

    async def run_slot(self, slot: Hashable, release: Release, *, task_status: trio.TaskStatus[Any]) -> None:
        """One supervised slot: a fresh worker of its release each time the supervisor
        (re)starts it."""
        placements = release.placements
        placement = placements.choose()
        if placement is None:
            raise CircuitOpen(
                f"pool {self.name!r}: workers keep failing to start; "
                f"next try in {placements.retry_in():.1f} s"
            ) from placements.last_failure
        worker_id = f"w{next(self._incarnations)}"
        launcher = PoolLauncher(placement.launcher, self.reaper, release.options.codec)
        worker = self.factory(launcher, release.worker_options, worker_id, self._on_state)
        worker.on_progress = self._on_progress
        member = Member(worker, placement, slot, release)
        # A restart inside a slot an upgrade drains, or of a version judged failing,
        # takes no calls.
        member.retired = slot in self.retiring or release.failure is not None
        self.members[worker_id] = member
        placement.live += 1
        try:
            await worker.run(task_status=task_status)
        except BaseException as exc:
            if worker.ready_at is None:  # a failed start: CircuitOpen will name it as its cause
                placements.last_failure = exc
                if not self.closed and not isinstance(exc, trio.Cancelled):
                    self.judge(member, exc)
            raise
        finally:
            self.telemetry.worker_ended(_exit_reason(worker))
            placement.live -= 1
            if worker.pid is not None:
                self.reaper.discard(worker.pid)  # its group is gone (killed on the way out)
            self.forget(member)
            if worker.ready_at is None:
                placement.circuit.record_failure()
                self.wake_for_circuit()

    def _on_supervisor_event(self, event: SupervisorEvent) -> None:
        if isinstance(event, ChildRestarting):
            self.telemetry.restart_attempts += 1

    def restarting(self) -> int:
        """Slots whose worker died and whose restart is pending (backing off, or failing);
        a slot whose new worker is already STARTING counts as that worker, not twice."""
        live = {member.slot for member in self.members.values()}
        children = self.sup.which_children()
        return sum(1 for info in children if info.state is ChildState.RESTARTING and info.id not in live)

    def _on_progress(self, worker: PoolWorker, progress: Progress) -> None:
        telemetry = self.telemetry
        if telemetry.subscribers or logger.isEnabledFor(logging.DEBUG):
            percent = "" if progress.fraction is None else f"{progress.fraction:.0%} "
            telemetry.emit(worker, "progress", f"{percent}{progress.text}".strip())

    def _on_state(self, worker: PoolWorker, old: WorkerState, new: WorkerState) -> None:
        telemetry = self.telemetry
        if telemetry.subscribers or logger.isEnabledFor(logging.DEBUG):
            telemetry.emit(worker, "state", f"{old.name} -> {new.name}")
        member = self.members.get(worker.id)
        if member is None:
            return
        if new is WorkerState.READY:
            if old is WorkerState.STARTING:
                member.placement.circuit.record_success()
                for _ in range(worker.depth):  # one place per request it may hold
                    self.checkin(member)
            elif member.holders == 0 and worker.depth == 1:
                self.checkin(member)  # back from an interrupted call whose caller has left
        elif new is WorkerState.FAILED or new is WorkerState.STOPPED:
            if new is WorkerState.FAILED and worker.ready_at is not None and not self.closed:
                self.judge(member, None)  # before its callers retry: none lands on its version
            self.forget(member)

    def judge(self, member: Member, error: BaseException | None) -> None:
        """A worker ended by itself: if its version is on probation (an upgrade), that
        may judge the version failing, and then none of its workers takes a call."""
        release = member.release
        if not release.on_probation:
            return
        release.judge_exit(member, trio.current_time(), error)
        if release.failure is not None:
            self.fail_release(release, release.failure)

    def fail_release(self, release: Release, error: BaseException) -> None:
        """Judge a version failing: none of its workers takes another call."""
        release.fail(error)
        for other in list(self.members.values()):
            if other.release is release:
                self.retire(other)

    def retire(self, member: Member) -> None:
        """It takes no new calls (an upgrade replaces it); calls it holds run on."""
        member.retired = True
        self.checkout.remove_places(member)

    def reinstate(self, slot: Hashable) -> None:
        """An upgrade gave up retiring this slot: its worker takes calls again."""
        member = self.member_of(slot)
        if member is None or not member.retired:
            return
        member.retired = member.keeps_sessions = False
        if member.worker.available:
            for _ in range(max(0, member.worker.depth - member.holders)):
                self.checkin(member)

    def release_of(self, slot: Hashable) -> Release | None:
        for info in self.sup.which_children():
            if info.id == slot:
                release: Release = info.spec.args[1]
                return release
        return None

    def member_of(self, slot: Hashable) -> Member | None:
        for member in self.members.values():
            if member.slot == slot:
                return member
        return None

    def slots_of(self, release: Release) -> list[Hashable]:
        """The slots of one release, in start order (those still starting last)."""
        slots = [info.id for info in self.sup.which_children() if info.spec.args[1] is release]
        return slots + [slot for slot, of in self.starting.items() if of is release]

    async def settle(self, release: Release) -> None:
        """Until no slot of ``release`` is starting (each start is bounded by init_timeout)."""
        while any(of is release for of in self.starting.values()):
            await trio.sleep(0.05)

    async def drain_slot(self, slot: Hashable) -> None:
        """Until nobody holds a place on the slot's worker (at most ``drain_timeout``)."""
        with trio.move_on_after(self.options.drain_timeout):
            while True:
                member = self.member_of(slot)
                if member is None or member.holders == 0:
                    return
                await wait_holders_gone(member)

    async def start_template(self, release: Release) -> None:
        """Start the release's fork-server template (a task of the pool, cancelled
        with ``release.template_scope`` once no worker of it is left)."""
        assert self.nursery is not None
        try:
            await self.nursery.start(self._run_template, release)
        except BaseExceptionGroup as group:
            reraise(collapse(group))

    async def _run_template(self, release: Release, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            release.template_scope = scope
            await release.placements.run_forkserver(self.name, task_status=task_status)

    def checkin(self, member: Member) -> None:
        """One place on a member is free: recycle the worker if due, else hand it on."""
        if not member.worker.available or member.forgotten or member.recycling or member.retired:
            if member.keeps_sessions and not member.forgotten and member.worker.available:
                self.checkout.give_to_sessions(member)  # retiring: its sessions' callers only
            return
        if not self.closed and recycle_due(member, member.release.options):
            # At once, not in the task: its other free places (pipelining) must not be
            # handed out meanwhile.
            member.recycling = True
            self.checkout.remove_places(member)
            self.start_soon(recycle, self, member)
            return
        self.checkout.give(member)
        # Calls may wait in a busy worker's queue only if its callers number two or more.
        if member.holders == 0 and self.checkout.held > 1 and self.options.pipeline > 1:
            self.rebalance(member)

    def rebalance(self, idle: Member) -> None:
        """``idle`` has nothing to do while calls wait in another worker's queue behind
        a running one: ask the busiest worker to give one back, unrun, to be sent
        here (at most once: a call that has started is not given back)."""
        busy = [m for m in self.members.values() if m.holders > 1 and m is not idle and not m.exclusive]
        for member in sorted(busy, key=lambda m: -m.holders):
            if member.worker.withdraw_one():
                return

    def forget(self, member: Member) -> None:
        """Remove a worker that ended: one record, one removal."""
        if member.forgotten:
            return
        del self.members[member.id]
        self.checkout.drop(member)
        member.forgotten = True
        member.exclusive = member.recycling = member.retired = False
        self.sessions.lose(member, trio.current_time())
        for waiter in member.session_waiters:
            waiter.lost = True
            self.checkout.wake(waiter)  # woken without a worker: SessionLost
        member.session_waiters.clear()
        self.note_release()

    def note_release(self) -> None:
        if self.closed and not self.checkout.held:
            self.drained.set()

    def wake_for_circuit(self) -> None:
        """When the circuit opens, callers waiting for a new worker fail fast."""
        if not self.placements.circuit_open or self.members:
            return
        waiters = self.checkout.waiters
        while waiters:
            self.checkout.wake(waiters.popleft())

    # -- adding and removing slots ----------------------------------------------

    async def add_slot(self, release: Release | None = None) -> Member | None:
        """Start one more slot (of the current release by default); its worker once READY."""
        release = release or self.release
        slot = f"slot{next(self._slot_ids)}"
        spec = ChildSpec(
            slot,
            self.run_slot,
            args=(slot, release),
            restart=release.options.restart,
            shutdown=release.options.stop_timeout + 2.0,
        )
        self.starting[slot] = release
        try:
            await self.sup.start_child(spec)
        finally:
            del self.starting[slot]
        return self.member_of(slot)

    def ensure_capacity(self) -> None:
        """Lazy pools: start workers for waiting callers, up to ``size``."""
        if not self.options.lazy or self.closed or self.nursery is None or self.placements.circuit_open:
            return
        waiting = len(self.checkout.waiters)
        while self.pending < waiting and self.sup.count_children().specs + self.pending < self.options.size:
            self.pending += 1
            self.nursery.start_soon(self._add_slot_on_demand)

    async def _add_slot_on_demand(self) -> None:
        try:
            await self.add_slot()
        except CorralError as exc:
            logger.warning("[%s] a worker failed to start: %s", self.name, exc.__cause__ or exc)
        finally:
            self.pending -= 1
        if self.checkout.waiters:
            self.wake_for_circuit()
            self.ensure_capacity()

    async def start_eagerly(self, count: int) -> None:
        """Start ``count`` workers at once; fail the open if any of them cannot start."""
        failures: list[BaseException] = []
        tries = len(self.placements)

        async def one() -> None:
            # With several hosts, a start that failed on one is tried again (the failed
            # host now ranks last): one host down does not keep the whole pool shut.
            for attempt in range(tries):
                try:
                    await self.add_slot()
                    return
                except CorralError as exc:
                    logger.warning("[%s] a worker failed to start: %s", self.name, exc.__cause__ or exc)
                    if attempt + 1 == tries or self.placements.circuit_open:
                        failures.append(exc)
                        return

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        if failures:
            raise failures[0]

    @property
    def rolling_out(self) -> bool:
        """An upgrade is under way (its batches decide how many workers run)."""
        return self.rollout is not None and self.rollout.phase not in ("done", "rolled back")

    def deficit(self) -> int:
        """Workers an eager pool lacks: up to its ``min_size`` (``size`` by default) for a
        PERMANENT pool; otherwise only those the pool itself stopped (``owed``), since a
        worker that ended by itself is not replaced."""
        options = self.options
        if options.lazy or self.closed:
            return 0
        missing = options.effective_min_size - self.sup.count_children().specs - len(self.starting)
        if missing <= 0:
            self.owed = 0
            return 0
        return missing if options.restart is Restart.PERMANENT else min(missing, self.owed)

    def top_up(self) -> None:
        """An eager pool short of workers for two passes in a row (a rollback whose old
        worker could not start, a slot that ended for good) starts what is missing, as
        the circuit breaker allows."""
        if self.pending or self.nursery is None or self.placements.circuit_open or self.rolling_out:
            self.short = 0
            return
        missing = self.deficit()
        self.short = self.short + 1 if missing > 0 else 0
        if self.short < 2:
            return
        self.short = 0
        self.owed = max(0, self.owed - missing)
        logger.warning("[%s] %d worker(s) short: starting them", self.name, missing)
        for _ in range(missing):
            self.pending += 1
            self.nursery.start_soon(self._add_slot_on_demand)

    async def _shrink(self, slot: Hashable) -> None:
        try:
            await self.sup.terminate_child(slot)
        except CorralError:
            pass

    async def housekeeping(self) -> None:
        """Idle shrink (lazy pools), age-based recycling of idle workers, session expiry."""
        options = self.options
        while True:
            await trio.sleep(min(1.0, options.idle_timeout / 2))
            now = trio.current_time()
            if options.lazy:
                for member in list(self.members.values()):
                    since = member.idle_since
                    if (
                        since is not None
                        and now - since >= options.idle_timeout
                        and len(self.members) > options.effective_min_size
                        and not member.holders
                    ):
                        self.checkout.remove_places(member)
                        self.start_soon(self._shrink, member.slot)
            self.top_up()
            if not self.closed:
                for member in set(self.checkout.idle):
                    if not member.recycling and recycle_due(member, member.release.options):
                        self.checkout.remove_places(member)
                        self.start_soon(recycle, self, member)
            self.sessions.expire(now)
