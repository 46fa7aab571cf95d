"""The handler module the docs' pool examples use: ``corral.open_pool("examples.handlers")``.

A handler module is plain functions. The worker process imports it, runs the optional
``init()`` once, then calls ``name(*args)`` for each ``pool.call("name", *args)``.
Module-level state lives as long as the worker process does, which is what sessions
and exclusive leases are for. Keep the import cheap: it is part of every worker's
start-up time.
"""

from __future__ import annotations

import os
import sys
import time

from corral_child import progress

TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:  # collections.abc costs a worker ~3 ms at start-up
    from collections.abc import Iterator

_model: dict[str, float] = {}
_counters: dict[str, int] = {}


def init() -> None:
    """Runs once per worker, before it is READY (bounded by ``init_timeout``)."""
    if os.environ.get("HANDLERS_MODEL") == "missing":  # lets the docs show a failing start
        raise FileNotFoundError("model.bin")
    progress(0.5, "loading weights")  # shows in pool.workers(), events, the demo
    _model.update(weight=2.0, bias=1.0)  # pretend to load a model
    progress(1.0, "ready")


def predict(x: float) -> float:
    return _model["weight"] * x + _model["bias"]


def add(a: int, b: int) -> int:
    return a + b


def count(key: str) -> int:
    """A per-worker counter: the same key counts up only on the same worker."""
    _counters[key] = _counters.get(key, 0) + 1
    return _counters[key]


def pid() -> int:
    return os.getpid()


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail(message: str) -> None:
    raise ValueError(message)


def crash(code: int) -> None:
    os._exit(code)


def say(text: str) -> None:
    print(text)  # fd 1 is stderr in a worker: this reaches logging, not the channel
    sys.stdout.flush()


def scale(x: float, *, factor: float = 2.0, offset: float = 0.0) -> float:
    """Keyword arguments: ``pool.call("scale", 3, factor=10)``."""
    return x * factor + offset


def generate(prompt: str, max_tokens: int = 50) -> Iterator[str]:
    """A stream: each ``yield`` is one chunk for ``pool.stream("generate", ...)``."""
    try:
        for i, word in enumerate(prompt.split()):
            if i == max_tokens:
                return
            time.sleep(0.01)  # pretend each token takes a while
            yield word.upper()
    finally:
        sys.stderr.write("generate: done\n")  # runs even when the caller leaves early


def train(epochs: int) -> str:
    """A long job that reports how far it has come."""
    for epoch in range(1, epochs + 1):
        time.sleep(0.01)
        progress(epoch / epochs, f"epoch {epoch}/{epochs}")
    return "trained"
