"""``make demo`` / ``corral demo``: a supervised pool under steady load while faults are injected.

The story, in order: three workers start, each reporting its ``init()`` progress through
its own output (which reaches ``logging``); four callers keep the pool busy; six faults
are injected, spread evenly over the run; near the middle, between two faults, the pool
is upgraded to version 2 of its handlers, worker by worker (``pool.upgrade``); the run ends
with a table of every fault and the upgrade: when the pool noticed a fault, when a worker
was back in service, how long the upgrade took and which callers saw an error.
A live view on a terminal when rich (the demo extra) is installed, plain lines otherwise.
Ctrl-C ends it early, in order, with the same table.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

import corral
import corral.testing
from corral.workers._telemetry import CallRecord

HANDLERS = "_corral_child.demo"
SIZE = 3
CALLERS = 4
REQUEST_TIMEOUT = 1.0
DEFAULT_SECONDS = 20.0  # `corral demo --seconds` defaults to this too
UPGRADE_AT = 0.45  # of the run: after the third fault is dealt with, before the fourth
PROBATION = 0.3  # seconds each new worker must live before an old one drains


def natural(worker_id: str) -> list[tuple[int, int, str]]:
    """Sort key: w5 before w10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", worker_id)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1.0 else f"{seconds:.2f} s"


@attrs.define(eq=False)
class Fault:
    """One injected fault and what the pool did about it (filled in as events arrive)."""

    label: str
    at: float  # planned: seconds from the start of the demo
    inject: Callable[[Demo, Fault], Awaitable[None]]
    replaced: bool = True  # False: the same worker is expected back (a cancelled call)
    call: str | None = None  # the handler whose call carries the fault, if any
    injected: float | None = None  # seconds from the start
    victim: str | None = None  # the worker that the fault hit
    known: frozenset[str] = frozenset()  # workers alive when it was injected: a replacement is new
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)  # seen by callers
    note: str = ""
    cut_short: bool = False


@attrs.define(eq=False)
class Upgrade:
    """The demo's one rolling upgrade to v2, and the calls that failed while it ran."""

    at: float  # planned: seconds from the start of the demo
    label: str = f"rolling upgrade v1 -> v2 (surge 1, probation {PROBATION:g} s)"
    started: float | None = None
    ended: float | None = None
    rollout: corral.Rollout | None = None  # how it ended (None: cut short)
    failed_calls: int = 0  # calls that failed between its start and its end


class Demo:
    """The demo's state: what happened when, from the pool's events, calls and logs."""

    def __init__(self, seconds: float, live: bool) -> None:
        self.t0 = trio.current_time()
        self.seconds = seconds
        self.live = live
        self.recent: collections.deque[str] = collections.deque(maxlen=10)
        self.pool: corral.Pool | None = None
        self.final: corral.PoolStatistics | None = None  # at the end: the last frame and the summary
        self.final_workers: list[corral.WorkerInfo] = []
        self.faults = _schedule(seconds)
        self.upgrade = Upgrade(at=seconds * UPGRADE_AT)
        self.current: Fault | None = None  # the fault being injected now
        # worker lifecycle, seconds from the start
        self.failed_at: dict[str, float] = {}
        self.new_ready: list[tuple[float, str]] = []  # STARTING -> READY
        self.ready_again: list[tuple[float, str]] = []  # BUSY -> READY
        self.failed_starts: list[float] = []
        self.call_errors: list[tuple[str, str]] = []  # (worker id, error) of every failed call
        self.muted: set[str] = set()  # workers whose further output the demo does not show

    def now(self) -> float:
        return trio.current_time() - self.t0

    def say(self, text: str) -> None:
        line = f"{self.now():6.2f}s  {text}"
        if self.live:
            self.recent.append(line)
        else:
            print(line, flush=True)

    # -- what the pool tells us -------------------------------------------------------

    def on_worker(self, event: corral.WorkerEvent) -> None:
        if event.action == "progress":  # start-up progress, from the worker's init()
            self.say(f"    {event.worker_id} starting: {event.detail}")
            return
        if event.action == "upgrade":  # a step of pool.upgrade(); worker_id "" for the pool's own
            self.say(f"    {event.worker_id} {event.detail}" if event.worker_id else f"    {event.detail}")
            return
        if event.action != "state":
            return
        old, _, new = event.detail.partition(" -> ")
        t = self.now()
        if new == "READY" and old == "STARTING":
            self.new_ready.append((t, event.worker_id))
            self.say(f"    worker {event.worker_id} (pid {event.pid}) READY")
        elif new == "READY":
            self.ready_again.append((t, event.worker_id))
        elif new == "FAILED":
            self.failed_at.setdefault(event.worker_id, t)
            self.say(f"    worker {event.worker_id} (pid {event.pid}) {event.detail}")

    def on_call(self, record: CallRecord) -> None:
        current = self.current
        if current is not None and current.call == record.name and current.victim is None:
            current.victim = record.worker_id
        if record.error is not None and record.error != "Cancelled":
            self.call_errors.append((record.worker_id, record.error))

    def on_supervisor(self, event: corral.SupervisorEvent) -> None:
        if isinstance(event, corral.RestartFailed):
            self.failed_starts.append(self.now())
            self.say(f"    supervisor: restart of {event.child_id} failed ({event.exception})")
        elif isinstance(event, corral.ChildRestarting) and event.delay > 0.01:
            self.say(f"    supervisor: next try of {event.child_id} in {_ms(event.delay)} (backoff)")

    def on_worker_output(self, record: logging.LogRecord) -> None:
        """A line a worker wrote (``[pid N] text``, logger ``corral.worker.<id>``)."""
        worker_id = record.name.rsplit(".", 1)[-1]
        if worker_id in self.muted:
            return
        text = record.getMessage()
        if "Fatal Python error" in text:  # the traceback that follows is in WorkerCrashed.stderr_tail
            self.muted.add(worker_id)
        self.say(f"    {worker_id} {text}")

    # -- what a fault came to ---------------------------------------------------------

    def noticed(self, f: Fault) -> float | None:
        """Seconds from the fault to the pool seeing its worker fail."""
        if f.injected is None or f.victim is None or f.victim not in self.failed_at:
            return None
        return max(0.0, self.failed_at[f.victim] - f.injected)

    def back(self, f: Fault) -> tuple[float, str] | None:
        """(seconds from the fault, worker id) when a worker was serving in the victim's place."""
        if f.injected is None or f.victim is None:
            return None
        if not f.replaced:
            for t, wid in self.ready_again:
                if wid == f.victim and t >= f.injected:
                    return t - f.injected, wid
            return None
        failed = self.failed_at.get(f.victim)
        if failed is None:
            return None
        for t, wid in self.new_ready:
            if t >= failed and wid not in f.known:
                return t - f.injected, wid
        return None

    def callers(self, f: Fault) -> collections.Counter[str]:
        """The errors callers saw because of this fault: failed calls on its worker, and
        what the fault's own code saw (a SessionLost)."""
        seen = collections.Counter(f.errors)
        seen.update(err for wid, err in self.call_errors if wid == f.victim)
        return seen

    def starts_failed(self, f: Fault) -> int:
        back = self.back(f)
        if f.injected is None:
            return 0
        end = f.injected + back[0] if back is not None else self.now()
        return sum(1 for t in self.failed_starts if f.injected <= t <= end)

    def fault_row(self, f: Fault) -> tuple[str, str, str, str, str]:
        """(at, fault, noticed after, back in service after, callers with an error)."""
        if f.injected is None:
            return ("", f.label, "not reached: the demo ended first", "", "")
        noticed = self.noticed(f)
        back = self.back(f)
        if back is None:
            service = "not yet" if not f.cut_short else "not before the demo ended"
        elif f.replaced:
            failed = self.starts_failed(f)
            extra = f", {failed} failed starts first" if failed else ""
            service = f"after {_ms(back[0])} ({back[1]} replaced it{extra})"
        else:
            service = f"after {_ms(back[0])} ({back[1]} was interrupted and kept)"
        seen = self.callers(f)
        who = ", ".join(f"{n} {err}" for err, n in sorted(seen.items())) if seen else "none"
        return (
            f"{f.injected:.1f}s",
            f"{f.label}" + (f" ({f.victim})" if f.victim else ""),
            f"after {_ms(noticed)}"
            if noticed is not None
            else ("no worker died" if not f.replaced else "not yet"),
            service,
            who,
        )

    def upgrade_row(self) -> tuple[str, str, str, str, str]:
        """The upgrade in the faults' columns: (at, what, "", how it went, callers with an error)."""
        u = self.upgrade
        if u.started is None:
            return ("", u.label, "not reached: the demo ended first", "", "")
        at = f"{u.started:.1f}s"
        if u.ended is None:  # under way: where it stands
            r = self.pool.statistics().rollout if self.pool is not None else None
            return (at, u.label, "", "starting" if r is None else f"{r.phase}: {r.replaced} of {r.total}", "")
        r = u.rollout
        if r is None:
            outcome = "cut short: the demo ended first"
        else:
            why = f" ({r.error})" if r.error else ""
            outcome = f"{r.phase} after {_ms(u.ended - u.started)}, {r.replaced} of {r.total} replaced{why}"
        return (at, u.label, "", outcome, f"{u.failed_calls} failed calls" if u.failed_calls else "none")

    # -- the faults, and the upgrade between two of them ---------------------------------

    async def run_faults(self) -> None:
        for f in self.faults:
            if self.upgrade.started is None and f.at > self.upgrade.at:
                await self.run_upgrade()  # the next fault waits for it: they never overlap
            await trio.sleep_until(self.t0 + f.at)
            assert self.pool is not None
            self.current = f
            f.known = frozenset(w.id for w in self.pool.workers())
            f.injected = self.now()
            self.say(f">>> fault: {f.label}")
            try:
                await f.inject(self, f)
            finally:
                if self.back(f) is None:
                    f.cut_short = True
                self.current = None

    async def run_upgrade(self) -> None:
        """Replace every worker with one of v2 (``init_args=(2,)``), under the same load."""
        u = self.upgrade
        await trio.sleep_until(self.t0 + u.at)
        assert self.pool is not None
        u.started = self.now()
        errors_before = len(self.call_errors)
        self.say(f">>> {u.label}")
        try:
            u.rollout = await self.pool.upgrade(
                corral.PythonModule(HANDLERS, init_args=(2,)), probation=PROBATION
            )
        except corral.UpgradeFailed as exc:
            u.rollout = self.pool.statistics().rollout
            self.say(f"<<< the upgrade failed: {str(exc).splitlines()[0]}")
        finally:
            u.ended = self.now()
            u.failed_calls = len(self.call_errors) - errors_before
        self.say(f"    a call now answers from model v{await self.pool.call('version')}")

    async def fault_call(self, f: Fault) -> None:
        assert self.pool is not None and f.call is not None
        try:
            await self.pool.call(f.call)
        except corral.CorralError as exc:
            self.say(f"<<< the caller got {type(exc).__name__}: {str(exc).splitlines()[0]}")
        await self.settle(f)

    async def settle(self, f: Fault) -> None:
        """Wait (bounded) for a worker to be back in service, so the table can say when."""
        with trio.move_on_after(5.0):
            while self.back(f) is None:
                await trio.sleep(0.01)


async def _exit(demo: Demo, f: Fault) -> None:
    await demo.fault_call(f)


async def _session_kill(demo: Demo, f: Fault) -> None:
    pool = demo.pool
    assert pool is not None
    for _ in range(3):
        n = await pool.call("count", "alice", session="alice")
    pid = await pool.call("pid", session="alice")
    [f.victim] = [w.id for w in pool.workers() if w.pid == pid]
    demo.say(f"    session 'alice' counted to {n} on {f.victim}; SIGKILL to its pid {pid}")
    f.known = frozenset(w.id for w in pool.workers())
    f.injected = demo.now()
    os.kill(pid, signal.SIGKILL)
    await demo.settle(f)
    try:
        await pool.call("count", "alice", session="alice")
    except corral.SessionLost as exc:
        f.errors["SessionLost"] += 1
        f.note = "SessionLost once; the next call rebound it"
        demo.say(f"<<< alice's next call got SessionLost: {str(exc).splitlines()[0]}")
    n = await pool.call("count", "alice", session="alice")
    demo.say(f"    session 'alice' rebound to a fresh worker: count={n}")


async def _failing_restarts(demo: Demo, f: Fault) -> None:
    pool = demo.pool
    assert pool is not None
    corral.testing.fail_next_start(pool, error=RuntimeError("model file missing"), times=2)
    f.victim = corral.testing.kill_worker(pool).id
    await demo.settle(f)


async def _cancel(demo: Demo, f: Fault) -> None:
    pool = demo.pool
    assert pool is not None
    async with pool.checkout() as worker:
        f.victim = worker.id
        with trio.move_on_after(0.3) as scope:
            await worker.call("work", 2000)
        f.injected = scope.deadline - demo.t0  # the moment the caller gave up
        demo.say(f"<<< the cancelled call returned after {_ms(demo.now() - f.injected)}")
    await demo.settle(f)
    f.note = "the caller that gave up returned at once"


def _schedule(seconds: float) -> list[Fault]:
    """Six faults, evenly spread; the run ends with a quiet stretch at full strength."""
    plan = [
        Fault("a handler calls os._exit(13)", 0, _exit, call="crash"),
        Fault("a handler segfaults", 0, _exit, call="segfault"),
        Fault(f"a handler hangs past request_timeout={REQUEST_TIMEOUT:g}s", 0, _exit, call="hang"),
        Fault("a session's worker is SIGKILLed from outside", 0, _session_kill),
        Fault("a worker is killed and its next 2 starts fail", 0, _failing_restarts),
        Fault("a caller gives up (cancelled) mid-call", 0, _cancel, replaced=False),
    ]
    for k, f in enumerate(plan):
        f.at = seconds * (k + 0.5) / (len(plan) + 0.5)
    return plan


def _timeline(faults: list[Fault], upgrade: Upgrade) -> list[Fault | Upgrade]:
    """The faults and the upgrade, in the order they come."""
    before = [f for f in faults if f.at <= upgrade.at]
    return [*before, upgrade, *faults[len(before) :]]


async def _load(pool: corral.Pool, stop: trio.Event) -> None:
    calls = 0
    while not stop.is_set():
        calls += 1
        try:
            if calls % 10:
                await pool.call("work", 5)
            else:  # now and then a stream of tokens (credit-based: docs/pool.md, Streams)
                async with pool.stream("tokens", 20) as tokens:
                    async for _ in tokens:
                        pass
        except corral.CorralError:
            pass  # the demo counts every failed call through pool.observe_calls


def _start_up(w: corral.WorkerInfo) -> str:
    """How a worker's start-up went: its last progress report while STARTING, its
    duration after."""
    if w.state is corral.WorkerState.STARTING:
        p = w.progress
        if p is None:
            return "..."
        percent = "" if p.fraction is None else f"{p.fraction:.0%} "
        return f"{percent}{p.text}"
    return _ms(w.startup_seconds) if w.startup_seconds is not None else ""


def _render(demo: Demo) -> Any:
    """The live view: statistics and workers side by side, every fault, recent events."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    pool = demo.pool
    stats = Table.grid(padding=(0, 2))
    stats.add_row("[bold]elapsed[/]", f"{demo.now():.1f} / {demo.seconds:.0f} s")
    workers = Table(expand=True, box=None)
    for col in ("worker", "version", "pid", "state", "served", "start-up"):
        workers.add_column(col)
    if pool is not None:
        st = demo.final or pool.statistics()
        p50 = _ms(st.latency_p50) if st.latency_p50 is not None else "-"
        p99 = _ms(st.latency_p99) if st.latency_p99 is not None else "-"
        for key, value in (
            ("calls served", str(st.served)),
            ("calls failed", str(st.failed)),
            ("latency p50 / p99", f"{p50} / {p99}"),
            ("waiting callers", str(st.waiting)),
            ("worker restarts", str(st.restarts)),
            ("version", f"v{st.version}" + (f" ({_rollout(st.rollout)})" if st.rollout else "")),
        ):
            stats.add_row(f"[bold]{key}[/]", value)
        colors = {"READY": "green", "BUSY": "cyan", "STARTING": "yellow", "FAILED": "red"}
        for w in sorted(demo.final_workers or pool.workers(), key=lambda w: natural(w.id)):
            color = colors.get(w.state.name, "magenta")
            state = f"[{color}]{w.state.name}[/]"
            workers.add_row(w.id, f"v{w.version}", str(w.pid), state, str(w.served), _start_up(w))
    else:
        stats.add_row("[bold]pool[/]", f"starting {SIZE} workers")
    top = Table.grid(expand=True, padding=(0, 1))
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(Panel(stats, title="the pool"), Panel(workers, title="workers"))
    faults = Table(title="faults injected, one upgrade, and what the pool did", expand=True)
    for col in ("at", "fault (its worker)", "noticed", "back in service / done", "callers with an error"):
        faults.add_column(col)
    for f in _timeline(demo.faults, demo.upgrade):
        started = f.injected if isinstance(f, Fault) else f.started
        if started is None:
            faults.add_row(f"{f.at:.1f}s", Text(f.label, style="dim"), Text("upcoming", style="dim"), "", "")
        else:
            row = demo.fault_row(f) if isinstance(f, Fault) else demo.upgrade_row()
            faults.add_row(*(Text(cell) for cell in row))
    events = Text("\n".join(demo.recent) or "(waiting for events)")
    return Group(
        Text("corral demo: a supervised pool under load, faults injected, one upgrade", style="bold"),
        top,
        faults,
        Panel(events, title="what happens"),
    )


def _rollout(r: corral.Rollout) -> str:
    """Where an upgrade stands, for the live view."""
    return f"upgrade v{r.from_version} -> v{r.to_version}: {r.phase} {r.replaced}/{r.total}"


def _summary(demo: Demo, interrupted: bool) -> None:
    st = demo.final
    print()
    ended = "stopped by Ctrl-C" if interrupted else "ended"
    print(f"summary: the demo {ended} after {demo.now():.1f} s; a pool of {SIZE} workers, {CALLERS} callers")
    if st is None:
        print("  the pool never opened")
        return
    print(f"  calls served      {st.served}")
    print(f"  calls failed      {st.failed}")
    print(f"  worker restarts   {st.restarts}")
    if st.latency_p50 is not None and st.latency_p99 is not None:
        print(f"  latency p50/p99   {_ms(st.latency_p50)} / {_ms(st.latency_p99)}")
    print()
    print("  every fault injected, the upgrade, and what the pool did about them:")
    for f in _timeline(demo.faults, demo.upgrade):
        if isinstance(f, Upgrade):
            _summary_upgrade(demo)
            continue
        at, label, noticed, service, callers = demo.fault_row(f)
        if f.injected is None:
            print(f"  {'':6}  {label}: {noticed}")
            continue
        print(f"  {at:>6}  {label}")
        noticed = f"noticed {noticed}" if noticed.startswith("after") else noticed
        print(f"  {'':6}    {noticed}; back in service {service}")
        print(f"  {'':6}    callers with an error: {callers}" + (f" ({f.note})" if f.note else ""))
    attributed = sum(sum(demo.callers(f).values()) for f in demo.faults if f.injected is not None)
    attributed += demo.upgrade.failed_calls
    failed_calls = len(demo.call_errors)  # the same count as st.failed
    before_a_call = sum(f.errors.total() for f in demo.faults)  # SessionLost: raised before a call
    seen = failed_calls + before_a_call
    why = f"{failed_calls} failed calls, {before_a_call} SessionLost" if before_a_call else "failed calls"
    print()
    if attributed == seen:
        print(f"  {seen} callers saw an error ({why}), all listed above; every other call was served.")
    else:
        print(f"  {seen} callers saw an error ({why}); {seen - attributed} of them are not listed above.")


def _summary_upgrade(demo: Demo) -> None:
    at, label, missed, outcome, callers = demo.upgrade_row()
    if demo.upgrade.started is None:
        print(f"  {'':6}  {label}: {missed}")
        return
    versions = collections.Counter(f"v{w.version}" for w in demo.final_workers)
    now = ", ".join(f"{n} on {v}" for v, n in sorted(versions.items()))
    print(f"  {at:>6}  {label}")
    print(f"  {'':6}    {outcome}; workers at the end: {now}")
    failed = demo.upgrade.failed_calls
    print(f"  {'':6}    callers with an error: {callers} ({failed} calls failed while it ran)")


async def _main(seconds: float, live: bool) -> bool:
    demo = Demo(seconds, live)
    interrupted = trio.Event()
    worker_output = _CallbackHandler(demo.on_worker_output)
    worker_logger = logging.getLogger("corral.worker")
    worker_logger.setLevel(logging.INFO)
    worker_logger.addHandler(worker_output)
    with contextlib.ExitStack() as stack:
        stack.callback(worker_logger.removeHandler, worker_output)
        view = None
        if live:
            from rich.live import Live

            view = stack.enter_context(Live(_render(demo), refresh_per_second=8, transient=False))
        async with trio.open_nursery() as outer:

            async def ctrl_c() -> None:
                # Ctrl-C ends the demo early but in order: same shutdown, same summary.
                with trio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        interrupted.set()
                        return

            outer.start_soon(ctrl_c)
            if view is not None:
                outer.start_soon(_refresh, view, demo)
            demo.say(
                f"corral demo: a pool of {SIZE} workers under load for {seconds:.0f} s, "
                "six faults, one rolling upgrade"
            )
            async with corral.open_pool(
                corral.PythonModule(HANDLERS, init_args=(1,)),
                size=SIZE,
                request_timeout=REQUEST_TIMEOUT,
                name="demo",
                on_event=demo.on_worker,
            ) as pool:
                demo.pool = pool
                demo.say(f"pool open: {SIZE} workers READY; {CALLERS} callers start a steady load")
                pool.observe_calls(demo.on_call)
                pool.supervisor.subscribe(demo.on_supervisor)
                stop = trio.Event()
                async with trio.open_nursery() as load:
                    for _ in range(CALLERS):
                        load.start_soon(_load, pool, stop)
                    async with trio.open_nursery() as story:
                        story.start_soon(demo.run_faults)
                        if view is None:
                            story.start_soon(_print_stats, demo)
                        with trio.move_on_at(demo.t0 + seconds):
                            await interrupted.wait()
                        if interrupted.is_set():
                            demo.say("Ctrl-C: stopping the load and closing the pool in order")
                        story.cancel_scope.cancel()
                    stop.set()  # each caller finishes its call in flight, then stops
                st = demo.final = pool.statistics()  # the last frame and the summary show this one
                demo.final_workers = pool.workers()
                demo.say(f"load stopped: served={st.served} failed={st.failed}; closing the pool")
            demo.say("pool closed: every worker stopped, no process left behind")
            if view is not None:
                view.update(_render(demo))
            outer.cancel_scope.cancel()
    _summary(demo, interrupted.is_set())
    return interrupted.is_set()


async def _refresh(view: Any, demo: Demo) -> None:
    while True:
        view.update(_render(demo))
        await trio.sleep(0.125)


async def _print_stats(demo: Demo) -> None:
    while True:
        await trio.sleep(1.0)
        assert demo.pool is not None
        st = demo.pool.statistics()
        p50 = _ms(st.latency_p50) if st.latency_p50 else "-"
        states = " ".join(f"{k.lower()}={v}" for k, v in st.workers_by_state.items() if v)
        demo.say(
            f"[stats] v{st.version} served={st.served} failed={st.failed} p50={p50} {states} "
            f"restarts={st.restarts}"
        )


class _CallbackHandler(logging.Handler):
    def __init__(self, callback: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(record)


def run_demo(seconds: float = DEFAULT_SECONDS, *, live: bool | None = None) -> int:
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
