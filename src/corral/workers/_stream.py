"""A streamed call's chunks, as an async iterator with credit-based backpressure.

The worker may send ``window`` chunks beyond those its consumer has taken; each chunk
taken earns it one more, granted in batches of half a window (``["credit", id, n]``,
docs/protocol.md §5). So the parent never holds more than ``window`` chunks of one
stream, however slow its consumer, and a fast consumer rarely waits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from corral.workers._channel import CHANNEL_ENDED

if TYPE_CHECKING:
    from corral.workers._requests import RequestTable, _Pending


class Stream:
    """The chunks of one streamed call: ``async for chunk in stream``.

    Made by ``pool.stream`` / ``lease.stream`` / ``worker.stream``, valid inside their
    ``async with`` block. After the last chunk, ``result`` holds the handler's return
    value (a generator's ``return x``; usually None). An error in the handler, the
    worker's death or a timeout is raised from the iteration, after the chunks that
    came before it.
    """

    def __init__(
        self,
        table: RequestTable,
        request_id: int,
        waiter: _Pending,
        what: str,
        timeout: float | None,
        chunk_timeout: float | None,
    ) -> None:
        self._table = table
        self._id = request_id
        self._waiter = waiter
        self._what = what
        self._deadline = math.inf if timeout is None else trio.current_time() + timeout
        self._timeout = timeout
        self._chunk_timeout = chunk_timeout
        self._taken = 0  # chunks taken since the last grant
        self._grant_every = max(1, waiter.window // 2)
        self._ended = False
        self.result: Any = None
        self.chunks = 0  #: chunks received so far

    @property
    def worker_id(self) -> str:
        """The id of the worker producing this stream."""
        return self._table._worker.id

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        table = self._table
        deadline = self._deadline
        if self._chunk_timeout is not None:
            deadline = min(deadline, trio.current_time() + self._chunk_timeout)
        try:
            with trio.move_on_at(deadline) as scope:
                more, value = await table.next_chunk(self._id, self._waiter)
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._ended = True  # the error reply, or the worker's end, is the stream's end
            raise
        if scope.cancelled_caught:
            self._ended = True
            whole = deadline == self._deadline
            limit = self._timeout if whole else self._chunk_timeout
            assert limit is not None
            name = "timeout" if whole else "chunk_timeout"
            raise table._timed_out(self._what, None, limit, f" ({name})")
        if not more:
            self._ended = True
            self.result = value
            raise StopAsyncIteration
        self.chunks += 1
        self._taken += 1
        if self._taken >= self._grant_every and self._waiter.msg is None:
            n, self._taken = self._taken, 0
            try:
                await table.grant(self._id, n)
            except CHANNEL_ENDED:
                pass  # the worker is gone: the next __anext__ says so
        return value

    def _close(self) -> None:
        """The block is left: stop the stream in the worker unless it has ended."""
        if not self._ended:
            self._ended = True
            self._table.abandon_stream(self._id, self._waiter)
