"""A worker that speaks only protocol 1.0 (tests/v1_worker.py) keeps working with a
1.1 parent: it is sent nothing it did not offer, the caller gets a clear error where a
1.1 feature is needed, and a worker without ``cancel`` is never signalled."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

import corral
from corral import RemoteError

WORKER = str(Path(__file__).with_name("v1_worker.py"))


def v1(capabilities: str = "call,ping", **env: str) -> corral.Command:
    return corral.Command([sys.executable, WORKER, capabilities], env=env or None)


async def test_a_v1_worker_serves_and_gets_a_v1_welcome(tmp_path: Path) -> None:
    log = tmp_path / "welcome.json"
    with trio.fail_after(30):
        async with corral.open_pool(v1(V1_WELCOME_LOG=str(log)), size=1) as pool:
            assert await pool.call("add", 2, 3) == 5
            assert await pool.call("echo", {"k": [1, "é"]}) == {"k": [1, "é"]}
            async with pool.checkout() as lease:
                assert await lease.call("add", 1, 1) == 2
            with pytest.raises(RemoteError, match="nope"):
                await pool.call("nope")
    welcome = json.loads(log.read_text())
    assert "features" not in welcome and "pipeline" not in welcome  # nothing it did not offer


async def test_a_v1_worker_is_refused_what_needs_1_1_and_is_unharmed() -> None:
    with trio.fail_after(30):
        async with corral.open_pool(v1(), size=1) as pool:
            pid = pool.workers()[0].pid
            with pytest.raises(TypeError, match="did not offer the 'kwargs' capability"):
                await pool.call("add", 1, b=2)
            with pytest.raises(TypeError, match="did not offer the 'stream' capability"):
                async with pool.stream("echo", [1, 2]) as chunks:
                    async for _ in chunks:
                        pass
            assert await pool.call("add", 1, 2) == 3
            assert pool.workers()[0].pid == pid


async def test_a_worker_without_cancel_is_never_signalled() -> None:
    """SIGINT would kill it (§9 leaves the default action): a cancelled call runs to its
    end within cancel_grace, and the worker serves on."""
    with trio.fail_after(30):
        async with corral.open_pool(v1(), size=1, cancel_grace=5.0) as pool:
            pid = pool.workers()[0].pid
            for _ in range(5):
                with trio.move_on_after(0.05):
                    await pool.call("sleep", 0.2)
            assert await pool.call("add", 1, 2) == 3
            assert pool.workers()[0].pid == pid
            assert pool.statistics().restarts == 0


async def test_a_worker_without_cancel_that_overstays_cancel_grace_is_replaced() -> None:
    with trio.fail_after(30):
        async with corral.open_pool(v1(), size=1, cancel_grace=0.2) as pool:
            pid = pool.workers()[0].pid
            with trio.move_on_after(0.05):
                await pool.call("sleep", 30)
            assert await pool.call("add", 1, 2) == 3  # a fresh worker
            assert pool.workers()[0].pid != pid


async def test_a_v1_worker_with_cancel_is_interrupted_by_a_bare_signal() -> None:
    with trio.fail_after(30):
        async with corral.open_pool(v1("call,ping,cancel"), size=1, cancel_grace=5.0) as pool:
            pid = pool.workers()[0].pid
            start = trio.current_time()
            with trio.move_on_after(0.2):
                await pool.call("sleep", 30)
            assert await pool.call("add", 1, 2) == 3
            assert trio.current_time() - start < 5  # interrupted, not waited out
            assert pool.workers()[0].pid == pid
