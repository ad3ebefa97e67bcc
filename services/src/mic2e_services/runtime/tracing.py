"""OpenTelemetry traces: a span per RPC, per downstream call and per model stage.

Off by default. When on, the server and the orchestrator's downstream channels carry the
W3C trace context, so one trace spans the orchestrator and the model servers it calls.
Spans go to an OTLP collector when `otlp_endpoint` is set; a process that already
installed an SDK tracer provider (tests, an embedding application) keeps its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from mic2e_services.runtime.settings import ServerSettings
from mic2e_services.runtime.worker import Job, ModelWorker, WorkerCallback

_tracer = trace.get_tracer("mic2e_services")


def setup_tracing(settings: ServerSettings, service_name: str) -> trace.TracerProvider | None:
    """The tracer provider to instrument with, or None when tracing is off."""
    if not settings.tracing:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        return provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def server_interceptors(provider: trace.TracerProvider | None
                        ) -> list[grpc.aio.ServerInterceptor]:
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=provider)]


def client_interceptors(provider: trace.TracerProvider | None
                        ) -> Sequence[grpc.aio.ClientInterceptor]:
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return aio_client_interceptors(tracer_provider=provider)


def record_stages(stages: Sequence[tuple[str, float, float]]) -> None:
    """Add finished stages (name, monotonic start, monotonic end) as child spans of the
    current span. The work ran on the device thread; recording afterwards with explicit
    times keeps tracing out of that thread and costs nothing when tracing is off."""
    current = trace.get_current_span()
    if not current.get_span_context().is_valid:
        return
    offset_ns = time.time_ns() - time.monotonic_ns()
    for name, start, end in stages:
        span = _tracer.start_span(name, start_time=int(start * 1e9) + offset_ns)
        span.end(end_time=int(end * 1e9) + offset_ns)


class JobSpans(WorkerCallback):
    """Each finished job's queue and model time as child spans of the call's span."""

    def on_job_end(self, worker: ModelWorker, job: Job) -> None:
        if job.started_at is not None and job.finished_at is not None:
            record_stages([(f"{worker.name}.queue", job.accepted_at, job.started_at),
                           (f"{worker.name}.model", job.started_at, job.finished_at)])
