"""The requests in flight on one worker: their places, their replies, their cancels.

A worker answers its requests in order, one frame each. Whoever waits for a reply
reads: with one request in flight the caller reads its own reply; with several
(pipelining), one caller reads and hands the others theirs, and replies that nobody
waits for any more (their callers were cancelled) are read by a drain task. A
cancelled request is named to the worker (``["cancel", id]``) and interrupted with
SIGINT once it is the oldest unanswered one (docs/protocol.md §6); a worker that does
not answer it within ``cancel_grace`` is killed.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import signal
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from _corral_child import _frames as frames
from corral._errors import CorralError, ProtocolError, RemoteError, RequestTimeout, WorkerCrashed
from corral.workers._channel import CHANNEL_ENDED, Channel, EndOfChannel, Places

if TYPE_CHECKING:
    from corral.workers._worker import Worker


#: Replies at least this large are decoded off the event loop (``loads_off_loop``).
BIG_DECODE = 1 << 20
_log = logging.getLogger("corral.worker")


@attrs.frozen
class Progress:
    """How far a worker's start-up, or a call, has come, as the worker last reported.

    ``fraction`` is in [0, 1], or None when the worker did not say; ``text`` is what it
    is doing ("loading weights"); ``elapsed`` is the seconds since the start-up or the
    call began, when the report came.
    """

    fraction: float | None
    text: str
    elapsed: float


ProgressCallback = Callable[[Progress], None]


def parse_progress(msg: Any, since: float) -> Progress:
    """A ``["progress", id, fraction, text]`` message as a `Progress` (checked)."""
    if len(msg) != 4 or not isinstance(msg[3], str):
        raise ValueError(f"malformed progress message: {msg!r:.200}")
    fraction = msg[2]
    if fraction is not None and (
        type(fraction) not in (int, float) or not 0 <= fraction <= 1  # also refuses NaN
    ):
        raise ValueError(f"progress fraction out of [0, 1]: {msg!r:.200}")
    return Progress(None if fraction is None else float(fraction), msg[3], trio.current_time() - since)


class _Pending:
    """A request in flight: its reply once read (by whichever caller is reading), or
    the error if the worker dies first; a stream's chunks as they come."""

    __slots__ = (
        "abandoned",
        "chunks",
        "error",
        "event",
        "movable",
        "msg",
        "on_progress",
        "since",
        "window",
        "withdrawing",
    )

    def __init__(self, on_progress: ProgressCallback | None = None) -> None:
        self.error: BaseException | None = None
        self.msg: Any = None
        # A stream's chunks read and not yet consumed (None: not a stream); at most
        # ``window`` of them, since the worker sends no more than its credit.
        self.chunks: deque[Any] | None = None
        self.window = 0
        self.on_progress = on_progress
        self.since = trio.current_time() if on_progress is not None else 0.0  # progress: elapsed
        self.movable = False  # the pool may ask it back while it waits in the worker's queue
        self.withdrawing = False  # asked back ("withdraw"): "withdrawn" or its own reply comes
        # Exists only while its caller waits for another caller to read the reply for it.
        self.event: trio.Event | None = None
        # None while its caller waits. Once the caller was cancelled (its reply is
        # discarded), an Event set when the request settles: a reply or the worker's end.
        self.abandoned: trio.Event | None = None


class Withdrawn(CorralError):
    """Internal: the worker gave a queued request back unrun (``withdraw``); the pool
    sends it to another worker. Never reaches a caller."""


def remote_error(info: Any, codec_name: str) -> RemoteError:
    """The ``RemoteError`` for an error reply's info (its original exception as the
    cause, when the codec is pickle and it unpickles)."""
    if not isinstance(info, dict):
        return RemoteError("ProtocolError", f"malformed error reply: {info!r:.200}")
    error = RemoteError(
        str(info.get("type", "Exception")),
        str(info.get("message", "")),
        str(info.get("traceback", "") or ""),
    )
    exc_bytes = info.get("exc")
    if isinstance(exc_bytes, bytes) and codec_name == "pickle":
        try:
            original = pickle.loads(exc_bytes)
        except Exception:
            original = None
        if isinstance(original, BaseException):
            error.__cause__ = original
    return error


class RequestTable:
    """One worker's requests in flight, matched to its replies; the hot path of a call.

    It exists so that the lifecycle never sees a request and the channel never sees a
    reply. Guarantees:

    - At most ``depth`` requests are in flight (1 unless the worker pipelines); a freed
      place passes to the next caller in FIFO order, and a free one costs no scheduling.
    - Exactly one task reads replies at a time (``reading``); when it has its own reply
      it hands reading to the oldest caller still waiting, or, if only abandoned
      requests are left, to the drain task. A reply reaches exactly its request.
    - A caller that is cancelled returns at once; its request is withdrawn (not written
      yet) or cancelled as docs/protocol.md §6 says, and its reply is read and dropped.
      The cancel waits on events (a reply, the worker's end, a new oldest unanswered
      request), never by polling.
    - When the worker ends, ``fail_all`` fails every request in flight with one error
      and frees every place, so queued callers find the worker unusable.

    Of its worker it uses: ``id`` and ``options``; ``served``, which it counts up for
    each "ok" or "error" reply; ``_check_usable``, before a request is admitted;
    ``_busy``/``_idle``, a request in flight / none any more (the state moves READY <->
    BUSY there); ``_kill``/``_end``, to end the worker on a protocol error, a timeout, a
    lost pipe or an ignored cancel; ``_proc`` and ``_nursery``, for SIGINT and for the
    background tasks of cancels and drains.
    """

    __slots__ = (
        "_draining",
        "_head_moved",
        "_ids",
        "_next_frame",
        "_options",
        "_send",
        "_worker",
        "codec",
        "depth",
        "failed",
        "features",
        "named",
        "pending",
        "places",
        "reading",
        "signals",
    )

    def __init__(self, worker: Worker, channel: Channel) -> None:
        self._worker = worker
        self._options = worker.options
        self._send = channel.send  # bound once: the hot path calls them per request
        self._next_frame = channel.next_frame
        self.codec: frames.Codec = frames.get_codec("json")  # the handshake chooses
        # Insertion order is request id order, which is the order the worker answers in.
        self.pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self.depth = 1  # requests in flight at once: > 1 once the worker agreed to pipeline
        self.named = False  # every cancel is named in a "cancel" frame before any SIGINT
        self.signals = True  # the worker turns SIGINT into "cancelled" (capability "cancel")
        self.features: frozenset[str] = frozenset()  # the 1.1 features in use (welcome)
        self.places = Places(1)  # invariant: places.free + len(pending) <= depth
        self.reading = False  # a caller (or the drain task) is reading replies
        self._draining = False
        self.failed = trio.Event()  # fail_all() ran: callers of a dead worker can raise
        # Set (and replaced by None) when the oldest unanswered request may have changed;
        # exists only while a cancel waits for its request to become the oldest.
        self._head_moved: trio.Event | None = None

    def negotiated(
        self, codec: frames.Codec, depth: int, *, named: bool, signals: bool, features: frozenset[str]
    ) -> None:
        """The handshake's outcome: the payload codec, how many requests in flight, how
        cancels are told (named, signalled) and the 1.1 features in use."""
        assert not self.pending
        self.codec = codec
        self.depth = depth
        self.places = Places(depth)
        self.named = named
        self.signals = signals
        self.features = features

    def loads(self, frame: bytes) -> Any:
        try:
            return self.codec.loads(frame)
        except frames.ProtocolError as exc:
            salvaged = self._salvage(frame, exc)
            if salvaged is not None:
                return salvaged
            raise ProtocolError(f"worker {self._worker.id}: {exc}") from exc

    async def loads_off_loop(self, frame: bytes) -> Any:
        """Decode a large reply in a thread: a frame of ``max_frame`` bytes can decode
        into millions of objects (seconds of CPU) that must not stall the event loop.
        Not abandoned on cancel: the reply is needed by whoever reads next."""
        return await trio.to_thread.run_sync(self.loads, frame)

    def _salvage(self, frame: bytes, exc: Exception) -> Any:
        """A pickled reply the parent cannot decode (a class only the worker has): when
        its request can be told, that one call fails with a DecodeError and the worker
        keeps serving, as the worker does for a request it cannot decode."""
        salvaged = frames.salvage_request_id(frame, self.codec.name)
        if salvaged is None or salvaged[1] not in self.pending:
            return None
        cause = exc.__cause__ or exc
        info = {
            "type": "DecodeError",
            "message": f"the parent cannot decode the reply: {type(cause).__name__}: {cause} "
            "(is the class it names importable in the parent?)",
            "traceback": "",
        }
        return ("error", salvaged[1], info)

    # -- the hot path ----------------------------------------------------------

    async def request(
        self,
        kind: str,
        target: Any,
        args: tuple[Any, ...],
        timeout: float | None,
        kwargs: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        movable: bool = False,
    ) -> Any:
        """Write the request, then read replies until ours has come.

        No scheduling but the wait for the reply: a free place is taken without a yield
        (so the usability check still holds), and a small frame is one ``os.write``.
        """
        request_id, payload = await self._admit(kind, target, args, kwargs, movable=movable)
        waiter = _Pending(on_progress)
        waiter.movable = movable
        self.pending[request_id] = waiter
        worker = self._worker
        worker._busy()
        if timeout is None:
            timeout = self._options.request_timeout
        written = False
        try:
            if timeout is None:
                await self._send(payload)
                written = True
                msg = await self._reply_for(waiter)
            else:
                with trio.move_on_after(timeout) as scope:
                    await self._send(payload)
                    written = True
                    msg = await self._reply_for(waiter)
                if scope.cancelled_caught:
                    msg = await self._give_back(request_id, waiter) if written else None
                    if msg is None:
                        raise self._timed_out(kind, target, timeout)
                    if msg[0] == "withdrawn":
                        raise self._timed_out_queued(request_id, msg, kind, target, timeout)
        except trio.Cancelled:
            if written:
                self._abandon(request_id, waiter)
            else:
                self._withdraw(request_id)
            raise
        except CHANNEL_ENDED:
            raise await self._worker_ended(waiter) from None
        except ProtocolError as exc:
            worker._kill(exc)
            raise
        return self._settle(request_id, msg)

    async def _admit(
        self,
        kind: str,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        window: int = 0,
        movable: bool = False,
    ) -> tuple[int, bytes]:
        """Take a place and encode the request: its id and its frame. Nothing is sent,
        so a request refused here leaves the worker unharmed."""
        self._usable(movable)
        places = self.places
        waited = places.free <= 0
        if waited:
            await places.acquire()
        else:
            places.free -= 1
        try:
            if waited:
                self._usable(movable)  # it may have died while we waited
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            request_id = next(self._ids)
            dumps = self.codec.raw_dumps
            if kind == "ping":
                payload = dumps((kind, request_id))
            elif window:
                payload = dumps((kind, request_id, target, args, kwargs or {}, window))
            elif kwargs:
                if "kwargs" not in self.features:
                    raise self._unsupported("keyword arguments", "kwargs", "pass them positionally")
                payload = dumps((kind, request_id, target, args, kwargs))
            else:
                payload = dumps((kind, request_id, target, args))
            if len(payload) > self._options.max_frame:
                raise self._too_large(kind, len(payload))
        except BaseException:
            places.release()
            raise
        return request_id, payload

    def _usable(self, movable: bool) -> None:
        """Raise unless the worker takes requests; a movable request that finds it dead
        was never sent, and goes to another worker (``Withdrawn``)."""
        try:
            self._worker._check_usable()
        except WorkerCrashed:
            if movable:
                raise Withdrawn(f"worker {self._worker.id} ended before the request was sent") from None
            raise

    async def open_stream(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        window: int,
        on_progress: ProgressCallback | None,
    ) -> tuple[int, _Pending]:
        """Write a "stream" request; its chunks are then taken with `next_chunk`."""
        if "stream" not in self.features:
            raise self._unsupported("streams", "stream", "use call() and return a list")
        request_id, payload = await self._admit("stream", name, args, kwargs, window)
        waiter = _Pending(on_progress)
        waiter.chunks = deque()
        waiter.window = window
        self.pending[request_id] = waiter
        self._worker._busy()
        try:
            await self._send(payload)
        except trio.Cancelled:
            self._withdraw(request_id)
            raise
        except CHANNEL_ENDED:
            raise await self._worker_ended(waiter) from None
        return request_id, waiter

    async def next_chunk(self, request_id: int, waiter: _Pending) -> tuple[bool, Any]:
        """(True, chunk) for the stream's next chunk, or (False, result) at its end
        (raising as a call would: the error reply, the worker's death). A caller
        cancelled here leaves the stream as it was: the chunk is read for it later."""
        chunks = waiter.chunks
        assert chunks is not None
        if not chunks and waiter.msg is None:
            try:
                await self._reply_for(waiter)
            except CHANNEL_ENDED:
                raise await self._worker_ended(waiter) from None
            except ProtocolError as exc:
                self._worker._kill(exc)
                raise
        if chunks:
            return True, chunks.popleft()
        return False, self._settle(request_id, waiter.msg)

    async def grant(self, request_id: int, n: int) -> None:
        """Let a stream's worker send ``n`` more chunks."""
        await self._send(self.codec.raw_dumps(("credit", request_id, n)))

    def withdraw_one(self) -> bool:
        """Ask the worker to give back the youngest movable request still waiting in its
        queue (not the oldest unanswered one: that one runs, or is about to). True if
        one was asked back: its caller then gets ``Withdrawn`` ("withdrawn", it never
        ran) or its own reply (it had started): a request runs at most once."""
        worker = self._worker
        if "withdraw" not in self.features or worker._nursery is None or worker._proc is None:
            return False
        head = self._head()
        for request_id in reversed(self.pending):
            waiter = self.pending[request_id]
            if request_id == head:
                return False
            if (
                waiter.movable
                and not waiter.withdrawing
                and waiter.msg is None
                and waiter.abandoned is None
                and waiter.error is None
                and waiter.chunks is None
            ):
                waiter.withdrawing = True
                worker._nursery.start_soon(self._withdraw_queued, request_id)
                return True
        return False

    async def _withdraw_queued(self, request_id: int) -> None:
        """ "withdraw", then a SIGINT so that a worker busy in a handler reads it at once
        (named cancels: the signal interrupts nothing that was not named)."""
        try:
            await self._send(self.codec.raw_dumps(("withdraw", request_id)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        proc = self._worker._proc
        if proc is not None and request_id in self.pending and self.signals:
            proc.signal(signal.SIGINT)

    def abandon_stream(self, request_id: int, waiter: _Pending) -> None:
        """The stream's consumer left before its end: stop it in the worker (a named
        cancel; the handler's generator is closed there) and drop what comes."""
        if waiter.chunks is not None:
            waiter.chunks.clear()
        if waiter.msg is not None:
            self._discard(request_id, waiter.msg)
        elif waiter.error is None:
            self._abandon(request_id, waiter)

    def _unsupported(self, what: str, capability: str, instead: str) -> TypeError:
        worker = self._worker
        return TypeError(
            f"worker {worker.id} does not take {what}: it did not offer the {capability!r} "
            f"capability (protocol 1.1, docs/protocol.md §3); {instead}, or upgrade the worker"
        )

    async def _reply_for(self, waiter: _Pending) -> Any:
        """Our reply (or a stream's next chunk): read it ourselves, or wait while another
        caller reads it for us."""
        while waiter.msg is None and not waiter.chunks:
            if waiter.error is not None:
                raise EndOfChannel
            if self.reading:
                waiter.event = trio.Event()
                try:
                    await waiter.event.wait()
                finally:
                    waiter.event = None
                continue
            self.reading = True
            try:
                while waiter.msg is None and not waiter.chunks:
                    frame = await self._next_frame()
                    msg = self.loads(frame) if len(frame) < BIG_DECODE else await self.loads_off_loop(frame)
                    if waiter.error is not None:  # the worker failed meanwhile: that is our answer
                        raise EndOfChannel
                    self._dispatch(msg)
            finally:
                self.reading = False
                self._pass_reading()
        return waiter.msg

    def _dispatch(self, msg: Any) -> None:
        """Give one reply to the request it answers (the worker answers in order); a
        chunk to its stream; a progress report to its caller's callback."""
        try:
            request_id = msg[1]
            waiter = self.pending[request_id]
            kind = msg[0]
        except (TypeError, IndexError, KeyError):
            raise ProtocolError(
                f"worker {self._worker.id}: a reply to no request in flight: {msg!r:.200}"
            ) from None
        if kind == "chunk" or kind == "progress":
            self._interim(waiter, msg)
            return
        waiter.msg = msg
        if self._head_moved is not None:  # a cancel waits for its request to be the oldest
            self._moved_head()
        if waiter.abandoned is not None:
            waiter.abandoned.set()
            self._discard(request_id, msg)
        elif waiter.event is not None:
            waiter.event.set()

    def _interim(self, waiter: _Pending, msg: Any) -> None:
        """A message that does not answer its request: a chunk, a progress report."""
        worker_id = self._worker.id
        if msg[0] == "chunk":
            chunks = waiter.chunks
            if chunks is None or len(msg) != 3 or len(chunks) >= waiter.window:
                why = "a chunk for a request that is no stream" if chunks is None else "a malformed chunk"
                if chunks is not None and len(msg) == 3:
                    why = f"more chunks than its credit ({waiter.window})"
                raise ProtocolError(f"worker {worker_id}: {why}: {msg!r:.200}")
            if waiter.abandoned is None:
                chunks.append(msg[2])
                if waiter.event is not None:
                    waiter.event.set()
            return
        if "progress" not in self.features:
            raise ProtocolError(f"worker {worker_id}: a progress report it was not asked for: {msg!r:.200}")
        callback = waiter.on_progress
        try:
            report = parse_progress(msg, waiter.since)
        except ValueError as exc:
            raise ProtocolError(f"worker {worker_id}: {exc}") from None
        _log.debug("worker %s: request %s progress %s %s", worker_id, msg[1], report.fraction, report.text)
        if callback is not None and waiter.abandoned is None:
            try:
                callback(report)
            except Exception:  # the caller's bug must not cost the reader (maybe another caller)
                _log.exception("worker %s: the on_progress callback failed", worker_id)

    def _pass_reading(self) -> None:
        """Reading is free: the oldest caller still waiting for its reply reads on; with
        only abandoned requests unanswered, the drain task reads their replies."""
        unanswered = False
        for waiter in self.pending.values():
            if waiter.msg is None:
                if waiter.event is not None:
                    waiter.event.set()
                    return
                unanswered = True
        if unanswered:
            self._start_drain()  # a no-op from the drain task itself

    def _settle(self, request_id: int, msg: Any) -> Any:
        """Turn a reply into a result or an exception; free the place."""
        self.pending.pop(request_id, None)
        kind = msg[0]
        self.places.release()
        if not self.pending:
            self._worker._idle()
        if kind == "ok" or kind == "pong":
            self._worker.served += 1
            return msg[2] if len(msg) > 2 else None
        if kind == "error":
            self._worker.served += 1
            raise remote_error(msg[2] if len(msg) > 2 else None, self.codec.name)
        if kind == "cancelled":
            raise RemoteError("KeyboardInterrupt", "the call was interrupted in the worker")
        if kind == "withdrawn":
            raise Withdrawn(f"worker {self._worker.id} gave request {request_id} back unrun")
        error = ProtocolError(f"worker {self._worker.id}: unknown reply kind {kind!r:.50}")
        self._worker._kill(error)
        raise error

    def _discard(self, request_id: int, msg: Any) -> None:
        try:
            self._settle(request_id, msg)
        except CorralError:
            pass  # its caller has left; nobody reads this

    # -- when a request goes wrong -----------------------------------------------

    def _too_large(self, kind: str, size: int) -> ProtocolError:
        max_frame = self._options.max_frame
        return ProtocolError(
            f"worker {self._worker.id}: the {kind} request encodes to {size} bytes, more than "
            f"max_frame={max_frame}; it was not sent"
        )

    async def _give_back(self, request_id: int, waiter: _Pending) -> Any:
        """A request timed out: if it still waits in the worker's queue behind another
        one, ask for it back. Its answer (``withdrawn``, or its reply if it had started
        and has finished meanwhile) within ``cancel_grace``, else None: it runs, and the
        worker must be killed."""
        if "withdraw" not in self.features or waiter.msg is not None or request_id == self._head():
            return None
        waiter.withdrawing = True
        await self._withdraw_queued(request_id)
        with trio.move_on_after(self._options.cancel_grace):
            return await self._reply_for(waiter)
        return None

    def _timed_out_queued(
        self, request_id: int, msg: Any, kind: str, target: Any, timeout: float
    ) -> RequestTimeout:
        try:
            self._settle(request_id, msg)
        except Withdrawn:
            pass
        return RequestTimeout(
            f"worker {self._worker.id}: {kind} {target if kind == 'call' else ''} waited longer than "
            f"{timeout} s behind another request in the worker's queue; it was given back unrun "
            "and the worker serves on"
        )

    def _timed_out(self, kind: str, target: Any, timeout: float, which: str = "") -> RequestTimeout:
        error = RequestTimeout(
            f"worker {self._worker.id}: {kind} {target if kind == 'call' else ''} took longer than "
            f"{timeout} s{which}; the worker was killed and will be replaced"
        )
        self._worker._kill(error)
        return error

    async def _worker_ended(self, waiter: _Pending) -> BaseException:
        """The channel ended under a request: the worker's end is its answer."""
        self._worker._end(None)
        with trio.CancelScope(shield=True):
            await self.failed.wait()
        assert waiter.error is not None
        return waiter.error

    def _withdraw(self, request_id: int) -> None:
        """A request cancelled before any of it was written (a torn frame kills the
        worker in the channel) leaves the table as if it never came."""
        if self._worker._ended.is_set() or self.pending.pop(request_id, None) is None:
            return
        self.places.release()
        self._moved_head()
        if not self.pending:
            self._worker._idle()

    async def read_to_end(self, limit: float = 1.0) -> bool:
        """After the worker died: read what it wrote before dying (replies that are still
        in the pipe), so that the oldest unanswered request is known to be the only one
        it may have started. True once the end of its output was read."""
        with trio.move_on_after(limit):
            while self.reading:  # a caller reading meets the end at once: let it finish
                await trio.sleep(0.005)
            self.reading = True
            try:
                while True:
                    frame = await self._next_frame()
                    self._dispatch(
                        self.loads(frame) if len(frame) < BIG_DECODE else await self.loads_off_loop(frame)
                    )
            except CHANNEL_ENDED:
                return True
            except ProtocolError:
                return False
            finally:
                self.reading = False
        return False

    def fail_all(self, error: BaseException, *, resend_unstarted: bool = False) -> None:
        """Fail every request in flight; free their places so queued callers see the state.

        ``resend_unstarted`` (the worker died and everything it wrote was read): a
        worker runs its requests in order, so only the oldest unanswered one may have
        started; the movable ones behind it fail with ``Withdrawn`` instead, and the
        pool sends them to another worker (they run at most once)."""
        head = self._head() if resend_unstarted else None
        while self.pending:
            request_id, waiter = self.pending.popitem()
            if resend_unstarted and request_id != head and waiter.movable and waiter.msg is None:
                waiter.error = Withdrawn(f"worker {self._worker.id} died before request {request_id} started")
            else:
                waiter.error = error
            if waiter.event is not None:
                waiter.event.set()
            if waiter.abandoned is not None:
                waiter.abandoned.set()
            self.places.release()
        assert self.places.free <= self.depth
        self._moved_head()
        self.failed.set()

    # -- cancel ------------------------------------------------------------------

    def _abandon(self, request_id: int, waiter: _Pending) -> None:
        """The caller was cancelled and returns at once. Its request is interrupted (SIGINT)
        if it runs, dropped if it still waits in the worker (pipelining); its reply is
        read and discarded in the background. A running request that does not come back
        within ``cancel_grace`` costs the worker its life."""
        worker = self._worker
        if request_id not in self.pending or worker._proc is None or worker._nursery is None:
            return
        waiter.abandoned = trio.Event()
        if waiter.msg is not None:  # it had already been read for us
            self._discard(request_id, waiter.msg)
            return
        if not self.reading:
            self._pass_reading()
        worker._nursery.start_soon(self._cancel, request_id, waiter)

    async def _cancel(self, request_id: int, waiter: _Pending) -> None:
        if self.named:
            # Name it first: the worker's SIGINT handler checks the name. The frame may
            # wait behind a large request that the worker reads only between requests:
            # if ours runs meanwhile (it is the oldest unanswered), that costs the worker
            # its life after cancel_grace, like a running request ignoring its interrupt.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._kill_if_head_too_long, request_id, waiter)
                try:
                    await self._send(self.codec.raw_dumps(("cancel", request_id)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                finally:
                    nursery.cancel_scope.cancel()
        # Queued behind others, it is answered "cancelled" without running; but it may
        # start before the worker reads the cancel: once it is the oldest unanswered
        # request (the one running, or next), interrupt it. A worker that did not offer
        # "cancel" is never signalled (SIGINT would kill it): it has cancel_grace to
        # finish the call on its own.
        if not await self._until_head(request_id, waiter):
            return
        if self.signals:
            assert self._worker._proc is not None
            self._worker._proc.signal(signal.SIGINT)
        await self._kill_unless_settled(
            request_id, waiter, "of an interrupt" if self.signals else "of a cancel"
        )

    async def _kill_if_head_too_long(self, request_id: int, waiter: _Pending) -> None:
        if await self._until_head(request_id, waiter):
            await self._kill_unless_settled(request_id, waiter, "of a cancel it could not yet be told about")

    def _unsettled(self, request_id: int, waiter: _Pending) -> bool:
        """No reply, no failure: what a cancel waits to change (a request leaves the
        table only settled, once it was written)."""
        return waiter.msg is None and waiter.error is None and request_id in self.pending

    def _head(self) -> int | None:
        """The oldest request not answered yet: the one the worker runs, or runs next."""
        return next((rid for rid, w in self.pending.items() if w.msg is None), None)

    def _moved_head(self) -> None:
        head_moved = self._head_moved
        if head_moved is not None:
            self._head_moved = None
            head_moved.set()

    async def _until_head(self, request_id: int, waiter: _Pending) -> bool:
        """Wait until the request is the oldest unanswered one (True), or has settled."""
        while self._unsettled(request_id, waiter):
            if self._head() == request_id:
                return True
            if self._head_moved is None:
                self._head_moved = trio.Event()
            await self._head_moved.wait()
        return False

    async def _kill_unless_settled(self, request_id: int, waiter: _Pending, after: str) -> None:
        """Give the abandoned request ``cancel_grace`` to settle; else kill the worker."""
        assert waiter.abandoned is not None
        grace = self._options.cancel_grace
        with trio.move_on_after(grace):
            await waiter.abandoned.wait()
        if self._unsettled(request_id, waiter):
            worker = self._worker
            why = f"worker {worker.id} did not return within cancel_grace={grace} s {after}; killed"
            worker._kill(WorkerCrashed(why))

    # -- replies nobody waits for ----------------------------------------------------

    def _start_drain(self) -> None:
        """Read replies that no caller waits for (their callers were cancelled)."""
        if self._draining or self.reading or self._worker._nursery is None:
            return
        self._draining = True
        self._worker._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while not self.reading:
                outstanding = [w for w in self.pending.values() if w.msg is None]
                if not outstanding:
                    return
                if any(w.abandoned is None for w in outstanding):
                    self._pass_reading()  # a live caller reads from here on
                    return
                self.reading = True
                try:
                    frame = await self._next_frame()
                    small = len(frame) < BIG_DECODE
                    self._dispatch(self.loads(frame) if small else await self.loads_off_loop(frame))
                finally:
                    self.reading = False
        except CHANNEL_ENDED:
            self._worker._end(None)
        except ProtocolError as exc:
            self._worker._kill(exc)
        finally:
            self._draining = False
