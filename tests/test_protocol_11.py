"""Protocol 1.1 through the public API, with real worker processes: keyword arguments,
streams with credit, start-up and call progress, named cancels (docs/protocol.md)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio

import corral
from corral import Progress, RemoteError, RequestTimeout, WorkerCrashed

H = "tests.handlers_stream"


def marks(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def marks_file(tmp_path: Path) -> Path:
    return tmp_path / "marks"


async def wait_for_mark(path: Path, text: str) -> None:
    with trio.fail_after(10):
        while text not in marks(path):
            await trio.sleep(0.01)


# ----------------------------------------------------------------- keyword arguments


@pytest.mark.parametrize("codec", ["pickle", "json"])
async def test_keyword_arguments_reach_the_handler(codec: str) -> None:
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1, codec=codec) as pool:
            assert await pool.call("greet", "ann", greeting="hi", punct="!") == "hi ann!"
            assert await pool.call("greet", "bob") == "hello bob"
            async with pool.checkout() as lease:
                assert await lease.call("greet", "cy", greeting="yo") == "yo cy"
            if codec == "pickle":
                assert await pool.run_sync(int, "ff", base=16) == 255
            with pytest.raises(RemoteError, match="unexpected keyword argument 'nope'"):
                await pool.call("greet", "x", nope=1)


# ------------------------------------------------------------------------- streams


@pytest.mark.parametrize("codec", ["pickle", "json"])
async def test_a_generator_streams_its_items_in_order(codec: str) -> None:
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1, codec=codec) as pool:
            async with pool.stream("count", 1000, start=5) as chunks:
                got = [chunk async for chunk in chunks]
            assert got == list(range(5, 1005))
            assert chunks.chunks == 1000
            async with pool.stream("count_returning", 3) as chunks:
                assert [c async for c in chunks] == [0, 1, 2]
            assert chunks.result == 30  # the generator's return value
            async with pool.stream("tokens", "to be or not") as chunks:  # an async generator
                assert [c async for c in chunks] == ["to", "be", "or", "not"]
            async with pool.stream("chunks_of_lists", 4) as chunks:  # any iterable streams
                assert [c async for c in chunks] == [0, 1, 2, 3]


async def test_a_handler_that_returns_no_iterable_fails_that_stream_only() -> None:
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1) as pool:
            pid = pool.workers()[0].pid
            with pytest.raises(RemoteError, match="not an iterable") as info:
                async with pool.stream("not_a_stream") as chunks:
                    async for _ in chunks:
                        pass
            assert info.value.remote_type == "TypeError"
            assert await pool.call("greet", "z") == "hello z"
            assert pool.workers()[0].pid == pid


async def test_a_slow_consumer_holds_the_worker_to_its_window(marks_file: Path) -> None:
    """Credit: the worker runs at most ``stream_window`` chunks ahead of the consumer."""
    env = {"CORRAL_TEST_MARKS": str(marks_file)}
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1, stream_window=4, env=env) as pool:
            async with pool.stream("slow_count", 1000, 0.0) as chunks:
                assert await chunks.__anext__() == 0
                await trio.sleep(0.5)  # a slow consumer: the worker must stop and wait
                produced = [m for m in marks(marks_file) if m.startswith("produced")]
                # 4 chunks sent on credit; the fifth item made, waiting for credit.
                assert len(produced) == 5
                assert len(chunks._waiter.chunks or ()) <= 4  # the parent buffers no more
                rest = [c async for c in chunks]
            assert rest == list(range(1, 1000))


async def test_leaving_a_stream_early_closes_the_generator_and_the_worker_serves_on(
    marks_file: Path,
) -> None:
    env = {"CORRAL_TEST_MARKS": str(marks_file)}
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1, env=env) as pool:
            pid = pool.workers()[0].pid
            async with pool.stream("count", 10**9) as chunks:
                async for chunk in chunks:
                    if chunk == 3:
                        break
            await wait_for_mark(marks_file, f"count finally {10**9}")
            async with pool.stream("tokens", "a b c d e f", 0.05) as chunks:
                async for _ in chunks:
                    break
            await wait_for_mark(marks_file, "tokens finally")
            assert await pool.call("greet", "again") == "hello again"
            assert pool.workers()[0].pid == pid  # never restarted
            assert pool.statistics().restarts == 0


async def test_a_generators_cleanup_is_not_interrupted_by_the_cancels_signal(marks_file: Path) -> None:
    """Leaving a stream early names the cancel and then signals the worker: the signal
    must not land in the generator's ``finally`` (it is the stream's end, not a call
    to interrupt), however long that cleanup takes."""
    env = {"CORRAL_TEST_MARKS": str(marks_file)}
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1, env=env, cancel_grace=5.0) as pool:
            pid = pool.workers()[0].pid
            for _ in range(3):
                async with pool.stream("count_with_slow_cleanup", 10**9) as chunks:
                    async for _ in chunks:
                        break
                assert await pool.call("greet", "x") == "hello x"
            assert marks(marks_file).count("slow cleanup done") == 3
            assert pool.workers()[0].pid == pid


async def test_cancelling_a_stream_mid_chunk_stops_the_generator(marks_file: Path) -> None:
    env = {"CORRAL_TEST_MARKS": str(marks_file)}
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1, env=env) as pool:
            pid = pool.workers()[0].pid
            got = []
            with trio.move_on_after(0.3):
                async with pool.stream("slow_count", 100, 0.05, "x") as chunks:
                    async for chunk in chunks:
                        got.append(chunk)
            assert 0 < len(got) < 100
            await wait_for_mark(marks_file, "slow_count finally x")
            assert await pool.call("sleep", 0) == 0
            assert pool.workers()[0].pid == pid


async def test_an_error_mid_stream_comes_after_the_chunks_before_it() -> None:
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1) as pool:
            got = []
            with pytest.raises(RemoteError, match="failed after 3"):
                async with pool.stream("fail_after", 3) as chunks:
                    async for chunk in chunks:
                        got.append(chunk)
            assert got == [0, 1, 2]
            assert await pool.call("greet", "ok") == "hello ok"


async def test_a_crash_mid_stream_raises_worker_crashed_after_the_chunks_delivered() -> None:
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1) as pool:
            got = []
            with pytest.raises(WorkerCrashed, match="exited with code 9"):
                async with pool.stream("crash_after", 3) as chunks:
                    async for chunk in chunks:
                        got.append(chunk)
            assert got == [0, 1, 2]
            assert await pool.call("greet", "new") == "hello new"  # a fresh worker


async def test_stream_timeouts_whole_and_per_chunk() -> None:
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1) as pool:
            got = []
            with pytest.raises(RequestTimeout, match="chunk_timeout"):
                async with pool.stream("slow_count", 5, 2.0, chunk_timeout=0.3) as chunks:
                    async for chunk in chunks:
                        got.append(chunk)
            assert got == [0]
            with pytest.raises(RequestTimeout, match=r"0\.5 s \(timeout\)"):
                async with pool.stream("slow_count", 100, 0.1, timeout=0.5) as chunks:
                    async for _ in chunks:
                        pass
            # each chunk comes quickly enough, so only the whole-stream bound applies
            async with pool.stream("slow_count", 3, 0.05, chunk_timeout=1.0, timeout=10) as chunks:
                assert [c async for c in chunks] == [0, 1, 2]


async def test_streams_on_a_lease_with_a_session_and_big_chunks() -> None:
    size = 2 * 1024 * 1024
    with trio.fail_after(30):
        async with corral.open_pool(H, size=2) as pool:
            async with pool.stream("count", 3, session="s1") as chunks:
                assert [c async for c in chunks] == [0, 1, 2]
                first = chunks.worker_id
            for _ in range(3):
                async with pool.stream("count", 1, session="s1") as chunks:
                    assert [c async for c in chunks] == [0]
                    assert chunks.worker_id == first  # sticky
            async with pool.checkout() as lease, lease.stream("big_chunks", 4, size) as chunks:
                got = [c async for c in chunks]
            assert [len(c) for c in got] == [size] * 4
            assert [c[0] for c in got] == [0, 1, 2, 3]


async def test_a_pipelining_worker_takes_no_other_call_during_a_stream() -> None:
    with trio.fail_after(30):
        async with (
            corral.open_pool(H, size=2, pipeline=4) as pool,
            pool.stream("slow_count", 3, 0.1) as chunks,
        ):
            # the streaming worker is the stream's alone: calls go to the other one
            for _ in range(4):
                assert await pool.call("sleep", 0) == 0
            assert [c async for c in chunks] == [0, 1, 2]


# ------------------------------------------------------------------------ progress


async def test_a_call_reports_progress_to_its_callback() -> None:
    reports: list[Progress] = []
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1) as pool:
            assert await pool.call("work", 4, on_progress=reports.append) == 4
            assert [(r.fraction, r.text) for r in reports] == [(k / 4, f"step {k}") for k in range(1, 5)]
            assert all(r.elapsed >= 0 for r in reports)
            streamed: list[Progress] = []
            async with pool.stream("progress_in_stream", 3, on_progress=streamed.append) as chunks:
                assert [c async for c in chunks] == [0, 1, 2]
            assert [r.text for r in streamed] == ["item 0", "item 1", "item 2"]
            assert await pool.call("work", 2) == 2  # nobody listens: fine
            with pytest.raises(RemoteError, match=r"\[0, 1\]"):
                await pool.call("bad_progress")


async def test_start_up_progress_shows_in_workers_and_events(caplog: pytest.LogCaptureFixture) -> None:
    events: list[corral.WorkerEvent] = []
    env = {"CORRAL_TEST_INIT_STEPS": "5"}
    caplog.set_level(logging.DEBUG, logger="corral.worker")
    with trio.fail_after(30):
        async with corral.open_pool(H, size=1, env=env, on_event=events.append) as pool:
            info = pool.workers()[0]
            assert info.progress is not None
            assert (info.progress.fraction, info.progress.text) == (1.0, "step 5")
            assert info.startup_seconds is not None and info.startup_seconds >= 0.1
            progress = [e.detail for e in events if e.action == "progress"]
            assert progress == [f"{k * 20}% step {k}" for k in range(1, 6)]
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("starting: ")]
    assert logged[-1].startswith("starting: 1.0 step 5 (")


async def test_progress_does_not_extend_init_timeout() -> None:
    """init_timeout stays the hard cap on a start-up, however often the worker reports."""
    env = {"CORRAL_TEST_INIT_STEPS": "100"}  # 100 reports, 20 ms apart: 2 s in all
    worker = corral.Worker(corral.PythonModule(H, env=env), init_timeout=0.5)
    started = trio.current_time()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            with pytest.raises(corral.InitTimeout):
                await nursery.start(worker.run)
    assert trio.current_time() - started < 1.5
    assert worker.progress is not None and worker.progress.fraction is not None
    assert worker.progress.fraction < 1.0  # it was still reporting when it was cut off


# -------------------------------------------------------------------- named cancels


@pytest.mark.parametrize("pipeline", [1, 3])
async def test_cancels_at_random_points_never_cost_a_worker(pipeline: int) -> None:
    """Every cancel is named (`cancel` frame) before SIGINT, at any depth: a signal can
    never be lost or interrupt a call the parent still wants (docs/protocol.md §6). The
    30 s calls must be interrupted: one whose signal landed before the worker took it
    would run on past cancel_grace and cost its worker (it did, 8 in 3,000 cancels,
    before 1.1). The long run (10,000 cancels) is benchmarks/cancel_storm.py."""
    rng = random.Random(pipeline)
    with trio.fail_after(90):
        async with corral.open_pool(H, size=2, pipeline=pipeline, cancel_grace=0.5) as pool:
            pids = {w.pid for w in pool.workers()}
            completed = 0

            async def one() -> None:
                nonlocal completed
                with trio.move_on_after(rng.uniform(0, 0.004)):
                    await pool.call("sleep", rng.choice([0, 0, 0.001, 0.003, 30.0]))
                    completed += 1

            for _ in range(250):
                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(one)
            assert await pool.call("sleep", 0) == 0
            assert {w.pid for w in pool.workers()} == pids
            assert pool.statistics().restarts == 0
            assert 0 < completed < 1000
