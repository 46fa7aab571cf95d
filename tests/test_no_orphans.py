"""No orphans: whatever ends a worker (close, crash, timeout, the parent's own death by
SIGKILL) ends its whole process group. (Every test here also runs under the autouse
no-leak fixture of conftest.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from corral import RequestTimeout, WorkerCrashed, open_pool
from tests.proc_util import alive, our_processes, read_line, wait_gone

ROOT = Path(__file__).resolve().parents[1]
FAULTS = "tests.handlers_faults"

PARENT_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import trio, corral

async def main():
    async with corral.open_pool("tests.handlers_faults", size=2) as pool:
        async with trio.open_nursery() as nursery:
            if {busy!r}:
                for _ in range(2):
                    nursery.start_soon(pool.call, "sleep", 100)
                while pool.statistics().workers_by_state["BUSY"] < 2:
                    await trio.sleep(0.01)
                await trio.sleep(0.2)  # the requests are in the workers, which do not read stdin
            print(" ".join(str(info.pid) for info in pool.workers()), flush=True)
            await trio.sleep(100)

trio.run(main)
"""


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
async def test_workers_die_with_a_sigkilled_parent(busy: bool) -> None:
    await _sigkill_parent_and_check(PARENT_SCRIPT.format(root=str(ROOT), busy=busy), expect=2)


async def _sigkill_parent_and_check(script: str, *, expect: int) -> None:
    """Run ``script`` (a parent that prints the pids to watch), SIGKILL it, and check
    that every pid it printed is gone within 2 s."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    pids: list[int] = []
    try:
        with trio.fail_after(20):
            line = await read_line(proc.stdout)
        pids = [int(p) for p in line.split()]
        assert len(pids) == expect and all(alive(p) for p in pids)
        assert set(pids) <= set(our_processes(proc.pid))
        os.kill(proc.pid, signal.SIGKILL)
        with trio.fail_after(5):
            await proc.wait()
        assert await wait_gone(pids, timeout=2.0) == []
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            await proc.stdout.aclose()
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


async def test_closing_the_pool_ends_workers_and_their_grandchildren() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=2) as pool:
            pids = {info.pid for info in pool.workers() if info.pid is not None}
            grandchildren = set()
            async with pool.checkout() as a, pool.checkout() as b:
                grandchildren.add(await a.call("spawn_grandchild"))
                grandchildren.add(await b.call("spawn_grandchild"))
            assert all(alive(p) for p in pids | grandchildren)
        assert await wait_gone(pids | grandchildren, timeout=2.0) == []


async def test_a_crash_ends_the_whole_group() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1) as pool:
            async with pool.checkout() as lease:
                pid = await lease.call("getpid")
                grandchild = await lease.call("spawn_grandchild")
                with pytest.raises(WorkerCrashed):
                    await lease.call("exit_with", 2)
            assert await wait_gone([pid, grandchild]) == []
            assert await pool.call("echo", 1) == 1


async def test_a_request_timeout_ends_the_whole_group() -> None:
    with trio.fail_after(10):
        async with open_pool(FAULTS, size=1, request_timeout=0.2) as pool:
            async with pool.checkout() as lease:
                pid = await lease.call("getpid")
                grandchild = await lease.call("spawn_grandchild")
                with pytest.raises(RequestTimeout):
                    await lease.call("sleep", 30)
            assert await wait_gone([pid, grandchild]) == []


async def test_cancelled_open_leaves_nothing_behind(tmp_path: Path) -> None:
    control = tmp_path / "mode"
    control.write_text("slow:5")
    with trio.fail_after(10):
        with trio.move_on_after(0.5):
            async with open_pool(
                "tests.handlers_init_control", size=3, env={"CORRAL_TEST_INIT_FILE": str(control)}
            ):
                pytest.fail("the body must not run")  # pragma: no cover
    # the autouse fixture checks that no worker is left


GRANDCHILD_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import trio, corral

async def main():
    async with corral.open_pool("tests.handlers_faults", size=2, start_method={method!r}) as pool:
        async with pool.checkout() as a, pool.checkout() as b:
            pids = [await a.call("getpid"), await b.call("getpid")]
            pids += [await a.call("spawn_grandchild"), await b.call("spawn_grandchild")]
        print(" ".join(map(str, pids)), flush=True)
        await trio.sleep(100)

trio.run(main)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
async def test_handlers_children_die_with_a_sigkilled_parent(method: str) -> None:
    """What a handler started (its process group) is gone within 2 s of the parent's
    SIGKILL, with both start methods (the pool's reaper kills the groups)."""
    await _sigkill_parent_and_check(GRANDCHILD_SCRIPT.format(root=str(ROOT), method=method), expect=4)
