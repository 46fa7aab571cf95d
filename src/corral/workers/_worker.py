"""A worker: one OS process behind a framed pipe channel, with an explicit state machine.

``Worker.run`` follows ``nursery.start``: it returns control (``started(worker)``) once
the process has said hello and is READY, then serves until it is asked to stop or
dies. So a worker is a supervisor child like any other, and a crash is an abnormal
exit that the supervisor answers with a fresh Worker.

One Worker object is one process incarnation: STOPPED and FAILED are final.

A worker is three parts, each in its own module: the framed channel on the pipes
(``_channel.Channel``), the requests in flight with their replies and cancels
(``_requests.RequestTable``), and, here, the lifecycle: spawn, handshake, the state
table, stop, and the public API.
"""

from __future__ import annotations

import enum
import itertools
import logging
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Self

import attrs
import trio

from _corral_child import _frames as frames
from corral._errors import (
    CorralError,
    ProtocolError,
    RequestTimeout,
    WorkerCrashed,
)
from corral._shared import IllegalTransition as IllegalTransition  # re-exported: tests import it from here
from corral._shared import collapse as _collapse
from corral._shared import reraise as _reraise
from corral.supervisor._context import _get_current
from corral.workers._channel import CHANNEL_ENDED, Channel, Places
from corral.workers._launch import Launch, Launcher
from corral.workers._options import WorkerOptions
from corral.workers._process import Process, spawn_process
from corral.workers._requests import (
    Progress,
    ProgressCallback,
    RequestTable,
    _Pending,
    parse_progress,
    remote_error,
)
from corral.workers._stream import Stream


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
    #: What the worker last reported about its start-up (``corral_child.progress``).
    progress: Progress | None = None
    #: Seconds spent starting: so far while STARTING, from spawn to READY after.
    startup_seconds: float | None = None
    #: The pool's version it runs (``pool.upgrade``); None outside a pool.
    version: int | None = None


_ids = itertools.count(1)
_USABLE = frozenset({WorkerState.READY, WorkerState.BUSY})  # the states that take calls
_DEFAULTS = WorkerOptions()


class Worker:
    """One worker process. Use it through a pool, or run it yourself::

    worker = Worker(PythonModule("myapp.handlers"))
    await nursery.start(worker.run)
    await worker.call("predict", x)
    worker.stop()

    The Worker is the process's lifecycle: it spawns it, shakes hands, moves through
    ``TRANSITIONS`` (READY while no request is in flight, BUSY while one is), and
    stops or buries it. Calls go through its request table, frames through its channel.
    """

    def __init__(
        self,
        launcher: Launcher,
        *,
        worker_id: str | None = None,
        init_timeout: float = _DEFAULTS.init_timeout,
        request_timeout: float | None = _DEFAULTS.request_timeout,
        cancel_grace: float = _DEFAULTS.cancel_grace,
        stop_timeout: float = _DEFAULTS.stop_timeout,
        max_frame: int = _DEFAULTS.max_frame,
        capture_stderr: bool = _DEFAULTS.capture_stderr,
        stderr_lines: int = _DEFAULTS.stderr_lines,
        on_state: Callable[[Worker, WorkerState, WorkerState], None] | None = None,
        pipeline: int = _DEFAULTS.pipeline,
    ) -> None:
        options = WorkerOptions(
            init_timeout=init_timeout,
            request_timeout=request_timeout,
            cancel_grace=cancel_grace,
            stop_timeout=stop_timeout,
            max_frame=max_frame,
            capture_stderr=capture_stderr,
            stderr_lines=stderr_lines,
            pipeline=pipeline,
        )
        self._setup(launcher, options, worker_id, on_state)

    @classmethod
    def from_options(
        cls,
        launcher: Launcher,
        options: WorkerOptions,
        *,
        worker_id: str | None = None,
        on_state: Callable[[Worker, WorkerState, WorkerState], None] | None = None,
    ) -> Self:
        """A worker configured by one ``WorkerOptions`` value (how a pool makes them)."""
        worker = cls.__new__(cls)
        worker._setup(launcher, options, worker_id, on_state)
        return worker

    def _setup(
        self,
        launcher: Launcher,
        options: WorkerOptions,
        worker_id: str | None,
        on_state: Callable[[Worker, WorkerState, WorkerState], None] | None,
    ) -> None:
        self.id = worker_id or f"w{next(_ids)}"
        self.options = options
        self._launcher = launcher
        self._on_state = on_state
        self.log = logging.getLogger(f"corral.worker.{self.id}")
        self.state = WorkerState.STARTING
        self.served = 0  # requests answered with a result or an error (the table counts)
        self.started_at = time.time()
        self.ready_at: float | None = None  # trio clock
        self.spawned_at: float | None = None  # trio clock
        self.progress: Progress | None = None  # the last start-up progress report
        # Told of every start-up progress report (the pool sets it: events, exporter).
        self.on_progress: Callable[[Worker, Progress], None] | None = None
        self.last_exit: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=options.stderr_lines)
        self.pid: int | None = None
        self._proc: Process | None = None
        self._channel = Channel(self.id, options.max_frame, self._kill)
        self._requests = RequestTable(self, self._channel)
        # Set once it should end: stop() was asked, the process exited, or a fatal error.
        self._ended = trio.Event()
        self._stderr_done = trio.Event()
        self._fatal: BaseException | None = None  # the first fatal error: what callers see
        self._stop_wanted = False
        self._nursery: trio.Nursery | None = None  # run()'s, for the request table's tasks
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

    def _busy(self) -> None:
        """A request is in flight (the request table says so for each one)."""
        if self.state is WorkerState.READY:
            self._to(WorkerState.BUSY)

    def _idle(self) -> None:
        """No request is in flight any more (the request table's last one settled)."""
        if self.state is WorkerState.BUSY:
            self._to(WorkerState.READY)

    def info(self) -> WorkerInfo:
        """A frozen snapshot of this worker."""
        startup: float | None = None
        if self.spawned_at is not None:
            end = self.ready_at
            if end is None and self.state is WorkerState.STARTING:
                end = trio.current_time()
            startup = None if end is None else end - self.spawned_at
        return WorkerInfo(
            self.id,
            self.pid,
            self.state,
            self.served,
            self.started_at,
            self.last_exit,
            self.progress,
            startup,
        )

    def rss_bytes(self) -> int | None:
        """The process's resident memory (Linux ``/proc``), or None when unknown."""
        return self._proc.rss_bytes() if self._proc is not None else None

    @property
    def available(self) -> bool:
        """It takes a request now: READY (or BUSY with places left when pipelining), and
        not being killed or stopped. No syscall: see ``alive`` for the process itself."""
        state = self.state
        if state is not WorkerState.READY and not (state is WorkerState.BUSY and self._requests.depth > 1):
            return False
        return not self._ended.is_set()

    @property
    def alive(self) -> bool:
        """Its process has not exited (one cheap syscall: a death may not be noticed yet)."""
        return self._proc is not None and not self._proc.has_exited()

    @property
    def depth(self) -> int:
        """How many requests it may hold at once (``pipeline`` if the worker supports it)."""
        return self._requests.depth

    @property
    def _places(self) -> Places:  # the places of requests in flight (tests look at them)
        return self._requests.places

    @property
    def _pending(self) -> dict[int, _Pending]:  # the requests in flight (tests look at them)
        return self._requests.pending

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn, handshake, report READY, serve until stopped; raise if it dies."""
        if self._ran:
            raise RuntimeError(f"{self!r} already ran; a Worker is one process incarnation")
        self._ran = True
        launch = self._launcher.launch(self.id)
        proc = await self._spawn(launch)
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
                self._requests.fail_all(self._fatal or self._crash_error(proc))
                if self.state not in (WorkerState.STOPPED, WorkerState.FAILED):
                    self._to(WorkerState.FAILED)
                if self.last_exit is None:
                    self.last_exit = self._describe(proc)
                await proc.aclose()

    async def _spawn(self, launch: Launch) -> Process:
        try:
            proc = await spawn_process(self._launcher, self.id, launch)
        except (OSError, CorralError) as exc:
            self._to(WorkerState.FAILED)
            self.last_exit = f"spawn failed: {exc}"
            raise WorkerCrashed(f"worker {self.id}: could not start {launch.argv[0]!r}: {exc}") from exc
        self._proc = self._channel.proc = proc
        self.pid = proc.pid
        self.spawned_at = trio.current_time()
        return proc

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

    def _kill(self, error: BaseException) -> None:
        if self._proc is not None:
            self._proc.signal_group(signal.SIGKILL)
        self._end(error)

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
        # A crash, a timeout, a kill for an ignored cancel (not garbage on the channel):
        # once all it wrote is read, the requests queued behind the one it ran never
        # started, and can go elsewhere.
        resend = not isinstance(error, ProtocolError) and await self._requests.read_to_end()
        if isinstance(error, RequestTimeout):
            # The timed-out caller has its RequestTimeout; the others it shared the worker
            # with (pipelining) lost theirs to the kill: for them it is a crash.
            bystanders = self._crash_error(proc)
            bystanders.args = (f"worker {self.id} was killed: another request timed out ({error})",)
            self._requests.fail_all(bystanders, resend_unstarted=resend)
        else:
            self._requests.fail_all(error, resend_unstarted=resend)
        self.last_exit = self._describe(proc)
        self._to(WorkerState.FAILED)
        raise error

    async def _graceful_stop(self, proc: Process) -> None:
        self._to(WorkerState.STOPPING)
        try:
            await self._channel.send(self._requests.codec.raw_dumps(("shutdown",)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        with trio.move_on_after(self.options.stop_timeout):
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
        self._requests.fail_all(WorkerCrashed(f"worker {self.id} was stopped before it answered"))
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

    # -- start-up --------------------------------------------------------------

    async def _handshake(self, proc: Process, launch: Launch) -> None:
        """Hello, welcome, ready (docs/protocol.md §3) within ``init_timeout``; any
        failure leaves the worker FAILED with the reason as its fatal error."""
        init_timeout = self.options.init_timeout
        try:
            with trio.fail_after(init_timeout):
                reply = await self._greet(launch)
        except trio.TooSlowError:
            proc.signal_group(signal.SIGKILL)
            await self._settle(proc)
            self._to(WorkerState.FAILED)
            self.last_exit = "init timeout"
            timeout_error = InitTimeout(
                f"worker {self.id} (pid {proc.pid}) was not ready within init_timeout="
                f"{init_timeout} s (a slow import or init()?)" + self._tail_text()
            )
            self._fatal = timeout_error
            raise timeout_error from None
        except CHANNEL_ENDED:
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
            init_error = remote_error(reply[2], self._requests.codec.name)
            self.last_exit = f"init failed: {init_error.remote_type}"
            self._fatal = init_error
            raise init_error
        if reply[0] != "ready":
            raise self._protocol_failure(proc, f"expected a ready frame, got {reply!r:.200}")
        self.ready_at = trio.current_time()

    async def _greet(self, launch: Launch) -> Any:
        """Read the hello, send the welcome (codec, pipelining), return the reply to it."""
        channel = self._channel
        try:
            hello = frames.parse_hello(await channel.next_frame())
            codec_name = frames.choose_codec(hello["codecs"], launch.codecs)
        except frames.ProtocolError as exc:
            raise ProtocolError(f"worker {self.id}: bad hello: {exc}") from exc
        codec = frames.get_codec(codec_name)
        options = self.options
        welcome = frames.make_welcome(
            codec_name,
            self.id,
            launch.welcome.get("module"),
            max_frame=options.max_frame,
            sys_path=launch.welcome.get("sys_path"),
            init_args=launch.welcome.get("init_args"),
        )
        capabilities = hello["capabilities"]
        # A worker that takes "cancel" requests always gets named cancels, pipelining or
        # not: a SIGINT then never interrupts a call the parent still wants (§6).
        named = "pipeline" in capabilities
        if named:
            welcome["pipeline"] = True
        # Streams and withdrawals need named cancels (a stream left early is cancelled;
        # a withdrawal rides on the same read-ahead).
        features = [
            f for f in frames.FEATURES if f in capabilities and (named or f not in ("stream", "withdraw"))
        ]
        if features:
            welcome["features"] = features
        self._requests.negotiated(
            codec,
            options.pipeline if named else 1,
            named=named,
            signals="cancel" in capabilities,
            features=frozenset(features),
        )
        if "module" not in launch.welcome:  # e.g. a Command: the worker's argv decides
            del welcome["module"]
        await channel.send(frames.encode_json_object(welcome))
        channel.lift_handshake_limit()
        while True:
            reply = self._requests.loads(await channel.next_frame())
            if not (isinstance(reply, list | tuple) and reply and reply[0] == "progress"):
                return reply
            self._started_some(reply)

    def _started_some(self, msg: Any) -> None:
        """A start-up progress report (``["progress", 0, fraction, text]``)."""
        if "progress" not in self._requests.features or len(msg) < 2 or msg[1] != 0:
            raise ProtocolError(f"worker {self.id}: a progress report it was not asked for: {msg!r:.200}")
        try:
            report = parse_progress(msg, self.spawned_at or trio.current_time())
        except ValueError as exc:
            raise ProtocolError(f"worker {self.id}: {exc}") from None
        self.progress = report
        self.log.debug("starting: %s %s (%.1f s)", report.fraction, report.text, report.elapsed)
        if self.on_progress is not None:
            self.on_progress(self, report)

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

    async def _pump_stderr(self, proc: Process) -> None:
        """Worker output → logging and the ring buffer crash reports quote."""
        buffer = b""
        log = self.log
        tail = self.stderr_tail
        pid = proc.pid
        capture = self.options.capture_stderr
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
                    if capture:
                        log.info("[pid %d] %s", pid, line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if buffer:
                line = buffer.decode("utf-8", "replace")
                tail.append(line)
                if capture:
                    log.info("[pid %d] %s", pid, line)
            self._stderr_done.set()

    # -- calls -----------------------------------------------------------------

    async def call(
        self,
        name: str,
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the handler module's ``name(*args, **kwargs)`` in the worker; return its
        result. ``on_progress`` is called with each `Progress` the handler reports."""
        return await self._requests.request("call", name, args, timeout, kwargs, on_progress)

    async def run_sync(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run a picklable callable in the worker (Python runtime only)."""
        return await self._requests.request("apply", fn, args, timeout, kwargs, on_progress)

    async def submit(
        self,
        kind: str,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
        movable: bool,
    ) -> Any:
        """A call or apply, as the pool makes them. A ``movable`` one may be asked back
        while it waits in this worker's queue (``withdraw_one``): it then raises
        ``Withdrawn``, having never run."""
        return await self._requests.request(kind, target, args, timeout, kwargs, on_progress, movable)

    def withdraw_one(self) -> bool:
        """Ask back one movable request still queued here; True if one was asked."""
        return self._requests.withdraw_one()

    @asynccontextmanager
    async def stream(
        self,
        name: str,
        *args: Any,
        timeout: float | None = None,
        chunk_timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Stream]:
        """Run a handler that yields, and iterate over what it yields::

            async with worker.stream("generate", prompt) as chunks:
                async for chunk in chunks:
                    ...

        The worker runs at most ``stream_window`` chunks ahead of you. Leaving the block
        before the end stops the handler's generator in the worker (its ``finally``
        runs). ``timeout`` bounds the whole stream, ``chunk_timeout`` each wait for a
        chunk; either kills the worker with a ``RequestTimeout``, as for a call.
        """
        table = self._requests
        window = self.options.stream_window
        request_id, waiter = await table.open_stream(name, args, kwargs, window, on_progress)
        if timeout is None:
            timeout = self.options.request_timeout
        stream = Stream(table, request_id, waiter, f"stream {name}", timeout, chunk_timeout)
        try:
            yield stream
        finally:
            stream._close()

    async def ping(self, timeout: float | None = 5.0) -> None:
        """A health check round trip through the protocol (answered after any queued call)."""
        await self._requests.request("ping", None, (), timeout)

    def _check_usable(self) -> None:
        if self.state in _USABLE:
            return
        if self._fatal is not None and isinstance(self._fatal, CorralError):
            raise WorkerCrashed(f"worker {self.id} is {self.state.name}: {self._fatal}")
        if self.state in (WorkerState.STOPPING, WorkerState.STOPPED):
            raise WorkerCrashed(
                f"worker {self.id} is {self.state.name}: it was asked to stop (the pool closed, or "
                "recycled or upgraded it past drain_timeout); it takes no calls"
            )
        raise WorkerCrashed(f"worker {self.id} is {self.state.name}; it takes no calls")
