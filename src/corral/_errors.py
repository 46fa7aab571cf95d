"""Every exception corral raises on purpose.

One module so users can see the whole failure vocabulary at a glance; each class
says when it happens and what to do about it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's: `import corral` loads this module alone, nothing else
if TYPE_CHECKING:
    from collections.abc import Hashable


class CorralError(Exception):
    """Base class of every error corral raises on purpose."""


# -- supervision -------------------------------------------------------------


class InvalidSpec(CorralError, ValueError):
    """A child spec or supervisor option is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ChildStartError(CorralError):
    """A child failed before calling ``task_status.started()``.

    ``__cause__`` is the child's own exception.
    """

    def __init__(self, child_id: Hashable, message: str = "") -> None:
        super().__init__(f"child {child_id!r} failed to start" + (f": {message}" if message else ""))
        self.child_id = child_id


class RestartIntensityExceeded(CorralError):
    """More than ``max_restarts`` restarts happened within ``max_seconds``.

    The supervisor stopped all its children; its parent sees this as an abnormal exit.
    """

    def __init__(
        self,
        supervisor: str,
        max_restarts: int,
        max_seconds: float,
        child_id: Hashable | None = None,
        failures: int = 0,
    ) -> None:
        last = ""
        if child_id is not None:
            last = f"; child {child_id!r} failed last ({failures} time(s) in a row, its error is the cause)"
        super().__init__(
            f"supervisor {supervisor!r}: more than {max_restarts} restart(s) within "
            f"{max_seconds} s{last}; all children were stopped"
        )
        self.supervisor = supervisor
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.child_id = child_id
        self.failures = failures


class AlreadyPresent(CorralError):
    """``start_child`` with an id that is already in use (running or not)."""

    def __init__(self, child_id: Hashable) -> None:
        super().__init__(
            f"a child with id {child_id!r} already exists; delete_child() it first or choose another id"
        )
        self.child_id = child_id


class NotFound(CorralError):
    """No child with that id."""

    def __init__(self, child_id: Hashable) -> None:
        super().__init__(f"no child with id {child_id!r}")
        self.child_id = child_id


class ChildRunning(CorralError):
    """``restart_child``/``delete_child`` on a child that is running or restarting."""

    def __init__(self, child_id: Hashable, state: str) -> None:
        super().__init__(f"child {child_id!r} is {state}; terminate_child() it first")
        self.child_id = child_id


class MaxChildren(CorralError):
    """A DynamicSupervisor already runs ``max_children`` children."""


class SupervisorNotRunning(CorralError):
    """The supervisor's ``run()`` is not active, so it cannot act on children."""


# -- workers and the pool ----------------------------------------------------


class ProtocolError(CorralError):
    """A worker broke the wire protocol (bad frame, oversized frame, unknown id...)."""


class RemoteError(CorralError):
    """The handler raised inside the worker.

    ``remote_type``, ``remote_message`` and ``remote_traceback`` are text; the original
    exception is chained as ``__cause__`` when it could be unpickled.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class WorkerCrashed(CorralError):
    """The worker process died while it held the call."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        signal: str | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        text = str(self.args[0])
        if self.stderr_tail:
            text += "\n\nLast lines of the worker's output:\n" + self.stderr_tail.rstrip()
        return text


class Unavailable(CorralError):
    """The pool cannot take this call now; nothing ran. Retry later, shed load, or
    raise the limit the message names. Base of CheckoutTimeout, PoolSaturated,
    CircuitOpen and PoolClosed."""


class RequestTimeout(CorralError, TimeoutError):
    """The call ran longer than ``request_timeout``; the worker was killed."""


class CheckoutTimeout(Unavailable, TimeoutError):
    """No worker became available within ``checkout_timeout``."""


class PoolClosed(Unavailable):
    """The pool is closed (its ``async with`` block has ended)."""


class CircuitOpen(Unavailable):
    """Workers keep failing to start; calls fail fast until the cool-down ends.
    ``__cause__`` is the last start failure."""


class SessionLost(CorralError):
    """The worker that held this session died; the next call binds a new worker."""


class PoolSaturated(Unavailable):
    """The pool's wait queue is full (``max_waiting``)."""


class UpgradeFailed(CorralError):
    """``pool.upgrade()`` judged the new version failing (a worker could not start, or
    died on probation) and rolled the pool back: it serves on the old version.
    ``__cause__`` is the new version's first failure; fix it, then upgrade again."""

    def __init__(self, message: str, *, version: int, failed_calls: int = 0) -> None:
        super().__init__(message)
        #: The version that was rolled back.
        self.version = version
        #: Calls that failed because a worker of the new version died while running
        #: them, during the rollout.
        self.failed_calls = failed_calls
