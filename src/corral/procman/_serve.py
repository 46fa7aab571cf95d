"""The foreground process manager: run a ``ProcessTree`` until it ends or is signalled,
telling the terminal what the supervisors do (``serve``)."""

from __future__ import annotations

import signal

import trio

from corral._errors import ChildStartError, RestartIntensityExceeded
from corral.procman._logs import Console
from corral.procman._tree import ProcessTree
from corral.supervisor import (
    AutoShutdownTriggered,
    ChildExited,
    ChildRestarting,
    ChildStarted,
    IntensityExceeded,
    RestartFailed,
    SupervisorEvent,
    SupervisorStopped,
)


def _event_text(event: SupervisorEvent, processes: frozenset[object]) -> str | None:
    """One console line for a supervisor event (None: not worth a line)."""
    if isinstance(event, ChildStarted):
        verb = "restarted" if event.restart else "started"
        if event.child_id in processes:
            return f"{event.child_id} {verb} (pid {event.value})"
        return f"{event.child_id} {verb} (supervisor)"
    if isinstance(event, ChildExited):
        exc = event.exit.exception
        if isinstance(exc, RestartIntensityExceeded):
            why = "gave up: too many restarts"
        elif exc is not None and str(exc):
            why = str(exc)
        elif event.exit.reason == "normal":
            why = "exit code 0" if event.child_id in processes else "normal"
        elif event.exit.reason == "shutdown" and exc is None and event.child_id in processes:
            why = "SIGKILL to the process group (shutdown grace over)"
        else:
            why = event.exit.reason
        return f"{event.child_id} exited: {why}" + (" (stopped)" if event.requested else "")
    if isinstance(event, ChildRestarting):
        when = f"in {event.delay:.2f} s" if event.delay > 0 else "now"
        return f"restarting {event.child_id} {when} (attempt {event.attempt})"
    if isinstance(event, RestartFailed):
        cause = event.exception.__cause__ or event.exception
        return f"restart of {event.child_id} failed: {cause!r}"
    if isinstance(event, IntensityExceeded):
        return (
            f"supervisor {event.supervisor}: more than {event.max_restarts} restarts in "
            f"{event.max_seconds:g} s: stopping its children and giving up"
        )
    if isinstance(event, AutoShutdownTriggered):
        return f"supervisor {event.supervisor}: significant child {event.child_id} exited: auto shutdown"
    if isinstance(event, SupervisorStopped) and event.reason not in ("stop", "cancelled", "intensity"):
        return f"supervisor {event.supervisor} stopped ({event.reason})"
    return None


async def serve(tree: ProcessTree, console: Console) -> int:
    """Run the tree until it ends or SIGINT/SIGTERM; returns the exit status.

    First SIGINT/SIGTERM: orderly stop (reverse order, each child's grace), 0.
    Second: kill everything now (SIGKILL to every group, still in reverse order), 130.
    The tree giving up (restart intensity) or failing to start: 1.
    """

    processes = frozenset(p.id for p in tree.config.processes())

    def report(event: SupervisorEvent) -> None:
        text = _event_text(event, processes)
        if text is not None:
            console.say(text)

    for sup in tree.supervisors:
        sup.subscribe(report)
    status = 0
    done = trio.Event()
    run_scope = trio.CancelScope()

    async def supervise() -> None:
        nonlocal status
        try:
            with run_scope:
                await tree.root.run()
        except ChildStartError as exc:
            console.say(f"could not start the tree: {exc}")
            status = 1
        except RestartIntensityExceeded as exc:
            console.say(f"giving up: {exc}")
            status = 1
        finally:
            done.set()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervise)

            async def watch_signals() -> None:
                nonlocal status
                stopping = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stopping and tree.root.running:
                        stopping = True
                        console.say(f"{name}: stopping the tree in reverse order (again to kill at once)")
                        nursery.start_soon(tree.root.stop)
                    elif not stopping:  # run() has not begun: nothing to stop in order
                        run_scope.cancel()
                    else:
                        console.say(f"{name} again: killing every process now")
                        status = 130
                        run_scope.cancel()

            nursery.start_soon(watch_signals)
            await done.wait()
            nursery.cancel_scope.cancel()
    if status == 0:
        console.say("all stopped")
    return status
