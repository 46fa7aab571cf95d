"""Hypothesis strategies for property-based tests of your own supervision trees.

A *crash schedule* is a list of faults at increasing times; ``apply_schedule`` plays
it against a running supervisor (use ``trio.testing.MockClock`` so time is free).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import attrs
import trio
import trio.testing
from hypothesis import strategies as st

from corral.supervisor._supervisor import Supervisor
from corral.testing import crash_child, fail_next_start

KINDS = ("crash", "fail_next_start")


@attrs.frozen
class Fault:
    """One fault of a schedule: at ``at`` seconds, ``"crash"`` ``child_id`` (if running)
    or make its next start fail (``"fail_next_start"``)."""

    at: float  # seconds after the schedule starts
    child_id: Hashable
    kind: str  # "crash" or "fail_next_start"


def faults(child_ids: Sequence[Hashable], *, max_at: float = 10.0) -> st.SearchStrategy[Fault]:
    """One fault of either kind, for one of ``child_ids``, at a time in ``[0, max_at]``."""
    return st.builds(
        Fault,
        at=st.floats(min_value=0.0, max_value=max_at, allow_nan=False),
        child_id=st.sampled_from(list(child_ids)),
        kind=st.sampled_from(KINDS),
    )


def crash_schedules(
    child_ids: Sequence[Hashable], *, max_faults: int = 10, max_at: float = 10.0
) -> st.SearchStrategy[list[Fault]]:
    """Lists of faults sorted by time."""
    return st.lists(faults(child_ids, max_at=max_at), max_size=max_faults).map(
        lambda fs: sorted(fs, key=lambda f: f.at)
    )


async def apply_schedule(sup: Supervisor, schedule: Sequence[Fault]) -> list[Fault]:
    """Play ``schedule``; returns the faults that applied (a crash of a child that is
    not running at that moment is skipped)."""
    applied = []
    start = trio.current_time()
    for fault in schedule:
        await trio.sleep_until(start + fault.at)
        await trio.testing.wait_all_tasks_blocked()
        if not sup.running:
            break
        if fault.kind == "crash":
            try:
                crash_child(sup, fault.child_id)
            except Exception:
                continue
        else:
            fail_next_start(sup, fault.child_id)
        applied.append(fault)
    await trio.testing.wait_all_tasks_blocked()  # let the tree react to the last fault
    return applied
