"""What a running child can ask about itself: ``corral.current_child()``."""

from __future__ import annotations

import contextvars
from collections.abc import Hashable

import attrs
import trio


class Shutdown(Exception):
    """Raise it from a child to exit with reason "shutdown" (not a crash).

    A TRANSIENT child exiting this way is not restarted. ``Shutdown("why")`` carries
    a payload that shows up in ``which_children()[i].last_exit``.
    """


@attrs.define(eq=False)
class ChildContext:
    """The running child's view of itself.

    ``stop_requested`` is set when its supervisor asks it to stop. Reading it is the
    child's declaration that it wants to be told (OTP's ``process_flag(trap_exit,
    true)``): such a child gets its ``shutdown`` grace to finish cleanly, and is
    cancelled (with a WARNING) if it overstays. A child that never read it is
    cancelled at once, as OTP kills a process that does not trap exits; its
    ``finally`` blocks still run.
    """

    id: Hashable
    supervisor: str
    _stop_requested: trio.Event = attrs.field(alias="stop_requested")
    #: It read ``stop_requested``: it gets the grace of a two-phase stop.
    asked: bool = False

    @property
    def stop_requested(self) -> trio.Event:
        """Set when the supervisor asks this child to stop (reading it asks for a grace)."""
        self.asked = True
        return self._stop_requested

    def _request_stop(self) -> None:
        self._stop_requested.set()


_current: contextvars.ContextVar[ChildContext] = contextvars.ContextVar("corral_child")


def current_child() -> ChildContext:
    """The ChildContext of the supervised child this code runs in.

    Works from the child's first line, before ``task_status.started()``.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "corral.current_child() was called outside a supervised child; only code "
            "started by a Supervisor (and the tasks it spawns) has a current child"
        ) from None


def _set_current(ctx: ChildContext) -> None:
    _current.set(ctx)


def _get_current() -> ChildContext | None:
    return _current.get(None)
