"""``make demo``: a supervised pool under steady load while faults are injected.

Prints every worker transition and a line of statistics each second; ends by itself.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
from collections import deque
from typing import Any

import trio

import corral
import corral.testing

HANDLERS = "_corral_child.demo"


class _Printer:
    """Plain text lines, or the event panel of the live view."""

    def __init__(self, live: bool) -> None:
        self.start = trio.current_time()
        self.live = live
        self.recent: deque[str] = deque(maxlen=14)

    def __call__(self, text: str) -> None:
        line = f"{trio.current_time() - self.start:6.2f}s  {text}"
        if self.live:
            self.recent.append(line)
        else:
            print(line, flush=True)


def _render(pool: corral.Pool, say: _Printer, seconds: float) -> Any:
    """The live view: workers, statistics, recent events (rich is an optional extra)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    colors = {"READY": "green", "BUSY": "cyan", "STARTING": "yellow", "FAILED": "red", "STOPPING": "magenta"}
    workers = Table(title="workers", expand=True)
    for col in ("id", "pid", "state", "served"):
        workers.add_column(col)
    for w in sorted(pool.workers(), key=lambda w: w.id):
        color = colors.get(w.state.name, "white")
        workers.add_row(w.id, str(w.pid), f"[{color}]{w.state.name}[/]", str(w.served))
    st = pool.statistics()
    stats = Table.grid(padding=(0, 2))
    p50 = f"{st.latency_p50 * 1000:.2f} ms" if st.latency_p50 is not None else "-"
    p99 = f"{st.latency_p99 * 1000:.2f} ms" if st.latency_p99 is not None else "-"
    elapsed = trio.current_time() - say.start
    for key, value in (
        ("elapsed", f"{elapsed:.1f} / {seconds:.0f} s"),
        ("served", str(st.served)),
        ("failed", str(st.failed)),
        ("latency p50 / p99", f"{p50} / {p99}"),
        ("waiting callers", str(st.waiting)),
        ("restarts", str(st.restarts)),
        ("circuit", st.circuit),
    ):
        stats.add_row(f"[bold]{key}[/]", value)
    events = "\n".join(say.recent) or "(waiting for events)"
    return Group(
        Panel(stats, title="corral demo: a supervised pool under load, faults injected"),
        workers,
        Panel(events, title="what happens"),
    )


async def _load(pool: corral.Pool, tally: dict[str, int], stop: trio.Event) -> None:
    while not stop.is_set():
        try:
            await pool.call("work", 5)
            tally["ok"] += 1
        except corral.CorralError as exc:
            tally[type(exc).__name__] = tally.get(type(exc).__name__, 0) + 1


async def _faults(pool: corral.Pool, say: _Printer) -> None:
    async def expect(label: str, call: str, *args: object, **kw: object) -> None:
        say(f">>> fault: {label}")
        try:
            await pool.call(call, *args, **kw)  # type: ignore[arg-type]
        except corral.CorralError as exc:
            first = str(exc).splitlines()[0]
            say(f"<<< {type(exc).__name__}: {first}")

    await trio.sleep(1.5)
    await expect("a handler calls os._exit(13)", "crash")
    await trio.sleep(1.5)
    await expect("a handler segfaults", "segfault")
    await trio.sleep(1.5)
    await expect("a handler hangs past request_timeout=1s", "hang")
    await trio.sleep(1.0)
    say(">>> fault: a session's worker is SIGKILLed from outside")
    for _ in range(3):
        n = await pool.call("count", "alice", session="alice")
    say(f"    session 'alice' counted to {n} on its worker")
    victim = await pool.call("pid", session="alice")
    os.kill(victim, signal.SIGKILL)
    await trio.sleep(0.2)
    try:
        await pool.call("count", "alice", session="alice")
    except corral.SessionLost as exc:
        say(f"<<< SessionLost: {str(exc).splitlines()[0]}")
    n = await pool.call("count", "alice", session="alice")
    say(f"    session 'alice' rebound to a fresh worker: count={n}")
    await trio.sleep(1.0)
    say(">>> fault: a caller gives up (cancelled) in the middle of a long call")
    with trio.move_on_after(0.2):
        await pool.call("work", 2000)
    say("<<< the cancelled call returned at once; its worker was interrupted and is READY again")
    await trio.sleep(1.0)
    say(">>> fault: a worker dies and its replacement's init fails twice (backoff, then recovery)")
    corral.testing.fail_next_start(pool, error=RuntimeError("model file missing"), times=2)
    corral.testing.kill_worker(pool)


async def _main(seconds: float, live: bool) -> None:
    say = _Printer(live)
    say(f"corral demo: a pool of 3 workers under load for {seconds:.0f} s while faults are injected")
    tally = {"ok": 0}
    async with corral.open_pool(HANDLERS, size=3, request_timeout=1.0, name="demo") as pool:
        say(f"pool open: {[(w.id, w.pid) for w in pool.workers()]}")

        def on_worker(event: corral.WorkerEvent) -> None:
            if event.action == "state" and event.state.name in ("READY", "FAILED", "STARTING"):
                if event.detail.startswith("BUSY"):
                    return
                say(f"    worker {event.worker_id} (pid {event.pid}) {event.detail}")

        def on_supervisor(event: corral.SupervisorEvent) -> None:
            if isinstance(event, corral.ChildExited) and event.exit.abnormal:
                say(f"    supervisor: {event.child_id} exited abnormally, restarting")
            elif isinstance(event, corral.RestartFailed):
                say(f"    supervisor: restart of {event.child_id} failed ({event.exception}); backing off")
            elif isinstance(event, corral.ChildRestarting) and event.delay > 0.01:
                say(f"    supervisor: next try of {event.child_id} in {event.delay * 1000:.0f} ms")

        pool.subscribe(on_worker)
        pool.supervisor.subscribe(on_supervisor)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(_load, pool, tally, stop)
            nursery.start_soon(_faults, pool, say)

            async def stats() -> None:
                while True:
                    await trio.sleep(1.0)
                    st = pool.statistics()
                    p50 = f"{st.latency_p50 * 1000:.1f}ms" if st.latency_p50 else "-"
                    states = " ".join(f"{k.lower()}={v}" for k, v in st.workers_by_state.items() if v)
                    say(
                        f"[stats] served={st.served} failed={st.failed} p50={p50} {states} "
                        f"restarts={st.restarts} circuit={st.circuit}"
                    )

            interrupted = trio.Event()

            async def ctrl_c() -> None:
                # Ctrl-C ends the demo early but in order: same shutdown, same summary.
                with trio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        interrupted.set()
                        return

            nursery.start_soon(ctrl_c)
            with trio.move_on_after(seconds):
                if live:
                    from rich.live import Live

                    with Live(_render(pool, say, seconds), refresh_per_second=8, transient=False) as view:
                        while not interrupted.is_set():
                            with trio.move_on_after(0.125):
                                await interrupted.wait()
                            view.update(_render(pool, say, seconds))
                else:
                    nursery.start_soon(stats)
                    await interrupted.wait()
            if interrupted.is_set():
                say("Ctrl-C: stopping the load and closing the pool in order")
            stop.set()
            nursery.cancel_scope.cancel()
        st = pool.statistics()
    say("pool closed: every worker stopped, no process left behind")
    print()
    print("summary:")
    print(f"  calls served      {st.served}")
    load = ", ".join(f"{k}={v}" for k, v in sorted(tally.items()))
    print(f"  calls failed      {st.failed}  (the injected faults, and calls caught on a killed worker)")
    print(f"  steady load saw   {load}")
    print(f"  worker restarts   {st.restarts}")
    if st.latency_p50 is not None and st.latency_p99 is not None:
        print(f"  latency p50/p99   {st.latency_p50 * 1000:.1f} / {st.latency_p99 * 1000:.1f} ms")


def run_demo(seconds: float = 20.0, *, live: bool | None = None) -> int:
    """Ends by itself after ``seconds``, or cleanly on Ctrl-C with the summary."""
    logging.getLogger("corral").setLevel(logging.CRITICAL)  # we print what matters ourselves
    if live is None:
        live = sys.stdout.isatty() and importlib.util.find_spec("rich") is not None
    try:
        trio.run(_main, seconds, live)
    except KeyboardInterrupt:
        print("\ninterrupted: the pool was closed, no process left behind")
        return 130
    return 0
