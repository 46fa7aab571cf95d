"""Scale: one supervisor with 20,000 children starts and stops them all, in order.

Guards against accidental quadratic behaviour in the start and stop paths (each child
is started through ``nursery.start`` and stopped one at a time, in reverse order).
"""

from __future__ import annotations

import time

import trio

import corral
from corral import ChildSpec, ChildState, Supervisor

N = 20_000


async def _child(index: int, stopped: list[int], *, task_status: trio.TaskStatus[int]) -> None:
    task_status.started(index)
    try:
        await corral.current_child().stop_requested.wait()
    finally:
        stopped.append(index)


async def test_twenty_thousand_children_start_and_stop_in_order() -> None:
    stopped: list[int] = []
    sup = Supervisor([ChildSpec(i, _child, (i, stopped)) for i in range(N)], max_restarts=0)
    began = time.perf_counter()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(sup.run) is sup
            started = time.perf_counter()
            infos = sup.which_children()
            assert [info.id for info in infos] == list(range(N))
            assert all(info.state is ChildState.RUNNING for info in infos)
            assert [info.value for info in infos] == list(range(N))
            assert sup.count_children() == corral.ChildCounts(N, N, 0, N)
            assert stopped == []
            await sup.stop()
    finished = time.perf_counter()
    assert stopped == list(reversed(range(N)))
    assert all(info.state is ChildState.STOPPED for info in sup.which_children())
    assert not sup.running
    print(f"{N} children: start {started - began:.2f} s, stop {finished - started:.2f} s")
