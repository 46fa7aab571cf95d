"""Declarative validators for frozen attrs options: bad values are refused where they
enter, with the field's name and the fix in one ``InvalidSpec``.

Each factory returns an attrs validator; ``field=`` overrides the name shown (e.g.
``"circuit_breaker.threshold"`` for a nested value).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import attrs

from corral._errors import InvalidSpec

Validator = Callable[[Any, "attrs.Attribute[Any] | None", Any], None]


def check(value: object, validator: Validator) -> None:
    """Apply a validator outside attrs, to a plain argument (it must name its field)."""
    validator(None, None, value)


def _name(field: str | None, attribute: attrs.Attribute[Any] | None) -> str:
    assert field is not None or attribute is not None, "a validator used by check() names its field"
    return field if field is not None else attribute.name  # type: ignore[union-attr]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def number(
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
    strict: bool = False,
    optional: bool = False,
    what: str = "a number",
    field: str | None = None,
) -> Validator:
    """A real number (never a bool or NaN) ``>= minimum`` (``> minimum`` when strict),
    and ``<= maximum`` if one is given."""
    op = ">" if strict else ">="
    extra = " or None" if optional else ""
    rule = f"within [{minimum}, {maximum}]" if maximum is not None else f"{op} {minimum}"

    def check(instance: object, attribute: attrs.Attribute[Any] | None, value: object) -> None:
        if value is None and optional:
            return
        ok = _is_number(value) and (value > minimum if strict else value >= minimum)  # type: ignore[operator]
        if not ok or (maximum is not None and value > maximum):  # type: ignore[operator]
            raise InvalidSpec(_name(field, attribute), f"must be {what} {rule}{extra}, got {value!r}")

    return check


def integer(*, minimum: int, optional: bool = False, field: str | None = None) -> Validator:
    """An ``int`` (never a bool) ``>= minimum``."""
    extra = " or None" if optional else ""

    def check(instance: object, attribute: attrs.Attribute[Any] | None, value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidSpec(_name(field, attribute), f"must be an int >= {minimum}{extra}, got {value!r}")

    return check


def instance(kind: type | tuple[type, ...], description: str, *, optional: bool = False) -> Validator:
    """An instance of ``kind``; ``description`` says what to pass instead."""
    extra = " or None" if optional else ""

    def check(instance: object, attribute: attrs.Attribute[Any] | None, value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, kind):
            raise InvalidSpec(_name(None, attribute), f"must be {description}{extra}, got {value!r}")

    return check


def one_of(allowed: Collection[object], description: str) -> Validator:
    """One of a few literal values."""

    def check(instance: object, attribute: attrs.Attribute[Any] | None, value: object) -> None:
        if value not in allowed:
            raise InvalidSpec(_name(None, attribute), f"must be {description}, got {value!r}")

    return check
