"""Fakes for the runtime's tests: a fake model (worker, server, status; not any model
path) and a recording `StepContext` for calling real models directly."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from mic2e_services.errors import Cancelled, FieldViolation, InvalidArgument
from mic2e_services.schema import raise_if


@dataclass(frozen=True)
class FakeRequest:
    value: int
    key: Hashable | None = "k"
    steps: int = 5
    bad: bool = False  # the model finds it bad while running (fails alone in its batch)
    invalid: tuple[str, ...] = ()  # fields `check` refuses, before it is queued


class FakeModel:
    """Doubles numbers in `steps` sleeps of `step_s`; records every batch it ran."""

    model_id, revision, dtype_name, device_name = "fake", "fake-1", "float32", "cpu"

    def __init__(self, *, step_s: float = 0.01, max_batch_size: int = 4,
                 load_gate: threading.Event | None = None) -> None:
        self.step_s = step_s
        self.max_batch_size = max_batch_size
        self.load_gate = load_gate
        self.loaded = False
        self.batches: list[list[int]] = []
        self.steps_run = 0
        self.started = threading.Event()
        #: Raised by the next call (once), to test a model that fails outright.
        self.crash: Exception | None = None
        #: Raised by load(), to test a model that cannot start.
        self.load_error: Exception | None = None
        #: Thread ids seen per phase ("load", "warmup", "call").
        self.threads: dict[str, set[int]] = {"load": set(), "warmup": set(), "call": set()}

    def load(self) -> None:
        self.threads["load"].add(threading.get_ident())
        if self.load_gate is not None:
            self.load_gate.wait(30)
        if self.load_error is not None:
            raise self.load_error
        self.loaded = True

    def warmup(self) -> None:
        self.threads["warmup"].add(threading.get_ident())

    def check(self, request: FakeRequest) -> None:
        raise_if(FieldViolation(name, "invalid on purpose") for name in request.invalid)

    def batch_key(self, request: FakeRequest) -> Hashable | None:
        return request.key

    def estimate_seconds(self, request: FakeRequest) -> float:
        return request.steps * self.step_s

    def translate_error(self, exc: BaseException) -> BaseException | None:
        return None

    def memory_stats(self) -> dict[str, float]:
        return {}

    def cache_bytes(self) -> int | None:
        return None

    def __call__(self, requests: Sequence[FakeRequest], contexts: Sequence[Any]) -> list[Any]:
        if self.crash is not None:
            crash, self.crash = self.crash, None
            raise crash
        self.threads["call"].add(threading.get_ident())
        self.batches.append([r.value for r in requests])
        self.started.set()
        steps = max(r.steps for r in requests)
        for step in range(1, steps + 1):
            if all(c.cancelled() for c in contexts):
                raise Cancelled("stopped")
            time.sleep(self.step_s)
            self.steps_run += 1
            for c in contexts:
                c.progress("fake", step, steps)
        return [InvalidArgument("value", "bad on purpose") if r.bad else r.value * 2
                for r in requests]


class Recorder:
    """A StepContext that records progress and cancels after `cancel_after` steps."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.cancel_after = cancel_after

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.events) >= self.cancel_after

    def progress(self, stage: str, step: int, total: int) -> None:
        self.events.append((stage, step, total))
