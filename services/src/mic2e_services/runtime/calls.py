"""Running a servicer call on the model worker: deadline in, cancellation out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from mic2e_services.runtime import convert
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


async def run_unary(worker: ModelWorker, request: Any, context: grpc.aio.ServicerContext,
                    keep: Callable[[], None] | None = None) -> tuple[Any, Job]:
    """Submit `request`; its result and job (for timings). A caller who leaves cancels it.
    `keep()` runs once the worker accepted the request (it remembers the request's image:
    a refused request leaves nothing behind)."""
    job = _submit(worker, request, context, keep)
    try:
        return await job.result(), job
    finally:
        # No-op once finished; when the handler is cancelled (client gone, deadline), this
        # drops the queued job or tells the running model to stop at its next step.
        job.cancel()


async def run_streaming(worker: ModelWorker, request: Any, context: grpc.aio.ServicerContext,
                        keep: Callable[[], None] | None = None
                        ) -> AsyncIterator[ProgressEvent | Finished]:
    """Yield the job's progress events, then `Finished` with its result (always last)."""
    job = _submit(worker, request, context, keep)
    try:
        async for event in job.events():
            yield event
        yield Finished(await job.result(), job)
    finally:
        job.cancel()


def _submit(worker: ModelWorker, request: Any, context: grpc.aio.ServicerContext,
            keep: Callable[[], None] | None) -> Job:
    job = worker.submit(request, deadline=deadline_of(context))
    if keep is not None:
        keep()
    return job


async def stream_job(worker: ModelWorker, query: Any, context: grpc.aio.ServicerContext, *,
                     server: str, stage: str, progress: Callable[[Any], Any],
                     result: Callable[[Any, Any], Any], keep: Callable[[], None] | None = None
                     ) -> AsyncIterator[Any]:
    """The body of a streaming model RPC: one `progress(Progress)` message per step, then
    `result(output, provenance)`, built off the event loop (encoding a large image takes
    tens of milliseconds). `output` must carry `steps` and `seed`."""
    async for item in run_streaming(worker, query, context, keep):
        if not isinstance(item, Finished):
            yield progress(convert.progress_to_proto(item))
            continue
        out = item.result
        yield await asyncio.to_thread(result, out, provenance(worker, server, item.job, stage,
                                                               out.steps, out.seed))


def provenance(worker: ModelWorker, server: str, job: Job, stage: str, steps: int = 0,
               seed: int = 0) -> Any:
    """The `Provenance` of a finished job: the worker's model and the job's timings."""
    model = worker.model
    return convert.provenance(server=server, model_id=model.model_id, revision=model.revision,
                              dtype=model.dtype_name, device=model.device_name, steps=steps,
                              seed=seed, timings=job.timings(stage))
