"""The optional exporters, against their real libraries."""

from __future__ import annotations

import pytest
import trio

import corral


async def test_prometheus_metrics_follow_the_pool() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from corral.telemetry.prometheus import instrument_pool

    registry = prometheus_client.CollectorRegistry()
    with trio.fail_after(20):
        async with corral.open_pool("tests.handlers_basic", size=2, name="metrics") as pool:
            remove = instrument_pool(pool, registry)
            for i in range(5):
                await pool.call("echo", i)
            with pytest.raises(corral.RemoteError):
                await pool.call("boom")
            text = prometheus_client.generate_latest(registry).decode()
            assert 'corral_pool_workers{pool="metrics",state="ready"} 2.0' in text
            assert 'corral_calls_total{name="echo",outcome="ok",pool="metrics"} 5.0' in text
            assert 'corral_calls_total{name="boom",outcome="RemoteError",pool="metrics"} 1.0' in text
            assert 'corral_call_seconds_count{name="echo",pool="metrics"} 5.0' in text
            assert 'corral_pool_waiting{pool="metrics"} 0.0' in text
            assert 'corral_pool_version{pool="metrics"} 1.0' in text
            assert 'corral_pool_worker_versions{pool="metrics",version="1"} 2.0' in text
            await pool.upgrade(probation=0)
            text = prometheus_client.generate_latest(registry).decode()
            assert 'corral_pool_version{pool="metrics"} 2.0' in text
            assert 'corral_pool_worker_versions{pool="metrics",version="2"} 2.0' in text
            assert 'version="1"' not in text
            remove()
            assert "corral_pool_workers" not in prometheus_client.generate_latest(registry).decode()


async def test_opentelemetry_spans_name_the_worker() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from corral.telemetry.otel import instrument_pool

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with trio.fail_after(20):
        async with corral.open_pool("tests.handlers_basic", size=1) as pool:
            stop = instrument_pool(pool, provider)
            await pool.call("add", 1, 2)
            with pytest.raises(corral.RemoteError):
                await pool.call("boom")
            stop()
            await pool.call("add", 1, 2)  # not traced any more
            pid = pool.workers()[0].pid
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["corral.call add", "corral.call boom"]
    assert spans[0].attributes is not None and spans[0].attributes["corral.worker.pid"] == pid
    assert spans[0].end_time is not None and spans[0].start_time is not None
    assert spans[0].end_time >= spans[0].start_time
    assert spans[1].status.status_code is StatusCode.ERROR


async def test_prometheus_counts_restarts_exits_and_start_failures() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from corral.telemetry.prometheus import instrument_pool

    registry = prometheus_client.CollectorRegistry()
    with trio.fail_after(20):
        async with corral.open_pool("tests.handlers_faults", size=1, name="m") as pool:
            remove = instrument_pool(pool, registry)
            with pytest.raises(corral.WorkerCrashed):
                await pool.call("exit_with", 3)
            assert await pool.call("echo", 1) == 1
            text = prometheus_client.generate_latest(registry).decode()
            remove()
    assert "# TYPE corral_pool_restarts_total counter" in text
    assert 'corral_pool_restarts_total{pool="m"} 1.0' in text
    assert 'corral_pool_worker_exits_total{pool="m",reason="crashed"} 1.0' in text
    assert 'corral_pool_start_failures_total{pool="m"} 0.0' in text


async def test_on_event_sees_every_worker_start() -> None:
    events: list[corral.WorkerEvent] = []
    with trio.fail_after(20):
        async with corral.open_pool("tests.handlers_basic", size=2, on_event=events.append) as pool:
            ids = {w.id for w in pool.workers()}
    ready = {e.worker_id for e in events if e.action == "state" and e.detail == "STARTING -> READY"}
    assert ready == ids and len(ids) == 2


async def test_prometheus_shows_a_starting_workers_progress() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from corral.telemetry.prometheus import instrument_pool

    registry = prometheus_client.CollectorRegistry()
    env = {"CORRAL_TEST_INIT_STEPS": "2", "CORRAL_TEST_INIT_HOLD": "1.0"}
    with trio.fail_after(20):
        async with corral.open_pool("tests.handlers_stream", size=1, lazy=True, env=env, name="p") as pool:
            remove = instrument_pool(pool, registry)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "greet", "x")  # starts a worker
                while not any(w.progress for w in pool.workers()):
                    await trio.sleep(0.01)
                starting = prometheus_client.generate_latest(registry).decode()
            ready = prometheus_client.generate_latest(registry).decode()
            remove()
    assert 'corral_worker_startup_progress{pool="p",worker="w1"}' in starting
    assert "corral_worker_startup_progress{" not in ready  # only while it starts
