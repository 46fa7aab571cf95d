"""corral: Erlang/OTP-style supervision trees and worker-process pools for Trio.

``import corral`` is cheap. The exceptions are defined at once; every other public
name is imported from its subpackage (``corral.supervisor``, ``corral.workers``) the
first time it is used, through the module ``__getattr__`` below (PEP 562): a program
pays for the half of corral it uses (a supervisor alone never loads the pool, nor a
pool the fork server or ``corral.SSH``). ``from corral import X`` works for every name
in ``__all__``; the imports under ``TYPE_CHECKING`` give type checkers the same names.
docs/internals.md ("Import time") has the rule.
"""

from corral._errors import (
    AlreadyPresent,
    CheckoutTimeout,
    ChildRunning,
    ChildStartError,
    CircuitOpen,
    CorralError,
    InvalidSpec,
    MaxChildren,
    NotFound,
    PoolClosed,
    PoolSaturated,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    RestartIntensityExceeded,
    SessionLost,
    SupervisorNotRunning,
    Unavailable,
    UpgradeFailed,
    WorkerCrashed,
)

TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:
    from corral.supervisor import (
        BRUTAL_KILL,
        INFINITY,
        AutoShutdown,
        AutoShutdownTriggered,
        Backoff,
        ChildContext,
        ChildCounts,
        ChildExited,
        ChildInfo,
        ChildRestarting,
        ChildSpec,
        ChildStarted,
        ChildState,
        DynamicSupervisor,
        ExitReason,
        IntensityExceeded,
        Restart,
        RestartFailed,
        Shutdown,
        Strategy,
        Supervisor,
        SupervisorEvent,
        SupervisorStopped,
        current_child,
        open_supervisor,
    )
    from corral.workers import (
        SSH,
        CallRecord,
        CircuitBreaker,
        CircuitState,
        Command,
        InitTimeout,
        Lease,
        Pool,
        PoolStatistics,
        Progress,
        PythonModule,
        Rollout,
        Stream,
        Worker,
        WorkerEvent,
        WorkerInfo,
        WorkerState,
        open_pool,
    )

__version__ = "0.1.0"

__all__ = [
    "BRUTAL_KILL",
    "INFINITY",
    "SSH",
    "AlreadyPresent",
    "AutoShutdown",
    "AutoShutdownTriggered",
    "Backoff",
    "CallRecord",
    "CheckoutTimeout",
    "ChildContext",
    "ChildCounts",
    "ChildExited",
    "ChildInfo",
    "ChildRestarting",
    "ChildRunning",
    "ChildSpec",
    "ChildStartError",
    "ChildStarted",
    "ChildState",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "Command",
    "CorralError",
    "DynamicSupervisor",
    "ExitReason",
    "InitTimeout",
    "IntensityExceeded",
    "InvalidSpec",
    "Lease",
    "MaxChildren",
    "NotFound",
    "Pool",
    "PoolClosed",
    "PoolSaturated",
    "PoolStatistics",
    "Progress",
    "ProtocolError",
    "PythonModule",
    "RemoteError",
    "RequestTimeout",
    "Restart",
    "RestartFailed",
    "RestartIntensityExceeded",
    "Rollout",
    "SessionLost",
    "Shutdown",
    "Strategy",
    "Stream",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorNotRunning",
    "SupervisorStopped",
    "Unavailable",
    "UpgradeFailed",
    "Worker",
    "WorkerCrashed",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerState",
    "current_child",
    "open_pool",
    "open_supervisor",
]


#: Where each lazily imported public name lives (tests/test_import_time.py checks that
#: this table, ``__all__`` and the ``TYPE_CHECKING`` imports agree).
_LAZY = {
    "corral.supervisor": (
        "BRUTAL_KILL",
        "INFINITY",
        "AutoShutdown",
        "AutoShutdownTriggered",
        "Backoff",
        "ChildContext",
        "ChildCounts",
        "ChildExited",
        "ChildInfo",
        "ChildRestarting",
        "ChildSpec",
        "ChildStarted",
        "ChildState",
        "DynamicSupervisor",
        "ExitReason",
        "IntensityExceeded",
        "Restart",
        "RestartFailed",
        "Shutdown",
        "Strategy",
        "Supervisor",
        "SupervisorEvent",
        "SupervisorStopped",
        "current_child",
        "open_supervisor",
    ),
    "corral.workers": (
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
    ),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}
_SUBPACKAGES = ("supervisor", "workers")  # ``corral.workers`` worked without an import before


def __getattr__(name: str) -> object:
    """Import a public name's subpackage on first use; later uses find it in globals()."""
    from importlib import import_module

    if name in _SUBPACKAGES:
        return import_module(f"corral.{name}")
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
