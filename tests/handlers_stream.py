"""Handlers for tests/test_protocol_11.py: streams, progress, keyword arguments.

Side effects that a test must observe from the parent (a generator's ``finally``)
go to the file named by ``CORRAL_TEST_MARKS``, one line each.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Generator, Iterator

from corral_child import progress


def _mark(text: str) -> None:
    path = os.environ.get("CORRAL_TEST_MARKS")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def init() -> None:
    steps = int(os.environ.get("CORRAL_TEST_INIT_STEPS", "0"))
    for k in range(1, steps + 1):
        time.sleep(0.02)
        progress(k / steps, f"step {k}")
    time.sleep(float(os.environ.get("CORRAL_TEST_INIT_HOLD", "0")))


def count(n: int, start: int = 0) -> Iterator[int]:
    try:
        yield from range(start, start + n)
    finally:
        _mark(f"count finally {n}")


def count_returning(n: int) -> Generator[int, None, int]:
    yield from range(n)
    return n * 10  # the stream's result


def slow_count(n: int, delay: float, tag: str = "") -> Iterator[int]:
    try:
        for i in range(n):
            _mark(f"produced {tag}{i}")
            yield i
            time.sleep(delay)
    finally:
        _mark(f"slow_count finally {tag}")


async def tokens(text: str, delay: float = 0.0) -> AsyncIterator[str]:
    try:
        for word in text.split():
            await asyncio.sleep(delay)
            yield word
    finally:
        _mark("tokens finally")


def fail_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"failed after {n}")


def crash_after(n: int) -> Iterator[int]:
    yield from range(n)
    os._exit(9)


def big_chunks(n: int, size: int) -> Iterator[bytes]:
    for i in range(n):
        yield bytes([i % 256]) * size


def not_a_stream() -> int:
    return 5


def chunks_of_lists(n: int) -> list[int]:
    return list(range(n))  # a list streams item by item


def work(steps: int, delay: float = 0.0) -> int:
    for k in range(1, steps + 1):
        time.sleep(delay)
        progress(k / steps, f"step {k}")
    return steps


def progress_in_stream(n: int) -> Iterator[int]:
    for i in range(n):
        progress(i / n, f"item {i}")
        yield i


def greet(name: str, *, greeting: str = "hello", punct: str = "") -> str:
    return f"{greeting} {name}{punct}"


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def bad_progress() -> None:
    progress(1.5, "too far")


def record(token: str, seconds: float) -> str:
    """Log this invocation (one line, O_APPEND), then sleep: at-most-once tests count."""
    fd = os.open(os.environ["CORRAL_TEST_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{token}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return token


def record_and_crash(token: str) -> None:
    record(token, 0)
    os._exit(7)


def record_then_crash(token: str, seconds: float) -> None:
    record(token, seconds)
    os._exit(7)


def count_with_slow_cleanup(n: int) -> Iterator[int]:
    """A generator whose ``finally`` takes a while (closing a file, a connection)."""
    try:
        yield from range(n)
    finally:
        time.sleep(0.3)
        _mark("slow cleanup done")
