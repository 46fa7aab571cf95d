"""Handlers for ``corral demo`` (run inside the workers: standard library only)."""

import os
import sys
import time

_counters: dict[str, int] = {}


def init() -> None:
    """Pretend to load a model, saying how far it got: a worker's output reaches the
    parent's logging (logger ``corral.worker.<id>``), which is how the demo shows it."""
    for step in ("weights", "tokenizer", "warm-up"):
        time.sleep(0.08)
        print(f"loading model: {step} done", file=sys.stderr, flush=True)


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
