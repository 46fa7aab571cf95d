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


def test_an_exception_hierarchy_users_can_catch() -> None:
    for unavailable in (corral.CheckoutTimeout, corral.PoolSaturated, corral.CircuitOpen, corral.PoolClosed):
        assert issubclass(unavailable, corral.Unavailable)
    for timeout in (corral.RequestTimeout, corral.CheckoutTimeout, corral.InitTimeout):
        assert issubclass(timeout, TimeoutError)
    assert issubclass(corral.Unavailable, corral.CorralError)
    for name in corral.__all__:
        value = getattr(corral, name)
        if isinstance(value, type) and issubclass(value, Exception) and name not in ("Shutdown",):
            assert issubclass(value, corral.CorralError), name


async def test_restart_intensity_exceeded_names_the_child_and_chains_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashes = 0

    async def flaky(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal crashes
        task_status.started()
        crashes += 1
        raise ValueError(f"crash #{crashes}")

    async def scenario() -> None:
        async with corral.open_supervisor([corral.ChildSpec("flaky", flaky)], max_restarts=2):
            await trio.sleep_forever()

    exc = await _raised(scenario)
    assert isinstance(exc, corral.RestartIntensityExceeded)
    assert exc.child_id == "flaky" and exc.failures == 3
    assert "'flaky'" in str(exc)
    assert isinstance(exc.__cause__, ValueError) and str(exc.__cause__) == "crash #3"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("'flaky'" in m and "crash #3" in m for m in errors), errors


async def test_circuit_open_has_the_last_start_failure_as_cause() -> None:
    garbage = corral.Command(["sh", "-c", "echo this is no frame; sleep 5"])
    breaker = corral.CircuitBreaker(threshold=1, cooldown=60.0)
    with trio.fail_after(20):
        async with corral.open_pool(garbage, size=1, lazy=True, circuit_breaker=breaker) as pool:
            with pytest.raises(corral.CorralError):
                await pool.call("anything")
            with pytest.raises(corral.CircuitOpen) as info:
                await pool.call("anything")
    assert isinstance(info.value.__cause__, corral.ProtocolError), repr(info.value.__cause__)


async def test_an_eager_pool_logs_why_a_worker_failed_to_start(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(corral.CorralError):
        await _raised_or_raise("tests.handlers_import_fails")
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "corral.pool" and r.levelname == "WARNING"
    ]
    assert any("failed to start" in m and "refuses to be imported" in m for m in warnings), warnings


async def _raised_or_raise(module: str) -> None:
    with trio.fail_after(20):
        async with corral.open_pool(module, size=1):
            pass  # pragma: no cover
