"""Replacing one version of a pool's workers by the next (``pool.upgrade``); the
versions themselves are ``_release.Release``. Imported on the first upgrade only.

A rollout replaces the old release's slots batch by batch, as a Kubernetes Deployment
does (``surge`` workers over the count, ``unavailable`` under it; ``probation`` is its
minReadySeconds): a batch of ``surge + unavailable`` new workers starts (``surge`` at
once, the others as ``unavailable`` old ones drain and stop to make room); once they
are READY and have lived ``probation`` seconds, the batch's other old workers drain
(their calls finish) and stop. The first new worker that cannot start, or dies on probation, judges the
release failing: its workers take no more calls, and the rollback stops them and starts
old workers in place of those already retired.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from corral._errors import CorralError, UpgradeFailed
from corral.workers._release import DiedOnProbation, Release

if TYPE_CHECKING:
    from corral.workers._member import Member
    from corral.workers._slots import Slots

logger = logging.getLogger("corral.pool")

#: What ``pool.upgrade(sessions=...)`` accepts.
SESSION_POLICIES = ("wait", "move")
#: How often a waiting step looks again (sessions ended, room for one more worker).
POLL = 0.05


@attrs.frozen
class Rollout:
    """Where an upgrade stands (``pool.statistics().rollout``), or how the last one ended."""

    from_version: int
    to_version: int
    #: "starting", "replacing", "rolling back", then "done" or "rolled back".
    phase: str
    #: Old workers replaced so far, of ``total`` (the workers when it began).
    replaced: int
    total: int
    #: Why it rolled back (the new version's first failure), else None.
    error: str | None = None


class Upgrade:
    """One rollout from ``old`` to ``new``; ``run()`` returns when it is done or rolled back."""

    def __init__(
        self,
        slots: Slots,
        new: Release,
        *,
        surge: int,
        unavailable: int,
        probation: float,
        sessions: str,
        session_deadline: float,
    ) -> None:
        self.slots = slots
        self.old = slots.release
        self.new = new
        self.surge = surge
        self.unavailable = unavailable
        self.sessions = sessions
        self.session_deadline = session_deadline
        new.probation = probation
        self.total = 0
        self.replaced = 0
        self.stale = 0  # old workers a rollback restarted from a changed module file
        self.started = 0  # new workers READY so far
        self.over = False  # done or rolled back: nothing can judge the version any more
        self.abandoned = False  # its caller was cancelled: it rolls back on its own
        self.finished = trio.Event()  # run() has returned (set by the pool)
        self.status = Rollout(self.old.number, new.number, "starting", 0, 0)

    def abandon(self) -> None:
        """The caller of ``upgrade()`` was cancelled: roll back, as for a failing version
        (unless it is over already: a version that went through stays)."""
        if self.over:
            return
        self.abandoned = True
        self.slots.fail_release(self.new, CorralError("upgrade() was cancelled by its caller"))

    def _step(self, phase: str, detail: str, member: Member | None = None) -> None:
        self.status = Rollout(
            self.old.number,
            self.new.number,
            phase,
            self.replaced,
            self.total,
            None if self.new.failure is None else _describe(self.new.failure),
        )
        self.slots.rollout = self.status
        text = f"upgrade v{self.old.number} -> v{self.new.number}: {detail}"
        if member is not None:
            self.slots.telemetry.emit(member.worker, "upgrade", text)
            logger.info("[%s] %s (%s)", self.slots.name, text, member.id)
        else:
            self.slots.telemetry.emit_pool("upgrade", text)

    async def run(self) -> Rollout:
        slots, old, new = self.slots, self.old, self.new
        self.total = len(slots.slots_of(old))
        self._step(
            "starting",
            f"started: {self.total} worker(s), surge {self.surge}, unavailable {self.unavailable}",
        )
        old.outgoing = True
        new.on_probation = True
        slots.release = new
        slots.sup.max_children = None  # old and new side by side; the batches bound them
        deadline = trio.current_time() + self.session_deadline
        try:
            await slots.settle(old)  # an old worker starting now (lazy, recycle) is replaced too
            self.total = len(slots.slots_of(old))
            if new.placements.forkserver is not None:
                await self._start_template()
            if self.total == 0 and new.failure is None:
                # Nothing to replace (a lazy pool with no worker): one new worker is
                # started all the same, so that a version that cannot start is judged.
                await self._replace_batch([], deadline, extra=1)
            while new.failure is None:
                remaining = slots.slots_of(old)
                missing = slots.deficit()  # an eager pool short of workers (a recycle skipped)
                if not remaining and not missing:
                    break
                await self._replace_batch(remaining[: self.surge + self.unavailable], deadline, missing)
            if new.failure is None:
                self.over = True
                new.on_probation = False
                self._stop_template(old)
                self._step("done", f"done: {self.replaced} worker(s) replaced")
                return self.status
            await self._roll_back()
            stale = (
                f" {self.stale} of its workers had to start from the handler module on disk, "
                "which holds the new code now: keep each version in its own module or folder "
                "to roll back to it."
                if self.stale
                else ""
            )
            raise UpgradeFailed(
                f"pool {slots.name!r}: version {new.number} failed ({_describe(new.failure)}); "
                f"rolled back: the pool serves on version {old.number}.{stale} Fix the new "
                "version (the cause is chained below), then upgrade again.",
                version=new.number,
                failed_calls=new.failed_calls,
            ) from new.failure
        finally:
            slots.sup.max_children = slots.options.size
            new.on_probation = False

    async def _start_template(self) -> None:
        """The new version's fork-server template first: its workers fork from it."""
        new = self.new
        try:
            await self.slots.start_template(new)
        except CorralError as exc:
            if not self.slots.closed:
                self.slots.fail_release(new, exc)

    async def _replace_batch(self, batch: list[Hashable], deadline: float, extra: int = 0) -> None:
        """Start the batch's new workers, and ``extra`` more (``unavailable`` old ones
        drain meanwhile); once they are READY and past probation, drain and stop the
        rest of the batch."""
        slots, new = self.slots, self.new
        first, later = batch[: self.unavailable], batch[self.unavailable :]
        count = len(slots.slots_of(self.old)) + len(slots.slots_of(new))
        starts = max(0, min(len(batch), self.total - count + len(batch))) + extra
        slots.owed = max(0, slots.owed - extra)
        now = min(starts, self.surge)  # over the count: at most surge, at once

        async def make_room_then_start() -> None:
            async with trio.open_nursery() as retiring:
                for slot in first:
                    retiring.start_soon(self._retire, slot, deadline)
            async with trio.open_nursery() as starting:
                for _ in range(starts - now):
                    starting.start_soon(self._start_one)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(make_room_then_start)
            for _ in range(now):
                nursery.start_soon(self._start_one)
        if new.failure is None:
            with trio.move_on_after(new.probation):
                await new.judged.wait()
        if new.failure is not None:
            self.replaced += len(first)
            return
        if new.probation:
            self._step("replacing", f"probation passed ({new.probation:g} s)")
        async with trio.open_nursery() as nursery:
            for slot in later:
                nursery.start_soon(self._retire, slot, deadline)
        self.replaced += len(batch)
        self._step("replacing", f"{self.replaced} of {self.total} replaced")

    async def _start_one(self) -> None:
        new = self.new
        if new.failure is not None:
            return
        with trio.CancelScope() as scope:
            new.on_fail.add(scope)
            try:
                member = await self.slots.add_slot(new)
            except CorralError as exc:
                if not self.slots.closed:  # a start cut short by the pool's close judges nothing
                    self.slots.fail_release(new, exc)
                return
            finally:
                new.on_fail.discard(scope)
            self.started += 1
            self._step("replacing", f"new worker READY ({self.started} of {self.total})", member)

    async def _retire(self, slot: Hashable, deadline: float | None) -> None:
        """Drain one slot's worker (its calls finish; with ``sessions="wait"`` its
        sessions may end until ``deadline``), then stop the slot. An old worker still
        draining when the new version is judged failing is kept: it serves on, its
        sessions intact, and the rollback has one worker less to start."""
        slots, new = self.slots, self.new
        old = slots.release_of(slot) is self.old
        slots.retiring.add(slot)
        try:
            with trio.CancelScope() as scope:
                if old:
                    new.on_fail.add(scope)
                    if new.failure is not None:
                        scope.cancel()
                member = slots.member_of(slot)
                if member is not None:
                    slots.retire(member)
                    self._step("replacing", f"draining v{member.release.number} worker", member)
                    if deadline is not None and self.sessions == "wait" and member.sessions:
                        member.keeps_sessions = True
                        with trio.move_on_at(deadline):
                            while member.sessions and not member.forgotten:
                                await trio.sleep(POLL)
                        member.keeps_sessions = False
                        slots.checkout.move_session_waiters(member)  # the rest move
                await slots.drain_slot(slot)
            new.on_fail.discard(scope)
            if old and new.failure is not None:
                slots.retiring.discard(slot)
                slots.reinstate(slot)
                return
            try:
                await slots.sup.terminate_child(slot)
            except CorralError:
                pass  # it ended meanwhile (recycled, shrunk)
        finally:
            slots.retiring.discard(slot)

    async def _roll_back(self) -> None:
        """Stop the new version's workers; start old ones in place of those retired."""
        slots, old, new = self.slots, self.old, self.new
        self._step("rolling back", f"rolling back: {_describe(new.failure)}")
        slots.release = old
        old.outgoing = False
        new.on_probation = False
        for member in list(slots.members.values()):
            if member.release is new:
                slots.retire(member)
        await slots.settle(new)  # a new worker a recycle or a lazy start began: stopped too
        missing = self.total - len(slots.slots_of(old))
        if missing > 0 and not old.on_disk():
            self.stale = missing
            logger.warning(
                "[%s] rolling back: %d old worker(s) start from the handler module on disk, which "
                "has changed since version %d started: they run the new code",
                slots.name,
                missing,
                old.number,
            )
        async with trio.open_nursery() as nursery:
            for slot in slots.slots_of(new):
                nursery.start_soon(self._retire, slot, None)
            nursery.start_soon(self._restore, missing)
        self._stop_template(new)
        self.over = True
        self._step("rolled back", f"rolled back: the pool serves on v{old.number}")

    async def _restore(self, missing: int) -> None:
        """Start ``missing`` old workers, one at a time, each once the count allows it:
        the surge bound holds while the new workers drain."""
        slots = self.slots
        for _ in range(missing):
            while len(slots.slots_of(self.old)) + len(slots.slots_of(self.new)) >= self.total + self.surge:
                await trio.sleep(POLL)
            try:
                await slots.add_slot(self.old)
            except CorralError as exc:
                slots.owed += 1  # the pool tops itself up later, as its breaker allows
                logger.warning("[%s] rolling back: an old worker failed to start: %s", slots.name, exc)

    def _stop_template(self, release: Release) -> None:
        if release.template_scope is not None:
            release.template_scope.cancel()


def _describe(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = error.__cause__ if isinstance(error, CorralError) and error.__cause__ is not None else error
    text = str(cause).splitlines()[0] if str(cause) else ""
    if isinstance(cause, DiedOnProbation):
        return text
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def check_upgrade(surge: Any, unavailable: Any, probation: Any, sessions: Any, session_deadline: Any) -> None:
    """Reject bad rollout parameters before anything changes, naming the field."""
    from corral._errors import InvalidSpec
    from corral._validate import check, integer, number

    check(surge, integer(minimum=0, field="surge"))
    check(unavailable, integer(minimum=0, field="unavailable"))
    check(probation, number(field="probation"))
    check(session_deadline, number(field="session_deadline"))
    if surge + unavailable < 1:
        raise InvalidSpec("surge", "surge and unavailable cannot both be 0: nothing could be replaced")
    if sessions not in SESSION_POLICIES:
        raise InvalidSpec("sessions", f'must be "wait" or "move", got {sessions!r}')
