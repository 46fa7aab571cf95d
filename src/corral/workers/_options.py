"""The pool's and the worker's options as frozen values, validated where they enter.

``Pool(...)`` and ``open_pool(...)`` keep their typed keyword arguments (what users
read and their editors complete); they build one ``PoolOptions``, and each worker gets
the ``WorkerOptions`` part of it as one object, never field by field. A test checks
that the defaults here and in ``Pool.__init__`` never drift apart. Both compare by
identity (``eq=False``): nothing compares options, and attrs' generated ``__eq__`` and
``__hash__`` over 31 fields doubled this module's import time (5.4 -> 2.6 ms).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from corral._errors import InvalidSpec
from corral._validate import instance, integer, number, one_of
from corral.supervisor._spec import Backoff, Restart
from corral.workers._circuit import CircuitBreaker

if TYPE_CHECKING:
    from corral.workers._launch import Command, PythonModule
    from corral.workers._remote import SSH
    from corral.workers._telemetry import WorkerEvent

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
#: Restarts of a crashed worker: the first at once, then exponential up to 2 s.
DEFAULT_BACKOFF = Backoff(initial=0.05, maximum=2.0, multiplier=2.0, jitter=0.2, reset_after=5.0, immediate=1)
_seconds = number()
_optional_seconds = number(optional=True)


@attrs.frozen(kw_only=True, eq=False)
class WorkerOptions:
    """What one worker needs to know: its timeouts, its frame limit, its output."""

    init_timeout: float = attrs.field(default=30.0, validator=_seconds)
    request_timeout: float | None = attrs.field(default=None, validator=_optional_seconds)
    cancel_grace: float = attrs.field(default=1.0, validator=_seconds)
    stop_timeout: float = attrs.field(default=5.0, validator=_seconds)
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=integer(minimum=1024))
    capture_stderr: bool = True
    stderr_lines: int = attrs.field(default=200, validator=integer(minimum=1))
    #: Requests in flight at once, when the worker offers pipelining (else 1).
    pipeline: int = attrs.field(default=1, validator=integer(minimum=1))
    #: Chunks a stream's worker may send ahead of its consumer (its credit).
    stream_window: int = attrs.field(default=8, validator=integer(minimum=1))


@attrs.frozen(kw_only=True, eq=False)
class PoolOptions:
    """Every option of ``open_pool`` but the handlers, as one validated value."""

    size: int = attrs.field(default=4, validator=integer(minimum=1))
    min_size: int | None = attrs.field(default=None, validator=integer(minimum=0, optional=True))
    lazy: bool = attrs.field(default=False, validator=instance(bool, "True or False"))
    checkout_timeout: float | None = attrs.field(default=60.0, validator=_optional_seconds)
    request_timeout: float | None = attrs.field(default=None, validator=_optional_seconds)
    init_timeout: float = attrs.field(default=30.0, validator=_seconds)
    cancel_grace: float = attrs.field(default=1.0, validator=_seconds)
    stop_timeout: float = attrs.field(default=5.0, validator=_seconds)
    drain_timeout: float = attrs.field(default=10.0, validator=_seconds)
    idle_timeout: float = attrs.field(default=60.0, validator=_seconds)
    max_requests: int | None = attrs.field(default=None, validator=integer(minimum=1, optional=True))
    max_age: float | None = attrs.field(default=None, validator=_optional_seconds)
    max_memory_mb: float | None = attrs.field(default=None, validator=_optional_seconds)
    max_waiting: int | None = attrs.field(default=10_000, validator=integer(minimum=0, optional=True))
    session_ttl: float | None = attrs.field(default=3600.0, validator=_optional_seconds)
    restart: Restart = attrs.field(default=Restart.PERMANENT, validator=instance(Restart, "a corral.Restart"))
    max_restarts: int | None = attrs.field(default=None, validator=integer(minimum=0, optional=True))
    max_seconds: float = attrs.field(default=5.0, validator=_seconds)
    backoff: Backoff | None = attrs.field(
        default=DEFAULT_BACKOFF, validator=instance(Backoff, "corral.Backoff(...)", optional=True)
    )
    circuit_breaker: CircuitBreaker | None = attrs.field(
        factory=CircuitBreaker,
        validator=instance(CircuitBreaker, "corral.CircuitBreaker(...)", optional=True),
    )
    capture_stderr: bool = True
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=integer(minimum=1024))
    name: str | None = None
    hosts: Sequence[SSH | Command | PythonModule | str] | None = None
    start_method: str = attrs.field(
        default="spawn", validator=one_of(("spawn", "forkserver"), '"spawn" or "forkserver"')
    )
    pipeline: int = attrs.field(default=4, validator=integer(minimum=1))
    stream_window: int = attrs.field(default=8, validator=integer(minimum=1))
    #: Subscribed before the first worker starts: sees every worker event.
    on_event: Callable[[WorkerEvent], None] | None = None
    #: The only payload codec the parent accepts; None: the launcher's choice.
    codec: str | None = attrs.field(
        default=None, validator=one_of((None, "json", "pickle"), 'None, "json" or "pickle"')
    )

    def __attrs_post_init__(self) -> None:
        if self.min_size is not None and self.min_size > self.size:
            raise InvalidSpec("min_size", f"must be <= size ({self.size}), got {self.min_size}")

    @property
    def worker(self) -> WorkerOptions:
        """The part each worker gets."""
        return WorkerOptions(
            init_timeout=self.init_timeout,
            request_timeout=self.request_timeout,
            cancel_grace=self.cancel_grace,
            stop_timeout=self.stop_timeout,
            max_frame=self.max_frame,
            capture_stderr=self.capture_stderr,
            pipeline=self.pipeline,
            stream_window=self.stream_window,
        )

    @property
    def effective_min_size(self) -> int:
        """Workers kept running: all of them for an eager pool, else ``min_size`` (0)."""
        return self.size if self.min_size is None and not self.lazy else (self.min_size or 0)

    @property
    def effective_max_restarts(self) -> int:
        """Unlimited restarts are only safe with a delay between them."""
        if self.max_restarts is not None:
            return self.max_restarts
        return sys.maxsize if self.backoff is not None else 10 * self.size

    @property
    def max_memory_bytes(self) -> int | None:
        return None if self.max_memory_mb is None else int(self.max_memory_mb * 1024 * 1024)
