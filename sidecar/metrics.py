"""Prometheus metrics, all named remora_*, in a registry of the app's own (no global state).

Counters and histograms are pushed by the pool and the scheduler (listeners) and by the
request middleware; gauges (queue depth, memory, loaded models) are read at scrape time, so
they are never stale.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remora.core.engine import Engine
from remora.core.pool import PoolEvent, State
from remora.core.scheduler import BatchEvent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOKENS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_LOADS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _EngineGauges(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        pool = self.engine.pool
        status = pool.status()
        depth = GaugeMetricFamily("remora_queue_depth", "Sequences waiting to run, per model", labels=["model"])
        depths = self.engine.scheduler.queue_depths()
        for entry in status:
            depth.add_metric([entry.id], depths.get(entry.id, 0))
        loaded = GaugeMetricFamily("remora_model_loaded", "1 when the model is in memory", labels=["model"])
        memory = GaugeMetricFamily("remora_model_memory_bytes", "Bytes a loaded model takes", labels=["model"])
        for entry in status:
            loaded.add_metric([entry.id], 1.0 if entry.state is State.LOADED else 0.0)
            memory.add_metric([entry.id], entry.nbytes)
        yield depth
        yield loaded
        yield memory
        yield GaugeMetricFamily("remora_memory_budget_bytes", "The model memory budget", value=pool.budget_bytes)
        yield GaugeMetricFamily("remora_memory_used_bytes", "Bytes held by loaded and loading models",
                                value=pool.used_bytes)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("remora_requests", "Requests by model, route and HTTP status",
                                ["model", "route", "status"], registry=registry)
        self.duration = Histogram("remora_request_duration_seconds", "Request latency", ["route"],
                                  buckets=_LATENCY, registry=registry)
        self.inflight = Gauge("remora_inflight_requests", "Requests being served", registry=registry)
        self.queue_wait = Histogram("remora_queue_wait_seconds", "Time a request waited before its first batch",
                                    ["model"], buckets=_LATENCY, registry=registry)
        self.batch_tokens = Histogram("remora_batch_tokens", "Real tokens per forward pass", ["model"],
                                      buckets=_TOKENS, registry=registry)
        self.batch_size = Histogram("remora_batch_size", "Sequences per forward pass", ["model"],
                                    buckets=_SIZES, registry=registry)
        self.tokens = Counter("remora_tokens", "Tokens run through models", ["model"], registry=registry)
        self.loads = Counter("remora_model_loads", "Model loads by result", ["model", "result"], registry=registry)
        self.load_seconds = Histogram("remora_model_load_seconds", "Time to load a model", ["model"],
                                      buckets=_LOADS, registry=registry)
        self.evictions = Counter("remora_model_evictions", "Models taken out of memory, by reason",
                                 ["model", "reason"], registry=registry)
        self.reloads = Counter("remora_registry_reloads", "Registry file reloads (SIGHUP or the route) by result",
                               ["result"], registry=registry)
        for result in ("ok", "error"):  # both series from the start: an alert can use increase()
            self.reloads.labels(result)
        registry.register(_EngineGauges(engine))
        engine.pool.listeners.append(self.on_pool)
        engine.scheduler.listeners.append(self.on_batch)

    def on_pool(self, event: PoolEvent) -> None:
        if event.kind == "load":
            self.loads.labels(event.model_id, "ok").inc()
            self.load_seconds.labels(event.model_id).observe(event.seconds)
        elif event.kind == "load_failed":
            self.loads.labels(event.model_id, "error").inc()
        elif event.kind == "evict":
            self.evictions.labels(event.model_id, event.reason).inc()

    def on_reload(self, applied: bool) -> None:
        self.reloads.labels("ok" if applied else "error").inc()

    def on_batch(self, event: BatchEvent) -> None:
        self.batch_tokens.labels(event.model_id).observe(event.tokens)
        self.batch_size.labels(event.model_id).observe(event.seqs)
        self.tokens.labels(event.model_id).inc(event.tokens)
        for wait in event.queue_waits:
            self.queue_wait.labels(event.model_id).observe(wait)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every request by model (set by the route), route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        self.metrics.inflight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            route = _route_of(scope)
            state: dict[str, Any] = scope.get("state") or {}
            model = str(state.get("model", ""))
            self.metrics.requests.labels(model, route, str(status)).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - started)


def _route_of(scope: Scope) -> str:
    """The matched route's template (bounded label values), or 'unmatched'."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
