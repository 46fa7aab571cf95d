"""Errors are for people: every error corral re-raises from a group is reported once
(one traceback, no "During handling of the above exception" over a group of itself),
with its cause chained."""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable

import pytest
import trio

import corral


def _report(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


async def _raised(fn: Callable[[], Awaitable[object]]) -> BaseException:
    try:
        with trio.fail_after(20):
            await fn()
    except BaseException as exc:
        return exc
    raise AssertionError("nothing was raised")


async def _supervisor_body() -> None:
    async with corral.open_supervisor([]):
        raise ValueError("my bug")


async def _pool_body() -> None:
    async with corral.open_pool("tests.handlers_basic", size=1):
        raise ValueError("my bug")


async def _failing_child(*, task_status: trio.TaskStatus[None]) -> None:
    raise ValueError("my bug")


async def _start_failure() -> None:
    async with corral.open_supervisor([corral.ChildSpec("c", _failing_child)]):
        pass  # pragma: no cover


@pytest.mark.parametrize(
    "scenario", [_supervisor_body, _pool_body, _start_failure], ids=["supervisor", "pool", "child-start"]
)
async def test_an_error_is_reported_once(scenario: Callable[[], Awaitable[None]]) -> None:
    exc = await _raised(scenario)
    text = _report(exc)
    assert "During handling of the above exception" not in text, text
    assert "ExceptionGroup" not in text, text
    assert text.count("ValueError: my bug") == 1, text


async def test_a_pool_that_cannot_open_reports_one_error_with_its_cause() -> None:
    async def scenario() -> None:
        async with corral.open_pool("tests.handlers_import_fails", size=2):
            pass  # pragma: no cover

    exc = await _raised(scenario)
    assert isinstance(exc, corral.CorralError)
    text = _report(exc)
    assert "During handling of the above exception" not in text, text
    assert "ExceptionGroup" not in text, text
