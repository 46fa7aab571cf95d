"""The few helpers both halves of corral use, so neither imports the other's internals.

Two ideas live here and nothing else:

- **Exception groups** (``collapse``, ``reraise``): a nursery wraps whatever its tasks
  raise in a group; corral's API raises its errors bare (DESIGN: "never wrapped in an
  ExceptionGroup"), so the supervisor, the pool and the worker all unwrap the one
  meaningful exception the same way.
- **Transition tables** (``IllegalTransition``, ``check_transition``): each state
  machine (a supervised child, a worker, the circuit breaker) writes every legal move
  in one table ``{state: frozenset(next states)}`` next to its enum; a move outside the
  table is a bug in corral and raises ``IllegalTransition``.

Anything that belongs to one half lives in that half (``supervisor/`` or ``workers/``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NoReturn, TypeVar

import trio

# -- exception groups --------------------------------------------------------------


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one meaningful exception in a nursery's group, else the group itself.

    Nested groups are flattened; ``trio.Cancelled`` leaves are ignored when exactly one
    other exception remains (a sibling cancelled because that one failed).
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        else:
            leaves.append(exc)

    walk(group)
    if len(leaves) == 1:
        return leaves[0]
    meaningful = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(meaningful) == 1:
        return meaningful[0]
    return group


def reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` (one leaf of the group being handled) as if the group never was.

    Raised inside ``except BaseExceptionGroup``, Python would set the leaf's
    ``__context__`` to its own group, and every traceback would print the error twice
    ("During handling of the above exception, another exception occurred"). So the
    leaf's own context is put back as it propagates: one error, one traceback, its
    ``__cause__`` untouched. ``del`` keeps no frame -> exception -> frame cycle."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


# -- transition tables -------------------------------------------------------------


class IllegalTransition(RuntimeError):
    """A state machine was asked for a move its transition table does not allow.

    Always a bug in corral, never a user error: the message names the machine and the
    move (``"worker 3: STOPPED -> READY"``).
    """


_State = TypeVar("_State", bound=enum.Enum)


def check_transition(table: Mapping[_State, frozenset[_State]], old: _State, new: _State, what: str) -> None:
    """Raise ``IllegalTransition`` unless ``old -> new`` is in ``table``; ``what`` names
    the machine in the message. (The worker's hot path inlines the same two lookups.)"""
    if new not in table[old]:
        raise IllegalTransition(f"{what}: {old.name} -> {new.name}")
