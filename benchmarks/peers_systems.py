"""Every system behind one interface, driven from one trio program.

``open_system(name, size)`` is an async context manager yielding a ``Caller`` whose
``await caller.call("noop")`` runs ``benchmarks.handlers.noop`` in a worker. How each
system is driven (docs/benchmarks.md repeats this):

* corral: ``await pool.call(name, *args)`` on ``corral.open_pool("benchmarks.handlers", size=n)``.
* trio-parallel: ``await ctx.run_sync(fn, *args, kill_on_cancel=True, limiter=CapacityLimiter(n))``
  inside ``trio_parallel.open_worker_context()`` (default worker type: spawn).
* anyio.to_process: ``await anyio.to_process.run_sync(fn, *args, cancellable=True,
  limiter=anyio.CapacityLimiter(n))``, called directly inside ``trio.run`` (anyio's trio backend).
* ProcessPoolExecutor / pebble / loky: ``submit``/``schedule`` returns a
  ``concurrent.futures.Future``; its done-callback calls ``TrioToken.run_sync_soon(event.set)``
  and the caller awaits the event (no thread per call). A cancelled caller calls
  ``future.cancel()`` and returns at once (pebble then kills the worker; the others
  cannot stop a running call).
* multiprocessing.Pool: ``apply_async(fn, args, callback=..., error_callback=...)`` with the
  same TrioToken bridge.
* floor: N bare ``python -c`` children echoing length-prefixed frames over pipes; raw
  non-blocking fds, ``os.write``/``os.read`` + ``trio.lowlevel.wait_writable``/``wait_readable``,
  one call in flight per child, callers share children through a trio memory channel.

Fork-based pools use the platform default start method (fork on Linux).
Peer packages are imported inside functions: they are benchmark-only extras.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import trio

from benchmarks import handlers

HANDLERS = "benchmarks.handlers"


class Caller(Protocol):
    async def call(self, name: str, *args: Any) -> Any: ...


def _fn(name: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = getattr(handlers, name)
    return fn


class _TrioBridge:
    """Completion of a foreign future -> a trio.Event set from the trio thread."""

    __slots__ = ("done", "token")

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.done = trio.Event()

    def fire(self, *_: object) -> None:
        try:
            self.token.run_sync_soon(self.done.set)
        except trio.RunFinishedError:
            pass


async def await_future(fut: concurrent.futures.Future[Any]) -> Any:
    bridge = _TrioBridge()
    fut.add_done_callback(bridge.fire)
    try:
        await bridge.done.wait()
    except trio.Cancelled:
        fut.cancel()  # pebble kills a running call's worker; PPE/loky cannot stop it
        raise
    return fut.result()


# -- corral ------------------------------------------------------------------------


class _CorralCaller:
    def __init__(self, pool: Any) -> None:
        self._call = pool.call

    async def call(self, name: str, *args: Any) -> Any:
        return await self._call(name, *args)


@asynccontextmanager
async def _corral(size: int) -> AsyncIterator[Caller]:
    import corral

    async with corral.open_pool(HANDLERS, size=size) as pool:
        yield _CorralCaller(pool)


@asynccontextmanager
async def _corral_one_at_a_time(size: int) -> AsyncIterator[Caller]:
    import corral

    async with corral.open_pool(HANDLERS, size=size, pipeline=1) as pool:
        yield _CorralCaller(pool)


@asynccontextmanager
async def _corral_forkserver(size: int) -> AsyncIterator[Caller]:
    import corral

    async with corral.open_pool(HANDLERS, size=size, start_method="forkserver") as pool:
        yield _CorralCaller(pool)


# -- trio-parallel -----------------------------------------------------------------


class _TrioParallelCaller:
    def __init__(self, ctx: Any, limiter: trio.CapacityLimiter) -> None:
        self._ctx = ctx
        self._limiter = limiter

    async def call(self, name: str, *args: Any) -> Any:
        return await self._ctx.run_sync(_fn(name), *args, kill_on_cancel=True, limiter=self._limiter)


@asynccontextmanager
async def _trio_parallel(size: int) -> AsyncIterator[Caller]:
    import trio_parallel

    async with trio_parallel.open_worker_context() as ctx:
        yield _TrioParallelCaller(ctx, trio.CapacityLimiter(size))


# -- anyio.to_process --------------------------------------------------------------


class _AnyioCaller:
    def __init__(self, limiter: Any) -> None:
        import anyio.to_process

        self._run_sync: Any = anyio.to_process.run_sync
        self._limiter = limiter

    async def call(self, name: str, *args: Any) -> Any:
        return await self._run_sync(_fn(name), *args, cancellable=True, limiter=self._limiter)


@asynccontextmanager
async def _anyio(size: int) -> AsyncIterator[Caller]:
    import anyio

    yield _AnyioCaller(anyio.CapacityLimiter(size))


# -- concurrent.futures executors --------------------------------------------------


class _ExecutorCaller:
    def __init__(self, submit: Callable[..., concurrent.futures.Future[Any]]) -> None:
        self._submit = submit

    async def call(self, name: str, *args: Any) -> Any:
        return await await_future(self._submit(_fn(name), *args))


@asynccontextmanager
async def _ppe(size: int) -> AsyncIterator[Caller]:
    ex = concurrent.futures.ProcessPoolExecutor(max_workers=size)
    try:
        yield _ExecutorCaller(ex.submit)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


@asynccontextmanager
async def _pebble(size: int) -> AsyncIterator[Caller]:
    import pebble

    pool: Any = pebble.ProcessPool(max_workers=size)

    def submit(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = pool.schedule(fn, args=args)
        return fut

    try:
        yield _ExecutorCaller(submit)
    finally:
        pool.stop()


class _LokyCaller:
    """loky's documented pattern: ``get_reusable_executor()`` hands out a fresh executor
    once the old one is broken (a worker died)."""

    def __init__(self, size: int) -> None:
        import loky

        self._get: Any = loky.get_reusable_executor
        self._size = size
        self.ex: Any = self._get(max_workers=size)

    async def call(self, name: str, *args: Any) -> Any:
        try:
            fut = self.ex.submit(_fn(name), *args)
        except Exception:  # broken by a worker crash: take the replacement executor
            self.ex = self._get(max_workers=self._size)
            fut = self.ex.submit(_fn(name), *args)
        return await await_future(fut)


@asynccontextmanager
async def _loky(size: int) -> AsyncIterator[Caller]:
    caller = _LokyCaller(size)
    try:
        yield caller
    finally:
        caller.ex.shutdown(wait=False, kill_workers=True)


# -- multiprocessing.Pool ----------------------------------------------------------


class _MpPoolCaller:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def call(self, name: str, *args: Any) -> Any:
        bridge = _TrioBridge()
        box: list[tuple[bool, Any]] = []

        def ok(value: Any) -> None:
            box.append((True, value))
            bridge.fire()

        def err(exc: BaseException) -> None:
            box.append((False, exc))
            bridge.fire()

        self._pool.apply_async(_fn(name), args, callback=ok, error_callback=err)
        await bridge.done.wait()  # cancelled: abandon (mp.Pool cannot cancel a task)
        good, value = box[0]
        if not good:
            raise value
        return value


@asynccontextmanager
async def _mp_pool(size: int) -> AsyncIterator[Caller]:
    import multiprocessing.pool

    pool = multiprocessing.pool.Pool(size)
    try:
        yield _MpPoolCaller(pool)
    finally:
        pool.terminate()


# -- the floor ---------------------------------------------------------------------

# A bare child: read length-prefixed frames from fd 0, answer on fd 1. Opcode in the
# first payload byte: e = echo the payload, s<seconds> = sleep, m<seconds> <path> =
# sleep_mark, k = die by SIGKILL.
FLOOR_CHILD = r"""
import os
buf = b""
def frame():
    global buf
    while len(buf) < 4:
        c = os.read(0, 65536)
        if not c: os._exit(0)
        buf += c
    n = int.from_bytes(buf[:4], "big")
    if len(buf) - 4 >= n:
        p = buf[4:4 + n]; buf = buf[4 + n:]; return p
    out = bytearray(n); have = len(buf) - 4; out[:have] = buf[4:]; buf = b""
    mv = memoryview(out)
    while have < n:
        k = os.readv(0, [mv[have:]])
        if not k: os._exit(0)
        have += k
    return out
def write(data):
    mv = memoryview(data); done = 0
    while done < len(data): done += os.write(1, mv[done:])
while True:
    p = frame(); op = p[:1]
    if op == b"s":
        import time; time.sleep(float(p[1:])); p = b""
    elif op == b"m":
        import time; secs, path = bytes(p[1:]).decode().split(" ", 1)
        with open(path + ".start", "w") as f: f.write(str(os.getpid()))
        time.sleep(float(secs))
        with open(path + ".done", "w") as f: f.write("done")
        p = b""
    elif op == b"k":
        os.kill(os.getpid(), 9)
    n = len(p).to_bytes(4, "big")
    if len(p) < 65536: write(n + p)
    else: write(n); write(p)
"""


class FloorCrashed(Exception):
    pass


class _FloorChild:
    def __init__(self) -> None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", FLOOR_CHILD], stdin=in_r, stdout=out_w, close_fds=True
            )
        finally:
            os.close(in_r)
            os.close(out_w)
        os.set_blocking(in_w, False)
        os.set_blocking(out_r, False)
        self.wfd = in_w
        self.rfd = out_r
        self.buf = b""

    def kill(self) -> None:
        try:
            self.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        for fd in (self.wfd, self.rfd):
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    async def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                sent += os.write(self.wfd, view[sent:])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.wfd)
            except BrokenPipeError:
                raise FloorCrashed("the child died") from None

    async def _read_some(self) -> bytes:
        while True:
            try:
                data = os.read(self.rfd, 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.rfd)
                continue
            if not data:
                raise FloorCrashed("the child died")
            return data

    async def request(self, head: bytes, body: bytes = b"") -> bytes | bytearray:
        size = (len(head) + len(body)).to_bytes(4, "big")
        if len(body) < 65536:
            await self._write_all(size + head + body)
        else:
            await self._write_all(size + head)
            await self._write_all(body)
        while len(self.buf) < 4:
            self.buf += await self._read_some()
        n = int.from_bytes(self.buf[:4], "big")
        if len(self.buf) - 4 >= n:
            reply = self.buf[4 : 4 + n]
            self.buf = self.buf[4 + n :]
            return reply
        out = bytearray(n)
        have = len(self.buf) - 4
        out[:have] = self.buf[4:]
        self.buf = b""
        view = memoryview(out)
        while have < n:
            try:
                got = os.readv(self.rfd, [view[have:]])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.rfd)
                continue
            if not got:
                raise FloorCrashed("the child died")
            have += got
        return out


class Floor:
    """N bare children; callers take turns through a FIFO trio memory channel.

    A child that died or whose call was cancelled is SIGKILLed at once and replaced
    lazily: the next caller to take its place in the channel spawns the new one."""

    def __init__(self, size: int) -> None:
        self._put, self._take = trio.open_memory_channel[_FloorChild | None](size)
        self._dead: list[_FloorChild] = []
        for _ in range(size):
            self._put.send_nowait(_FloorChild())

    async def call(self, name: str, *args: Any) -> Any:
        if name == "noop":
            head, body = b"e", b""
        elif name == "echo":
            head, body = b"e", args[0]
        elif name == "sleep":
            head, body = b"s" + str(args[0]).encode(), b""
        elif name == "sleep_mark":
            head, body = f"m{args[0]} {args[1]}".encode(), b""
        elif name == "crash":
            head, body = b"k", b""
        else:
            raise ValueError(name)
        child = await self._take.receive()
        try:
            if child is None:
                child = _FloorChild()
            reply = await child.request(head, body)
        except BaseException:
            if child is not None:  # cancelled mid-call, or it died: kill, replace later
                child.kill()
                self._dead.append(child)
            child = None
            raise
        finally:
            self._put.send_nowait(child)
        return reply[1:] if name == "echo" else None

    def close(self) -> None:
        while True:
            try:
                child = self._take.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if child is not None:
                child.kill()
                self._dead.append(child)
        for child in self._dead:
            child.proc.wait()


@asynccontextmanager
async def _floor(size: int) -> AsyncIterator[Caller]:
    floor = Floor(size)
    try:
        yield floor
    finally:
        floor.close()


SYSTEMS: dict[str, Callable[[int], AbstractAsyncContextManager[Caller]]] = {
    "floor": _floor,
    "corral": _corral,
    "corral (forkserver)": _corral_forkserver,
    "corral (pipeline=1)": _corral_one_at_a_time,
    "trio-parallel": _trio_parallel,
    "anyio.to_process": _anyio,
    "pebble": _pebble,
    "multiprocessing.Pool": _mp_pool,
    "ProcessPoolExecutor": _ppe,
    "loky": _loky,
}

#: Imported before any clock starts: "cold start" is measured after imports. corral's
#: names are imported on first use, so the pool's module is named here (and the fork
#: server's for that variant), or the first ``corral.open_pool`` would import them.
IMPORTS: dict[str, tuple[str, ...]] = {
    "floor": ("subprocess",),
    "corral": ("corral", "corral.workers._pool"),
    "corral (forkserver)": ("corral", "corral.workers._pool", "corral.workers._forkserver"),
    "corral (pipeline=1)": ("corral", "corral.workers._pool"),
    "trio-parallel": ("trio_parallel",),
    "anyio.to_process": ("anyio", "anyio.to_process"),
    "pebble": ("pebble",),
    "multiprocessing.Pool": ("multiprocessing.pool",),
    "ProcessPoolExecutor": ("concurrent.futures.process",),
    "loky": ("loky",),
}


def prepare(system: str) -> None:
    for module in IMPORTS[system]:
        importlib.import_module(module)


def open_system(system: str, size: int) -> AbstractAsyncContextManager[Caller]:
    return SYSTEMS[system](size)
