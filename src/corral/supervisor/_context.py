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


@attrs.frozen(eq=False)
class ChildContext:
    """The running child's view of itself.

    ``stop_requested`` is set when its supervisor asks it to stop: a child that
    wants to finish cleanly waits on it, and is cancelled once its ``shutdown``
    grace runs out.
    """

    id: Hashable
    supervisor: str
    stop_requested: trio.Event


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
