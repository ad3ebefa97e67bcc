"""The resident ObjectClear model behind the object-clear server (`runtime.model_api.Model`).

Plain dataclasses in and out (`ClearQuery` -> `ClearOutput`); no grpc, no protos. Bad
requests become `errors.InvalidArgument` naming the API field; cancellation raises
`errors.Cancelled` at the next denoising step.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch
from PIL import Image

from mic2e_services import errors
from mic2e_services.object_clear.fusion import dilate_mask
from mic2e_services.object_clear.pipeline import (
    REFERENCE_SHORT_SIDE,
    ObjectClearPipeline,
    prompt_for,
    working_size,
)
from mic2e_services.object_clear.types import ClearOutput, ClearQuery
from mic2e_services.runtime.model_api import CompileSpec, QuietContext, StepContext
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

__all__ = ["STAGE", "ClearOutput", "ClearQuery", "ObjectClearModel"]

#: Stage name of the progress events.
STAGE = "object_clear"

MAX_STEPS = 100
GUIDANCE_RANGE = (1.0, 20.0)
SHORT_SIDE_RANGE = (256, 2048)
MAX_MASK_DILATION = 256
MAX_LABEL_CHARS = 100
#: Longest working side accepted: keeps extreme aspect ratios from exhausting the device.
MAX_WORKING_SIDE = 4096
#: Largest batch of compatible removals on a GPU with at least BATCH_MIN_MEMORY bytes
#: (MIC2E_MAX_BATCH_SIZE wins): 8 removals are 16 UNet rows with guidance, several GB of
#: activations at 512 px on top of the ~7.5 GB model.
DEFAULT_GPU_BATCH = 8
BATCH_MIN_MEMORY = 40 * 2**30


class ObjectClearModel:
    """ObjectClear on one device: load once, then run `ClearQuery` batches."""

    #: Device failures (out of memory, a dead CUDA context) -> domain errors.
    translate_error = staticmethod(translate_error)

    def __init__(
        self,
        model_id: str,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        max_batch_size: int | None = None,
        quantization: str = "none",
        offload: str = "none",
        vae_tiling: bool = False,
        compile: CompileSpec | None = None,
    ) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model_id = model_id
        self.device = resolve_device(device)
        check_memory_options(self.device, quantization=quantization, offload=offload,
                             compile=compile)
        self.quantization, self.offload = quantization, offload
        self.vae_tiling, self.compile = vae_tiling, compile
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = resolve_dtype(dtype, self.device, half=torch.float16)
        self.dtype_name = dtype_name(self.dtype)
        self.device_name = str(self.device)
        if self.device.type == "cuda":
            self.device_name = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        # On a GPU, compatible removals share UNet batches: on an H200, 4 batched cost
        # 15 ms per request-step against 68 ms alone (eager; PERFORMANCE.md). On a CPU
        # batching gains nothing, and a small card lacks the activations of a batch.
        if max_batch_size is None:
            max_batch_size = 1
            if self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                max_batch_size = DEFAULT_GPU_BATCH if total >= BATCH_MIN_MEMORY else 1
        self.max_batch_size = max_batch_size
        self.revision: str | None = None
        self.pipeline: ObjectClearPipeline | None = None
        # Set by `from_pipeline`: a pipeline built in memory that load() adopts.
        self._prebuilt: ObjectClearPipeline | None = None
        # Calibrated by warmup(): seconds per step and fixed seconds at this many pixels.
        self._seconds_per_step = 0.1
        self._overhead_seconds = 0.5
        self._calibration_pixels = 512 * 512

    # -- Model protocol ---------------------------------------------------------------

    @classmethod
    def from_pipeline(
        cls, pipeline: ObjectClearPipeline, *, model_id: str = "in-memory", **kwargs: object
    ) -> ObjectClearModel:
        """A model around an `ObjectClearPipeline` already built in memory, not a checkpoint.

        For benchmarks: full-size random weights made directly on the GPU (no download,
        no file round trip). `load()` adopts the pipeline; device and dtype default to its
        UNet's. Other keyword arguments as for the constructor.
        """
        kwargs.setdefault("device", str(pipeline.device))
        kwargs.setdefault("dtype", dtype_name(pipeline.dtype))
        model = cls(model_id, **kwargs)  # type: ignore[arg-type]
        model._prebuilt = pipeline
        return model

    def load(self) -> None:
        """Load (or adopt the in-memory pipeline), apply the memory modes, place, compile."""
        prebuilt, self._prebuilt = self._prebuilt, None
        if prebuilt is not None:
            pipeline = prebuilt
            self.revision = prebuilt.revision or "in-memory"
        else:
            # Into CPU memory first (from_pretrained's default): a quantised UNet is then
            # quantised layer by layer on its way to the device, as its fp16 weights alone
            # would fill most of a small card.
            pipeline = ObjectClearPipeline.from_pretrained(self.model_id, torch_dtype=self.dtype)
            self.revision = pipeline.revision
        # Memory modes and compilation: the 2.6 B UNet is the big and the hot part. With
        # offload it is quantised in CPU memory and only visits the device per call.
        staging = self.device if self.offload == "none" else None
        quantize_weights(pipeline.unet, self.quantization, device=staging)
        if self.offload == "model":
            pipeline.enable_model_cpu_offload(device=self.device)
        else:
            pipeline.to(self.device)
        if self.vae_tiling:
            pipeline.vae.enable_tiling()
        self.pipeline = pipeline
        if self.compile is not None:
            self.enable_compile(self.compile)

    def enable_compile(self, spec: CompileSpec) -> Callable[[], None]:
        """torch.compile the UNet (at its next call); returns an undo.

        `load` calls this when the `compile` setting is on; benchmarks call it on a loaded
        model to time the same weights eager and compiled. Working sizes stay exact:
        snapping them to a coarser grid would cut the number of compiled shapes but
        change the picture (16.8 dB PSNR against eager on the tiny model). So the UNet
        compiles with dynamic sizes from the start - height, width and batch all vary
        between requests - and warm-up covers the graphs that still differ (CUDA graphs
        then record once per concrete size).
        """
        assert self.pipeline is not None
        return compile_module(self.pipeline.unet, spec, dynamic=True)

    def memory_stats(self) -> dict[str, float]:
        """Device allocator figures for the metrics endpoint."""
        return memory_stats(self.device)

    def warmup(self) -> None:
        """Run the pipeline cold once, then time 2- and 4-step runs for `estimate_seconds`.

        At the default 512 px on an accelerator; on CPU (tiny models: tests, the demo) at
        256 px, the smallest allowed, so that starting a CPU server stays quick.
        """
        side = REFERENCE_SHORT_SIDE if self.device.type != "cpu" else SHORT_SIDE_RANGE[0]
        image = Image.new("RGB", (side, side), (127, 127, 127))
        mask = np.zeros((side, side), dtype=bool)
        mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = True
        context = QuietContext()

        def run(steps: int) -> float:
            query = ClearQuery(image, mask, "object", steps=steps, short_side=side, seed=0)
            start = time.perf_counter()
            (result,) = self([query], [context])  # returns on the host: includes the sync
            if isinstance(result, BaseException):
                raise result
            return time.perf_counter() - start

        # Untimed first: one-off costs. Compiled with CUDA graphs, a shape's graph is
        # run once to warm, recorded on its next call and only replayed after that, so
        # three cold runs; otherwise the timed runs would time a recording.
        for _ in range(1 if self.compile is None else 3):
            run(2)
        two, four = run(2), run(4)
        per_step = max((four - two) / 2.0, 1e-4)
        self._seconds_per_step = per_step
        self._overhead_seconds = max(two - 2.0 * per_step, 0.0)
        self._calibration_pixels = side * side
        if self.compile is not None:
            self._warm_compiled_variants(side, context)

    def _warm_compiled_variants(self, side: int, context: StepContext) -> None:
        """Run, before SERVING, every graph variant a request can need, so that no
        request pays a compilation (cold: minutes on a GPU): landscape and portrait
        working sizes, alone and batched, and a guidance of 1 (no CFG: a UNet batch of
        1, which torch always specialises). Two steps each: the last step captures the
        fusion's attention map, a graph of its own."""
        mask = np.zeros((side, side + 128), dtype=bool)
        mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = True
        landscape = Image.new("RGB", (side + 128, side), (127, 127, 127))
        portrait = landscape.transpose(Image.Transpose.ROTATE_90)
        runs = []
        for image, m in ((landscape, mask), (portrait, mask.T.copy())):
            query = ClearQuery(image, m, "object", steps=2, short_side=side, seed=0)
            runs += [[query] * n for n in sorted({1, min(2, self.max_batch_size)})]
        runs.append([ClearQuery(landscape, mask, "object", steps=2, guidance_scale=1.0,
                                short_side=side, seed=0)])
        for queries in runs:
            for result in self(queries, [context] * len(queries)):
                if isinstance(result, BaseException):
                    raise result

    def batch_key(self, request: ClearQuery) -> Hashable | None:
        """Same working size, steps, guidance and fusion: one UNet batch can run them."""
        try:
            size = working_size(request.image.width, request.image.height, request.short_side)
            return (size, int(request.steps), float(request.guidance_scale), bool(request.fusion))
        except Exception:  # a malformed request runs alone and fails in check_inputs
            return None

    def estimate_seconds(self, request: ClearQuery) -> float:
        try:
            width, height = working_size(
                request.image.width, request.image.height, request.short_side
            )
            steps = int(request.steps)
            cfg = 1.0 if request.guidance_scale > 1.0 else 0.5
        except Exception:
            return self._overhead_seconds
        scale = (width * height) / self._calibration_pixels
        return scale * (self._overhead_seconds + cfg * self._seconds_per_step * steps)

    def check_inputs(self, request: ClearQuery) -> None:
        """Raise `errors.InvalidArgument` naming the API field of the first bad value."""
        image = request.image
        if not isinstance(image, Image.Image) or image.width < 1 or image.height < 1:
            raise errors.InvalidArgument("image", "not a decodable, non-empty image")
        mask = request.mask
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise errors.InvalidArgument("masks", "expected one 2-D mask")
        if mask.shape != (image.height, image.width):
            raise errors.InvalidArgument(
                "masks",
                f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                f"{image.width}x{image.height}",
            )
        if not mask.any():
            raise errors.InvalidArgument("masks", "the mask selects no pixel")
        if (
            isinstance(request.steps, bool)
            or not isinstance(request.steps, int)
            or not (1 <= request.steps <= MAX_STEPS)
        ):
            raise errors.InvalidArgument("options.steps", f"must be 1..{MAX_STEPS}")
        lo, hi = GUIDANCE_RANGE
        guidance = float(request.guidance_scale)
        if math.isnan(guidance) or not lo <= guidance <= hi:
            raise errors.InvalidArgument("options.guidance_scale", f"must be {lo:g}..{hi:g}")
        lo_side, hi_side = SHORT_SIDE_RANGE
        if not lo_side <= request.short_side <= hi_side:
            raise errors.InvalidArgument("options.short_side", f"must be {lo_side}..{hi_side}")
        if not 0 <= request.mask_dilation <= MAX_MASK_DILATION:
            raise errors.InvalidArgument(
                "options.mask_dilation", f"must be 0..{MAX_MASK_DILATION} pixels"
            )
        if len(request.label) > MAX_LABEL_CHARS:
            raise errors.InvalidArgument("label", f"longer than {MAX_LABEL_CHARS} characters")
        if request.seed is not None and not 0 <= request.seed < 2**64:
            raise errors.InvalidArgument("options.seed", "must be 0..2^64-1")
        if max(working_size(image.width, image.height, request.short_side)) > MAX_WORKING_SIDE:
            raise errors.InvalidArgument(
                "image",
                f"aspect ratio too extreme: the long side would exceed {MAX_WORKING_SIDE} px "
                f"at short_side {request.short_side}",
            )

    def __call__(
        self, requests: Sequence[ClearQuery], contexts: Sequence[StepContext]
    ) -> list[ClearOutput | BaseException]:
        """One result per request, in order: a `ClearOutput` or the exception of a bad one."""
        if self.pipeline is None:
            raise RuntimeError("ObjectClearModel.load() has not run")
        if len(requests) != len(contexts):
            raise ValueError(f"{len(requests)} requests but {len(contexts)} contexts")

        # 1. Check every request; a bad one fails alone
        results: list[ClearOutput | BaseException | None] = [None] * len(requests)
        groups: dict[Hashable, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                self.check_inputs(request)
            except errors.InvalidArgument as exc:
                results[i] = exc
                continue
            key = self.batch_key(request)
            groups.setdefault(key if key is not None else object(), []).append(i)

        # 2. Run compatible requests together, up to max_batch_size at a time
        for members in groups.values():
            for start in range(0, len(members), self.max_batch_size):
                chunk = members[start : start + self.max_batch_size]
                outputs = self._run([requests[i] for i in chunk], [contexts[i] for i in chunk])
                for i, output in zip(chunk, outputs, strict=True):
                    results[i] = output
        return results  # type: ignore[return-value]

    # -- internals --------------------------------------------------------------------

    def _run(
        self, queries: list[ClearQuery], contexts: list[StepContext]
    ) -> list[ClearOutput | BaseException]:
        """One pipeline call for queries that share a batch key (already checked)."""
        assert self.pipeline is not None
        first = queries[0]

        # 1. Seeds: the caller's, or a fresh one that the output reports
        seeds = [q.seed if q.seed is not None else secrets.randbelow(2**32) for q in queries]
        # CPU generators: the numbers for a seed are the same on every device and dtype.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

        # 2. Grow the masks as asked, on the device (an FFT for large radii)
        masks = []
        for q in queries:
            mask = np.ascontiguousarray(q.mask, dtype=bool)
            if q.mask_dilation:
                grown = dilate_mask(torch.from_numpy(mask).to(self.device), q.mask_dilation)
                mask = grown.cpu().numpy()
            masks.append(mask)

        # 3. Denoise with progress and cancellation at every step
        def on_step_end(pipe: ObjectClearPipeline, index: int, t: object, tensors: dict
                        ) -> dict:
            for context in contexts:
                context.progress(STAGE, index + 1, first.steps)
            if all(context.cancelled() for context in contexts):
                pipe._interrupt = True
            return tensors

        if all(context.cancelled() for context in contexts):
            raise errors.Cancelled("cancelled before object removal")
        output = self.pipeline(
            [q.image for q in queries],
            masks,
            [prompt_for(q.label) for q in queries],
            short_side=first.short_side,
            num_inference_steps=first.steps,
            guidance_scale=float(first.guidance_scale),
            fusion=first.fusion,
            generator=generators,
            callback_on_step_end=on_step_end,
        )

        # 4. One result each, at each input's own size
        results: list[ClearOutput | BaseException] = []
        for q, context, image, mask, seed in zip(
            queries, contexts, output.images, masks, seeds, strict=True
        ):
            if context.cancelled():  # cancelled while batch-mates kept the run going
                results.append(errors.Cancelled("cancelled during object removal"))
                continue
            results.append(ClearOutput(image=image, mask=mask, steps=q.steps, seed=seed))
        return results
