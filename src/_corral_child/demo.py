"""Handlers for ``corral demo`` (run inside the workers: standard library only)."""

import os
import time

from _corral_child._runtime import progress

TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:  # collections.abc costs a worker ~3 ms at start-up
    from collections.abc import Iterator

_counters: dict[str, int] = {}
_version: "int | None" = None


def init(version: "int | None" = None) -> None:
    """Pretend to load a model, saying how far it got (protocol 1.1 progress: the pool's
    events, ``pool.workers()`` and the live view show it). ``version`` comes from
    ``PythonModule(init_args=...)``: the demo upgrades to "v2" of this same file."""
    global _version
    _version = version
    model = "model" if version is None else f"model v{version}"
    steps = ("weights", "tokenizer", "warm-up")
    for k, step in enumerate(steps, 1):
        time.sleep(0.08)
        progress(k / len(steps), f"loading {model}: {step} done")


def version() -> "int | None":
    """The version ``init()`` was given: which release answered."""
    return _version


def tokens(n: int) -> "Iterator[str]":
    """A stream: ``n`` tokens, a little apart."""
    for i in range(n):
        time.sleep(0.002)
        yield f"t{i}"


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
