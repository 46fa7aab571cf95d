"""OpenTelemetry spans around pool calls, with the worker's id and pid.

Spans are recorded when a call finishes, with its real start and end times (the
worker process is not traced; the span describes the call as the caller saw it).
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, TracerProvider

from corral.workers._pool import CallRecord, Pool


def instrument_pool(pool: Pool, tracer_provider: TracerProvider | None = None) -> Callable[[], None]:
    """Record one span per call of ``pool``; returns the function that stops it."""
    tracer = trace.get_tracer("corral", tracer_provider=tracer_provider)

    def observe(record: CallRecord) -> None:
        span = tracer.start_span(
            f"corral.call {record.name}",
            start_time=record.start_ns,
            attributes={
                "corral.pool": record.pool,
                "corral.call.name": record.name,
                "corral.worker.id": record.worker_id,
                "corral.worker.pid": record.pid if record.pid is not None else -1,
            },
        )
        if record.error is not None:
            span.set_status(Status(StatusCode.ERROR, record.error))
            span.set_attribute("error.type", record.error)
        span.end(end_time=record.end_ns)

    return pool.observe_calls(observe)
