"""Worker processes and the pool; builds on corral.supervisor, never the other way.

A worker (``_worker``) is one process behind a framed pipe channel; launchers
(``_launch``, ``_remote``, ``_forkserver``) say how its process comes to exist; the
pool (``_pool`` and the modules it wires) supervises workers and hands them out.
docs/internals.md has the map. ``SSH`` is imported on first use (PEP 562): a pool
without ``hosts=`` never loads ``_remote``, nor one without ``start_method="forkserver"``
``_forkserver``.
"""

from typing import TYPE_CHECKING

from corral.workers._circuit import CircuitBreaker, CircuitState
from corral.workers._launch import Command, PythonModule
from corral.workers._pool import CallRecord, Lease, Pool, PoolStatistics, WorkerEvent, open_pool
from corral.workers._requests import Progress
from corral.workers._stream import Stream
from corral.workers._worker import InitTimeout, Worker, WorkerInfo, WorkerState

if TYPE_CHECKING:
    from corral.workers._remote import SSH

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
    "Stream",
    "Worker",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerState",
    "open_pool",
]


def __getattr__(name: str) -> object:
    if name == "SSH":
        from corral.workers._remote import SSH

        return SSH
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
