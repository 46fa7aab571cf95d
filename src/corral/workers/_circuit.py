"""The circuit breaker: stop hammering a start-up that keeps failing.

When workers fail to start ``threshold`` times in a row (spawn error, init error,
init timeout), the circuit opens: calls that would wait for a new worker fail fast
with ``CircuitOpen`` and no start is attempted for ``cooldown`` seconds. Then one
trial start is let through (half-open): its success closes the circuit, its failure
opens it again.
"""

from __future__ import annotations

import enum

import attrs
import trio

from corral._shared import check_transition
from corral._validate import integer, number


@attrs.frozen
class CircuitBreaker:
    """A pool's brake on workers that keep failing to start (``open_pool(circuit_breaker=)``).

    After ``threshold`` consecutive start failures the circuit opens: no new worker is
    started for ``cooldown`` seconds, and callers with no live worker to wait for get
    ``CircuitOpen`` at once instead of waiting out ``checkout_timeout``. Then one trial
    start (half open) closes it again or reopens it. Live workers keep serving.
    """

    threshold: int = attrs.field(default=5, validator=integer(minimum=1, field="circuit_breaker.threshold"))
    cooldown: float = attrs.field(
        default=10.0, validator=number(minimum=0, what="seconds", field="circuit_breaker.cooldown")
    )


class CircuitState(enum.Enum):
    """CLOSED (starts as needed), OPEN (no starts until the cooldown ends), HALF_OPEN
    (one trial start); ``pool.statistics().circuit`` is its value."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_C = CircuitState
#: Every legal move of the circuit, in one place. Anything else is a bug: IllegalTransition.
TRANSITIONS: dict[CircuitState, frozenset[CircuitState]] = {
    _C.CLOSED: frozenset({_C.OPEN}),
    _C.OPEN: frozenset({_C.HALF_OPEN}),
    _C.HALF_OPEN: frozenset({_C.CLOSED, _C.OPEN}),
}


class Circuit:
    """The breaker's live state. ``config=None`` means never open.

    A plain class, as the pool's other private records: attrs compiles each class's
    generated methods when the module is imported (~0.5 ms a class)."""

    __slots__ = ("config", "failures", "opened_at", "state", "trial_running")

    def __init__(self, config: CircuitBreaker | None, state: CircuitState = CircuitState.CLOSED) -> None:
        self.config = config
        self.state = state
        self.failures = 0  # consecutive start failures
        self.opened_at = 0.0
        self.trial_running = False

    def _to(self, new: CircuitState) -> None:
        check_transition(TRANSITIONS, self.state, new, "circuit")
        self.state = new

    def allow_start(self) -> bool:
        """May a worker start now? Moves OPEN to HALF_OPEN when the cooldown is over."""
        if self.config is None or self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if trio.current_time() - self.opened_at < self.config.cooldown:
                return False
            self._to(CircuitState.HALF_OPEN)
        if self.trial_running:
            return False
        self.trial_running = True
        return True

    def retry_in(self) -> float:
        if self.config is None or self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.config.cooldown - trio.current_time())

    def record_success(self) -> None:
        self.failures = 0
        if self.state is CircuitState.HALF_OPEN:
            self.trial_running = False
            self._to(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        if self.config is None:
            return
        if self.state is CircuitState.HALF_OPEN:
            self.trial_running = False
            self._to(CircuitState.OPEN)
            self.opened_at = trio.current_time()
        elif self.state is CircuitState.CLOSED and self.failures >= self.config.threshold:
            self._to(CircuitState.OPEN)
            self.opened_at = trio.current_time()

    @property
    def is_open(self) -> bool:
        """Open and cooling down: fail fast. After the cooldown, the next start is the trial."""
        return (
            self.state is CircuitState.OPEN
            and self.config is not None
            and trio.current_time() - self.opened_at < self.config.cooldown
        )
