"""``make demo``: a live supervision tree with a crashing child, printing every event."""

from __future__ import annotations

import logging
import random

import attrs
import trio

import corral


async def _ticker(name: str, *, task_status: trio.TaskStatus[str]) -> None:
    task_status.started(name)
    await corral.current_child().stop_requested.wait()


async def _flaky(*, task_status: trio.TaskStatus[str]) -> None:
    """Crashes after a random short while, like a worker with a bug."""
    task_status.started("flaky")
    await trio.sleep(random.uniform(0.3, 1.5))
    raise RuntimeError("flaky child hit a bug")


async def _polite(*, task_status: trio.TaskStatus[str]) -> None:
    """Finishes its work when asked to stop, instead of being cancelled."""
    task_status.started("polite")
    await corral.current_child().stop_requested.wait()
    await trio.sleep(0.05)  # flush, close, say goodbye


def _describe(event: corral.SupervisorEvent) -> str:
    kind = type(event).__name__
    fields = attrs.asdict(event, recurse=False)
    fields.pop("supervisor")
    detail = " ".join(f"{k}={v}" for k, v in fields.items())
    return f"[{event.supervisor}] {kind:<22} {detail}"


async def _main(seconds: float) -> None:
    start = trio.current_time()

    def show(event: corral.SupervisorEvent) -> None:
        print(f"{trio.current_time() - start:6.2f}s  {_describe(event)}", flush=True)

    inner = corral.Supervisor(
        [
            corral.ChildSpec("db", _ticker, args=("db",)),
            corral.ChildSpec("flaky", _flaky, shutdown=corral.BRUTAL_KILL),
        ],
        strategy=corral.Strategy.REST_FOR_ONE,
        max_restarts=50,
        max_seconds=10,
        backoff=corral.Backoff(initial=0.1, maximum=1.0),
        name="workers",
    )
    inner.subscribe(show)
    children = [
        corral.ChildSpec("polite", _polite, shutdown=2.0),
        corral.ChildSpec("workers", inner.run),
    ]
    print(f"corral demo: a supervision tree for {seconds:.0f} s; the 'flaky' child keeps crashing")
    async with corral.open_supervisor(children, name="root") as root:
        root.subscribe(show)
        with trio.move_on_after(seconds):
            await trio.sleep_forever()
        print("\nchildren of 'workers':")
        for info in inner.which_children():
            print(f"  {info.id!r:10} {info.state.name:10} restarts={info.restarts}")
        print("stopping the tree in reverse start order ...")
    print("done")


def run_demo(seconds: float = 8.0) -> int:
    logging.getLogger("corral").setLevel(logging.ERROR)  # we print every event ourselves
    trio.run(_main, seconds)
    return 0
