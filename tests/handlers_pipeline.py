"""Handlers for tests/test_pipeline.py: calls that leave a mark when they run."""

import time

_marks: "list[str]" = []


def mark(tag: str, seconds: float = 0.0) -> str:
    _marks.append(tag)
    time.sleep(seconds)
    return tag


def marks() -> "list[str]":
    return list(_marks)
