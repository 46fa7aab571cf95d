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
        [sys.executable, "tests/rogue_worker.py", "pickle"],
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


async def test_a_large_reply_is_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 MiB of JSON empty lists is ~2.8M objects: decoded in a thread, so the event
    loop keeps running (max_frame bounds the bytes, not what they decode into)."""
    import threading

    from _corral_child import _frames

    threads: list[str] = []
    real_loads = _frames.Codec.loads

    def spy(self: _frames.Codec, data: bytes) -> object:
        if len(data) > 1 << 20:
            threads.append(threading.current_thread().name)
        return real_loads(self, data)

    monkeypatch.setattr(_frames.Codec, "loads", spy)
    with trio.fail_after(60):
        async with corral.open_pool("tests.handlers_basic", size=1, codec="json") as pool:
            result = await pool.call("many_empty_lists", 2_800_000)
    assert len(result) == 2_800_000
    assert threads and all(name != threading.main_thread().name for name in threads), threads
