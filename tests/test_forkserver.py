"""start_method="forkserver": a template imports the handler module once and forks workers."""

from __future__ import annotations

import os
import signal

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
