"""Worker processes and the pool; builds on corral.supervisor, never the other way.

A worker (``_worker``) is one process behind a framed pipe channel; launchers
(``_launch``, ``_remote``, ``_forkserver``) say how its process comes to exist; the
pool (``_pool`` and the modules it wires) supervises workers and hands them out.
docs/internals.md has the map.

Like ``corral``'s, the names here are imported on first use (PEP 562): importing one
private module (``corral.procman`` uses ``_process``) does not load the pool, a pool
without ``hosts=`` never loads ``_remote`` (``SSH``), and one without
``start_method="forkserver"`` never loads ``_forkserver``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.workers._circuit import CircuitBreaker, CircuitState
    from corral.workers._launch import Command, PythonModule
    from corral.workers._pool import CallRecord, Lease, Pool, PoolStatistics, WorkerEvent, open_pool
    from corral.workers._remote import SSH
    from corral.workers._requests import Progress
    from corral.workers._rollout import Rollout
    from corral.workers._stream import Stream
    from corral.workers._worker import InitTimeout, Worker, WorkerInfo, WorkerState

__all__ = [
    "SSH",
    "CallRecord",
    "CircuitBreaker",
    "CircuitState",
    "Command",
    "InitTimeout",
    "Lease",
    "Pool",
    "PoolStatistics",
    "Progress",
    "PythonModule",
    "Rollout",
    "Stream",
    "Worker",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerState",
    "open_pool",
]

#: Where each public name lives (tests/test_import_time.py checks this table against
#: ``__all__`` and the ``TYPE_CHECKING`` imports).
_LAZY = {
    "corral.workers._circuit": ("CircuitBreaker", "CircuitState"),
    "corral.workers._launch": ("Command", "PythonModule"),
    "corral.workers._pool": ("CallRecord", "Lease", "Pool", "PoolStatistics", "WorkerEvent", "open_pool"),
    "corral.workers._remote": ("SSH",),
    "corral.workers._requests": ("Progress",),
    "corral.workers._rollout": ("Rollout",),
    "corral.workers._stream": ("Stream",),
    "corral.workers._worker": ("InitTimeout", "Worker", "WorkerInfo", "WorkerState"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> object:
    """Import a public name's module on first use; later uses find it in globals()."""
    from importlib import import_module

    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
