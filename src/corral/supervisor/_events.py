"""Structured events: one frozen record per thing a supervisor does.

Subscribers get them synchronously (keep callbacks quick); every event is also
logged to the ``corral.supervisor`` logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import attrs

logger = logging.getLogger("corral.supervisor")


@attrs.frozen
class ExitReason:
    """Why a child's run ended: "normal", "shutdown" or "abnormal", and the exception."""

    reason: str
    exception: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        return self.reason == "abnormal"

    def __str__(self) -> str:
        if self.exception is None:
            return self.reason
        return f"{self.reason} ({type(self.exception).__name__}: {self.exception})"


@attrs.frozen
class ChildStarted:
    supervisor: str
    child_id: Hashable
    value: object
    restart: bool  # True when an automatic restart started it


@attrs.frozen
class ChildExited:
    supervisor: str
    child_id: Hashable
    exit: ExitReason
    requested: bool  # True when the supervisor stopped it (terminate, stop, bystander)


@attrs.frozen
class ChildRestarting:
    supervisor: str
    child_id: Hashable
    delay: float
    attempt: int


@attrs.frozen
class RestartFailed:
    supervisor: str
    child_id: Hashable
    exception: BaseException


@attrs.frozen
class IntensityExceeded:
    supervisor: str
    max_restarts: int
    max_seconds: float


@attrs.frozen
class AutoShutdownTriggered:
    supervisor: str
    child_id: Hashable


@attrs.frozen
class SupervisorStopped:
    supervisor: str
    reason: str  # "stop", "auto_shutdown", "intensity", "start_failed", "cancelled"


SupervisorEvent = (
    ChildStarted
    | ChildExited
    | ChildRestarting
    | RestartFailed
    | IntensityExceeded
    | AutoShutdownTriggered
    | SupervisorStopped
)

Subscriber = Callable[[SupervisorEvent], None]


def log_event(event: SupervisorEvent) -> None:
    if isinstance(event, ChildExited):
        level = logging.WARNING if event.exit.abnormal else logging.INFO
        logger.log(
            level,
            "[%s] child %r exited: %s%s",
            event.supervisor,
            event.child_id,
            event.exit,
            " (requested)" if event.requested else "",
        )
    elif isinstance(event, ChildStarted):
        logger.info(
            "[%s] child %r %s",
            event.supervisor,
            event.child_id,
            "restarted" if event.restart else "started",
        )
    elif isinstance(event, ChildRestarting):
        logger.info(
            "[%s] restarting child %r (attempt %d) in %.3f s",
            event.supervisor,
            event.child_id,
            event.attempt,
            event.delay,
        )
    elif isinstance(event, RestartFailed):
        logger.warning(
            "[%s] restart of child %r failed: %r",
            event.supervisor,
            event.child_id,
            event.exception,
        )
    elif isinstance(event, IntensityExceeded):
        logger.error(
            "[%s] restart intensity exceeded (%d in %s s): stopping all children",
            event.supervisor,
            event.max_restarts,
            event.max_seconds,
        )
    elif isinstance(event, AutoShutdownTriggered):
        logger.info("[%s] significant child %r exited: auto shutdown", event.supervisor, event.child_id)
    else:
        logger.info("[%s] stopped (%s)", event.supervisor, event.reason)
