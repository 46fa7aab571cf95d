"""Prometheus metrics for a pool: workers by state, calls, failures, restarts,
latency histogram, queue depth. Gauges are read from ``pool.statistics()`` at scrape
time; the latency histogram and the call counters are fed by ``pool.observe_calls``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.workers._pool import CallRecord, Pool
from corral.workers._worker import WorkerState

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)


class _PoolCollector(Collector):
    def __init__(self, pool: Pool, prefix: str) -> None:
        self._pool = pool
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        st = self._pool.statistics()
        p = self._prefix
        workers = GaugeMetricFamily(f"{p}_pool_workers", "Workers by state", labels=["pool", "state"])
        for state, n in st.workers_by_state.items():
            workers.add_metric([self._pool.name, state.lower()], n)
        yield workers
        waiting = GaugeMetricFamily(f"{p}_pool_waiting", "Callers waiting for a worker", labels=["pool"])
        waiting.add_metric([self._pool.name], st.waiting)
        yield waiting
        name = self._pool.name
        restarts = CounterMetricFamily(
            f"{p}_pool_restarts", "Automatic worker restart attempts (failed ones included)", labels=["pool"]
        )
        restarts.add_metric([name], st.restarts)
        yield restarts
        failures = CounterMetricFamily(
            f"{p}_pool_start_failures", "Workers that never became ready", labels=["pool"]
        )
        failures.add_metric([name], st.start_failures)
        yield failures
        exits = CounterMetricFamily(
            f"{p}_pool_worker_exits", "Workers that ended, by reason", labels=["pool", "reason"]
        )
        for reason in ("stopped", "crashed", "start_failed"):
            exits.add_metric([name, reason], st.exits.get(reason, 0))
        yield exits
        circuit = GaugeMetricFamily(
            f"{p}_pool_circuit_open", "1 when the circuit breaker is open", labels=["pool"]
        )
        circuit.add_metric([self._pool.name], 1.0 if self._pool.circuit_state.value == "open" else 0.0)
        yield circuit
        version = GaugeMetricFamily(
            f"{p}_pool_version",
            "The version new workers start from (1 at open, +1 per upgrade that went through)",
            labels=["pool"],
        )
        version.add_metric([name], st.version)
        yield version
        versions = GaugeMetricFamily(
            f"{p}_pool_worker_versions", "Live workers by the version they run", labels=["pool", "version"]
        )
        counts: dict[int, int] = {}
        for info in self._pool.workers():
            if info.version is not None:
                counts[info.version] = counts.get(info.version, 0) + 1
        for number, count in sorted(counts.items()):
            versions.add_metric([name, str(number)], count)
        yield versions
        starting = GaugeMetricFamily(
            f"{p}_worker_startup_progress",
            "What a starting worker last reported of its start-up (0 to 1)",
            labels=["pool", "worker"],
        )
        for info in self._pool.workers():
            if (
                info.state is WorkerState.STARTING
                and info.progress is not None
                and info.progress.fraction is not None
            ):
                starting.add_metric([name, info.id], info.progress.fraction)
        yield starting


def instrument_pool(
    pool: Pool, registry: CollectorRegistry | None = None, *, prefix: str = "corral"
) -> Callable[[], None]:
    """Export ``pool``'s metrics to ``registry`` (default: the global one).

    Returns a function that removes them again.
    """
    registry = registry if registry is not None else REGISTRY
    collector = _PoolCollector(pool, prefix)
    calls = Counter(f"{prefix}_calls", "Finished calls", ["pool", "name", "outcome"], registry=None)
    latency = Histogram(
        f"{prefix}_call_seconds", "Call latency", ["pool", "name"], buckets=LATENCY_BUCKETS, registry=None
    )
    registry.register(collector)
    registry.register(calls)
    registry.register(latency)

    def observe(record: CallRecord) -> None:
        calls.labels(record.pool, record.name, record.error or "ok").inc()
        latency.labels(record.pool, record.name).observe(record.duration)

    stop_observing = pool.observe_calls(observe)

    def remove() -> None:
        stop_observing()
        for metric in (collector, calls, latency):
            registry.unregister(metric)

    return remove
