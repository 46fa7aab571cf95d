"""Streams, in the worker (docs/protocol.md §5, "stream"): a handler's items as
"chunk" messages, never more than the parent's credit ahead, then the final reply.

Imported on the first "stream" request, so a worker that never streams never pays for
it. The request loop's state (credit, cancels, the reply pipe) is the `_Server`'s.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from _corral_child._runtime import _Server


class _Interrupted(Exception):
    """A running stream must stop: its request was cancelled (the parent named it)."""


class _Refused(Exception):
    """A stream that fails with a protocol-level error (an item that cannot be sent)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def run(
    server: _Server,
    mid: int,
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    window: int,
) -> None:
    """Run a handler that produces a sequence: one "chunk" per item, never more than
    the parent's credit ahead, then the final reply. However it ends, the
    handler's generator is closed here (its ``finally`` runs) before the reply."""
    server.current = server.streaming = mid
    server.credit = window
    if mid in server.cancelled:  # named by a SIGINT that came before ``current`` was set
        server.current = server.streaming = None
        server.send(server.dumps(("cancelled", mid)), mid)
        return
    items: Any = None
    try:
        try:
            items = fn(*args, **kwargs)
            result = None
            if hasattr(type(items), "__aiter__"):
                _pump_async(server, mid, items)
            elif hasattr(type(items), "__iter__") and not isinstance(items, str | bytes | bytearray | dict):
                items = iter(items)
                result = _pump(server, mid, items)
            else:
                raise TypeError(
                    f"stream handler returned {type(items).__qualname__}, not an iterable; "
                    "write it as a generator (yield each chunk)"
                )
        except BaseException:
            # The stream ends here: no further SIGINT may interrupt its cleanup (the
            # parent signals once the stream is its oldest request, maybe right now).
            server.current = None
            _close(server, items)
            raise
    except (KeyboardInterrupt, _Interrupted):
        server.current = server.streaming = None
        server.send(server.dumps(("cancelled", mid)), mid)
        return
    except _Refused as exc:
        server.current = server.streaming = None
        server._refuse(mid, exc.type_name, str(exc))
        return
    except BaseException as exc:
        server.current = server.streaming = None
        server._failed(mid, exc)
        return
    server.current = server.streaming = None
    server.send(server._encode_ok(mid, "ok", result), mid)


def _pump(server: _Server, mid: int, items: Any) -> Any:
    while True:
        try:
            item = next(items)
        except StopIteration as stop:
            return stop.value
        _chunk(server, mid, item)


def _pump_async(server: _Server, mid: int, items: Any) -> None:
    """Drive an async generator on an asyncio loop, one item per turn. Interrupted
    mid-item, its pending step is cancelled and run out, so the CancelledError goes
    through the generator and its ``finally`` runs."""
    loop = server.loop
    if loop is None:
        import asyncio  # only for the first async generator: ~20 ms to import

        loop = server.loop = asyncio.new_event_loop()
    it = items.__aiter__()

    async def step() -> Any:
        return await it.__anext__()

    while True:
        task = loop.create_task(step())
        try:
            item = loop.run_until_complete(task)
        except StopAsyncIteration:
            return
        except BaseException:
            server.current = None  # its cleanup is not interrupted again
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException:
                    pass
            raise
        _chunk(server, mid, item)


def _close(server: _Server, items: Any) -> None:
    """Finish a stream's generator early, so that its ``finally`` blocks run."""
    try:
        if hasattr(items, "aclose"):
            if server.loop is not None:
                server.loop.run_until_complete(items.aclose())
        elif hasattr(items, "close"):
            items.close()
    except BaseException as exc:  # its cleanup failed: say so, the stream's answer stands
        sys.stderr.write(f"corral: closing the stream's generator failed: {exc!r}\n")


def _chunk(server: _Server, mid: int, item: Any) -> None:
    """Send one item of the running stream, waiting for credit first if need be."""
    while server.credit <= 0:
        if mid in server.cancelled:
            raise _Interrupted
        server.read_more()  # credits and cancels are noted as they are read
    try:
        data = server.dumps(("chunk", mid, item))
    except Exception as exc:
        raise _Refused(
            "EncodeError",
            f"cannot encode a chunk of type {type(item).__qualname__!r}: {type(exc).__name__}: {exc}",
        ) from None
    if len(data) > server.max_frame:
        raise _Refused(
            "EncodeError",
            f"a chunk ({type(item).__qualname__}, {len(data)} bytes) exceeds "
            f"max_frame ({server.max_frame} bytes)",
        )
    server.credit -= 1
    server.send_masked(data)
    if mid in server.cancelled:
        raise _Interrupted
