"""One record per worker in a pool, as OTP keeps one ``#child{}`` per child.

Everything the pool knows about a live worker sits in its ``Member``: where it runs,
which supervisor slot and which release (version) run it, who holds its places,
whether it is leased exclusively or being recycled, since when it idles, which
sessions it holds and who waits for it.
Forgetting a worker is removing its record (``Slots.forget``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from corral.workers._placement import Placement
    from corral.workers._release import Release
    from corral.workers._seam import PoolWorker


class Waiter:
    """A caller waiting for a place: set with ``member`` (a place was handed over), or
    set without one (timed out, abandoned, the pool closed, its session was lost or
    moved)."""

    __slots__ = ("event", "lost", "member", "moved", "session")

    def __init__(self, session: Hashable | None = None) -> None:
        self.event = trio.Event()
        self.member: Member | None = None
        self.session = session  # the session it waits for a worker of, if any
        self.lost = False  # its session's worker died while it waited
        self.moved = False  # its session ended, or its worker stopped keeping it: look again


@attrs.define(eq=False)
class Member:
    """A live worker of the pool, and every fact the pool keeps about it."""

    worker: PoolWorker
    placement: Placement
    slot: Hashable  # the supervisor child that runs it
    release: Release  # the version it runs (handlers, options); its slot restarts in it
    #: Callers holding one of its places (one place, or ``pipeline`` when it pipelines).
    holders: int = 0
    #: Under an exclusive lease (a pipelining worker): its holder alone may use it.
    exclusive: bool = False
    #: A planned replacement is under way (max_requests, max_age, max_memory_mb).
    recycling: bool = False
    #: An upgrade retires it (or its version was judged failing): it takes no new call.
    #: Apart from ``recycling``: a rollback that keeps it clears this flag only.
    retired: bool = False
    #: Being retired by an upgrade that waits for its sessions: it serves their callers
    #: alone, until they end or the upgrade's session deadline.
    keeps_sessions: bool = False
    #: Set when the last holder leaves, for whoever waits for that (a recycle, an
    #: upgrade's drain): ``wait_holders_gone``.
    holders_gone: trio.Event | None = None
    #: Trio time its last place became idle (None while not idle).
    idle_since: float | None = None
    #: Sessions bound to it: the pool's session load and what is lost when it dies.
    sessions: set[Hashable] = attrs.Factory(set)
    #: Callers of its sessions waiting for it, in order.
    session_waiters: deque[Waiter] = attrs.Factory(deque)
    #: Removed from the pool: every late reference sees it.
    forgotten: bool = False

    @property
    def id(self) -> str:
        return self.worker.id


async def wait_holders_gone(member: Member) -> None:
    """Until its last holder leaves (or it is forgotten); several tasks may wait."""
    if member.holders == 0 or member.forgotten:
        return
    if member.holders_gone is None:
        member.holders_gone = trio.Event()
    await member.holders_gone.wait()
