"""The per-model worker: a bounded queue, one device thread, the only batcher.

GPU work never runs on the event loop. Servicers `submit` plain request objects from the
loop; each is checked by the model (every bad field at once) before it is costed or
queued. A dedicated thread takes them in arrival order, groups compatible ones (equal
`Model.batch_key`) into batches of at most `max_batch_size` within `max_wait_s`, runs the
model on each ready batch and hands results back to the loop. Deadlines and cancellation
are honoured before a request starts (its work is dropped) and while it runs (the model
sees `cancelled()`). Batch, step, job and fatal events go to `WorkerCallback`s (metrics,
tracing, the server).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from mic2e_services.errors import (
    Cancelled,
    DeadlineExceeded,
    DeviceLost,
    Mic2eError,
    ResourceExhausted,
    Unavailable,
)
from mic2e_services.runtime.model_api import Model
from mic2e_services.runtime.settings import MAX_QUEUE, MAX_WAIT_MS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """A model's progress report, as a servicer sees it."""

    stage: str
    step: int
    total: int
    elapsed_s: float


@dataclass(frozen=True)
class WorkerStats:
    """A snapshot for metrics and admission decisions."""

    queued: int
    running: int
    queued_seconds: float
    batches_run: int
    requests_run: int


class WorkerCallback:
    """Events of a model worker, as LitServe's `Callback`: subclass and override what you
    need (each method here does nothing). `on_batch`, `on_step` and `on_fatal` run on the
    device thread and must be quick; `on_job_end` runs on the event loop, in the context
    of the call that submitted the job (its trace span is the current one)."""

    def on_batch(self, worker: ModelWorker, size: int, seconds: float) -> None:
        """A model call of `size` requests took `seconds`."""

    def on_step(self, worker: ModelWorker, seconds: float) -> None:
        """A request made one step; `seconds` since its previous one."""

    def on_offered(self, worker: ModelWorker, estimate_s: float, refused: str | None) -> None:
        """A valid request of `estimate_s` device seconds was offered: admitted (`refused`
        None) or refused for the reason given (QUEUE_FULL, DEADLINE_TOO_SHORT). On the
        event loop."""

    def on_job_end(self, worker: ModelWorker, job: Job) -> None:
        """`job` finished (result, error or cancellation)."""

    def on_fatal(self, worker: ModelWorker, error: BaseException) -> None:
        """The device is lost: every job failed and the worker stopped taking work."""


class Job:
    """One submitted request: the servicer's handle on it and the model's `StepContext`."""

    def __init__(self, request: Any, key: Hashable | None, deadline: float | None,
                 estimate_s: float, loop: asyncio.AbstractEventLoop,
                 on_step: Callable[[float], None] | None = None,
                 on_end: Callable[[Job], None] | None = None) -> None:
        self.request = request
        self.key = key
        self.deadline = deadline  # time.monotonic() based, None = no deadline
        self.estimate_s = estimate_s
        self.accepted_at = time.monotonic()
        self.started_at: float | None = None  # set by the worker when the model starts it
        self.finished_at: float | None = None
        self._on_step = on_step
        self._on_end = on_end
        # The submitting call's context (its trace span), for `on_end`.
        self._context = contextvars.copy_context()
        self._last_step: float | None = None
        self._loop = loop
        self._cancel = threading.Event()
        self._events: asyncio.Queue[ProgressEvent | None] = asyncio.Queue()
        self._future: asyncio.Future[Any] = loop.create_future()
        self.started = threading.Event()

    # -- StepContext, called from the worker thread ---------------------------------------
    def cancelled(self) -> bool:
        return self._cancel.is_set() or self.expired()

    def progress(self, stage: str, step: int, total: int) -> None:
        now = time.monotonic()
        if self._on_step is not None and step > 0:
            since = self._last_step or self.started_at or now
            self._on_step(now - since)
        self._last_step = now
        event = ProgressEvent(stage, step, total, now - self.accepted_at)
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    # -- servicer side ---------------------------------------------------------------------
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def cancel(self) -> None:
        """The caller went away: drop the job if queued, or tell the model to stop."""
        self._cancel.set()

    async def events(self) -> AsyncIterator[ProgressEvent]:
        """Progress events until the job ends; then `result()` gives the outcome."""
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def result(self) -> Any:
        """The model's result; raises the job's error (a `Mic2eError` or a bug)."""
        return await self._future

    def timings(self, stage: str) -> list[tuple[str, float]]:
        """[("queue", seconds waiting), (stage, seconds running)] once finished."""
        start = self.started_at or self.accepted_at
        end = self.finished_at or time.monotonic()
        return [("queue", start - self.accepted_at), (stage, end - start)]

    # -- worker side -----------------------------------------------------------------------
    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.finished_at = time.monotonic()
        def settle() -> None:
            if not self._future.done():
                if error is not None:
                    self._future.set_exception(error)
                    # The caller may be gone (cancelled, deadline): the error is expected
                    # and must not be reported as "never retrieved".
                    self._future.add_done_callback(lambda f: f.exception())
                else:
                    self._future.set_result(result)
            self._events.put_nowait(None)
            if self._on_end is not None:
                self._on_end(self)

        self._loop.call_soon_threadsafe(settle, context=self._context)


class ModelWorker:
    """Runs one `Model` on one thread; see the module docstring."""

    def __init__(self, model: Model, *, max_queue: int = MAX_QUEUE,
                 max_wait_s: float = MAX_WAIT_MS / 1000,
                 name: str = "model",
                 callbacks: Sequence[WorkerCallback] = ()) -> None:
        self.model = model
        self.name = name
        self.max_queue = max_queue
        #: The model's own (`Model.max_batch_size`: one owner of the setting).
        self.max_batch_size = max(1, model.max_batch_size)
        self.max_wait_s = max_wait_s
        self.callbacks = list(callbacks)
        self.fatal_error: BaseException | None = None
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        #: The thread that loaded, warmed up and runs the model (set once it is warm).
        self.device_thread_id: int | None = None
        self._accepting = False
        self._stopping = False
        self.batches_run = 0
        self.requests_run = 0
        #: Observed / estimated device time, smoothed: models calibrate once at warm-up,
        #: and this keeps admission honest when the machine is slower (or faster) now.
        self.estimate_scale = 1.0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm up the model on the device thread, then start taking work.

        Loading, warm-up and every call run on the SAME thread: CUDA graphs recorded
        under torch.compile, the current CUDA stream and cuBLAS/cuDNN handles are per
        thread, so a warm-up on another thread would leave the served path cold.
        """
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if not ready.done():
                if exc is None:
                    ready.set_result(None)
                else:
                    ready.set_exception(exc)

        def main() -> None:
            try:
                self.model.load()
                self.model.warmup()
            except BaseException as exc:  # reported to start()'s caller, thread ends
                loop.call_soon_threadsafe(settle, exc)
                return
            self.device_thread_id = threading.get_ident()
            loop.call_soon_threadsafe(settle, None)
            self._run()

        self._thread = threading.Thread(target=main, name=f"{self.name}-worker", daemon=True)
        self._thread.start()
        await ready
        with self._cond:
            # A stop() that came while the model loaded wins: never start taking work then.
            self._accepting = not self._stopping

    @property
    def ready(self) -> bool:
        return self._accepting

    def add_callback(self, callback: WorkerCallback) -> None:
        self.callbacks.append(callback)

    def _step(self, seconds: float) -> None:
        for callback in self.callbacks:
            callback.on_step(self, seconds)

    def _job_end(self, job: Job) -> None:
        for callback in self.callbacks:
            callback.on_job_end(self, job)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop taking work; queued work still runs unless `timeout_s` passes first."""
        self._accepting = False
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout_s)

    # -- submission (event loop) -------------------------------------------------------------
    def stats(self) -> WorkerStats:
        with self._cond:
            queued = sum(j.estimate_s for j in self._pending)
            running = sum(j.estimate_s for j in self._running)
            return WorkerStats(len(self._pending), len(self._running), queued + running,
                               self.batches_run, self.requests_run)

    def submit(self, request: Any, *, deadline: float | None = None) -> Job:
        """Check `request` and queue it; refuse at once when it cannot be served in time.

        `deadline` is a `time.monotonic()` instant. Raises InvalidArgument (naming every
        bad field: only a valid request is costed and queued), Unavailable (not started or
        stopping), DeadlineExceeded (already expired), ResourceExhausted (queue full, or
        the queued work outlasts the deadline: a retry once it drains may fit) - never
        queues a request that is bound to fail. A request whose own estimate outlasts the
        deadline is DeadlineExceeded, naming the deadline it needs: no retry could fit it.
        """
        self.model.check(request)
        if not self._accepting:
            raise Unavailable(f"{self.name} is not accepting work", reason="NOT_SERVING")
        loop = asyncio.get_running_loop()
        estimate = float(self.model.estimate_seconds(request)) * self.estimate_scale
        job = Job(request, self.model.batch_key(request), deadline, estimate, loop,
                  self._step, self._job_end)
        if job.expired():
            raise DeadlineExceeded("deadline expired before the work started")
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and estimate > left:
            # Not RESOURCE_EXHAUSTED: even an idle server could not finish it in time, so a
            # retry after any wait fails the same way. Nor is it demand: more replicas would
            # not serve it either.
            raise DeadlineExceeded(
                f"{self.name} needs about {estimate:.2f}s for this request alone, but its "
                f"deadline leaves {max(left, 0):.2f}s: give it a deadline of at least "
                f"{math.ceil(estimate * 10) / 10:.1f}s")
        try:
            self._admit(job, deadline)
        except ResourceExhausted as exc:
            self._offered(estimate, exc.reason)
            raise
        self._offered(estimate, None)
        return job

    def _admit(self, job: Job, deadline: float | None) -> None:
        with self._cond:
            backlog = sum(j.estimate_s for j in self._pending) + sum(
                j.estimate_s for j in self._running)
            if len(self._pending) >= self.max_queue:
                raise ResourceExhausted(
                    f"{self.name} queue is full ({self.max_queue} requests)",
                    retry_after_s=max(backlog, 0.05), reason="QUEUE_FULL")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and backlog + job.estimate_s > left:
                raise ResourceExhausted(
                    f"{self.name} cannot finish this request before its deadline: about "
                    f"{backlog:.2f}s of queued work plus {job.estimate_s:.2f}s for it, "
                    f"{max(left, 0):.2f}s left", retry_after_s=max(backlog, 0.05),
                    reason="DEADLINE_TOO_SHORT")
            self._pending.append(job)
            self._cond.notify()

    def _offered(self, estimate_s: float, refused: str | None) -> None:
        for callback in self.callbacks:
            callback.on_offered(self, estimate_s, refused)

    # -- the device thread -------------------------------------------------------------------
    def _take_batch(self) -> list[Job] | None:
        """Wait for work; return the next batch (compatible jobs, FIFO), None to exit."""
        with self._cond:
            while True:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return None
                first = self._pending.popleft()
                if self._drop_if_dead(first):
                    continue
                break
            batch = [first]
            if first.key is None or self.max_batch_size == 1:
                self._running = batch
                return batch
            # Give compatible requests a short moment to arrive: a bigger batch is worth
            # a few milliseconds on a GPU, never a long wait.
            until = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                for job in list(self._pending):
                    if len(batch) >= self.max_batch_size:
                        break
                    if job.key == first.key:
                        self._pending.remove(job)
                        if not self._drop_if_dead(job):
                            batch.append(job)
                left = until - time.monotonic()
                if len(batch) >= self.max_batch_size or left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            self._running = batch
            return batch

    def _calibrate(self, batch: list[Job], elapsed: float) -> None:
        """Move `estimate_scale` towards what this batch really took (bounded EWMA)."""
        estimated = sum(j.estimate_s for j in batch) / self.estimate_scale
        if estimated <= 0 or any(j.cancelled() for j in batch):
            return  # a stopped batch says nothing about speed
        # A batch shares the device, so it may take less than the sum of its estimates;
        # only ever use it to learn that things are SLOWER, or singles to learn faster.
        observed = elapsed / estimated
        if len(batch) > 1 and observed < self.estimate_scale:
            return
        scale = 0.7 * self.estimate_scale + 0.3 * observed
        self.estimate_scale = min(max(scale, 0.1), 20.0)

    def _fail_fatally(self, exc: BaseException, batch: list[Job]) -> None:
        """The device is gone: fail this batch and everything queued, stop taking work."""
        log.critical("%s: device lost, refusing all work: %s", self.name, exc)
        self._accepting = False
        self.fatal_error = exc
        with self._cond:
            pending, self._pending = list(self._pending), deque()
            self._running = []
        for job in [*batch, *pending]:
            job.finish(error=exc)
        for callback in self.callbacks:
            callback.on_fatal(self, exc)

    @staticmethod
    def _drop_if_dead(job: Job) -> bool:
        if job._cancel.is_set():
            job.finish(error=Cancelled("cancelled before the work started"))
            return True
        if job.expired():
            job.finish(error=DeadlineExceeded("deadline expired while queued"))
            return True
        return False

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            started = time.monotonic()
            for job in batch:
                job.started_at = started
                job.started.set()
            try:
                results = self.model([j.request for j in batch], batch)
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"model returned {len(results)} results for {len(batch)} requests")
            except Exception as exc:  # the whole batch fails; each caller gets the error
                translated = self.model.translate_error(exc)
                if translated is not None:
                    exc = translated
                elif not isinstance(exc, Mic2eError):
                    log.exception("%s: model call failed", self.name)
                results = [exc] * len(batch)
                if isinstance(exc, DeviceLost):
                    self._fail_fatally(exc, batch)
                    return
            finally:
                with self._cond:
                    self._running = []
            elapsed = time.monotonic() - started
            self._calibrate(batch, elapsed)
            self.batches_run += 1
            self.requests_run += len(batch)
            for callback in self.callbacks:
                callback.on_batch(self, len(batch), elapsed)
            for job, result in zip(batch, results, strict=True):
                if isinstance(result, Cancelled) and job.expired() and not job._cancel.is_set():
                    result = DeadlineExceeded("deadline expired while running")
                if isinstance(result, BaseException):
                    job.finish(error=result)
                elif job._cancel.is_set():
                    job.finish(error=Cancelled("cancelled while running"))
                else:
                    job.finish(result=result)
