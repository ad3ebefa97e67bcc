"""What a model author implements, kept apart from batching and transport (LitServe-like).

A model server hands its model to `runtime.worker.ModelWorker`, which calls these methods
on a dedicated thread, never on the event loop. Nothing here imports grpc or torch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class CompileSpec:
    """How a model compiles its hot module (torch.compile), as the operator set it.

    A plain value so that servers (which never import torch) can build it from settings.
    backend: torch.compile backend ("inductor" generates kernels; "eager" only traces).
    mode: Inductor's mode; "reduce-overhead" adds CUDA graphs (ignored on CPU).
    cache_dir: persistent Inductor/Triton cache; a restart with a warm cache skips code
    generation. None: PyTorch's default (a temporary folder).
    """

    backend: str = "inductor"
    mode: str | None = "reduce-overhead"
    cache_dir: str | None = None


class StepContext(Protocol):
    """Per-request handle a model uses while it runs a request."""

    def cancelled(self) -> bool:
        """True once the caller cancelled or its deadline passed: stop at the next step."""
        ...

    def progress(self, stage: str, step: int, total: int) -> None:
        """Report progress; thread-safe, cheap, never blocks on the client."""
        ...


class QuietContext:
    """A `StepContext` for the model's own runs (warm-up, benchmarks): never cancelled,
    progress goes nowhere."""

    def cancelled(self) -> bool:
        return False

    def progress(self, stage: str, step: int, total: int) -> None:
        pass


@runtime_checkable
class Model(Protocol):
    """A resident model: everything the runtime (worker, metrics, provenance) reads of it.
    The worker calls `load`, then `warmup`, then `__call__` repeatedly; torch models share
    `model_base.TorchModel`, which implements all of this."""

    #: Largest batch `__call__` accepts (1 disables batching); the model's one setting,
    #: which the worker batches up to.
    max_batch_size: int
    #: What results report (`Provenance`): the public model name, the checkpoint's
    #: revision, the dtype and the device it runs on.
    model_id: str
    revision: str
    dtype_name: str
    device_name: str

    def load(self) -> None:
        """Load weights onto the device. Slow; runs before the server reports SERVING."""
        ...

    def warmup(self) -> None:
        """Run one representative request so the first real call is not the slow one."""
        ...

    def check(self, request: Any) -> None:
        """Raise `errors.InvalidArgument` naming every bad field; cheap, no device work.
        The worker calls it before a request is costed or queued."""
        ...

    def batch_key(self, request: Any) -> Hashable | None:
        """Requests with equal non-None keys may share one `__call__`; None: run alone."""
        ...

    def estimate_seconds(self, request: Any) -> float:
        """Expected device time of one request, for admission control (rough is fine)."""
        ...

    def translate_error(self, exc: BaseException) -> BaseException | None:
        """A library error that escaped `__call__` as a domain error (out of memory ->
        `errors.ResourceExhausted`, a dead device -> `errors.DeviceLost`), else None."""
        ...

    def memory_stats(self) -> dict[str, float]:
        """Device allocator figures ("allocated", "reserved", "peak" bytes), for metrics."""
        ...

    def cache_bytes(self) -> int | None:
        """Device bytes of the model's own cache (SAM3's image features); None: it has
        none, and no metric is exported for it."""
        ...

    def __call__(
        self, requests: Sequence[Any], contexts: Sequence[StepContext]
    ) -> list[Any]:
        """Run a ready batch (checked requests with one batch key, at most
        `max_batch_size`); return one result per request, in order.

        A result may be an exception instance (e.g. `errors.Cancelled`) to fail only that
        request. Raising fails the whole batch. A request whose context is cancelled before
        the batch starts gets no device time; one cancelled while it runs gets
        `errors.Cancelled`; once every context is cancelled the model raises
        `errors.Cancelled` at its next step.
        """
        ...
