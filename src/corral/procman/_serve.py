"""The foreground process manager: run a ``ProcessTree`` until it ends or is signalled,
telling the terminal what the supervisors do (``serve``), reloading the config on
SIGHUP (``reload``)."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from corral._errors import ChildStartError, InvalidSpec, RestartIntensityExceeded
from corral.procman._config import Config
from corral.procman._control import PidFileBusy, claim, release
from corral.procman._load import load_config
from corral.procman._logs import Console
from corral.procman._reload import diff, summary
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


async def serve(
    tree: ProcessTree,
    console: Console,
    *,
    config_path: Path | str | None = None,
    log_dir: Path | str | None = None,
    pid_file: Path | None = None,
) -> int:
    """Run the tree until it ends or SIGINT/SIGTERM; returns the exit status.

    First SIGINT/SIGTERM: orderly stop (reverse order, each child's grace), 0.
    Second: kill everything now (SIGKILL to every group, still in reverse order), 130.
    The tree giving up (restart intensity) or failing to start: 1.
    SIGHUP: read ``config_path`` again (default: the file the tree was loaded from, with
    ``log_dir`` as ``--log-dir``) and apply what changed (``reload``); one at a time, and
    SIGHUPs during a reload make one more. ``pid_file``: written once SIGHUP is handled
    (``corral run --reload`` reads it), removed at the end; held by another live
    ``corral run``: status 1, nothing started.
    """
    path = config_path if config_path is not None else tree.config.source
    known: tuple[Config | None, frozenset[object]] = (None, frozenset())

    def processes() -> frozenset[object]:  # the ids of the commands, which a reload changes
        nonlocal known
        if known[0] is not tree.config:
            known = (tree.config, frozenset(p.id for p in tree.config.processes()))
        return known[1]

    def report(event: SupervisorEvent) -> None:
        text = _event_text(event, processes())
        if text is not None:
            console.say(text)

    tree.subscribe(report)
    status = 0
    done = trio.Event()
    run_scope = trio.CancelScope()
    reload_scope = trio.CancelScope()
    reload_wanted = trio.Event()

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

    async def reloads() -> None:
        nonlocal reload_wanted
        with reload_scope:
            while True:
                await reload_wanted.wait()
                reload_wanted = trio.Event()  # a SIGHUP from now on means one more reload
                assert path is not None
                try:
                    await reload(tree, console, path, log_dir)
                except Exception as exc:  # a reload must never bring the tree down
                    console.say(f"reload failed: {exc!r}; the tree runs on")

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        if pid_file is not None:
            try:
                claim(pid_file, path)
            except PidFileBusy as exc:
                console.say(str(exc))
                return 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(supervise)
                nursery.start_soon(reloads)

                async def watch_signals() -> None:
                    nonlocal status
                    stopping = False
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if signum == signal.SIGHUP:
                            if stopping:
                                console.say("SIGHUP: not reloading, the tree is stopping")
                            elif path is None:
                                console.say("SIGHUP: not reloading: this tree was not loaded from a file")
                            else:
                                reload_wanted.set()
                        elif not stopping and tree.root.running:
                            stopping = True
                            tree.stopping = True  # a reload ends after its step: a stop keeps its grace
                            console.say(f"{name}: stopping the tree in reverse order (again to kill at once)")
                            nursery.start_soon(tree.root.stop)
                        elif not stopping:  # run() has not begun: nothing to stop in order
                            run_scope.cancel()
                        else:
                            console.say(f"{name} again: killing every process now")
                            status = 130
                            reload_scope.cancel()
                            run_scope.cancel()

                nursery.start_soon(watch_signals)
                await done.wait()
                nursery.cancel_scope.cancel()
        finally:
            if pid_file is not None:
                release(pid_file)
    if status == 0:
        console.say("all stopped")
    return status


async def reload(tree: ProcessTree, console: Console, path: Path | str, log_dir: Path | str | None) -> None:
    """Read the config again and apply what differs; an invalid one changes nothing."""
    console.say(f"SIGHUP: reloading {path}")
    try:
        new = load_config(path, log_dir=log_dir)
        plan = diff(tree.config, new)
    except InvalidSpec as exc:
        console.say(f"reload rejected: {path}: {exc}; still running the previous config")
        return
    outcomes = await tree.apply(plan, new)
    if tree.stopping:
        done = "; ".join(outcomes) if outcomes else "nothing"
        console.say(f"reload interrupted: the tree is stopping (done: {done})")
    else:
        console.say(summary(outcomes))
