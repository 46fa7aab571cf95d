"""``make demo``: a supervised pool under steady load while faults are injected.

Prints every worker transition and a line of statistics each second; ends by itself.
"""

from __future__ import annotations

import logging
import os
import signal

import trio

import corral

HANDLERS = "_corral_child.demo"


class _Printer:
    def __init__(self) -> None:
        self.start = trio.current_time()

    def __call__(self, text: str) -> None:
        print(f"{trio.current_time() - self.start:6.2f}s  {text}", flush=True)


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


async def _main(seconds: float) -> None:
    say = _Printer()
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

            nursery.start_soon(stats)
            await trio.sleep(seconds)
            stop.set()
            nursery.cancel_scope.cancel()
        st = pool.statistics()
    say("pool closed: every worker stopped, no process left behind")
    print()
    print("summary:")
    print(f"  calls served      {st.served}")
    print(f"  calls failed      {st.failed}  (only the faulty calls: {dict(sorted(tally.items()))})")
    print(f"  worker restarts   {st.restarts}")
    if st.latency_p50 is not None and st.latency_p99 is not None:
        print(f"  latency p50/p99   {st.latency_p50 * 1000:.1f} / {st.latency_p99 * 1000:.1f} ms")


def run_demo(seconds: float = 10.0) -> int:
    logging.getLogger("corral").setLevel(logging.CRITICAL)  # we print what matters ourselves
    trio.run(_main, seconds)
    return 0
