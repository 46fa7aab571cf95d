"""A small supervision tree, live: a crashing leaf, a restart, an escalation, an orderly stop.

    root (one_for_one)
    ├── metrics                     polite: waits for its stop request
    └── ingest (rest_for_one, at most 1 restart per second)
        ├── reader                  crashes on the first two bad records
        └── writer                  depends on reader: restarted with it

The reader's first crash restarts reader and writer (rest_for_one). Its second crash,
within the same second, is one restart too many for ``ingest``: it stops its children
and raises ``RestartIntensityExceeded``, which its parent sees as the abnormal exit of
the child ``ingest`` and answers by starting the whole subtree afresh. Every event of
both supervisors is printed as it happens.

Run it from the repository root: ``python -m examples.supervision_tree``.
"""

from __future__ import annotations

import logging

import trio

import corral

bad_records_left = 2


async def reader(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    global bad_records_left
    task_status.started("reader ready")
    await trio.sleep(0.05)  # reads a record...
    if bad_records_left:
        bad_records_left -= 1
        raise ValueError("malformed record")  # a bug: let it crash
    await corral.current_child().stop_requested.wait()


async def writer(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started("writer ready")
    await corral.current_child().stop_requested.wait()
    await trio.sleep(0.01)  # flush what is buffered, then return: a clean stop


async def metrics(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await corral.current_child().stop_requested.wait()


def describe(event: corral.SupervisorEvent) -> str:
    match event:
        case corral.ChildStarted(child_id=cid, restart=restart):
            return f"{cid!r} {'restarted' if restart else 'started'}"
        case corral.ChildExited(child_id=cid, exit=exit, requested=requested):
            return f"{cid!r} exited: {exit}{' (asked to stop)' if requested else ''}"
        case corral.ChildRestarting(child_id=cid, attempt=attempt):
            return f"restarting {cid!r} (attempt {attempt})"
        case corral.IntensityExceeded(max_restarts=n, max_seconds=s):
            return f"more than {n} restart(s) within {s} s: giving up"
        case corral.SupervisorStopped(reason=reason):
            return f"stopped ({reason})"
        case _:
            return repr(event)


async def main() -> None:
    start = trio.current_time()

    def show(event: corral.SupervisorEvent) -> None:
        print(f"{trio.current_time() - start:5.2f}s  [{event.supervisor}] {describe(event)}")

    ingest = corral.Supervisor(
        [corral.ChildSpec("reader", reader), corral.ChildSpec("writer", writer)],
        strategy=corral.Strategy.REST_FOR_ONE,
        max_restarts=1,
        max_seconds=1.0,
        name="ingest",
    )
    root = corral.Supervisor(
        [corral.ChildSpec("metrics", metrics), corral.ChildSpec("ingest", ingest.run)],
        max_restarts=3,
        max_seconds=10.0,
        name="root",
    )
    ingest.subscribe(show)
    root.subscribe(show)

    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await trio.sleep(0.4)
        print()
        for sup in (root, ingest):
            for child in sup.which_children():
                print(f"{sup.name:>6}: {child.id!r:9} {child.state.name:8} restarts={child.restarts}")
        print(f"  root: {root.count_children()}")
        print()
        await root.stop()  # orderly: ingest (writer, then reader), then metrics


if __name__ == "__main__":
    logging.getLogger("corral").setLevel(logging.CRITICAL)  # we print the events ourselves
    trio.run(main)
