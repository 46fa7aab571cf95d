"""Planned replacements: a worker that served ``max_requests`` calls, lived ``max_age``
seconds or grew past ``max_memory_mb`` is replaced between calls, never during one.
A recycle is not a restart: it does not count toward restart intensity.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from corral._errors import CorralError
from corral.workers._member import Member, wait_holders_gone
from corral.workers._options import PoolOptions

if TYPE_CHECKING:
    from corral.workers._slots import Slots

logger = logging.getLogger("corral.pool")


def recycle_due(member: Member, options: PoolOptions) -> bool:
    """Whether this worker should be replaced before it takes another call."""
    worker = member.worker
    if options.max_requests is not None and worker.served >= options.max_requests:
        return True
    if (
        options.max_age is not None
        and worker.served  # never before a first call: max_age=0 looped start/recycle
        and worker.ready_at is not None
        and trio.current_time() - worker.ready_at >= options.max_age
    ):
        return True
    limit = options.max_memory_bytes
    if limit is not None and worker.served:  # a fresh worker serves once first
        rss = worker.rss_bytes()
        if rss is not None and rss > limit:
            return True
    return False


async def recycle(slots: Slots, member: Member) -> None:
    """Stop the worker's slot once nobody holds one of its places; start a new slot
    if the pool would otherwise drop below ``min_size`` or callers wait."""
    member.recycling = True
    slots.checkout.remove_places(member)
    slots.telemetry.emit(member.worker, "recycle")
    if member.holders:  # pipelining: callers (an exclusive lease) still hold places
        await wait_holders_gone(member)
        if member.forgotten:
            return
    if member.forgotten:
        member.worker.stop()
        return
    options = slots.options
    try:
        await slots.sup.terminate_child(member.slot)
        if slots.closed:
            return
        if slots.rolling_out:  # the upgrade's batches replace it (an eager pool's deficit)
            slots.owed += 1
            if slots.checkout.waiters:
                slots.ensure_capacity()  # a lazy pool: on demand, as ever
            return
        if slots.sup.count_children().specs < max(options.effective_min_size, 1):
            await slots.add_slot()
        elif slots.checkout.waiters:
            slots.ensure_capacity()
            if slots.pending == 0 and slots.sup.count_children().specs < options.size:
                await slots.add_slot()
    except CorralError as exc:
        logger.warning("[%s] recycling %s: %s", slots.name, member.id, exc)
