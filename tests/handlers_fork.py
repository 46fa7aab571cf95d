"""Handlers for tests/test_forkserver.py (run inside forked workers)."""

import os

IMPORTED_IN = os.getpid()  # the template's pid when forked, the worker's own when spawned


def imported_in() -> int:
    return IMPORTED_IN


def ids() -> "tuple[int, int, int]":
    return os.getpid(), os.getppid(), os.getpgid(0)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)
