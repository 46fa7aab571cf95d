"""A worker: one OS process behind a framed pipe channel, with an explicit state machine.

``Worker.run`` follows ``nursery.start``: it returns control (``started(worker)``) once
the process has said hello and is READY, then serves until it is asked to stop or
dies. So a worker is a supervisor child like any other, and a crash is an abnormal
exit that the supervisor answers with a fresh Worker.

One Worker object is one process incarnation: STOPPED and FAILED are final.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import pickle
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import trio

from _corral_child import _frames as frames
from corral._errors import (
    CorralError,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    WorkerCrashed,
)
from corral._shared import IllegalTransition as IllegalTransition  # re-exported: tests import it from here
from corral._shared import collapse as _collapse
from corral._shared import reraise as _reraise
from corral.supervisor._context import _get_current
from corral.workers._launch import Launch, Launcher
from corral.workers._process import Process


class InitTimeout(CorralError, TimeoutError):
    """A worker did not become READY within ``init_timeout`` (hung import or init())."""


class WorkerState(enum.Enum):
    """A worker's life: STARTING -> READY <-> BUSY -> STOPPING -> STOPPED, or FAILED from
    any state. Every change goes through one transition table; illegal moves raise."""

    # Members are singletons: hash them by identity, in C (Enum's own __hash__ is Python
    # code, and the hot path looks states up in the transition table twice per call).
    __hash__ = object.__hash__

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_W = WorkerState
#: Every legal move of a worker, in one place. Anything else raises IllegalTransition.
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    _W.STARTING: frozenset({_W.READY, _W.STOPPING, _W.FAILED}),
    _W.READY: frozenset({_W.BUSY, _W.STOPPING, _W.FAILED}),
    _W.BUSY: frozenset({_W.READY, _W.STOPPING, _W.FAILED}),
    _W.STOPPING: frozenset({_W.STOPPED, _W.FAILED}),
    _W.STOPPED: frozenset(),
    _W.FAILED: frozenset(),
}


@attrs.frozen
class WorkerInfo:
    """A snapshot of one worker, as ``pool.workers()`` reports it."""

    id: str
    pid: int | None
    state: WorkerState
    served: int
    started_at: float  # wall clock (time.time())
    last_exit: str | None


_ids = itertools.count(1)
_T = TypeVar("_T")
_HANDSHAKE_MAX = 1 << 20


class _Pending:
    """A request in flight: its reply once read (by whichever caller is reading), or
    the error if the worker dies first. ``event`` exists only while its caller waits
    for another caller to read the reply for it."""

    __slots__ = ("abandoned", "error", "event", "msg")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.msg: Any = None
        self.event: trio.Event | None = None
        self.abandoned = False  # its caller was cancelled: the reply is discarded


class _Capacity:
    """How many requests may be in flight; acquiring a free place costs no scheduling,
    and a released place passes straight to the next waiter (FIFO)."""

    __slots__ = ("_lot", "free")

    def __init__(self, size: int) -> None:
        self.free = size
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        if self.free > 0:
            await trio.lowlevel.checkpoint_if_cancelled()  # does not schedule: still free
            self.free -= 1
            return
        await self._lot.park()  # woken by release(), already holding the place

    def release(self) -> None:
        if self._lot:
            self._lot.unpark()
        else:
            self.free += 1


class _Gate:
    """A FIFO lock whose uncontended acquire costs nothing (no scheduling) and which
    any task may release: ownership passes straight to the next waiter."""

    __slots__ = ("_lot", "busy")

    def __init__(self) -> None:
        self.busy = False
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        if not self.busy:
            await trio.lowlevel.checkpoint_if_cancelled()  # does not schedule: still free
            self.busy = True
            return
        await self._lot.park()  # woken by release(), already the owner

    def release(self) -> None:
        if self._lot:
            self._lot.unpark()
        else:
            self.busy = False


class _EOF(Exception):
    pass


async def _read_when_ready(fd: int, read: Callable[..., _T], *args: Any) -> _T:
    """``read(*args)`` on a non-blocking fd, waiting until it is readable; the end of
    the channel in any form (EOF, a closed or broken fd) is ``_EOF``."""
    while True:
        try:
            result = read(*args)
        except BlockingIOError:
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                raise _EOF from None
            continue
        except OSError:
            raise _EOF from None
        if not result:
            raise _EOF
        return result


class Worker:
    """One worker process. Use it through a pool, or run it yourself::

    worker = Worker(PythonModule("myapp.handlers"))
    await nursery.start(worker.run)
    await worker.call("predict", x)
    worker.stop()
    """

    def __init__(
        self,
        launcher: Launcher,
        *,
        worker_id: str | None = None,
        init_timeout: float = 30.0,
        request_timeout: float | None = None,
        cancel_grace: float = 1.0,
        stop_timeout: float = 5.0,
        max_frame: int = frames.DEFAULT_MAX_FRAME,
        capture_stderr: bool = True,
        stderr_lines: int = 200,
        on_state: Callable[[Worker, WorkerState, WorkerState], None] | None = None,
        pipeline: int = 1,
    ) -> None:
        self.id = worker_id or f"w{next(_ids)}"
        self._launcher = launcher
        self.init_timeout = init_timeout
        self.request_timeout = request_timeout
        self.cancel_grace = cancel_grace
        self.stop_timeout = stop_timeout
        self.max_frame = max_frame
        self._capture_stderr = capture_stderr
        self._on_state = on_state
        self.log = logging.getLogger(f"corral.worker.{self.id}")
        self.state = WorkerState.STARTING
        self.served = 0
        self.started_at = time.time()
        self.ready_at: float | None = None  # trio clock
        self.last_exit: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self.pid: int | None = None
        self._proc: Process | None = None
        self._codec: frames.Codec = frames.get_codec("json")
        self._decoder = frames.FrameDecoder(_HANDSHAKE_MAX)
        self._frames: deque[bytes] = deque()
        self._big: tuple[bytearray, int] | None = None  # a large reply being read in place
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        # Requests in flight: 1 unless pipelining was asked for and the worker supports
        # it (then a "cancel" frame names what a SIGINT interrupts: never ambiguous).
        self.pipeline = pipeline
        self._pipelined = False
        self._slot = _Capacity(1)
        self._reading = False  # a caller (or the drain task) is reading replies
        self._draining = False
        self._write_lock = _Gate()
        self._calls_failed = trio.Event()  # _fail_pending ran: in-flight callers can raise
        self._ended = trio.Event()
        self._stderr_done = trio.Event()
        self._fatal: BaseException | None = None
        self._stop_wanted = False
        self._nursery: trio.Nursery | None = None
        self._ran = False

    def __repr__(self) -> str:
        return f"<Worker {self.id} pid={self.pid} {self.state.name}>"

    # -- state -----------------------------------------------------------------

    def _to(self, new: WorkerState) -> None:
        if new is self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"worker {self.id}: {self.state.name} -> {new.name}")
        old, self.state = self.state, new
        if self._on_state is not None:
            self._on_state(self, old, new)

    def info(self) -> WorkerInfo:
        """A frozen snapshot of this worker."""
        return WorkerInfo(self.id, self.pid, self.state, self.served, self.started_at, self.last_exit)

    def rss_bytes(self) -> int | None:
        """The process's resident memory (Linux ``/proc``), or None when unknown."""
        return self._proc.rss_bytes() if self._proc is not None else None

    @property
    def available(self) -> bool:
        """It takes a request now: READY (or BUSY with places left when pipelining), and
        not being killed or stopped. No syscall: see ``alive`` for the process itself."""
        state = self.state
        if state is not WorkerState.READY and not (state is WorkerState.BUSY and self._pipelined):
            return False
        return not self._ended.is_set()

    @property
    def alive(self) -> bool:
        """Its process has not exited (one cheap syscall: a death may not be noticed yet)."""
        return self._proc is not None and not self._proc.has_exited()

    @property
    def depth(self) -> int:
        """How many requests it may hold at once (``pipeline`` if the worker supports it)."""
        return self.pipeline if self._pipelined else 1

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn, handshake, report READY, serve until stopped; raise if it dies."""
        if self._ran:
            raise RuntimeError(f"{self!r} already ran; a Worker is one process incarnation")
        self._ran = True
        launch = self._launcher.launch(self.id)
        spawn = getattr(self._launcher, "spawn", None)  # e.g. the fork server's
        try:
            if spawn is not None:
                proc = await spawn(self.id, launch)
            else:
                proc = Process(launch.argv, env=launch.env, cwd=launch.cwd)
        except (OSError, CorralError) as exc:
            self._to(WorkerState.FAILED)
            self.last_exit = f"spawn failed: {exc}"
            raise WorkerCrashed(f"worker {self.id}: could not start {launch.argv[0]!r}: {exc}") from exc
        self._proc = proc
        self.pid = proc.pid
        child = _get_current()
        try:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._pump_stderr, proc)
                    nursery.start_soon(self._watch_exit, proc)
                    if child is not None:
                        nursery.start_soon(self._watch_stop, child.stop_requested)
                    await self._handshake(proc, launch)
                    self._to(WorkerState.READY)
                    task_status.started(self)
                    await self._ended.wait()
                    try:
                        await self._finish(proc)
                    finally:
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                _reraise(_collapse(group))
        finally:
            with trio.CancelScope(shield=True):
                proc.kill_now()
                self._fail_pending(self._fatal or self._crash_error(proc))
                if self.state not in (WorkerState.STOPPED, WorkerState.FAILED):
                    self._to(WorkerState.FAILED)
                if self.last_exit is None:
                    self.last_exit = self._describe(proc)
                await proc.aclose()

    def stop(self) -> None:
        """Ask for a graceful stop: shutdown frame, then SIGTERM, then SIGKILL."""
        self._stop_wanted = True
        self._ended.set()

    async def _watch_stop(self, event: trio.Event) -> None:
        await event.wait()
        self.stop()

    async def _watch_exit(self, proc: Process) -> None:
        await proc.watch()
        self._ended.set()

    def _end(self, error: BaseException | None) -> None:
        if self._fatal is None and error is not None:
            self._fatal = error
        self._ended.set()

    async def _finish(self, proc: Process) -> None:
        if self._stop_wanted and self._fatal is None and not proc.exited:
            await self._graceful_stop(proc)
            return
        # A crash (or a kill we decided on): make sure the group is gone, let stderr drain
        # so the report quotes the traceback, then fail whatever was in flight.
        proc.signal_group(signal.SIGKILL)
        with trio.move_on_after(2.0):
            await proc.exited_event.wait()
        with trio.move_on_after(0.2):
            await self._stderr_done.wait()
        if self._stop_wanted and self._fatal is None and proc.returncode == 0:
            self._to(WorkerState.STOPPING)
            self._to(WorkerState.STOPPED)
            self.last_exit = "stopped"
            return
        error = self._fatal or self._crash_error(proc)
        if isinstance(error, RequestTimeout):
            # The timed-out caller has its RequestTimeout; the others it shared the worker
            # with (pipelining) lost theirs to the kill: for them it is a crash.
            bystanders = self._crash_error(proc)
            bystanders.args = (f"worker {self.id} was killed: another request timed out ({error})",)
            self._fail_pending(bystanders)
        else:
            self._fail_pending(error)
        self.last_exit = self._describe(proc)
        self._to(WorkerState.FAILED)
        raise error

    async def _graceful_stop(self, proc: Process) -> None:
        self._to(WorkerState.STOPPING)
        try:
            await self._send(self._codec.raw_dumps(("shutdown",)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        with trio.move_on_after(self.stop_timeout):
            await proc.exited_event.wait()
        if not proc.exited:
            proc.signal_group(signal.SIGTERM)
            with trio.move_on_after(1.0):
                await proc.exited_event.wait()
        if not proc.exited:
            proc.signal_group(signal.SIGKILL)
            await proc.exited_event.wait()
        with trio.move_on_after(0.2):
            await self._stderr_done.wait()
        self._fail_pending(WorkerCrashed(f"worker {self.id} was stopped before it answered"))
        self.last_exit = self._describe(proc)
        self._to(WorkerState.STOPPED)

    def _describe(self, proc: Process) -> str:
        code, sig = proc.describe_exit()
        if sig is not None:
            return f"killed by {sig}"
        if code is not None:
            return f"exit code {code}"
        return "running"

    def _crash_error(self, proc: Process) -> WorkerCrashed:
        code, sig = proc.describe_exit()
        how = f"was killed by {sig}" if sig else f"exited with code {code}" if code is not None else "died"
        return WorkerCrashed(
            f"worker {self.id} (pid {proc.pid}) {how}",
            exit_code=code,
            signal=sig,
            stderr_tail="\n".join(self.stderr_tail),
        )

    def _fail_pending(self, error: BaseException) -> None:
        """Fail every call in flight; free their slots so queued callers see the state."""
        while self._pending:
            _, waiter = self._pending.popitem()
            waiter.error = error
            if waiter.event is not None:
                waiter.event.set()
            self._slot.release()
        self._calls_failed.set()

    # -- the channel -----------------------------------------------------------

    async def _send(self, payload: bytes) -> None:
        """Write one frame. Small frames are one os.write, no scheduling at all."""
        assert self._proc is not None
        header = frames.pack_header(len(payload), self.max_frame)
        lock = self._write_lock
        if lock.busy:
            await lock.acquire()
        else:
            lock.busy = True
        try:
            if len(payload) < 65536:
                await self._write_all(header + payload)
            else:
                await self._write_all(header)
                await self._write_all(payload, started=True)
        finally:
            lock.release()

    async def _write_all(self, data: bytes, *, started: bool = False) -> None:
        assert self._proc is not None
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            fd = self._proc.stdin_fd
            if fd is None:
                raise trio.ClosedResourceError("the worker's stdin is closed")
            try:
                sent += os.write(fd, view[sent:])
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(fd)
                except trio.Cancelled:
                    if sent or started:  # part of a frame is on the pipe: the channel is unusable
                        self._kill(WorkerCrashed(f"worker {self.id}: a request was cut off mid-frame"))
                    raise
            except OSError as exc:
                raise trio.BrokenResourceError(f"worker {self.id}: stdin: {exc}") from exc

    async def _next_frame(self) -> bytes:
        """The next frame from the worker's stdout (read by whoever holds the slot)."""
        frames_ = self._frames
        while not frames_:
            assert self._proc is not None
            fd = self._proc.stdout_fd
            if fd is None:
                raise _EOF
            if self._big is not None:  # a large frame, read straight into its buffer
                frames_.append(await self._read_big(fd, self._big))
                self._big = None
                break
            frames_.extend(self._feed(await _read_when_ready(fd, os.read, fd, 65536)))
            if not frames_:
                self._big = self._decoder.take_big()
        return frames_.popleft()

    async def _read_big(self, fd: int, big: tuple[bytearray, int]) -> bytes:
        frame, have = big
        size = len(frame)
        with memoryview(frame) as view:
            while have < size:
                self._big = (frame, have)  # a cancelled reader leaves it resumable
                have += await _read_when_ready(fd, os.readv, fd, [view[have:]])
        return frame  # type: ignore[return-value]  # bytearray: every codec reads it as bytes

    def _feed(self, data: bytes) -> list[bytes]:
        try:
            return self._decoder.feed(data)
        except frames.ProtocolError as exc:
            raise ProtocolError(f"worker {self.id}: {exc}") from exc

    async def _handshake(self, proc: Process, launch: Launch) -> None:
        try:
            with trio.fail_after(self.init_timeout):
                try:
                    hello = frames.parse_hello(await self._next_frame())
                    codec_name = frames.choose_codec(hello["codecs"], launch.codecs)
                except frames.ProtocolError as exc:
                    raise ProtocolError(f"worker {self.id}: bad hello: {exc}") from exc
                self._codec = frames.get_codec(codec_name)
                welcome = frames.make_welcome(
                    codec_name,
                    self.id,
                    launch.welcome.get("module"),
                    max_frame=self.max_frame,
                    sys_path=launch.welcome.get("sys_path"),
                )
                if self.pipeline > 1 and "pipeline" in hello["capabilities"]:
                    welcome["pipeline"] = True
                    self._pipelined = True
                    self._slot = _Capacity(self.pipeline)
                if "module" not in launch.welcome:  # e.g. a Command: the worker's argv decides
                    del welcome["module"]
                await self._send(frames.encode_json_object(welcome))
                self._decoder.max_frame = self.max_frame
                reply = self._loads(await self._next_frame())
        except trio.TooSlowError:
            proc.signal_group(signal.SIGKILL)
            await self._settle(proc)
            self._to(WorkerState.FAILED)
            self.last_exit = "init timeout"
            timeout_error = InitTimeout(
                f"worker {self.id} (pid {proc.pid}) was not ready within init_timeout="
                f"{self.init_timeout} s (a slow import or init()?)" + self._tail_text()
            )
            self._fatal = timeout_error
            raise timeout_error from None
        except (_EOF, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._settle(proc)
            self._to(WorkerState.FAILED)
            crash = self._crash_error(proc)
            crash.args = (f"{crash.args[0]} during start-up",)
            self._fatal = crash
            raise crash from None
        except ProtocolError as exc:
            proc.signal_group(signal.SIGKILL)
            await self._settle(proc)
            self._to(WorkerState.FAILED)
            self._fatal = exc
            raise
        if not isinstance(reply, list | tuple) or not reply:
            raise self._protocol_failure(proc, f"expected a ready frame, got {reply!r:.200}")
        if reply[0] == "error" and len(reply) >= 3:
            await self._settle(proc)
            self._to(WorkerState.FAILED)
            init_error = self._remote_error(reply[2])
            self.last_exit = f"init failed: {init_error.remote_type}"
            self._fatal = init_error
            raise init_error
        if reply[0] != "ready":
            raise self._protocol_failure(proc, f"expected a ready frame, got {reply!r:.200}")
        self.ready_at = trio.current_time()

    def _protocol_failure(self, proc: Process, message: str) -> ProtocolError:
        proc.signal_group(signal.SIGKILL)
        self._to(WorkerState.FAILED)
        error = ProtocolError(f"worker {self.id}: {message}")
        self._fatal = error
        return error

    async def _settle(self, proc: Process) -> None:
        """After a failed start: wait (briefly) for the exit and the last stderr lines."""
        with trio.move_on_after(1.0):
            await proc.exited_event.wait()
        if not proc.exited:
            proc.signal_group(signal.SIGKILL)
            with trio.move_on_after(1.0):
                await proc.exited_event.wait()
        with trio.move_on_after(0.2):
            await self._stderr_done.wait()

    def _tail_text(self) -> str:
        if not self.stderr_tail:
            return ""
        return "\n\nLast lines of the worker's output:\n" + "\n".join(self.stderr_tail)

    def _loads(self, frame: bytes) -> Any:
        try:
            return self._codec.loads(frame)
        except frames.ProtocolError as exc:
            raise ProtocolError(f"worker {self.id}: {exc}") from exc

    def _remote_error(self, info: Any) -> RemoteError:
        if not isinstance(info, dict):
            return RemoteError("ProtocolError", f"malformed error reply: {info!r:.200}")
        error = RemoteError(
            str(info.get("type", "Exception")),
            str(info.get("message", "")),
            str(info.get("traceback", "") or ""),
        )
        exc_bytes = info.get("exc")
        if isinstance(exc_bytes, bytes) and self._codec.name == "pickle":
            try:
                original = pickle.loads(exc_bytes)
            except Exception:
                original = None
            if isinstance(original, BaseException):
                error.__cause__ = original
        return error

    async def _pump_stderr(self, proc: Process) -> None:
        """Worker output → logging and the ring buffer crash reports quote."""
        buffer = b""
        log = self.log
        tail = self.stderr_tail
        pid = proc.pid
        try:
            while True:
                data = await proc.stderr.receive_some(65536)
                if not data:
                    break
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                if len(buffer) > 16384:  # an endless line: pass it on in pieces (bounded, linear)
                    lines.append(buffer)
                    buffer = b""
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    tail.append(line)
                    if self._capture_stderr:
                        log.info("[pid %d] %s", pid, line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if buffer:
                line = buffer.decode("utf-8", "replace")
                tail.append(line)
                if self._capture_stderr:
                    log.info("[pid %d] %s", pid, line)
            self._stderr_done.set()

    # -- calls -----------------------------------------------------------------

    async def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Run the handler module's ``name(*args)`` in the worker and return its result."""
        return await self._request("call", name, args, timeout)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run a picklable callable in the worker (Python runtime only)."""
        return await self._request("apply", fn, args, timeout)

    async def ping(self, timeout: float | None = 5.0) -> None:
        """A health check round trip through the protocol (answered after any queued call)."""
        await self._request("ping", None, (), timeout)

    def _check_usable(self) -> None:
        if self.state in (WorkerState.READY, WorkerState.BUSY):
            return
        if self._fatal is not None and isinstance(self._fatal, CorralError):
            raise WorkerCrashed(f"worker {self.id} is {self.state.name}: {self._fatal}")
        raise WorkerCrashed(f"worker {self.id} is {self.state.name}; it takes no calls")

    async def _request(self, kind: str, target: Any, args: tuple[Any, ...], timeout: float | None) -> Any:
        """The hot path: write the request, then read replies until ours has come.

        Whoever waits reads: with one request in flight the caller reads its own reply;
        with several (pipelining), one caller reads and hands the others their replies.
        """
        self._check_usable()
        slot = self._slot
        if slot.free > 0:
            slot.free -= 1
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                slot.release()
                raise
        else:
            await slot.acquire()
        request_id = next(self._ids)
        try:
            self._check_usable()
            if kind == "ping":
                payload = self._codec.raw_dumps((kind, request_id))
            else:
                payload = self._codec.raw_dumps((kind, request_id, target, args))
            if len(payload) > self.max_frame:  # refuse before sending: the worker is unharmed
                raise ProtocolError(
                    f"worker {self.id}: the {kind} request encodes to {len(payload)} bytes, more than "
                    f"max_frame={self.max_frame}; it was not sent"
                )
        except BaseException:
            slot.release()
            raise
        waiter = _Pending()
        self._pending[request_id] = waiter
        if self.state is WorkerState.READY:
            self._to(WorkerState.BUSY)
        if timeout is None:
            timeout = self.request_timeout
        written = False
        try:
            if timeout is None:
                await self._send(payload)
                written = True
                msg = await self._reply_for(request_id, waiter)
            else:
                with trio.move_on_after(timeout) as scope:
                    await self._send(payload)
                    written = True
                    msg = await self._reply_for(request_id, waiter)
            if timeout is not None and scope.cancelled_caught:
                error = RequestTimeout(
                    f"worker {self.id}: {kind} {target if kind == 'call' else ''} took longer than "
                    f"{timeout} s; the worker was killed and will be replaced"
                )
                self._kill(error)
                raise error
        except trio.Cancelled:
            if written:
                self._interrupt(request_id, waiter)
            elif not self._ended.is_set() and self._pending.pop(request_id, None) is not None:
                # Nothing of it was written (a torn frame kills the worker in _write_all).
                self._slot.release()
                if self.state is WorkerState.BUSY and not self._pending:
                    self._to(WorkerState.READY)
            raise
        except (_EOF, trio.BrokenResourceError, trio.ClosedResourceError):
            self._end(None)
            with trio.CancelScope(shield=True):
                await self._calls_failed.wait()
            assert waiter.error is not None
            raise waiter.error from None
        except ProtocolError as exc:
            self._kill(exc)
            raise
        return self._settle_reply(request_id, msg)

    async def _reply_for(self, request_id: int, waiter: _Pending) -> Any:
        """Our reply: read it ourselves, or wait while another caller reads it for us."""
        while waiter.msg is None:
            if waiter.error is not None:
                raise _EOF
            if self._reading:
                waiter.event = trio.Event()
                try:
                    await waiter.event.wait()
                finally:
                    waiter.event = None
                continue
            self._reading = True
            try:
                while waiter.msg is None:
                    msg = self._loads(await self._next_frame())
                    if waiter.error is not None:  # the worker failed meanwhile: that is our answer
                        raise _EOF
                    self._dispatch(msg)
            finally:
                self._reading = False
                self._pass_reading()
        return waiter.msg

    def _dispatch(self, msg: Any) -> None:
        """Give one reply to the request it answers (the worker answers in order)."""
        try:
            request_id = msg[1]
            waiter = self._pending[request_id]
        except (TypeError, IndexError, KeyError):
            raise ProtocolError(f"worker {self.id}: a reply to no request in flight: {msg!r:.200}") from None
        waiter.msg = msg
        if waiter.abandoned:
            self._discard_reply(request_id, msg)
        elif waiter.event is not None:
            waiter.event.set()

    def _pass_reading(self) -> None:
        """The reader got its reply (or left): the next caller still waiting reads on;
        with only abandoned requests left, the drain task reads their replies."""
        if not self._pass_waiting_reader() and any(w.msg is None for w in self._pending.values()):
            self._start_drain()

    def _settle_reply(self, request_id: int, msg: Any) -> Any:
        """Turn a reply into a result or an exception; free the place."""
        self._pending.pop(request_id, None)
        kind = msg[0]
        self._slot.release()
        if self.state is WorkerState.BUSY and not self._pending:
            self._to(WorkerState.READY)
        if kind == "ok" or kind == "pong":
            self.served += 1
            return msg[2] if len(msg) > 2 else None
        if kind == "error":
            self.served += 1
            raise self._remote_error(msg[2] if len(msg) > 2 else None)
        if kind == "cancelled":
            raise RemoteError("KeyboardInterrupt", "the call was interrupted in the worker")
        error = ProtocolError(f"worker {self.id}: unknown reply kind {kind!r:.50}")
        self._kill(error)
        raise error

    def _discard_reply(self, request_id: int, msg: Any) -> None:
        try:
            self._settle_reply(request_id, msg)
        except CorralError:
            pass  # its caller has left; nobody reads this

    def _kill(self, error: BaseException) -> None:
        if self._proc is not None:
            self._proc.signal_group(signal.SIGKILL)
        self._end(error)

    def _interrupt(self, request_id: int, waiter: _Pending) -> None:
        """The caller was cancelled and returns at once. Its request is interrupted (SIGINT)
        if it runs, dropped if it still waits in the worker (pipelining); its reply is
        read and discarded in the background. A running request that does not come back
        within ``cancel_grace`` costs the worker its life."""
        if request_id not in self._pending or self._proc is None or self._nursery is None:
            return
        waiter.abandoned = True
        if waiter.msg is not None:  # it had already been read for us
            self._discard_reply(request_id, waiter.msg)
            return
        if not self._reading:
            self._pass_reading()
        self._nursery.start_soon(self._cancel_request, request_id, waiter)

    async def _cancel_request(self, request_id: int, waiter: _Pending) -> None:
        assert self._proc is not None
        if self._pipelined:
            # Name it first: the worker's SIGINT handler checks the name. The frame may
            # wait behind a large request that the worker reads only between requests:
            # if ours runs meanwhile (it is the oldest unanswered), that costs the worker
            # its life after cancel_grace, like a running request ignoring its interrupt.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._kill_if_head_too_long, request_id, waiter)
                try:
                    await self._send(self._codec.raw_dumps(("cancel", request_id)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                finally:
                    nursery.cancel_scope.cancel()
        # Queued behind others, it is answered "cancelled" without running; but it may
        # start before the worker reads the cancel: once it is the oldest unanswered
        # request (the one running, or next), interrupt it.
        while waiter.msg is None and waiter.error is None and request_id in self._pending:
            if self._head() == request_id:
                break
            await trio.sleep(0.01)
        else:
            return
        self._proc.signal(signal.SIGINT)
        with trio.move_on_after(self.cancel_grace):
            while waiter.msg is None and waiter.error is None and request_id in self._pending:
                await trio.sleep(0.005)
        if waiter.msg is None and waiter.error is None and request_id in self._pending:
            self._kill(
                WorkerCrashed(
                    f"worker {self.id} did not return within cancel_grace={self.cancel_grace} s "
                    "of an interrupt; killed"
                )
            )

    def _head(self) -> int | None:
        """The oldest request not answered yet: the one the worker runs, or runs next."""
        return next((rid for rid, w in self._pending.items() if w.msg is None), None)

    async def _kill_if_head_too_long(self, request_id: int, waiter: _Pending) -> None:
        while self._head() != request_id:
            if waiter.msg is not None or waiter.error is not None or request_id not in self._pending:
                return
            await trio.sleep(0.01)
        await trio.sleep(self.cancel_grace)
        if waiter.msg is None and waiter.error is None and request_id in self._pending:
            self._kill(
                WorkerCrashed(
                    f"worker {self.id} did not return within cancel_grace={self.cancel_grace} s "
                    "of a cancel it could not yet be told about; killed"
                )
            )

    def _start_drain(self) -> None:
        """Read replies that no caller waits for (their callers were cancelled)."""
        if self._draining or self._reading or self._nursery is None:
            return
        self._draining = True

        async def drain() -> None:
            try:
                while not self._reading:
                    outstanding = [w for w in self._pending.values() if w.msg is None]
                    if not outstanding:
                        return
                    if any(not w.abandoned for w in outstanding):
                        self._pass_waiting_reader()  # a live caller reads from here on
                        return
                    self._reading = True
                    try:
                        self._dispatch(self._loads(await self._next_frame()))
                    finally:
                        self._reading = False
            except (_EOF, trio.BrokenResourceError, trio.ClosedResourceError):
                self._end(None)
            except ProtocolError as exc:
                self._kill(exc)
            finally:
                self._draining = False

        self._nursery.start_soon(drain)

    def _pass_waiting_reader(self) -> bool:
        """Wake the oldest caller waiting for its reply, to read on; False if none waits."""
        for waiter in self._pending.values():
            if waiter.msg is None and waiter.event is not None:
                waiter.event.set()
                return True
        return False
