"""FLUX.1-schnell text-to-image as a resident `Model` (diffusers `FluxPipeline`).

Model side only: torch and diffusers, never grpc or the generated protos. The servicer
converts protobuf messages to `GenerateQuery` / from `GenerateOutput` in its own module,
so this file can be loaded, tested and benchmarked without a server, and the servicer
(and the orchestrator) can be installed without torch.

Requests run on the worker's device thread. Compatible requests (same size and step
count) share one pipeline call, each with its own seeded generator, so a request's picture
does not depend on what it was batched with.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mic2e_services import errors
from mic2e_services.flux.types import GenerateOutput, GenerateQuery
from mic2e_services.runtime.model_api import CompileSpec, StepContext
from mic2e_services.torch_device import (
    check_memory_options,
    compile_module,
    diffusers_dtype_kwarg,
    dtype_name,
    memory_stats,
    quantize_weights,
    resolve_device,
    resolve_dtype,
    translate_error,
)

__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_SEQUENCE_LENGTH",
    "FluxGenerator",
    "GenerateOutput",
    "GenerateQuery",
]

log = logging.getLogger(__name__)

#: Longest prompt accepted, in characters (well past what T5 sees; see truncation).
MAX_PROMPT_CHARS = 2000
#: T5 tokens FLUX.1-schnell reads (the pipeline's max_sequence_length, </s> included).
MAX_SEQUENCE_LENGTH = 256
#: Image sides: multiples of 16 because the VAE downsamples 8x and the transformer packs
#: latents in 2x2 patches.
SIZE_MULTIPLE = 16
MIN_SIZE, MAX_SIZE = 256, 2048
MIN_STEPS, MAX_STEPS = 1, 50
#: Seeds fit torch.Generator.manual_seed (unsigned 64-bit).
SEED_LIMIT = 2**64
#: Randomly drawn seeds stay below 2**32 so every client language can show them exactly.
RANDOM_SEED_LIMIT = 2**32

#: The warm-up request; estimates scale from its measured step time.
_WARMUP_SIZE = 512
_WARMUP_STEPS = 3
#: Per-step seconds at the warm-up size assumed before `warmup` measured it.
_DEFAULT_STEP_S = {"cpu": 0.5, "cuda": 0.08}

STAGE = "generation"


class FluxGenerator:
    """FLUX.1-schnell behind the `runtime.model_api.Model` protocol."""

    #: Device failures (out of memory, a dead CUDA context) -> domain errors.
    translate_error = staticmethod(translate_error)

    def __init__(
        self,
        model_id: str,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        max_batch_size: int = 4,
        revision: str | None = None,
        quantization: str = "none",
        offload: str = "none",
        vae_tiling: bool = False,
        compile: CompileSpec | None = None,
    ) -> None:
        self.model_id = model_id
        self.device = resolve_device(device)
        # Refuse a memory mode this device cannot run now, not after minutes of loading.
        check_memory_options(self.device, quantization=quantization, offload=offload,
                             compile=compile)
        self.quantization, self.offload, self.vae_tiling = quantization, offload, vae_tiling
        self.compile = compile
        # bf16 rather than fp16: FLUX is trained in bf16 and it measured faster (MODELS.md).
        self.dtype = resolve_dtype(dtype, self.device, half=torch.bfloat16)
        self.max_batch_size = max(1, int(max_batch_size))
        self.device_name = str(self.device)
        self.dtype_name = dtype_name(self.dtype)
        #: Hub commit or "local-<hash of the configs>" once loaded; the requested one before.
        self.revision = revision or "unknown"
        self._requested_revision = revision
        self._pipe: Any = None
        # Set by `from_pipeline`: a pipeline built in memory that load() adopts.
        self._prebuilt: Any = None
        self._step_s = _DEFAULT_STEP_S.get(self.device.type, 0.5)
        self._fixed_s = 0.0

    # -- Model protocol: lifecycle ------------------------------------------------------

    @classmethod
    def from_pipeline(
        cls, pipe: Any, *, model_id: str = "in-memory", **kwargs: Any
    ) -> FluxGenerator:
        """A generator around a ``FluxPipeline`` already built in memory, not a checkpoint.

        For benchmarks: full-size random weights made directly on the GPU (no download,
        no file round trip). `load()` adopts the pipeline; device and dtype default to
        its transformer's. Other keyword arguments as for the constructor.
        """
        param = next(pipe.transformer.parameters())
        kwargs.setdefault("device", str(param.device))
        kwargs.setdefault("dtype", dtype_name(param.dtype))
        kwargs.setdefault("revision", "in-memory")
        generator = cls(model_id, **kwargs)
        generator._prebuilt = pipe
        return generator

    def load(self) -> None:
        """Load the pipeline with the ordinary `from_pretrained` (hub id or local folder)."""
        from diffusers import FluxPipeline

        pipe, self._prebuilt = self._prebuilt, None
        folder = Path(self.model_id)
        if pipe is not None:
            pass  # built in memory (from_pipeline): nothing to read
        elif folder.is_dir():
            self.revision = self._requested_revision or _local_revision(folder)
        else:
            # Resolve the hub snapshot first so provenance names the exact commit; offline
            # this reads the local cache.
            folder = Path(FluxPipeline.download(self.model_id, revision=self._requested_revision))
            self.revision = (
                folder.name
                if folder.parent.name == "snapshots"
                else (self._requested_revision or "main")
            )
        if pipe is None:
            pipe = FluxPipeline.from_pretrained(folder, **{diffusers_dtype_kwarg(): self.dtype})
        if pipe.transformer.dtype != self.dtype:  # never serve silently in another dtype
            pipe.to(dtype=self.dtype)
        # Memory modes before placement: quantised weights are what reaches the device,
        # layer by layer (from_pretrained loaded into CPU memory). The 12 B transformer
        # and the 4.8 B T5 are the big parts. With offload they are quantised in CPU
        # memory: quantising on the device would leave both there at once (torchao moves
        # the parent modules too), the very peak offload exists to avoid.
        staging = None if self.offload == "model" else self.device
        for part in (pipe.transformer, pipe.text_encoder_2):
            quantize_weights(part, self.quantization, device=staging)
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        if self.offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        if self.compile is not None:
            self.enable_compile(self.compile)

    def enable_compile(self, spec: CompileSpec) -> Callable[[], None]:
        """torch.compile the transformer (at its next call); returns an undo.

        `load` calls this when the `compile` setting is on; benchmarks call it on a loaded
        model to time the same weights eager and compiled. Sizes stay the caller's:
        warm-up's second size and batch turn on dynamic shapes, which serve the rest.
        """
        return compile_module(self._pipe.transformer, spec)

    def memory_stats(self) -> dict[str, float]:
        """Device allocator figures for the metrics endpoint."""
        return memory_stats(self.device)

    def warmup(self) -> None:
        """One small generation; its step time calibrates `estimate_seconds`."""
        stamps: list[float] = []

        def on_step(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            # A host sync is acceptable here only: warm-up is not a served request.
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            stamps.append(time.perf_counter())
            return {}

        query = GenerateQuery("a photo of a dog", _WARMUP_SIZE, _WARMUP_SIZE, _WARMUP_STEPS, 0)
        # An untimed first run pays the one-off costs (allocator, kernel selection, lazy
        # imports), which would otherwise inflate the estimate many times over.
        self._run_pipeline([query], [0], lambda pipe, i, t, kwargs: {})
        stamps.clear()
        start = time.perf_counter()
        self._run_pipeline([query], [0], on_step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total = time.perf_counter() - start
        # Later steps only: the first one carries one-off costs (kernel selection, caches).
        self._step_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        self._fixed_s = max(0.0, total - self._step_s * _WARMUP_STEPS)
        log.info(
            "flux warm-up: %.4f s per step, %.4f s fixed at %dx%d",
            self._step_s,
            self._fixed_s,
            _WARMUP_SIZE,
            _WARMUP_SIZE,
        )
        if self.compile is not None:
            # Compiled: calls at another size, alone and (when batching is on) batched,
            # make torch's automatic dynamic shapes recompile NOW, before SERVING, not on
            # the first real request of another size or batch (cold: minutes). Both are
            # needed: a batch of 1 is always specialised apart from larger ones.
            other = GenerateQuery("a photo of a dog", _WARMUP_SIZE + 256, _WARMUP_SIZE, 1, 0)
            for n in sorted({1, min(2, self.max_batch_size)}):
                self._run_pipeline([other] * n, list(range(n)), lambda pipe, i, t, kwargs: {})

    # -- Model protocol: scheduling -----------------------------------------------------

    def batch_key(self, request: GenerateQuery) -> Hashable | None:
        """Same size and step count: one pipeline call, one generator per request."""
        try:
            self.check_inputs(request)
        except errors.InvalidArgument:
            return None  # fails on its own at once; never holds up a batch
        return (request.width, request.height, request.steps)

    def estimate_seconds(self, request: GenerateQuery) -> float:
        """Warm-up step time x steps (+ text encoding and decoding), scaled by pixels.

        Linear in pixels overestimates large pictures a little (the transformer's cost
        grows more slowly at these sizes); for admission control that errs on the safe side.
        """
        try:
            pixels = int(request.width) * int(request.height)
            steps = int(request.steps)
        except (AttributeError, TypeError, ValueError):
            return self._fixed_s + self._step_s
        scale = max(pixels, 1) / (_WARMUP_SIZE * _WARMUP_SIZE)
        return (self._fixed_s + self._step_s * max(steps, 1)) * scale

    # -- validation (the one place) -----------------------------------------------------

    def check_inputs(self, request: GenerateQuery) -> None:
        """Raise `errors.InvalidArgument` naming every bad API field of `request`."""
        bad: list[errors.FieldViolation] = []
        prompt = request.prompt
        if not isinstance(prompt, str) or not prompt.strip():
            bad.append(errors.FieldViolation("prompt", "must not be empty"))
        elif len(prompt) > MAX_PROMPT_CHARS:
            bad.append(
                errors.FieldViolation(
                    "prompt", f"at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}"
                )
            )
        for name in ("width", "height"):
            value = getattr(request, name)
            if not _is_int(value) or not MIN_SIZE <= value <= MAX_SIZE:
                bad.append(
                    errors.FieldViolation(
                        name, f"must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {value!r}"
                    )
                )
            elif value % SIZE_MULTIPLE:
                bad.append(
                    errors.FieldViolation(
                        name, f"must be a multiple of {SIZE_MULTIPLE}, got {value}"
                    )
                )
        if not _is_int(request.steps) or not MIN_STEPS <= request.steps <= MAX_STEPS:
            bad.append(
                errors.FieldViolation(
                    "steps", f"must be between {MIN_STEPS} and {MAX_STEPS}, got {request.steps!r}"
                )
            )
        seed = request.seed
        if seed is not None and (not _is_int(seed) or not 0 <= seed < SEED_LIMIT):
            bad.append(
                errors.FieldViolation("seed", f"must be an integer in [0, 2**64), got {seed!r}")
            )
        if bad:
            raise errors.InvalidArgument(bad[0].field, bad[0].description, *bad[1:])

    # -- the work -----------------------------------------------------------------------

    def __call__(
        self, requests: Sequence[GenerateQuery], contexts: Sequence[StepContext]
    ) -> list[GenerateOutput | Exception]:
        if self._pipe is None:
            raise errors.Unavailable("the FLUX pipeline is not loaded", reason="NOT_LOADED")
        results: list[GenerateOutput | Exception | None] = [None] * len(requests)

        # 1. Check every request on its own: a bad one fails alone, the others still run.
        runnable: list[int] = []
        for i, request in enumerate(requests):
            try:
                self.check_inputs(request)
            except errors.InvalidArgument as exc:
                results[i] = exc
                continue
            # 2. Work whose caller already left is dropped before any device time is spent.
            if contexts[i].cancelled():
                results[i] = errors.Cancelled("cancelled before generation started")
                continue
            runnable.append(i)

        # 3. Draw the missing seeds now, so every picture is reproducible from its output.
        seeds = {i: _seed_of(requests[i]) for i in runnable}

        # 4. Group by batch key. The worker already batches only equal keys; grouping again
        #    keeps a mixed call correct, and max_batch_size bounds device memory.
        groups: dict[Hashable, list[int]] = {}
        for i in runnable:
            groups.setdefault(self.batch_key(requests[i]), []).append(i)
        chunks = [
            members[k : k + self.max_batch_size]
            for members in groups.values()
            for k in range(0, len(members), self.max_batch_size)
        ]

        for chunk in chunks:
            batch = [requests[i] for i in chunk]
            ctxs = [contexts[i] for i in chunk]
            steps = batch[0].steps

            # 5. Per-step progress and cancellation. A cancelled request stops reporting;
            #    the batch stops at the end of this step only when every request in it is
            #    cancelled (the others' pictures are still wanted).
            stopped = [False] * len(chunk)

            def on_step(
                pipe: Any,
                i: int,
                t: Any,
                kwargs: dict[str, Any],
                ctxs: list[StepContext] = ctxs,
                stopped: list[bool] = stopped,
                steps: int = steps,
            ) -> dict[str, Any]:
                for j, ctx in enumerate(ctxs):
                    if stopped[j]:
                        continue
                    ctx.progress(STAGE, i + 1, steps)
                    if ctx.cancelled():
                        stopped[j] = True
                if all(stopped):
                    # Belt and braces: the flag alone would skip the remaining steps but
                    # still decode; raising also skips the VAE.
                    pipe._interrupt = True
                    raise errors.Cancelled(f"cancelled after step {i + 1} of {steps}")
                return {}

            # 6. Run the pipeline: one call for the chunk, one seeded generator per request.
            try:
                images = self._run_pipeline(batch, [seeds[i] for i in chunk], on_step)
            except errors.Cancelled as exc:
                for i in chunk:
                    results[i] = exc
                continue

            # 7. Report what the model saw: T5 reads MAX_SEQUENCE_LENGTH tokens, no more.
            for j, i in enumerate(chunk):
                if stopped[j]:
                    results[i] = errors.Cancelled("cancelled during generation")
                    continue
                truncated, seen = self._t5_truncation(batch[j].prompt)
                results[i] = GenerateOutput(
                    image=images[j],
                    seed=seeds[i],
                    steps=steps,
                    prompt_truncated=truncated,
                    truncated_prompt=seen if truncated else "",
                )

        # 8. Every request cancelled: say so for the whole call, as the protocol asks.
        if requests and all(isinstance(r, errors.Cancelled) for r in results):
            raise errors.Cancelled("every request in the batch was cancelled")
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"bug: no result for requests {missing}")
        return results  # type: ignore[return-value]

    # -- helpers ------------------------------------------------------------------------

    def _run_pipeline(
        self,
        batch: Sequence[GenerateQuery],
        seeds: Sequence[int],
        on_step: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]],
    ) -> list[Image.Image]:
        first = batch[0]
        # CPU generators: the same seed gives the same starting noise on every device, so
        # GPU pictures can be checked against the CPU / fp32 reference path.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        try:
            out = self._pipe(
                prompt=[q.prompt for q in batch],
                width=first.width,
                height=first.height,
                num_inference_steps=first.steps,
                guidance_scale=0.0,  # schnell is guidance-distilled: no guidance input
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step,
            )
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise errors.ResourceExhausted(
                f"out of device memory generating {len(batch)} x {first.width}x{first.height}",
                retry_after_s=1.0,
                reason="OUT_OF_MEMORY",
            ) from exc
        return list(out.images)

    def _t5_truncation(self, prompt: str) -> tuple[bool, str]:
        """(whether T5 cut the prompt, the text it kept) - as the pipeline tokenizes it."""
        tokenizer = self._pipe.tokenizer_2
        ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
        if len(ids) <= MAX_SEQUENCE_LENGTH:
            return False, prompt
        # Truncation keeps MAX_SEQUENCE_LENGTH - 1 pieces and then appends </s>.
        kept = ids[: MAX_SEQUENCE_LENGTH - 1]
        return True, tokenizer.decode(kept, skip_special_tokens=True)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seed_of(request: GenerateQuery) -> int:
    return request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_LIMIT)


def _local_revision(folder: Path) -> str:
    """A short content hash of a local checkpoint's configs and weight-file sizes.

    Weights are not hashed (gigabytes); configs plus sizes tell apart the checkpoints
    one actually meets, and the same folder always gives the same name.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        digest.update(rel.encode())
        if path.suffix in (".json", ".txt"):
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return "local-" + digest.hexdigest()[:12]
