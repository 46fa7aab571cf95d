"""Free places and the callers waiting for one.

A worker offers one place (or ``pipeline`` places when it pipelines requests). A free
place sits in ``idle``; a caller takes the warmest one (LIFO: hot caches, an awake
CPU) or queues in ``waiters`` (FIFO: fair). A freed place goes first to the callers of
its worker's sessions, then to the oldest waiter, and only then back to ``idle``.

Invariants (asserted where cheap):

- A caller queues only when no place is free to it: ``take_idle`` is tried first, and
  ``give`` hands a freed place to the first live waiter before parking it in ``idle``.
  (A place of an exclusively leased member stays in ``idle`` for its holder alone.)
- A member's places are split between its entries in ``idle`` and its ``holders``;
  together they never exceed its ``depth``.
- A forgotten, recycling or retired member has no entry in ``idle`` (``remove_places``),
  except a place its exclusive lease holder gave back.
- ``held`` is the sum of ``holders`` over live members: 0 means nobody holds a place.
- A waiter whose event is set is stale (it got a place, gave up, or was turned away):
  it is skipped where met and never woken twice. ``queued`` counts the others, in
  every queue (anonymous and sessions'): every wake goes through ``wake``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import trio

from corral.workers._member import Member, Waiter


class Checkout:
    """The pool's places and its queue of callers; pure bookkeeping, no I/O."""

    def __init__(self, pipeline: int) -> None:
        self.pipeline = pipeline
        self.idle: deque[Member] = deque()  # one entry per free place
        self.waiters: deque[Waiter] = deque()  # anonymous callers, oldest first
        self.held = 0  # places held by callers, over all live members
        self.queued = 0  # waiters not woken yet, in every queue

    def enqueue(
        self, queue: deque[Waiter], session: Hashable | None = None, *, front: bool = False
    ) -> Waiter:
        """A new waiter, last in ``queue`` (first with ``front``: a caller looking again)."""
        waiter = Waiter(session)
        if front:
            queue.appendleft(waiter)
        else:
            queue.append(waiter)
        self.queued += 1
        return waiter

    def wake(self, waiter: Waiter, member: Member | None = None) -> None:
        """Wake a waiter, with a place on ``member`` (held for it) or without one."""
        if waiter.event.is_set():
            return
        self.queued -= 1
        assert self.queued >= 0
        if member is not None:
            self.hold(member)
            waiter.member = member
        waiter.event.set()

    def hold(self, member: Member) -> None:
        member.holders += 1
        self.held += 1

    def unhold(self, member: Member) -> None:
        if member.forgotten or member.holders == 0:
            return  # its holders were dropped with it
        member.holders -= 1
        self.held -= 1
        assert self.held >= 0
        if member.holders == 0 and member.holders_gone is not None:
            member.holders_gone.set()  # a recycle waited for the last holder
            member.holders_gone = None

    def drop(self, member: Member) -> None:
        """Forget every place of a member that left the pool."""
        self.held -= member.holders
        member.holders = 0
        self.remove_places(member)
        if member.holders_gone is not None:
            member.holders_gone.set()
            member.holders_gone = None

    def remove_places(self, member: Member) -> None:
        while member in self.idle:
            self.idle.remove(member)
        member.idle_since = None

    def give(self, member: Member) -> None:
        """One place on ``member`` is free: the first waiter that may use it gets it."""
        if member.exclusive:  # its lease holder alone may use it
            self.idle.append(member)
            return
        for queue in (member.session_waiters, self.waiters):
            while queue:
                waiter = queue.popleft()
                if not waiter.event.is_set():
                    self.wake(waiter, member)
                    return
        self.idle.append(member)
        member.idle_since = trio.current_time()

    def move_session_waiters(self, member: Member, session: Hashable | None = None) -> None:
        """Callers waiting for ``member`` for a session (``session`` only, or all) look
        again: the session ended, or the worker no longer keeps its sessions."""
        keep: deque[Waiter] = deque()
        for waiter in member.session_waiters:
            if session is None or waiter.session == session:
                waiter.moved = True
                self.wake(waiter)
            else:
                keep.append(waiter)
        member.session_waiters = keep

    def give_to_sessions(self, member: Member) -> bool:
        """A retiring member's free place goes to a caller of its sessions, or nowhere
        (under an exclusive lease: back to its holder)."""
        if member.exclusive:
            self.idle.append(member)
            return False
        queue = member.session_waiters
        while queue:
            waiter = queue.popleft()
            if not waiter.event.is_set():
                self.wake(waiter, member)
                return True
        return False

    def take_idle(self, spread: bool = False) -> Member | None:
        """A free place, or None. LIFO (the warmest worker), except for a new session,
        which goes to the idle worker holding the fewest sessions so that state, memory
        and the cost of one crash are spread over the pool."""
        idle = self.idle
        if spread and len(idle) > 1:
            # (not on a worker an upgrade is about to replace, while there is another)
            best = min(reversed(idle), key=lambda m: (m.release.outgoing, len(m.sessions)))
            idle.remove(best)
            idle.append(best)
        if self.pipeline > 1 and len(idle) > 1 and not spread and idle[-1].holders:
            # Pipelining: the worker holding the fewest requests, so that a call waits
            # behind another only when every worker is busy (the warmest place is taken
            # as it is when its worker holds none: the common case, and no scan).
            best = min(reversed(idle), key=lambda m: m.holders)
            if best is not idle[-1]:
                idle.remove(best)
                idle.append(best)
        skipped: list[Member] = []
        try:
            while idle:
                member = idle.pop()
                if member.exclusive:
                    skipped.append(member)
                    continue
                if member not in idle:
                    member.idle_since = None
                worker = member.worker
                if worker.available and worker.alive and not member.forgotten:
                    self.hold(member)
                    return member
            return None
        finally:
            idle.extend(reversed(skipped))

    def take_place_of(self, member: Member) -> bool:
        """Take a free place of this member (a session's worker), if it has one."""
        if member.exclusive or member not in self.idle:
            return False
        self.idle.remove(member)
        if member not in self.idle:
            member.idle_since = None
        self.hold(member)
        return True

    def abandon(self, waiter: Waiter) -> None:
        self.wake(waiter)  # woken without a member: give() skips it
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def turn_away_all(self, members: list[Member]) -> None:
        """The pool closes: every waiter is woken without a place."""
        for waiter in self.waiters:
            self.wake(waiter)
        for member in members:
            for waiter in member.session_waiters:
                self.wake(waiter)
