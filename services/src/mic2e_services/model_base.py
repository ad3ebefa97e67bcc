"""What every torch model server's model shares, written once (`runtime.model_api.Model`).

A model class says how to load its parts (`load_parts`), how to place them on the device
with the memory modes (`setup`), what its hot module is (`compile_targets`), how to check
and cost one request (`violations`, `estimate_seconds`, `batch_key`) and how to run a
ready batch of compatible requests (`run`; the worker is the only batcher). This base
owns the rest, the same way for all of them:

- device and dtype, refused early when the device cannot run the memory modes asked for;
- the checkpoint and its revision (`checkpoints.resolve_checkpoint`), or parts built in
  memory (`from_parts`, for benchmarks);
- "not loaded" -> `errors.Unavailable`; device failures (out of memory, a dead CUDA
  context) -> domain errors, in `translate_error` only;
- input checks that report every bad field at once (`check`), which the worker runs before
  a request is costed or queued;
- cancellation: a request whose caller left before its batch started never reaches `run`;
  one who leaves while it runs stops hearing progress (`Steps`) and gets `errors.Cancelled`
  instead of the result its batch-mates paid for; once every caller has left, the batch
  stops at its next step;
- seeds (`seeds`: the caller's, or one drawn here that the result reports), the stage name
  of progress events (`STAGE`, declared in the API layer) and a clock for timing device
  work (`clock`, warm-up calibration).

Model code: imports torch, never grpc.
"""

from __future__ import annotations

import abc
import secrets
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from mic2e_services import errors
from mic2e_services.checkpoints import public_name, resolve_checkpoint
from mic2e_services.runtime.model_api import CompileSpec, StepContext
from mic2e_services.schema import raise_if
from mic2e_services.torch_device import (
    check_memory_options,
    compile_module,
    dtype_name,
    memory_stats,
    quantize_weights,
    resolve_device,
    resolve_dtype,
    translate_error,
)

__all__ = ["RANDOM_SEED_LIMIT", "Steps", "TorchModel"]

#: Seeds the server draws for a request without one stay below this, so every client
#: language can show them exactly (a caller's may be any 64-bit value).
RANDOM_SEED_LIMIT = 2**32


class Steps:
    """Progress of a batch's steps, and its cancellation: each request hears of every step
    until its caller leaves; once every caller has left, the next step raises
    `errors.Cancelled` (nothing more is computed, not even a decode)."""

    def __init__(self, stage: str, total: int, contexts: Sequence[StepContext]) -> None:
        self.stage, self.total, self.contexts = stage, total, contexts
        self.stopped = [False] * len(contexts)

    def __call__(self, index: int) -> None:
        """Step `index` (from 0) is done."""
        for j, context in enumerate(self.contexts):
            if not self.stopped[j]:
                context.progress(self.stage, index + 1, self.total)
                self.stopped[j] = context.cancelled()
        if all(self.stopped):
            raise errors.Cancelled(f"cancelled after step {index + 1} of {self.total}")

    def callback(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]
                 ) -> dict[str, Any]:
        """The same, as a diffusers `callback_on_step_end`."""
        self(index)
        return tensors


class TorchModel(abc.ABC):
    """A resident torch model on one device; see the module docstring."""

    #: Stage name of its progress events.
    STAGE: ClassVar[str]
    #: The half precision it serves in on an accelerator.
    HALF: ClassVar[torch.dtype] = torch.float16
    #: Files of a hub repository it reads (None: all), and files it never reads.
    HUB_FILES: ClassVar[Sequence[str] | None] = None
    HUB_IGNORE: ClassVar[Sequence[str]] = ()
    #: Why this model refuses model CPU offload, or None when it supports it.
    OFFLOAD_REFUSED: ClassVar[str | None] = None
    #: torch.compile with dynamic shapes from the first call (inputs vary in several
    #: dimensions), rather than torch's automatic choice.
    COMPILE_DYNAMIC: ClassVar[bool | None] = None
    #: Largest batch when the operator sets none.
    DEFAULT_BATCH: ClassVar[int] = 1

    #: Device failures (out of memory, a dead CUDA context) -> domain errors.
    translate_error = staticmethod(translate_error)

    def __init__(self, model_id: str, *, device: str = "cpu", dtype: str | None = None,
                 max_batch_size: int | None = None, revision: str | None = None,
                 quantization: str = "none", offload: str = "none", vae_tiling: bool = False,
                 compile: CompileSpec | None = None, model_name: str | None = None) -> None:
        if offload != "none" and self.OFFLOAD_REFUSED:
            raise ValueError(f"offload={offload!r} is not supported: {self.OFFLOAD_REFUSED}; "
                             "set MIC2E_OFFLOAD=none")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        #: Where the checkpoint is read from: a hub id or a local folder.
        self.source = str(model_id)
        #: How callers see the model (`Provenance.model_id`): `model_name` if the operator
        #: set one, else the hub id (`checkpoints.public_name`), never a server path.
        self.model_id = model_name or public_name(model_id)
        self.device = resolve_device(device)
        # Refuse a memory mode this device cannot run now, not after minutes of loading.
        check_memory_options(self.device, quantization=quantization, offload=offload,
                             compile=compile)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = resolve_dtype(dtype, self.device, half=self.HALF)
        self.dtype_name = dtype_name(self.dtype)
        self.device_name = str(self.device)
        if self.device.type == "cuda":
            self.device_name = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        self.quantization, self.offload = quantization, offload
        self.vae_tiling, self.compile = vae_tiling, compile
        self.max_batch_size = max_batch_size or self.default_batch_size()
        #: The checkpoint's commit (hub), ``local-<hash>`` (a folder) or ``in-memory``.
        self.revision = revision or "unknown"
        self._requested_revision = revision
        self._parts: Any = None
        self.loaded = False

    @classmethod
    def from_parts(cls, parts: Any, *, model_id: str = "in-memory", **kwargs: Any) -> Any:
        """A model around parts already built in memory (what `load_parts` returns), not a
        checkpoint: for benchmarks, full-size random weights made directly on the GPU.
        Device and dtype default to the parts' own; other arguments as the constructor's."""
        param = next(cls.main_module(parts).parameters())
        kwargs.setdefault("device", str(param.device))
        kwargs.setdefault("dtype", dtype_name(param.dtype))
        kwargs.setdefault("revision", getattr(parts, "revision", None) or "in-memory")
        model = cls(model_id, **kwargs)
        model._parts = parts
        return model

    @classmethod
    def main_module(cls, parts: Any) -> torch.nn.Module:
        """The module whose device and dtype are the model's, among `parts`."""
        return parts if isinstance(parts, torch.nn.Module) else parts[0]

    def default_batch_size(self) -> int:
        return self.DEFAULT_BATCH

    # -- lifecycle -----------------------------------------------------------------------

    def load(self) -> None:
        """Load the checkpoint (or adopt the parts built in memory), place it on the
        device with the memory modes, and compile when asked."""
        parts, self._parts = self._parts, None
        if parts is None:
            folder, self.revision = resolve_checkpoint(
                self.source, self._requested_revision, allow_patterns=self.HUB_FILES,
                ignore_patterns=self.HUB_IGNORE)
            parts = self.load_parts(folder)
        self.setup(parts)
        self.loaded = True
        if self.compile is not None:
            self.enable_compile(self.compile)

    @abc.abstractmethod
    def load_parts(self, folder: Path) -> Any:
        """Read the checkpoint in `folder` into CPU memory, in `self.dtype`."""

    @abc.abstractmethod
    def setup(self, parts: Any) -> None:
        """Take `parts` (loaded or built in memory): memory modes, then the device."""

    @abc.abstractmethod
    def compile_targets(self) -> Iterable[torch.nn.Module]:
        """The hot modules torch.compile compiles (each once)."""

    def enable_compile(self, spec: CompileSpec) -> Callable[[], None]:
        """torch.compile the hot modules (at their next call); returns an undo.

        `load` calls this when the `compile` setting is on; benchmarks call it on a loaded
        model to time the same weights eager and compiled.
        """
        self._require_loaded()
        unique = {id(m): m for m in self.compile_targets()}.values()
        undos = [compile_module(m, spec, dynamic=self.COMPILE_DYNAMIC) for m in unique]

        def undo() -> None:
            for u in undos:
                u()

        return undo

    def quantize(self, modules: Iterable[torch.nn.Module]) -> None:
        """The memory mode's weight-only quantisation of `modules`, layer by layer on the
        way to the device (resident), or in CPU memory (offload: quantising on the device
        would put every part there at once, the peak offload exists to avoid)."""
        staging = self.device if self.offload == "none" else None
        for module in modules:
            quantize_weights(module, self.quantization, device=staging)

    def place(self, pipeline: Any) -> None:
        """Resident on the device, or diffusers' model CPU offload when asked."""
        if self.offload == "model":
            pipeline.enable_model_cpu_offload(device=self.device)
        else:
            pipeline.to(self.device)

    @abc.abstractmethod
    def warmup(self) -> None:
        """Run representative requests so the first real one is not the slow one, and
        calibrate `estimate_seconds`."""

    def memory_stats(self) -> dict[str, float]:
        """Device allocator figures for the metrics endpoint."""
        return memory_stats(self.device)

    def cache_bytes(self) -> int | None:
        """Device bytes of a model's own cache; None: it keeps none."""
        return None

    # -- requests ------------------------------------------------------------------------

    def check(self, request: Any) -> None:
        """Raise one `errors.InvalidArgument` naming every bad field of `request`.

        Cheap and free of device work: the worker calls it before the request is costed
        or queued, on the event loop.
        """
        raise_if(self.violations(request))

    @abc.abstractmethod
    def violations(self, request: Any) -> list[errors.FieldViolation]:
        """Every bad field of `request`, named by its API path."""

    @abc.abstractmethod
    def estimate_seconds(self, request: Any) -> float:
        """Expected device time of one (valid) request, for admission control."""

    @abc.abstractmethod
    def batch_key(self, request: Any) -> Hashable | None:
        """Requests with equal non-None keys may share one `run`."""

    def __call__(self, requests: Sequence[Any], contexts: Sequence[StepContext]) -> list[Any]:
        """Run a ready batch (checked requests with one batch key, at most
        `max_batch_size`); one result or exception per request, in order."""
        self._require_loaded()
        if len(requests) != len(contexts):
            raise ValueError(f"{len(requests)} requests but {len(contexts)} contexts")
        stage = self.stage_of(requests[0])
        # 1. Work whose caller already left gets no device time.
        live = [i for i, context in enumerate(contexts) if not context.cancelled()]
        if not live:
            raise errors.Cancelled(f"cancelled before {stage} started")
        outputs = self.run([requests[i] for i in live], [contexts[i] for i in live])
        if len(outputs) != len(live):
            raise RuntimeError(f"{type(self).__name__}.run returned {len(outputs)} results "
                               f"for {len(live)} requests")
        # 2. One result per request, in order; a caller who left while the batch ran gets
        #    Cancelled, not the result its batch-mates kept going.
        results: list[Any] = [errors.Cancelled(f"cancelled before {stage} started")] * len(
            requests)
        for i, output in zip(live, outputs, strict=True):
            cancelled = contexts[i].cancelled() and not isinstance(output, BaseException)
            results[i] = errors.Cancelled(f"cancelled during {stage}") if cancelled else output
        return results

    @abc.abstractmethod
    def run(self, requests: Sequence[Any], contexts: Sequence[StepContext]) -> list[Any]:
        """See `__call__`: the requests whose callers were still waiting when the batch
        started. Report steps through `Steps` (which stops the batch once every caller has
        left); work before the first step checks `all_cancelled` between its parts."""

    def stage_of(self, request: Any) -> str:
        """The stage name of `request`'s progress events (one per model but FLUX's)."""
        return self.STAGE

    def steps(self, request: Any, total: int, contexts: Sequence[StepContext]) -> Steps:
        """Progress and cancellation of a batch of `total` steps, like `request`."""
        return Steps(self.stage_of(request), total, contexts)

    @staticmethod
    def all_cancelled(contexts: Sequence[StepContext]) -> bool:
        return all(context.cancelled() for context in contexts)

    @staticmethod
    def seeds(requests: Sequence[Any]) -> list[int]:
        """Each request's seed, or a fresh one the output reports: every picture can be
        made again from its result."""
        return [r.seed if r.seed is not None else secrets.randbelow(RANDOM_SEED_LIMIT)
                for r in requests]

    def clock(self) -> float:
        """Seconds, once the device's queued work is done (launches return early): for
        timing device work at warm-up, never on a served request's path."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise errors.Unavailable(f"{type(self).__name__} is not loaded yet",
                                     reason="NOT_LOADED")
