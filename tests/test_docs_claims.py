"""Statements in docs/ that no example shows, each checked here (the page is named).

The examples themselves run in tests/test_docs.py; this file backs the prose around them.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from typing import Any

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
    assert any(m.startswith("[flaky] a worker failed to start") and "no model" in m for m in warnings), (
        warnings
    )


async def test_telemetry_corral_pool_logs_each_state_change_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
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
    [block] = [
        b for b in blocks("docs/cookbook/property-tests.md") if "REST_FOR_ONE" in b.code and b.runnable
    ]
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


_PROSE = object()  # a default the table describes in words: checked elsewhere, or not a value


def _table_value(text: str) -> object:
    text = text.strip().strip("`")
    words = {"None": None, "True": True, "False": False, "PERMANENT": corral.Restart.PERMANENT}
    if text in words:
        return words[text]
    if m := re.fullmatch(r"None \(.*\)", text):  # None, explained
        return None
    if m := re.fullmatch(r"(\d+) MiB", text):
        return int(m.group(1)) * 1024 * 1024
    if re.fullmatch(r"[\d ]+(\.\d+)?", text):
        return float(text.replace(" ", ""))
    if m := re.fullmatch(r'"(\w+)"', text):
        return m.group(1)
    if m := re.fullmatch(r"CircuitBreaker\((\d+), ([\d.]+)\)", text):
        return corral.CircuitBreaker(int(m.group(1)), float(m.group(2)))
    return _PROSE


def test_pool_md_option_table_says_the_real_defaults() -> None:
    """docs/pool.md, "Every option": each default in the table is the code's."""
    import attrs

    from corral.workers._options import PoolOptions

    text = (ROOT / "docs/pool.md").read_text(encoding="utf-8")
    table = text[text.index("| option | default | |") :].split("\n\n", 1)[0].splitlines()[2:]
    defaults = {f.name: f.default for f in attrs.fields(PoolOptions)}
    checked = []
    for row in table:
        names_cell, default_cell = (c.strip() for c in row.strip("|").split("|")[:2])
        names = [n.strip().strip("`") for n in names_cell.split(",")]
        values = [v for v in re.split(r",\s+(?![^()]*\))", default_cell)]
        if len(values) != len(names):
            values = values * len(names) if len(values) == 1 else [default_cell] * len(names)
        for name, cell in zip(names, values, strict=True):
            assert name in defaults, f"pool.md lists an option open_pool does not take: {name}"
            expected = _table_value(cell)
            if expected is _PROSE:
                continue
            actual: Any = defaults[name]
            if isinstance(actual, attrs.Factory):  # type: ignore[arg-type]
                actual = actual.factory()
            if name == "name":  # None in the options: the pool calls itself "pool"
                actual = corral.Pool("examples.handlers").name
            assert actual == expected, (name, cell, actual)
            checked.append(name)
    assert len(checked) >= 20, checked


def test_pool_md_restarts_names_the_real_default_backoff_and_limit() -> None:
    """docs/pool.md, "Restarts": the default backoff, and 10 * size restarts without one."""
    import sys

    from corral.workers._options import DEFAULT_BACKOFF, PoolOptions

    text = " ".join((ROOT / "docs/pool.md").read_text(encoding="utf-8").split())
    assert f"`{DEFAULT_BACKOFF!r}`" in text
    assert PoolOptions().effective_max_restarts == sys.maxsize
    assert PoolOptions(size=3, backoff=None).effective_max_restarts == 30


async def test_pool_md_the_first_crash_is_replaced_at_once_a_crash_loop_slows_down() -> None:
    """docs/pool.md, "Restarts": "the first crash is replaced at once, a crash loop slows down"."""
    delays: list[float] = []
    logging.getLogger("corral").setLevel(logging.CRITICAL)
    try:
        async with corral.open_pool("examples.handlers", size=1) as pool:
            pool.supervisor.subscribe(
                lambda e: delays.append(e.delay) if isinstance(e, corral.ChildRestarting) else None
            )
            for _ in range(2):
                with pytest.raises(corral.WorkerCrashed):
                    await pool.call("crash", 1)
                assert await pool.call("add", 1, 1) == 2  # the replacement serves
    finally:
        logging.getLogger("corral").setLevel(logging.NOTSET)
    assert len(delays) == 2 and delays[0] == 0.0 and delays[1] > 0.03, delays


def test_the_runtime_dependencies_the_first_pages_name_are_the_real_ones() -> None:
    """README.md and docs/getting-started.md name corral's runtime dependencies."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = sorted(re.match(r"[\w-]+", d).group(0) for d in project["dependencies"])  # type: ignore[union-attr]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [install] = [line for line in readme.splitlines() if line.startswith("pip install corral ")]
    assert sorted(re.findall(r"\b(?:trio|attrs|cattrs)\b", install)) == names, install
    started = " ".join((ROOT / "docs/getting-started.md").read_text(encoding="utf-8").split())
    [sentence] = re.findall(r"It depends on ([^.]*) only\.", started)
    assert sorted(re.findall(r"`(\w+)`", sentence)) == names, sentence


def test_every_test_and_file_a_page_cites_exists() -> None:
    """A page that says "proved by tests/x.py::test_y" names a test that exists."""
    pages = [*sorted(ROOT.glob("docs/**/*.md")), ROOT / "README.md"]
    missing = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"`((?:src|tests|examples|benchmarks|docs)/[\w./-]+?)\.?`", text):
            if not (ROOT / m.group(1)).exists():
                missing.append(f"{page.name}: {m.group(1)}")
        last = None  # "`tests/x.py::a`, `::b`": b is in tests/x.py too
        for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`|`(tests/[\w/]+\.py)`", text):
            last = m.group(3) or m.group(1) or last
            if m.group(2) and not (last and re.search(rf"def {m.group(2)}\b", (ROOT / last).read_text())):
                missing.append(f"{page.name}: {last}::{m.group(2)}")
    assert not missing, missing
