"""Workers you do not trust: ``codec="json"`` means no frame a worker sends is ever
unpickled by the parent, for every launcher (Python, Command, SSH)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

import corral


async def test_a_json_pool_refuses_a_pickle_frame_without_unpickling_it(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    hostile = corral.Command(
        [sys.executable, "tests/hostile_worker.py"],
        env={"CORRAL_TEST_MARKER": str(marker)},
        codecs=("pickle", "json"),
    )
    with trio.fail_after(20):
        async with corral.open_pool(hostile, size=1, codec="json") as pool:
            with pytest.raises(corral.ProtocolError):
                await pool.call("anything")
    assert not marker.exists()


async def test_a_python_pool_speaks_json_when_asked() -> None:
    with trio.fail_after(20):
        async with corral.open_pool("tests.handlers_basic", size=1, codec="json") as pool:
            assert await pool.call("echo", {"a": [1, 2.5, "x"]}) == {"a": [1, 2.5, "x"]}
            with pytest.raises(TypeError, match=r"pool\.call"):
                await pool.run_sync(sorted, [3, 1, 2])  # a function cannot cross as JSON
            assert await pool.call("echo", 1) == 1  # the pool keeps working


def test_codec_is_validated() -> None:
    with pytest.raises(corral.InvalidSpec, match="codec"):
        corral.Pool("tests.handlers_basic", codec="yaml")
