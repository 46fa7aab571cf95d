"""Benchmark handlers: standard library only, importable by every worker of every system.

corral calls them by name (``pool.call("noop")``); the other pools pickle them by
reference (``benchmarks.handlers.noop``). Keep this module import-cheap: it is
imported by every worker at start-up, so its cost is part of every cold start.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:  # collections.abc costs a worker ~3 ms at start-up (it imports collections)
    from collections.abc import Iterator


def noop() -> None:
    """Nothing: the round trip is all there is."""


def echo(data: bytes) -> bytes:
    """Return the payload: measures moving bytes both ways."""
    return data


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def sleep_mark(seconds: float, path: str) -> int:
    """Write ``<path>.start`` (our pid), sleep, write ``<path>.done``.

    Lets the cancellation benchmark tell a worker that ran the call to the end
    ("runs on") from one that was interrupted or killed.
    """
    with open(path + ".start", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    with open(path + ".done", "w") as f:
        f.write("done")
    return os.getpid()


def crash() -> None:
    """Die the hard way, as a segfault or the OOM killer would: no reply, no cleanup."""
    os.kill(os.getpid(), 9)
    time.sleep(10)  # pragma: no cover - the signal arrives first


def chunks(n: int, size: int) -> Iterator[bytes]:
    """A stream of ``n`` chunks of ``size`` bytes (benchmarks/streaming.py)."""
    for i in range(n):
        yield bytes([i % 256]) * size


def all_chunks(n: int, size: int) -> list[bytes]:
    """The same data as ``chunks``, as one reply: distinct objects, as a real result."""
    return [bytes([i % 256]) * size for i in range(n)]


def blob(n: int, size: int) -> bytes:
    """The same bytes as ``chunks``, as one reply of one object."""
    return b"x" * (n * size)
