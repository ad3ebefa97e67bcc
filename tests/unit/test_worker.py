"""The model worker: queueing, admission, deadlines, cancellation, batching."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from mic2e_services.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from mic2e_services.runtime.worker import ModelWorker, WorkerCallback

from tests.fakes import FakeModel, FakeRequest


async def started_worker(model: FakeModel, **kw) -> ModelWorker:
    worker = ModelWorker(model, **kw)
    await worker.start()
    return worker


async def test_result_and_progress_in_order():
    worker = await started_worker(FakeModel())
    job = worker.submit(FakeRequest(21, steps=3))
    steps = [e.step async for e in job.events()]
    assert steps == [1, 2, 3]
    assert await job.result() == 42
    await worker.stop()


async def test_load_warmup_and_calls_share_one_device_thread():
    # CUDA graphs and the current stream are per thread: a warm-up elsewhere is wasted.
    model = FakeModel()
    worker = await started_worker(model)
    for i in range(3):
        await worker.submit(FakeRequest(i)).result()
    await worker.stop()
    threads = model.threads
    assert len(threads["load"]) == len(threads["warmup"]) == len(threads["call"]) == 1
    assert threads["load"] == threads["warmup"] == threads["call"] == {worker.device_thread_id}


async def test_load_failure_reaches_start_and_nothing_is_accepted():
    model = FakeModel()
    model.load_error = RuntimeError("checkpoint is corrupt")
    worker = ModelWorker(model)
    with pytest.raises(RuntimeError, match="corrupt"):
        await worker.start()
    assert not worker.ready
    with pytest.raises(Unavailable):
        worker.submit(FakeRequest(1))


async def test_stop_while_loading_wins_over_the_end_of_loading():
    gate = threading.Event()
    worker = ModelWorker(FakeModel(load_gate=gate))
    starting = asyncio.create_task(worker.start())
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(worker.stop(timeout_s=5))
    await asyncio.sleep(0.05)
    gate.set()
    await starting
    await stopping
    assert not worker.ready
    with pytest.raises(Unavailable):
        worker.submit(FakeRequest(1))


async def test_an_invalid_request_is_refused_before_it_is_costed_or_queued():
    model = FakeModel(step_s=0.05)
    model.max_batch_size = 1
    worker = await started_worker(model)
    busy = worker.submit(FakeRequest(1, steps=20))  # long work ahead of it
    before = worker.stats()
    with pytest.raises(InvalidArgument) as info:
        worker.submit(FakeRequest(2, steps=10**6, invalid=("width", "steps")))
    assert [v.field for v in info.value.violations] == ["width", "steps"]
    after = worker.stats()
    assert (after.queued, after.queued_seconds) == (before.queued, before.queued_seconds)
    busy.cancel()
    await worker.stop()


class Events(WorkerCallback):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_batch(self, worker, size, seconds):
        self.seen.append(f"batch {size}")

    def on_step(self, worker, seconds):
        self.seen.append("step")

    def on_job_end(self, worker, job):
        self.seen.append(f"end {job.request.value}")


async def test_callbacks_hear_batches_steps_and_job_ends():
    events = Events()
    worker = ModelWorker(FakeModel(), callbacks=[events])
    await worker.start()
    job = worker.submit(FakeRequest(5, steps=2))
    assert await job.result() == 10
    await asyncio.sleep(0)  # on_job_end runs on the loop, right after the result
    assert events.seen == ["step", "step", "batch 1", "end 5"]
    await worker.stop()


async def test_not_started_is_unavailable():
    worker = ModelWorker(FakeModel())
    with pytest.raises(Unavailable):
        worker.submit(FakeRequest(1))


class Offered(WorkerCallback):
    def __init__(self) -> None:
        self.seen: list[tuple[float, str | None]] = []

    def on_offered(self, worker, estimate_s, refused):
        self.seen.append((estimate_s, refused))


async def test_queue_full_is_resource_exhausted_with_retry_hint():
    model = FakeModel(step_s=0.05, max_batch_size=1)
    worker = await started_worker(model, max_queue=2)
    offered = Offered()
    worker.add_callback(offered)
    first = worker.submit(FakeRequest(1))
    await asyncio.to_thread(model.started.wait, 5)  # first one is running, queue empty
    queued = [worker.submit(FakeRequest(i)) for i in (2, 3)]
    with pytest.raises(ResourceExhausted) as info:
        worker.submit(FakeRequest(4))
    assert info.value.retry_after_s and info.value.retry_after_s > 0
    assert info.value.reason == "QUEUE_FULL"
    # Every valid request is offered demand, the refused one with its reason; an invalid
    # one is not (it was never costed).
    with pytest.raises(InvalidArgument):
        worker.submit(FakeRequest(5, invalid=("steps",)))
    assert [r for _, r in offered.seen] == [None, None, None, "QUEUE_FULL"]
    assert all(e > 0 for e, _ in offered.seen)
    assert [await j.result() for j in (first, *queued)] == [2, 4, 6]
    await worker.stop()


async def test_expired_deadline_is_refused_and_never_runs():
    model = FakeModel()
    worker = await started_worker(model)
    with pytest.raises(DeadlineExceeded):
        worker.submit(FakeRequest(1), deadline=time.monotonic() - 1)
    assert model.batches == []
    await worker.stop()


async def test_deadline_passing_while_queued_skips_the_work():
    model = FakeModel(step_s=0.05, max_batch_size=1)
    worker = await started_worker(model)
    blocker = worker.submit(FakeRequest(1, steps=6))  # ~0.3 s
    await asyncio.to_thread(model.started.wait, 5)
    # Admission uses estimates: give it a deadline it *could* meet, then let it lapse.
    late = worker.submit(FakeRequest(2, key=None, steps=1), deadline=time.monotonic() + 0.36)
    model.step_s = 0.2  # the running job now takes longer than estimated
    with pytest.raises(DeadlineExceeded):
        await late.result()
    await blocker.result()
    assert [2] not in model.batches
    await worker.stop()


async def test_wait_beyond_deadline_refused_at_once():
    model = FakeModel(step_s=0.1, max_batch_size=1)
    worker = await started_worker(model)
    worker.submit(FakeRequest(1, steps=10))  # ~1 s of queued work
    with pytest.raises(ResourceExhausted) as info:
        worker.submit(FakeRequest(2, steps=1), deadline=time.monotonic() + 0.3)
    assert info.value.reason == "DEADLINE_TOO_SHORT"
    assert info.value.retry_after_s >= 0.5
    await worker.stop()


async def test_work_longer_than_its_deadline_is_deadline_exceeded_even_when_idle():
    # No retry could fit it, so no RESOURCE_EXHAUSTED with a retry hint; and it is no
    # demand (more replicas would not serve it either). The message says what would do.
    model = FakeModel(step_s=0.1, max_batch_size=1)
    worker = await started_worker(model)
    offered = Offered()
    worker.add_callback(offered)
    with pytest.raises(DeadlineExceeded, match=r"at least 1\.0s"):
        worker.submit(FakeRequest(1, steps=10), deadline=time.monotonic() + 0.3)  # ~1 s
    assert model.batches == [] and offered.seen == []
    assert await worker.submit(FakeRequest(2, steps=1),
                               deadline=time.monotonic() + 30).result() == 4
    await worker.stop()


async def test_cancel_while_queued_drops_the_work():
    model = FakeModel(step_s=0.05, max_batch_size=1)
    worker = await started_worker(model)
    running = worker.submit(FakeRequest(1, steps=4))
    await asyncio.to_thread(model.started.wait, 5)
    queued = worker.submit(FakeRequest(2, key=None))
    queued.cancel()
    with pytest.raises(Cancelled):
        await queued.result()
    assert await running.result() == 2
    assert all(2 not in b for b in model.batches)
    await worker.stop()


async def test_cancel_while_running_stops_within_one_step_and_frees_worker():
    model = FakeModel(step_s=0.05, max_batch_size=1)
    worker = await started_worker(model)
    job = worker.submit(FakeRequest(1, steps=100))
    seen = 0
    async for event in job.events():
        seen = event.step
        if event.step == 2:
            job.cancel()
    with pytest.raises(Cancelled):
        await job.result()
    assert seen <= 3
    assert model.steps_run <= 3
    # The worker is free again: the next request runs straight away.
    nxt = worker.submit(FakeRequest(5, steps=1))
    assert await asyncio.wait_for(nxt.result(), 2) == 10
    await worker.stop()


async def test_batches_only_from_compatible_requests():
    model = FakeModel(step_s=0.05, max_batch_size=4)
    worker = await started_worker(model, max_wait_s=0.05)
    blocker = worker.submit(FakeRequest(0, key="x", steps=2))
    await asyncio.to_thread(model.started.wait, 5)
    jobs = [worker.submit(FakeRequest(i, key="a" if i % 2 else "b", steps=1))
            for i in range(1, 7)]
    results = [await j.result() for j in jobs]
    await blocker.result()
    assert results == [2 * i for i in range(1, 7)]
    batches = model.batches[1:]
    for batch in batches:
        assert len({v % 2 for v in batch}) == 1, f"mixed batch {batch}"
        assert len(batch) <= 4
    assert sorted(len(b) for b in batches) == [3, 3]
    await worker.stop()


async def test_max_batch_size_respected_and_none_key_runs_alone():
    model = FakeModel(step_s=0.05, max_batch_size=2)
    worker = await started_worker(model, max_wait_s=0.05)
    blocker = worker.submit(FakeRequest(0, steps=2))
    await asyncio.to_thread(model.started.wait, 5)
    jobs = [worker.submit(FakeRequest(i, key="a", steps=1)) for i in range(1, 6)]
    solo = worker.submit(FakeRequest(9, key=None, steps=1))
    await asyncio.gather(*(j.result() for j in [*jobs, solo, blocker]))
    assert max(len(b) for b in model.batches) == 2
    assert [9] in model.batches
    await worker.stop()


async def test_per_request_error_fails_only_that_request():
    worker = await started_worker(FakeModel(), max_wait_s=0.05)
    good = worker.submit(FakeRequest(1, steps=1))
    bad = worker.submit(FakeRequest(2, steps=1, bad=True))
    assert await good.result() == 2
    with pytest.raises(InvalidArgument) as info:
        await bad.result()
    assert info.value.field == "value"
    await worker.stop()


async def test_model_crash_fails_the_batch_and_worker_keeps_serving():
    model = FakeModel()
    worker = await started_worker(model)
    model.crash = RuntimeError("CUDA kernel exploded")
    with pytest.raises(RuntimeError, match="exploded"):
        await worker.submit(FakeRequest(1)).result()
    assert await worker.submit(FakeRequest(3, steps=1)).result() == 6
    await worker.stop()


async def test_admission_learns_when_the_model_underestimates():
    class Optimistic(FakeModel):
        def estimate_seconds(self, request):
            return super().estimate_seconds(request) / 10  # claims 10x faster than it is

    model = Optimistic(step_s=0.02, max_batch_size=1)
    worker = await started_worker(model)
    for i in range(6):
        await worker.submit(FakeRequest(i, key=None, steps=3)).result()
    assert worker.estimate_scale > 4  # learnt most of the 10x from what it observed
    job = worker.submit(FakeRequest(9, key=None, steps=3))
    assert job.estimate_s > 4 * (3 * 0.02 / 10)  # admission uses the learnt scale
    await job.result()
    await worker.stop()
