"""Optional exporters. Events already go to stdlib logging; these add metrics and traces.

- ``corral.telemetry.prometheus.instrument_pool(pool)`` (extra ``corral[prometheus]``)
- ``corral.telemetry.otel.instrument_pool(pool)`` (extra ``corral[otel]``)

Both read the pool through public hooks (``statistics()``, ``observe_calls``), so
they cost nothing when not installed and little when they are.
"""
