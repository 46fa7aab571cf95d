"""Sessions: a key pins its callers to the worker that first served it.

A binding remembers when it was last used and expires after ``session_ttl``. Each
member keeps the set of its sessions, so a worker's session load and what its death
loses are known without a scan. A session whose worker died is *lost*: the first call
for it raises ``SessionLost`` once, and the next binds it to a new worker. The record
of a lost session expires with ``session_ttl`` too, and at most ``MAX_LOST`` are kept
(the oldest go first), so keys that never come back cost nothing forever.
"""

from __future__ import annotations

from collections.abc import Hashable

from corral._errors import SessionLost
from corral.workers._member import Member


class SessionTable:
    """Session key -> (member, last use); and the keys whose worker died, oldest first."""

    MAX_LOST = 65_536

    def __init__(self, ttl: float | None) -> None:
        self.ttl = ttl
        self.bound: dict[Hashable, tuple[Member, float]] = {}
        self.lost: dict[Hashable, float] = {}  # key -> when it was lost (insertion order)

    def __len__(self) -> int:
        return len(self.bound)

    def bind(self, session: Hashable, member: Member, now: float) -> None:
        old = self.bound.get(session)
        if old is not None and old[0] is not member:
            old[0].sessions.discard(session)
        self.bound[session] = (member, now)
        member.sessions.add(session)

    def unbind(self, session: Hashable) -> None:
        entry = self.bound.pop(session, None)
        if entry is not None:
            entry[0].sessions.discard(session)

    def lookup_quietly(self, session: Hashable) -> Member | None:
        """The member a session is bound to, expired or not, raising nothing."""
        entry = self.bound.get(session)
        return None if entry is None else entry[0]

    def lookup(self, session: Hashable, now: float) -> Member | None:
        """The member this session is bound to (None if unbound or expired); a session
        whose worker died raises ``SessionLost``, once."""
        lost_at = self.lost.pop(session, None)
        if lost_at is not None and (self.ttl is None or now - lost_at <= self.ttl):
            raise SessionLost(
                f"the worker that held session {session!r} died; its state is gone. "
                "The next call binds the session to a new worker."
            )
        entry = self.bound.get(session)
        if entry is None:
            return None
        member, last = entry
        if self.ttl is not None and now - last > self.ttl:
            self.unbind(session)
            return None
        return member

    def lose(self, member: Member, now: float) -> None:
        """Its worker died: every session bound to it is lost."""
        lost = self.lost
        for session in member.sessions:
            del self.bound[session]
            lost.pop(session, None)  # re-inserted last: the order stays by time
            lost[session] = now
        member.sessions.clear()
        while len(lost) > self.MAX_LOST:
            del lost[next(iter(lost))]

    def forget_lost(self, session: Hashable) -> None:
        self.lost.pop(session, None)

    def expire(self, now: float) -> None:
        if self.ttl is None:
            return
        for session, (_, last) in list(self.bound.items()):
            if now - last > self.ttl:
                self.unbind(session)
        lost = self.lost
        while lost:
            oldest = next(iter(lost))
            if now - lost[oldest] <= self.ttl:
                break
            del lost[oldest]
