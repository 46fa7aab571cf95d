"""start_method="forkserver": a template imports the handler module once and forks workers."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import corral


async def test_forked_workers_share_the_template_import_and_own_their_group() -> None:
    with trio.fail_after(30):
        async with corral.open_pool("tests.handlers_fork", size=3, start_method="forkserver") as pool:
            infos = pool.workers()
            assert len({w.pid for w in infos}) == 3
            for _ in range(6):
                pid, ppid, pgid = await pool.call("ids")
                assert pgid == pid  # its own process group
                assert ppid != os.getpid()  # a child of the template, not ours
                assert await pool.call("imported_in") == ppid  # imported once, in the template


async def test_a_forked_worker_crash_is_reported_with_its_signal_and_replaced() -> None:
    with trio.fail_after(30):
        async with corral.open_pool("tests.handlers_fork", size=1, start_method="forkserver") as pool:
            first, _, _ = await pool.call("ids")
            with pytest.raises(corral.WorkerCrashed) as info:
                await pool.call("segfault")
            assert info.value.signal == "SIGSEGV"
            second, _, _ = await pool.call("ids")
            assert second != first


async def test_the_pool_survives_its_template_being_killed() -> None:
    with trio.fail_after(30):
        async with corral.open_pool("tests.handlers_fork", size=2, start_method="forkserver") as pool:
            _, template, _ = await pool.call("ids")
            os.kill(template, signal.SIGKILL)
            while True:  # its workers die with it; new ones come from a new template
                try:
                    _, new_template, _ = await pool.call("ids")
                    if new_template != template:
                        break
                except corral.CorralError:
                    pass
                await trio.sleep(0.02)
            assert len(pool.workers()) >= 1


async def test_a_template_that_cannot_import_the_module_fails_the_open() -> None:
    with trio.fail_after(30), pytest.raises(corral.CorralError, match="refuses to be imported"):
        async with corral.open_pool("tests.handlers_import_fails", size=1, start_method="forkserver"):
            pass


def test_forkserver_is_for_local_python_workers_only() -> None:
    with pytest.raises(corral.InvalidSpec, match="start_method"):
        corral.Pool(corral.Command(["node", "w.js"]), start_method="forkserver")
    with pytest.raises(corral.InvalidSpec, match="start_method"):
        corral.Pool("m", start_method="fork")


async def _template_pid(pool: corral.Pool, other_than: int | None = None) -> int:
    """The pid of the running template (a new one, if ``other_than`` is given)."""
    while True:
        forkserver = pool._placements.forkserver
        assert forkserver is not None
        pid = forkserver.server.pid
        if pid is not None and pid != other_than:
            return pid
        await trio.sleep(0.01)


async def _serves(pool: corral.Pool) -> int:
    """Call until a call succeeds (the pool recovers); the template's pid."""
    while True:
        try:
            _, template, _ = await pool.call("ids")
            return template  # type: ignore[no-any-return]
        except corral.CorralError:
            await trio.sleep(0.05)


async def test_a_template_killed_while_it_imports_never_wedges_the_pool() -> None:
    """Kill the template, then its replacement while it still imports the module: the
    restarting workers get an error (not a wait without end), a third template serves,
    and leaving the pool returns."""
    with trio.fail_after(40):
        async with corral.open_pool(
            "tests.handlers_slow_import", size=2, start_method="forkserver", init_timeout=5.0
        ) as pool:
            first = await _template_pid(pool)
            os.kill(first, signal.SIGKILL)
            second = await _template_pid(pool, other_than=first)
            await trio.sleep(0.3)  # it is importing (1 s)
            os.kill(second, signal.SIGKILL)
            with trio.fail_after(20):
                third = await _serves(pool)
            assert third not in (first, second)


@asynccontextmanager
async def _stopped_template() -> AsyncIterator[tuple[corral.Pool, int]]:
    """A forkserver pool whose template is SIGSTOPped while its one worker is killed:
    the restart needs a template that does not answer. Yields (pool, old template)."""
    async with corral.open_pool(
        "tests.handlers_fork", size=1, start_method="forkserver", init_timeout=2.0
    ) as pool:
        worker, template, _ = await pool.call("ids")
        os.kill(template, signal.SIGSTOP)
        os.kill(worker, signal.SIGKILL)
        yield pool, template


async def test_a_stopped_template_is_killed_and_replaced() -> None:
    """A SIGSTOPped template does not answer a fork: after init_timeout it is killed
    and replaced, and the worker that needed it starts from the new one."""
    with trio.fail_after(40):
        async with _stopped_template() as (pool, template):
            with trio.fail_after(20):
                new_template = await _serves(pool)
            assert new_template != template


async def test_leaving_the_pool_while_the_template_is_stopped_returns() -> None:
    with trio.fail_after(20):
        async with _stopped_template():
            await trio.sleep(0.3)  # a restart is waiting for the stopped template
