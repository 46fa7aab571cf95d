"""The framed channel to one worker process: length-prefixed frames on two pipes.

Requests go down the worker's stdin and replies come back on its stdout, each frame a
4-byte big-endian length and then its bytes (docs/protocol.md §2). The channel knows
bytes and frames, never what they mean: the request table encodes and decodes them,
and decides who reads (one reader at a time is its rule, not the channel's).

Everything here is tuned for the no-op round trip: a small frame is one ``os.write``
and usually one ``os.read``, and neither schedules when the pipe is ready.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from _corral_child import _frames as frames
from corral._errors import ProtocolError, WorkerCrashed
from corral.workers._process import Process

_T = TypeVar("_T")
#: The bound on incoming frames until the handshake has told the worker ``max_frame``.
HANDSHAKE_MAX = 1 << 20
#: Frames below this size are written with their header in one ``os.write``.
_SMALL = 65536


#: A started frame that receives no byte for this long is a broken worker.
FRAME_STALL = 30.0
_GROW_MIN = 4 << 20  # a large frame's buffer starts at (at most) 4 MiB, then doubles


class _BigFrame:
    """A large frame being read in place: its size, its buffer, the bytes read so far.
    A reader cancelled midway leaves it for the next reader."""

    __slots__ = ("buf", "have", "size")

    def __init__(self, size: int, head: bytearray) -> None:
        self.size = size
        self.have = len(head)
        # Sized at once up to _GROW_MIN (the common large frame: one allocation, no
        # copy later); beyond it, the buffer doubles only as bytes arrive.
        self.buf = bytearray(min(size, max(self.have, _GROW_MIN)))
        self.buf[: self.have] = head


class EndOfChannel(Exception):
    """The worker's end of a pipe is gone: EOF, or a closed or broken fd."""


#: How the end of a channel shows: reading (EndOfChannel) or writing (trio's two).
CHANNEL_ENDED = (EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError)


class Places:
    """A FIFO count of free places whose uncontended acquire costs no scheduling.

    Any task may release a place, and a released place passes straight to the oldest
    waiter (it wakes up holding it). The channel's write gate is one place; the request
    table's capacity is as many places as requests may be in flight.
    """

    __slots__ = ("_lot", "free")

    def __init__(self, size: int) -> None:
        # Invariant: free > 0 only while nobody is parked (release() hands a place to a
        # waiter rather than counting it), so a task that sees a free place may take it.
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


async def _read_when_ready(fd: int, read: Callable[..., _T], *args: Any) -> _T:
    """``read(*args)`` on a non-blocking fd, waiting until it is readable; the end of
    the channel in any form (EOF, a closed or broken fd) is ``EndOfChannel``."""
    while True:
        try:
            result = read(*args)
        except BlockingIOError:
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                raise EndOfChannel from None
            continue
        except OSError:
            raise EndOfChannel from None
        if not result:
            raise EndOfChannel
        return result


class Channel:
    """The two pipes of one worker process, carrying whole frames both ways.

    It exists so that the request table and the lifecycle deal in frames, never in
    partial reads and writes. Guarantees:

    - A frame is written whole, and frames are written in the order their writers
      reached the write gate (FIFO). A writer cancelled after part of its frame went
      out leaves the stream torn: ``on_torn`` kills the worker, and the writer's
      ``Cancelled`` propagates.
    - ``next_frame`` returns whole frames in order. A large frame is read straight into
      its own buffer; a reader cancelled midway leaves it for the next reader.
    - Incoming frames are bounded by ``HANDSHAKE_MAX`` until ``lift_handshake_limit``,
      then by ``max_frame``; outgoing ones by ``max_frame`` always. A larger length is
      a ``ProtocolError`` before any allocation.
    - The end of either pipe, in any form, is ``EndOfChannel`` (reading) or a
      ``trio.BrokenResourceError``/``ClosedResourceError`` (writing).
    """

    __slots__ = ("_big", "_decoder", "_frames", "_gate", "_on_torn", "max_frame", "proc", "worker_id")

    def __init__(self, worker_id: str, max_frame: int, on_torn: Callable[[BaseException], None]) -> None:
        self.worker_id = worker_id
        self.max_frame = max_frame
        # The process whose pipes these are, from the spawn on. Its fds are read at each
        # use: Process.aclose() sets them to None (a closed channel, never a stale fd).
        self.proc: Process | None = None
        self._on_torn = on_torn
        self._gate = Places(1)  # held while a frame is being written
        self._decoder = frames.FrameDecoder(HANDSHAKE_MAX)
        self._frames: deque[bytes] = deque()  # decoded, not yet taken by next_frame()
        # A large frame being read in place: (its buffer, bytes read so far). Invariant:
        # not None only while _frames is empty (the decoder hands over a frame it
        # cannot complete from what it has, and nothing after it).
        self._big: _BigFrame | None = None

    def lift_handshake_limit(self) -> None:
        """The worker knows ``max_frame`` now: accept frames up to it."""
        self._decoder.max_frame = self.max_frame

    async def send(self, payload: bytes) -> None:
        """Write one frame. Small frames are one os.write, no scheduling at all."""
        assert self.proc is not None
        header = frames.pack_header(len(payload), self.max_frame)
        gate = self._gate
        if gate.free:
            gate.free = 0
        else:
            await gate.acquire()
        try:
            if len(payload) < _SMALL:
                await self._write_all(header + payload)
            else:
                await self._write_all(header)
                await self._write_all(payload, started=True)
        finally:
            gate.release()

    async def _write_all(self, data: bytes, *, started: bool = False) -> None:
        assert self.proc is not None
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            fd = self.proc.stdin_fd
            if fd is None:
                raise trio.ClosedResourceError("the worker's stdin is closed")
            try:
                sent += os.write(fd, view[sent:])
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(fd)
                except trio.Cancelled:
                    if sent or started:  # part of a frame is on the pipe: the channel is unusable
                        torn = f"worker {self.worker_id}: a request was cut off mid-frame"
                        self._on_torn(WorkerCrashed(torn))
                    raise
            except OSError as exc:
                raise trio.BrokenResourceError(f"worker {self.worker_id}: stdin: {exc}") from exc

    async def next_frame(self) -> bytes:
        """The next frame from the worker's stdout (for one reader at a time)."""
        frames_ = self._frames
        while not frames_:
            assert self.proc is not None
            fd = self.proc.stdout_fd
            if fd is None:
                raise EndOfChannel
            if self._big is not None:  # a large frame, read straight into its buffer
                frames_.append(await self._read_big(fd, self._big))
                self._big = None
                break
            frames_.extend(self._feed(await _read_when_ready(fd, os.read, fd, 65536)))
            if not frames_:
                partial = self._decoder.take_partial()
                if partial is not None:
                    self._big = _BigFrame(*partial)
        return frames_.popleft()

    async def _read_big(self, fd: int, big: _BigFrame) -> bytes:
        """Read the rest of a large frame into its buffer, which grows (doubling) only
        as bytes arrive; a frame that stalls for ``FRAME_STALL`` seconds is a
        ``ProtocolError`` (the worker is killed): memory follows what was sent."""
        frame = big.buf
        while big.have < big.size:
            if len(frame) == big.have:  # full: room for as much again, up to the size
                frame.extend(bytes(min(max(big.have, _GROW_MIN), big.size - big.have)))
            with trio.move_on_after(FRAME_STALL) as stalled, memoryview(frame) as view:
                big.have += await _read_when_ready(fd, os.readv, fd, [view[big.have :]])
            if stalled.cancelled_caught:
                raise ProtocolError(
                    f"worker {self.worker_id}: a {big.size}-byte frame stalled for {FRAME_STALL} s "
                    f"after {big.have} bytes"
                )
        return frame  # type: ignore[return-value]  # bytearray: every codec reads it as bytes

    def _feed(self, data: bytes) -> list[bytes]:
        try:
            return self._decoder.feed(data)
        except frames.ProtocolError as exc:
            raise ProtocolError(f"worker {self.worker_id}: {exc}") from exc
