"""Records of supervised children (Trio tasks, not processes): each child, its run, its state table."""

from __future__ import annotations

import enum
from collections.abc import Hashable

import attrs
import trio

from corral._shared import check_transition
from corral.supervisor._context import ChildContext
from corral.supervisor._events import ExitReason
from corral.supervisor._spec import ChildSpec


class ChildState(enum.Enum):
    """Where a child is: RUNNING (started and not exited), RESTARTING (waiting for, or in
    the middle of, an automatic restart) or STOPPED (not running; its spec is kept)."""

    RUNNING = "running"
    RESTARTING = "restarting"  # waiting for (or in the middle of) an automatic restart
    STOPPED = "stopped"


_S = ChildState
#: Every legal move of a child, in one place. Anything else is a bug: IllegalTransition.
TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    _S.STOPPED: frozenset({_S.RUNNING, _S.RESTARTING}),
    _S.RUNNING: frozenset({_S.STOPPED, _S.RESTARTING}),
    _S.RESTARTING: frozenset({_S.RUNNING, _S.STOPPED}),
}


@attrs.frozen
class ChildInfo:
    """A snapshot of one child, as ``which_children()`` reports it."""

    id: Hashable
    state: ChildState
    restarts: int
    value: object
    last_exit: ExitReason | None
    spec: ChildSpec


@attrs.frozen
class ChildCounts:
    """What ``count_children()`` returns (OTP's ``count_children``): all ``specs``, the
    ``active`` (RUNNING) children, and the specs split by kind into ``supervisors``
    and ``workers``."""

    specs: int
    active: int
    supervisors: int
    workers: int


# Run and Child are private and plain: attrs compiles each class's generated methods
# when the module is imported (~0.5 ms a class), and these records need none of them.


class Run:
    """One incarnation of a child: started once, exits once."""

    __slots__ = (
        "child",
        "ctx",
        "done",
        "exit",
        "injected",
        "restart",
        "scope",
        "started_at",
        "stopping",
        "value",
    )

    def __init__(self, child: Child, ctx: ChildContext, *, restart: bool = False) -> None:
        self.child = child
        self.ctx = ctx
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.value: object = None
        self.exit: ExitReason | None = None
        self.stopping = False  # the supervisor asked it to stop: its exit is no crash
        self.started_at = 0.0
        self.injected: BaseException | None = None  # corral.testing.crash_child: the exit to report
        self.restart = restart  # an automatic restart: counted the moment the child is up


class Child:
    __slots__ = (
        "failures",
        "joined",
        "last_exit",
        "restarts",
        "retry_token",
        "run",
        "spec",
        "starting",
        "state",
    )

    def __init__(self, spec: ChildSpec, *, starting: bool = False) -> None:
        self.spec = spec
        self.state = ChildState.STOPPED
        self.run: Run | None = None
        self.restarts = 0
        self.failures = 0  # consecutive crashes, for the backoff
        self.last_exit: ExitReason | None = None
        self.retry_token: object | None = None  # the pending delayed restart, if any
        self.starting = starting  # start_child in progress: id reserved, not yet visible
        #: Added by start_child into a group waiting for its restart, not started yet:
        #: its first start is a start (not a restart), and a failed one refuses it.
        self.joined = False

    @property
    def id(self) -> Hashable:
        return self.spec.id

    def to(self, new: ChildState) -> None:
        if new is self.state:
            return
        check_transition(TRANSITIONS, self.state, new, f"child {self.id!r}")
        self.state = new

    def info(self) -> ChildInfo:
        value = self.run.value if self.run is not None and self.state is ChildState.RUNNING else None
        return ChildInfo(self.id, self.state, self.restarts, value, self.last_exit, self.spec)
