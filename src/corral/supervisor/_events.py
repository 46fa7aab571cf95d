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
        """True for a crash: the only reason a TRANSIENT child is restarted."""
        return self.reason == "abnormal"

    def __str__(self) -> str:
        if self.exception is None:
            return self.reason
        return f"{self.reason} ({type(self.exception).__name__}: {self.exception})"


@attrs.frozen
class ChildStarted:
    """A child called ``task_status.started(value)``; ``restart`` is True when an
    automatic restart started it (not the initial start, ``start_child`` or
    ``restart_child``). Logged at INFO."""

    supervisor: str
    child_id: Hashable
    value: object
    restart: bool  # True when an automatic restart started it


@attrs.frozen
class ChildExited:
    """A child's run ended, with its ``exit`` reason. ``requested`` is True when the
    supervisor stopped it (``terminate_child``, ``stop``, a bystander of a restart):
    such exits are never followed by an automatic restart. Logged at WARNING when
    abnormal, else INFO."""

    supervisor: str
    child_id: Hashable
    exit: ExitReason
    requested: bool  # True when the supervisor stopped it (terminate, stop, bystander)


@attrs.frozen
class ChildRestarting:
    """An automatic restart of ``child_id`` will happen after ``delay`` seconds (0 without
    a backoff); ``attempt`` counts its consecutive restarts, from 1."""

    supervisor: str
    child_id: Hashable
    delay: float
    attempt: int


@attrs.frozen
class RestartFailed:
    """An automatic restart attempt failed to start (the child raised before
    ``started()``); it counts against restart intensity and is retried."""

    supervisor: str
    child_id: Hashable
    exception: BaseException


@attrs.frozen
class IntensityExceeded:
    """More than ``max_restarts`` restarts within ``max_seconds``: the supervisor gives up,
    stops its children and ``run()`` raises ``RestartIntensityExceeded``. Logged at ERROR."""

    supervisor: str
    max_restarts: int
    max_seconds: float
    child_id: Hashable = None  # the child whose failure was one too many
    failures: int = 0  # its failures in a row (crashes and failed restarts)
    exception: BaseException | None = None  # its last one


@attrs.frozen
class AutoShutdownTriggered:
    """The exit of significant child ``child_id`` ends the supervisor (``auto_shutdown``);
    an orderly stop follows and ``run()`` returns normally."""

    supervisor: str
    child_id: Hashable


@attrs.frozen
class SupervisorStopped:
    """``run()`` is ending, every child has exited. ``reason``: ``"stop"``,
    ``"auto_shutdown"``, ``"intensity"``, ``"start_failed"`` or ``"cancelled"``."""

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
"""Any of the events a supervisor delivers to its ``subscribe()`` callbacks."""

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
            "[%s] restart intensity exceeded (more than %d in %s s): child %r failed last "
            "(%d time(s) in a row: %r); stopping all children",
            event.supervisor,
            event.max_restarts,
            event.max_seconds,
            event.child_id,
            event.failures,
            event.exception,
        )
    elif isinstance(event, AutoShutdownTriggered):
        logger.info("[%s] significant child %r exited: auto shutdown", event.supervisor, event.child_id)
    else:
        logger.info("[%s] stopped (%s)", event.supervisor, event.reason)
