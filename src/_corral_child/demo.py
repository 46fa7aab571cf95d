"""Handlers for ``corral demo`` (run inside the workers: standard library only)."""

import os
import time

_counters: dict[str, int] = {}


def init() -> None:
    time.sleep(0.05)  # pretend to load a model


def work(ms: float) -> int:
    """A small job: sleep a little, burn a little CPU."""
    time.sleep(ms / 1000.0)
    return sum(range(2000))


def crash() -> None:
    os._exit(13)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def hang() -> None:
    time.sleep(3600)


def count(session: str) -> int:
    n = _counters.get(session, 0) + 1
    _counters[session] = n
    return n


def pid() -> int:
    return os.getpid()
