"""Running a servicer call on the model worker: deadline in, cancellation out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from mic2e_services.runtime import convert
from mic2e_services.runtime.tracing import record_stages
from mic2e_services.runtime.worker import Job, ModelWorker, ProgressEvent


@dataclass(frozen=True)
class Finished:
    """The last item of `run_streaming`: the model's result and its job (for timings)."""

    result: Any
    job: Job


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as a `time.monotonic()` instant (None: no deadline)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def run_unary(worker: ModelWorker, request: Any, context: grpc.aio.ServicerContext
                    ) -> tuple[Any, Job]:
    """Submit `request`; its result and job (for timings). A caller who leaves cancels it."""
    job = worker.submit(request, deadline=deadline_of(context))
    try:
        result = await job.result()
        _trace(job, worker.name)
        return result, job
    finally:
        # No-op once finished; when the handler is cancelled (client gone, deadline), this
        # drops the queued job or tells the running model to stop at its next step.
        job.cancel()


async def run_streaming(worker: ModelWorker, request: Any, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[ProgressEvent | Finished]:
    """Yield the job's progress events, then `Finished` with its result (always last)."""
    job = worker.submit(request, deadline=deadline_of(context))
    try:
        async for event in job.events():
            yield event
        result = await job.result()
        _trace(job, worker.name)
        yield Finished(result, job)
    finally:
        job.cancel()


def _trace(job: Job, name: str) -> None:
    if job.started_at is not None and job.finished_at is not None:
        record_stages([(f"{name}.queue", job.accepted_at, job.started_at),
                       (f"{name}.model", job.started_at, job.finished_at)])


async def stream_job(worker: ModelWorker, query: Any, context: grpc.aio.ServicerContext, *,
                     server: str, stage: str, progress: Callable[[Any], Any],
                     result: Callable[[Any, Any], Any]) -> AsyncIterator[Any]:
    """The body of a streaming model RPC: one `progress(Progress)` message per step, then
    `result(output, provenance)`, built off the event loop (encoding a large image takes
    tens of milliseconds). `output` must carry `steps` and `seed`."""
    async for item in run_streaming(worker, query, context):
        if not isinstance(item, Finished):
            yield progress(convert.progress_to_proto(item))
            continue
        model, out = worker.model, item.result
        provenance = convert.provenance(
            server=server, model_id=model.model_id, revision=model.revision,
            dtype=model.dtype_name, device=model.device_name, steps=out.steps, seed=out.seed,
            timings=item.job.timings(stage))
        yield await asyncio.to_thread(result, out, provenance)
