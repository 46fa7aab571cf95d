"""One measurement of one system, in this (fresh) interpreter.

``python -m benchmarks.peers_metrics SYSTEM METRIC [JSON params]`` prints one line
``RESULT {...}``; benchmarks/peers.py runs it once per (system, metric, round).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from benchmarks.peers_systems import Caller, open_system, prepare

Result = dict[str, Any]
MIB = 1 << 20


def _exc_name(exc: BaseException) -> str:
    return type(exc).__name__


def _pid_state(pid: int) -> str:
    """'alive', or 'gone' for a dead (or zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
    return "gone" if state in ("Z", "X") else "alive"


def descendants(root: int | None = None) -> list[int]:
    """Every live descendant of ``root`` (default: this process), from /proc."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] in ("Z", "X"):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


async def _noops(caller: Caller, callers: int, each: int) -> None:
    async def one() -> None:
        for _ in range(each):
            await caller.call("noop")

    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(one)


async def _both_workers_up(caller: Caller) -> None:
    """Two overlapping calls, so lazily started pools have both workers running."""
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(caller.call, "sleep", 0.05)


# -- metrics -----------------------------------------------------------------------


async def m_cold(system: str, p: Result) -> Result:
    t0 = time.perf_counter()
    async with open_system(system, 2) as caller:
        await caller.call("noop")
        cold = time.perf_counter() - t0
    return {"cold_s": cold}


async def m_latency(system: str, p: Result) -> Result:
    n = int(p.get("n", 2000))
    async with open_system(system, 2) as caller:
        await _both_workers_up(caller)
        for _ in range(200):
            await caller.call("noop")
        samples = []
        clock = time.perf_counter
        for _ in range(n):
            t = clock()
            await caller.call("noop")
            samples.append(clock() - t)
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6,
        "mean_us": statistics.fmean(samples) * 1e6,
    }


async def m_throughput(system: str, p: Result) -> Result:
    n = int(p.get("n", 4000))
    callers = 8
    async with open_system(system, 2) as caller:
        await _both_workers_up(caller)
        await _noops(caller, callers, 50)
        t0 = time.perf_counter()
        await _noops(caller, callers, n // callers)
        elapsed = time.perf_counter() - t0
    return {"calls_per_s": (n // callers) * callers / elapsed}


async def m_echo(system: str, p: Result) -> Result:
    n = int(p.get("n", 200))
    data = os.urandom(MIB)
    async with open_system(system, 2) as caller:
        await _both_workers_up(caller)
        for _ in range(5):
            await caller.call("echo", data)
        t0 = time.perf_counter()
        for _ in range(n):
            got = await caller.call("echo", data)
            if len(got) != MIB:
                raise AssertionError(f"echo returned {len(got)} bytes")
        elapsed = time.perf_counter() - t0
    return {"echo_mib_s": n / elapsed}


async def m_crash(system: str, p: Result) -> Result:
    """Both workers die mid-call (SIGKILL). What do the callers get, when does the
    pool serve again (a replacement worker, since both are gone), does it keep working?"""
    hang_after = float(p.get("hang_after", 3.0))
    out: Result = {}
    async with open_system(system, 2) as caller:
        await _both_workers_up(caller)
        errors: list[str] = []
        returned: list[float] = []
        t0 = time.perf_counter()

        async def victim() -> None:
            with trio.move_on_after(hang_after):
                try:
                    await caller.call("crash")
                    errors.append("returned")
                except Exception as exc:
                    errors.append(_exc_name(exc))
                returned.append(time.perf_counter())
                return
            errors.append("hangs")
            returned.append(time.perf_counter())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim)
            nursery.start_soon(victim)
        t_fail = max(returned)
        out["caller_gets"] = "/".join(sorted(set(errors)))
        out["error_s"] = t_fail - t0
        recover: float | None = None
        retry_errors: list[str] = []
        while time.perf_counter() - t_fail < 5.0:
            with trio.move_on_after(1.0):
                try:
                    await caller.call("noop")
                    recover = time.perf_counter() - t_fail
                    break
                except Exception as exc:
                    retry_errors.append(_exc_name(exc))
                    await trio.sleep(0.001)
        out["recover_s"] = recover
        out["retry_errors"] = len(retry_errors)
        out["retry_error"] = retry_errors[0] if retry_errors else ""
        ok = 0
        if recover is not None:
            with trio.move_on_after(5.0):

                async def later() -> None:
                    nonlocal ok
                    for _ in range(20):
                        try:
                            await caller.call("noop")
                            ok += 1
                        except Exception:
                            await trio.sleep(0.01)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(later)
                    nursery.start_soon(later)
        out["works_after"] = ok == 40
        out["ok_after"] = ok
    return out


async def m_cancel(system: str, p: Result) -> Result:
    """Cancel a caller 50 ms into a 1 s call. How fast does the caller return? Is the
    worker killed, interrupted (alive, call stopped) or does the call run on?"""
    long = float(p.get("long", 1.0))
    out: Result = {}
    with tempfile.TemporaryDirectory() as tmp:
        mark = os.path.join(tmp, "mark")
        async with open_system(system, 2) as caller:
            await _both_workers_up(caller)
            scope = trio.CancelScope()
            returned: list[float] = []

            async def victim() -> None:
                with scope:
                    await caller.call("sleep_mark", long, mark)
                returned.append(time.perf_counter())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(victim)
                t_start = time.perf_counter()
                with trio.fail_after(10):
                    while not await trio.Path(mark + ".start").exists():
                        await trio.sleep(0.002)
                await trio.sleep(0.05)
                pid = int(await trio.Path(mark + ".start").read_text() or 0)
                t_cancel = time.perf_counter()
                scope.cancel()
            out["return_ms"] = (returned[0] - t_cancel) * 1e3
            # When does the worker process die, if it does?
            gone: float | None = None
            deadline = t_start + long + 0.3
            while time.perf_counter() < deadline:
                if _pid_state(pid) == "gone":
                    gone = time.perf_counter() - t_cancel
                    break
                await trio.sleep(0.002)
            t_next = time.perf_counter()
            next_ok = False
            with trio.move_on_after(5.0):
                await caller.call("noop")
                next_ok = True
            out["next_call_ms"] = (time.perf_counter() - t_next) * 1e3 if next_ok else None
            await trio.sleep(max(0.0, deadline - time.perf_counter()))
            done = await trio.Path(mark + ".done").exists()
            alive = _pid_state(pid) == "alive"
            out["worker"] = "runs on" if done else ("interrupted" if alive else "killed")
            out["gone_ms"] = None if gone is None else gone * 1e3
            with trio.move_on_after(5.0):
                await _noops(caller, 2, 10)
                out["works_after"] = True
            out.setdefault("works_after", False)
    return out


async def m_busy64(system: str, p: Result) -> Result:
    """64 workers, 64 concurrent 0.2 s sleeps, from a cold start; then the PSS of
    every descendant process (workers and any helper processes)."""
    n = int(p.get("workers", 64))
    t0 = time.perf_counter()
    async with open_system(system, n) as caller:
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(caller.call, "sleep", 0.2)
        elapsed = time.perf_counter() - t0
        pids = descendants()
        pss = sum(pss_kib(pid) for pid in pids)
    return {"busy64_s": elapsed, "pss_mib": pss / 1024, "processes": len(pids)}


async def m_ready(system: str, p: Result) -> Result:
    """corral only: one worker's spawn-to-READY against ``python -c pass`` (spawn to exit),
    interleaved, same interpreter."""
    from corral.workers import PythonModule, Worker
    from corral.workers._forkserver import ForkServer, ForkServerLauncher

    reps = int(p.get("reps", 9))
    bare: list[float] = []
    ready: list[float] = []
    ready_nomod: list[float] = []
    forked: list[float] = []
    async with trio.open_nursery() as servers:
        server = await servers.start(ForkServer("benchmarks.handlers").run)
        launcher = ForkServerLauncher(PythonModule("benchmarks.handlers"), server)
        for _ in range(reps):
            worker = Worker(launcher)
            async with trio.open_nursery() as nursery:
                t = time.perf_counter()
                await nursery.start(worker.run)
                forked.append(time.perf_counter() - t)
                worker.stop()
        servers.cancel_scope.cancel()
    for _ in range(reps):
        t = time.perf_counter()
        # Spawned from the trio thread on purpose, as corral spawns its workers.
        subprocess.Popen([sys.executable, "-c", "pass"], close_fds=True).wait()  # noqa: ASYNC220
        bare.append(time.perf_counter() - t)
        for module, into in (("benchmarks.handlers", ready), (None, ready_nomod)):
            worker = Worker(PythonModule(module))
            async with trio.open_nursery() as nursery:
                t = time.perf_counter()
                await nursery.start(worker.run)
                into.append(time.perf_counter() - t)
                worker.stop()
    return {
        "python_c_pass_ms": statistics.median(bare) * 1e3,
        "ready_ms": statistics.median(ready) * 1e3,
        "ready_nomodule_ms": statistics.median(ready_nomod) * 1e3,
        "ready_forkserver_ms": statistics.median(forked) * 1e3,
    }


METRICS: dict[str, Callable[[str, Result], Awaitable[Result]]] = {
    "cold": m_cold,
    "latency": m_latency,
    "throughput": m_throughput,
    "echo": m_echo,
    "crash": m_crash,
    "cancel": m_cancel,
    "busy64": m_busy64,
    "ready": m_ready,
}


def _kill_leftovers() -> None:
    """Workers a system left behind (a call that "runs on", daemon pools): they are ours."""
    for pid in descendants():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str]) -> None:
    system, metric = argv[0], argv[1]
    params: Result = json.loads(argv[2]) if len(argv) > 2 else {}
    prepare(system)
    if metric == "ready":
        prepare("corral")
    result = trio.run(METRICS[metric], system, params)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    _kill_leftovers()
    os._exit(0)  # skip pools' atexit joins: the measurement is over


if __name__ == "__main__":
    main(sys.argv[1:])
