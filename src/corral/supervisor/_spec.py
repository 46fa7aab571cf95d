"""Child specs, restart types, strategies: the vocabulary of a supervision tree.

Everything here is a frozen value checked where it enters, so a bad spec fails at
construction with the field named, never later inside a running tree.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

import attrs

from corral import _validate
from corral._errors import InvalidSpec
from corral._validate import integer, number

BRUTAL_KILL = 0.0
"""Shutdown grace meaning: cancel the child at once."""

INFINITY = math.inf
"""Shutdown grace meaning: wait for the child however long it takes (supervisors)."""


class Strategy(enum.Enum):
    """What else a supervisor restarts when one child dies."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.Enum):
    """When a child that exited is restarted."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never; the spec is forgotten once it exits


class AutoShutdown(enum.Enum):
    """Whether significant children exiting by themselves end the supervisor (OTP 24)."""

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


StartFn = Callable[..., Awaitable[object]]


def _starts_a_supervisor(spec: ChildSpec) -> bool:
    """The default of ``is_supervisor``: ``start`` is the bound ``run`` of a Supervisor.

    Recognised by the marker the Supervisor class carries (``_corral_supervisor``), so
    the spec never imports the supervisor module.
    """
    owner = getattr(spec.start, "__self__", None)
    return (
        getattr(owner, "_corral_supervisor", False) is True and getattr(spec.start, "__name__", "") == "run"
    )


def _default_shutdown(spec: ChildSpec) -> float:
    return INFINITY if spec.is_supervisor else 5.0


_a_bool = _validate.instance(bool, "a bool")


def _check_start(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        raise InvalidSpec(
            "start",
            f"must be an async function taking task_status=..., got {value!r}",
        )


def _check_shutdown(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value) or value < 0:
        raise InvalidSpec(
            "shutdown",
            f"must be seconds >= 0 (BRUTAL_KILL = 0, INFINITY = math.inf), got {value!r}",
        )


def _check_enum(kind: type[enum.Enum]) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            allowed = ", ".join(f"{kind.__name__}.{m.name}" for m in kind)
            raise InvalidSpec(attribute.name, f"must be one of {allowed}, got {value!r}")

    return check


def _check_hashable(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    try:
        hash(value)
    except TypeError:
        raise InvalidSpec("id", f"must be hashable, got {type(value).__name__}") from None


def _to_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen
class ChildSpec:
    """How to start one child and what to do when it exits.

    ``start`` follows trio's ``nursery.start`` protocol: ``async def f(*args,
    task_status)`` that calls ``task_status.started(value)`` once it is ready to be
    relied on, then runs until it is done.

    ``is_supervisor`` (keyword only) is the child's kind, OTP's ``type``: a supervisor
    (a nested tree) gets ``shutdown=INFINITY`` by default, so it can stop its own
    children in order, and ``count_children()`` counts it under ``supervisors``.
    It defaults to True exactly when ``start`` is a bound ``Supervisor.run`` (or a
    subclass's); say ``is_supervisor=True`` for a function that runs a tree itself.
    """

    id: Hashable = attrs.field(validator=_check_hashable)
    start: StartFn = attrs.field(validator=_check_start)
    args: tuple[Any, ...] = attrs.field(default=(), converter=_to_tuple)
    restart: Restart = attrs.field(default=Restart.PERMANENT, validator=_check_enum(Restart))
    # Before ``shutdown``, whose default reads it; keyword only, so the positional
    # order of the fields below stays as it was.
    is_supervisor: bool = attrs.field(
        default=attrs.Factory(_starts_a_supervisor, takes_self=True), validator=_a_bool, kw_only=True
    )
    shutdown: float = attrs.field(
        default=attrs.Factory(_default_shutdown, takes_self=True), validator=_check_shutdown
    )
    significant: bool = attrs.field(default=False, validator=_a_bool)

    def __attrs_post_init__(self) -> None:
        if self.significant and self.restart is Restart.PERMANENT:
            raise InvalidSpec(
                "significant",
                "a PERMANENT child cannot be significant (it is always restarted); "
                "use Restart.TRANSIENT or Restart.TEMPORARY",
            )


@attrs.frozen
class Backoff:
    """Exponential, capped, jittered delay before an automatic restart.

    OTP restarts at once; a crash loop then burns the restart intensity in
    milliseconds. With a backoff the n-th consecutive restart of a child waits
    ``initial * multiplier**(n-1)`` seconds (at most ``maximum``), spread by
    ``±jitter`` (a fraction). A child that stayed up ``reset_after`` seconds is
    considered healthy again and its next crash restarts after ``initial``.
    ``immediate=1`` restarts the first crash at once (as Kubernetes does) and backs
    off only when the crashes repeat.
    """

    initial: float = attrs.field(default=0.1, validator=number(minimum=0, field="backoff.initial"))
    maximum: float = attrs.field(default=30.0, validator=number(minimum=0, field="backoff.maximum"))
    multiplier: float = attrs.field(
        default=2.0, validator=number(minimum=1, what="a number", field="backoff.multiplier")
    )
    jitter: float = attrs.field(default=0.1, validator=number(minimum=0, maximum=1, field="backoff.jitter"))
    reset_after: float = attrs.field(default=10.0, validator=number(minimum=0, field="backoff.reset_after"))
    #: This many consecutive restarts happen at once, before any delay.
    immediate: int = attrs.field(default=0, validator=integer(minimum=0, field="backoff.immediate"))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based) in a row."""
        attempt -= self.immediate
        if attempt <= 0:
            return 0.0
        base = min(self.maximum, self.initial)
        if 0 < base < self.maximum and self.multiplier > 1:
            # In logarithms, capped before any power is taken: never an OverflowError.
            grown = math.log(self.initial) + (attempt - 1) * math.log(self.multiplier)
            base = self.maximum if grown >= math.log(self.maximum) else math.exp(grown)
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base = min(self.maximum, base * (1 + spread))
        return max(0.0, base)
