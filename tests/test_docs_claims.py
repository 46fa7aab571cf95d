"""Statements in docs/ that no example shows, each checked here (the page is named).

The examples themselves run in tests/test_docs.py; this file backs the prose around them.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

import corral
import corral.testing
from tests.test_docs import ROOT, blocks

def _messages(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


async def test_telemetry_corral_pool_logs_open_and_close_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """docs/telemetry.md, the logging table: the pool's open and close."""
    caplog.set_level(logging.INFO, logger="corral")
    async with corral.open_pool("tests.handlers_basic", size=2, name="logged"):
        pass
    info = _messages(caplog, "corral.pool", logging.INFO)
    assert any(re.fullmatch(r"\[logged\] open: 2 worker\(s\) ready in \d+\.\d{3} s", m) for m in info), info
    assert any(re.fullmatch(r"\[logged\] closed \(it was open \d+\.\d{3} s\)", m) for m in info), info


async def test_telemetry_a_pool_that_never_opened_logs_no_close(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corral")
    with pytest.raises(corral.CorralError):
        async with corral.open_pool("tests.handlers_init_fails", size=1, name="broken", init_timeout=5):
            pass
    assert not [m for m in _messages(caplog, "corral.pool", logging.INFO) if "closed" in m]


async def test_telemetry_corral_pool_logs_a_failed_start_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    """docs/telemetry.md: a worker that failed to start is a WARNING of corral.pool."""
    caplog.set_level(logging.INFO, logger="corral")
    async with corral.open_pool("tests.handlers_basic", size=1, name="flaky", lazy=True) as pool:
        corral.testing.fail_next_start(pool, error=RuntimeError("no model"))
        assert await pool.call("add", 1, 2) == 3  # the first start failed, the retry served
    warnings = _messages(caplog, "corral.pool", logging.WARNING)
    assert any(m.startswith("[flaky] a worker failed to start") and "no model" in m for m in warnings), warnings


async def test_telemetry_corral_pool_logs_each_state_change_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """docs/telemetry.md: every worker state change and lease, at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="corral")
    async with corral.open_pool("tests.handlers_basic", size=1, name="dbg") as pool:
        await pool.call("add", 1, 2)
        [worker] = pool.workers()
    debug = _messages(caplog, "corral.pool", logging.DEBUG)
    assert f"[dbg] {worker.id} state BUSY READY -> BUSY" in debug, debug
    assert f"[dbg] {worker.id} state READY BUSY -> READY" in debug, debug


async def test_getting_started_a_crash_is_a_warning_with_the_workers_output(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/getting-started.md: "A crash is logged as a warning on stderr, with the
    worker's own output" (WARNING and above reach stderr with no logging set up)."""
    caplog.set_level(logging.WARNING, logger="corral")
    async with corral.open_pool("examples.handlers", size=1) as pool:
        await pool.call("say", "my last words")
        with pytest.raises(corral.WorkerCrashed):
            await pool.call("crash", 3)
        await pool.call("add", 1, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("exited with code 3" in m and "my last words" in m for m in warnings), warnings


def test_property_tests_one_for_one_fails_with_the_smallest_counterexample() -> None:
    """docs/cookbook/property-tests.md: "Change the strategy to ONE_FOR_ONE and hypothesis
    fails at once, with the smallest counterexample: a single crash of db, after which
    cache and api show 0 restarts instead of 1"."""
    [block] = [b for b in blocks("docs/cookbook/property-tests.md") if "REST_FOR_ONE" in b.code and b.runnable]
    code = block.code.replace("corral.Strategy.REST_FOR_ONE", "corral.Strategy.ONE_FOR_ONE")
    assert code != block.code
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "schedule=[Fault(at=0.0, child_id='db', kind='crash')]" in proc.stderr, proc.stderr
    assert "{'db': 1, 'cache': 0, 'api': 0}" in proc.stderr, proc.stderr


def test_index_first_example_is_short() -> None:
    """README.md: "A worker pool in ten lines" — the program, not counting its handler file."""
    [main] = [b for b in blocks("README.md") if "open_pool" in b.code and b.runnable]
    code = [line for line in main.code.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 10, code
