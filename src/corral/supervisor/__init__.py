"""The supervision tree: OTP's supervisor for Trio tasks.

Owns child specs, strategies, restart intensity and backoff, dynamic children,
two-phase stop and events. Knows nothing about processes: ``corral.workers``
builds on it, never the other way round.
"""

from corral.supervisor._context import ChildContext, Shutdown, current_child
from corral.supervisor._events import (
    AutoShutdownTriggered,
    ChildExited,
    ChildRestarting,
    ChildStarted,
    ExitReason,
    IntensityExceeded,
    RestartFailed,
    SupervisorEvent,
    SupervisorStopped,
)
from corral.supervisor._records import ChildCounts, ChildInfo, ChildState
from corral.supervisor._spec import (
    BRUTAL_KILL,
    INFINITY,
    AutoShutdown,
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
)
from corral.supervisor._supervisor import DynamicSupervisor, Supervisor, open_supervisor

__all__ = [
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
]
