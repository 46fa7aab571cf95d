"""A handler module whose init() fails (tests/test_child_runtime.py)."""

from __future__ import annotations


class InitProblem(Exception):
    pass


def init() -> None:
    raise InitProblem("database unreachable")


def echo(x: object) -> object:
    return x
