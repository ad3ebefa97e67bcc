"""Prometheus metrics of one server, on its own registry and port.

Exposed at ``http://HOST:METRICS_PORT/metrics``. The autoscaling signal is
``mic2e_demand_gpu_seconds_total``: the estimated device time (from measured step times)
of every valid request offered, admitted or refused, so its rate summed over replicas is
how many GPUs the traffic keeps busy - in GPU-seconds, not request counts (a 20-step
removal is not a 1-step one), and refused work included (short deadlines cannot hide
demand). ``mic2e_queued_gpu_seconds`` is the backlog of one replica (queued and running
work), for dashboards and admission.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

from mic2e_services.runtime.images import ImageStore
from mic2e_services.runtime.worker import ModelWorker, WorkerCallback

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _WorkerMetrics(WorkerCallback):
    """Batches and steps of a worker, as they happen."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.server, self.demand = metrics.server, metrics.demand
        self.batch_size = metrics.batch_size.labels(metrics.server)
        self.batch_seconds = metrics.batch_seconds.labels(metrics.server)
        self.step_seconds = metrics.step_seconds.labels(metrics.server)

    def on_batch(self, worker: ModelWorker, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def on_step(self, worker: ModelWorker, seconds: float) -> None:
        self.step_seconds.observe(seconds)

    def on_offered(self, worker: ModelWorker, estimate_s: float, refused: str | None) -> None:
        self.demand.labels(self.server, refused or "ADMITTED").inc(estimate_s)


class ServerMetrics:
    """The metrics of one server (`server` is its name, e.g. "object-clear")."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["server"]
        self.requests = Counter("mic2e_requests", "Calls by RPC and final status code.",
                                ["server", "rpc", "code"], registry=r)
        self.latency = Histogram("mic2e_request_seconds", "Wall time of a call, by RPC.",
                                 ["server", "rpc"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mic2e_queue_depth", "Requests waiting for the device.",
                                 labels, registry=r)
        self.queued_seconds = Gauge(
            "mic2e_queued_gpu_seconds",
            "Estimated device seconds of queued plus running work (the autoscaling metric).",
            labels, registry=r)
        self.demand = Counter(
            "mic2e_demand_gpu_seconds",
            "Estimated device seconds of the valid requests offered, by outcome: ADMITTED, or "
            "the reason they were refused (QUEUE_FULL, DEADLINE_TOO_SHORT). Its rate over all "
            "replicas is the number of GPUs the traffic keeps busy: the scaling signal.",
            ["server", "outcome"], registry=r)
        self.batch_size = Histogram("mic2e_batch_size", "Requests per model call.", labels,
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.batch_seconds = Histogram("mic2e_batch_seconds", "Device time per model call.",
                                       labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram("mic2e_step_seconds",
                                      "Time between two progress steps of a request.",
                                      labels, buckets=_STEP_BUCKETS, registry=r)
        self.cache_bytes = Gauge("mic2e_cache_bytes",
                                 "Bytes held by a cache (each bounded by its setting).",
                                 ["server", "cache"], registry=r)
        self.device_memory = Gauge("mic2e_device_memory_bytes",
                                   "Device memory held by the model process.",
                                   ["server", "kind"], registry=r)
        self._http: Any = None

    # -- wiring ------------------------------------------------------------------------------
    def watch_worker(self, worker: ModelWorker) -> None:
        """Sample queue gauges at scrape time; count batches and steps as they happen."""
        s = self.server
        self.queue_depth.labels(s).set_function(lambda: worker.stats().queued)
        self.queued_seconds.labels(s).set_function(lambda: worker.stats().queued_seconds)
        worker.add_callback(_WorkerMetrics(self))
        model = worker.model
        if model.cache_bytes() is not None:
            self.watch_cache("features", lambda: model.cache_bytes() or 0)
        for kind in ("allocated", "reserved", "peak"):
            self.device_memory.labels(s, kind).set_function(
                lambda kind=kind: model.memory_stats().get(kind, 0))

    def watch_images(self, store: ImageStore) -> None:
        """Expose the image store's own tallies (it counts; metrics only read them)."""
        self.registry.register(_ImageCacheCollector(self.server, store))
        self.watch_cache("images", lambda: store.bytes)

    def watch_cache(self, cache: str, held_bytes: Callable[[], float]) -> None:
        """mic2e_cache_bytes{cache=`cache`}, sampled at scrape time."""
        self.cache_bytes.labels(self.server, cache).set_function(held_bytes)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics endpoint; returns the bound port (port 0 picks one)."""
        host = "::" if host in ("[::]", "") else host
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _MetricsInterceptor(self)


class _ImageCacheCollector:
    """mic2e_image_cache_lookups_total{result=hit|miss}: references found or not."""

    def __init__(self, server: str, store: ImageStore) -> None:
        self.server, self.store = server, store

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("mic2e_image_cache_lookups",
                                     "Image references looked up, by result.",
                                     labels=["server", "result"])
        family.add_metric([self.server, "hit"], self.store.received_refs - self.store.ref_misses)
        family.add_metric([self.server, "miss"], self.store.ref_misses)
        yield family


class _MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts calls by final status and times them; health and reflection are left out."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.m = metrics

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith("/mic2e."):
            return handler
        rpc = details.method.rsplit("/", 1)[-1]
        m, server = self.m, self.m.server

        def done(started: float, context: grpc.aio.ServicerContext,
                 code: str | None = None) -> None:
            final = code or _code_name(context)
            m.requests.labels(server, rpc, final).inc()
            m.latency.labels(server, rpc).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    result = await inner(request, context)
                except BaseException as exc:
                    done(started, context, _exc_code(exc, context))
                    raise
                done(started, context)
                return result

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[Any]:
                started = time.perf_counter()
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException as exc:
                    done(started, context, _exc_code(exc, context))
                    raise
                done(started, context)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None or code == 0:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode(code).name if isinstance(code, tuple) else str(code)


def _exc_code(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    import asyncio

    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    name = _code_name(context)
    return "UNKNOWN" if name == "OK" else name
