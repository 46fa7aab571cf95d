"""Handlers for tests/test_child_runtime.py (run inside a corral worker).

Kept cheap to import (no ``typing`` at run time): start-up time is measured with it.
"""

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def echo(x: "Any") -> "Any":
    return x


def add(a: "Any", b: "Any") -> "Any":
    return a + b


def boom(msg: str = "boom") -> None:
    raise ValueError(msg)


def print_noise(n: int = 3) -> str:
    for i in range(n):
        print(f"noise {i} via print()")
    sys.stdout.write("partial line without newline")
    sys.stdout.flush()
    os.write(1, b"\x00\x00\x00\x05garbage written to fd 1\n")
    print("more noise", file=sys.stderr)
    return "quiet"


def unencodable() -> "Callable[[], None]":
    return lambda: None


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def getpid() -> int:
    return os.getpid()


def modules() -> list[str]:
    return sorted(sys.modules)


def environ(name: str) -> str | None:
    return os.environ.get(name)


def read_stdin() -> str:
    return sys.stdin.read()


def big(n: int) -> bytes:
    return b"x" * n


def many_empty_lists(n: int) -> "list[list[int]]":
    """A small frame that decodes into many objects (JSON: 3 bytes per list)."""
    return [[] for _ in range(n)]
