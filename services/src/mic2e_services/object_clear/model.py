"""The resident ObjectClear model behind the object-clear server (a `TorchModel`).

Plain dataclasses in and out (`ClearQuery` -> `ClearOutput`); no grpc, no protos. The
fields' defaults and ranges are declared once in `api/object_clear.py`; cancellation raises
`errors.Cancelled` at the next denoising step.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from mic2e_services import errors
from mic2e_services.api.object_clear import (
    REFERENCE_SHORT_SIDE,
    SHORT_SIDE,
    STAGE,
    Box,
    ClearOutput,
    ClearQuery,
    grown_box,
    violations,
)
from mic2e_services.edits import Edit
from mic2e_services.masks import dilated_array
from mic2e_services.model_base import TorchModel
from mic2e_services.object_clear import pipeline as pipeline_module
from mic2e_services.object_clear.pipeline import ObjectClearPipeline, prompt_for
from mic2e_services.regions import composite, feathered
from mic2e_services.runtime.model_api import QuietContext, StepContext

__all__ = ["STAGE", "ClearOutput", "ClearQuery", "ObjectClearModel"]

#: Largest batch of compatible removals on a GPU with at least BATCH_MIN_MEMORY bytes
#: (MIC2E_MAX_BATCH_SIZE wins): 8 removals are 16 UNet rows with guidance, several GB of
#: activations at 512 px on top of the ~7.5 GB model.
DEFAULT_GPU_BATCH = 8
BATCH_MIN_MEMORY = 40 * 2**30


class ObjectClearModel(TorchModel):
    """ObjectClear on one device: load once, then run batches of compatible removals."""

    STAGE: ClassVar[str] = STAGE
    # What the pipeline's own from_pretrained reads (declared there once).
    HUB_FILES = pipeline_module.HUB_PATTERNS
    HUB_IGNORE = pipeline_module.HUB_IGNORE
    # Removals vary in height, width and batch: dynamic shapes from the start. Working
    # sizes stay exact: snapping them to a coarser grid would cut the number of compiled
    # shapes but change the picture (16.8 dB PSNR against eager on the tiny model).
    COMPILE_DYNAMIC = True

    def __init__(self, model_id: str, **kwargs: Any) -> None:
        super().__init__(model_id, **kwargs)
        self.pipeline: ObjectClearPipeline | None = None
        # Calibrated by warmup(): seconds per step and fixed seconds at this many pixels.
        self._seconds_per_step = 0.1
        self._overhead_seconds = 0.5
        self._calibration_pixels = REFERENCE_SHORT_SIDE**2

    @classmethod
    def main_module(cls, parts: ObjectClearPipeline) -> torch.nn.Module:
        return parts.unet

    def default_batch_size(self) -> int:
        # On a GPU, compatible removals share UNet batches: on an H200, 4 batched cost
        # 15 ms per request-step against 68 ms alone (eager; docs/performance.md). On a CPU
        # batching gains nothing, and a small card lacks the activations of a batch.
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            return DEFAULT_GPU_BATCH if total >= BATCH_MIN_MEMORY else 1
        return 1

    # -- loading -------------------------------------------------------------------------

    def load_parts(self, folder: Path) -> ObjectClearPipeline:
        return ObjectClearPipeline.from_pretrained(folder, torch_dtype=self.dtype)

    def setup(self, pipeline: ObjectClearPipeline) -> None:
        # The 2.6 B UNet is the big and the hot part.
        self.quantize([pipeline.unet])
        self.place(pipeline)
        if self.vae_tiling:
            pipeline.vae.enable_tiling()
        self.pipeline = pipeline

    def compile_targets(self) -> Iterable[torch.nn.Module]:
        assert self.pipeline is not None
        return [self.pipeline.unet]

    def warmup(self) -> None:
        """Run the pipeline cold once, then time 2- and 4-step runs for `estimate_seconds`.

        At the reference's 512 px on an accelerator; on CPU (tiny models: tests, the demo)
        at 256 px, the smallest short side allowed, so that starting a CPU server stays
        quick. Compiled, every graph variant a request can need is then run too.
        """
        side = REFERENCE_SHORT_SIDE if self.device.type != "cpu" else int(SHORT_SIDE.lo)
        image = Image.new("RGB", (side, side), (127, 127, 127))
        mask = np.zeros((side, side), dtype=bool)
        mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = True

        def run(steps: int) -> float:
            start = self.clock()
            self._run_checked([ClearQuery(image, mask, steps=steps, short_side=side, seed=0)])
            return self.clock() - start

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
            self._warm_compiled_variants(side)

    def _warm_compiled_variants(self, side: int) -> None:
        """Run, before SERVING, every graph variant a request can need, so that no
        request pays a compilation (cold: minutes on a GPU): landscape and portrait
        working sizes, alone and batched, and a guidance of 1 (no CFG: a UNet batch of
        1, which torch always specialises). Two steps each: the last step captures the
        fusion's attention map, a graph of its own."""
        mask = np.zeros((side, side + 128), dtype=bool)
        mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = True
        landscape = Image.new("RGB", (side + 128, side), (127, 127, 127))
        portrait = landscape.transpose(Image.Transpose.ROTATE_90)
        for image, m in ((landscape, mask), (portrait, mask.T.copy())):
            query = ClearQuery(image, m, steps=2, short_side=side, seed=0)
            for n in sorted({1, min(2, self.max_batch_size)}):
                self._run_checked([query] * n)
        self._run_checked([ClearQuery(landscape, mask, steps=2, guidance_scale=1.0,
                                      short_side=side, seed=0)])

    def _run_checked(self, queries: list[ClearQuery]) -> None:
        for result in self(queries, [QuietContext()] * len(queries)):
            if isinstance(result, BaseException):
                raise result

    # -- requests ------------------------------------------------------------------------

    def violations(self, request: ClearQuery) -> list[errors.FieldViolation]:
        return violations(request)

    def batch_key(self, request: ClearQuery) -> Hashable | None:
        """Same working size, steps, guidance and fusion, and whether the result is the
        reference's resized picture: one UNet batch can run them."""
        return (request.working_size(), request.steps, float(request.guidance_scale),
                request.fusion, request.strategy == "reference")

    def estimate_seconds(self, request: ClearQuery) -> float:
        width, height = request.working_size()
        cfg = 1.0 if request.guidance_scale > 1.0 else 0.5
        scale = (width * height) / self._calibration_pixels
        return scale * (self._overhead_seconds + cfg * self._seconds_per_step * request.steps)

    def run(self, queries: Sequence[ClearQuery], contexts: Sequence[StepContext]
            ) -> list[ClearOutput | BaseException]:
        """One pipeline call for a batch of compatible removals."""
        assert self.pipeline is not None
        first = queries[0]
        reference = first.strategy == "reference"

        # 1. Seeds: the caller's, or a fresh one that the output reports
        seeds = self.seeds(queries)
        # CPU generators: the numbers for a seed are the same on every device and dtype.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

        # 2. Grow the masks as asked, on the device (the mask's box only); then what the
        #    model sees at the working size - the whole image, or (crop) the frame -
        #    resized here with the pipeline's own PIL resampling. `reference` hands the
        #    whole image to the pipeline, which resizes it and its result back itself.
        started = time.perf_counter()
        masks, frames, images, model_masks = [], [], [], []
        for q in queries:
            if self.all_cancelled(contexts):
                raise errors.Cancelled("cancelled before object removal")
            mask = dilated_array(q.mask, q.mask_dilation, self.device)
            frame = q.frame()
            image, model_mask = q.image, mask
            if not reference:
                image, model_mask = _at_working_size(q.image, mask, frame,
                                                     q.working_size())
            masks.append(mask)
            frames.append(frame)
            images.append(image)
            model_masks.append(model_mask)
        prepare_s = time.perf_counter() - started
        if self.all_cancelled(contexts):
            raise errors.Cancelled("cancelled before object removal")

        # 3. Denoise with progress and cancellation at every step. Images already at their
        #    working size (sides multiples of 16) stay as they are under a short side
        #    larger than both.
        short_side = first.short_side if reference else max(first.working_size()) + 1
        output = self.pipeline(
            images, model_masks, [prompt_for(q.label) for q in queries],
            short_side=short_side, num_inference_steps=first.steps,
            guidance_scale=float(first.guidance_scale), fusion=first.fusion,
            generator=generators, callback_on_step_end=self.steps(first, first.steps,
                                                                  contexts).callback,
            resize_back=reference)

        # 4. One result each at the input's own size: the reference's resized picture, or
        #    the repainted region over the input's own pixels
        results: list[ClearOutput] = []
        for k, (q, mask, seed) in enumerate(zip(queries, masks, seeds, strict=True)):
            started = time.perf_counter()
            if reference:
                edit = Edit.whole(q.image, output.images[k])
            else:
                edit = _put_back(q.image, output.images[k], output.regions[k, 0], mask,
                                 frames[k])
            timings = {"prepare": prepare_s / len(queries),
                       "composite": time.perf_counter() - started}
            results.append(ClearOutput(edit=edit, mask=mask, steps=q.steps, seed=seed,
                                       timings=timings))
        return results


#: Pillow's `reducing_gap` for the working image of `resize` and `crop`: a reduction of
#: more than 4x is done as an exact integer box reduction, then the reference's bicubic
#: over the last 2x-4x. A one-step bicubic reads every input pixel through a kernel as
#: wide as the reduction; on a 12 MP photo brought to 683x512 it costs more CPU than the
#: JPEG decode (155 ms against 69 ms in two steps on the 2-core dev machine), and the two
#: pictures are 53.5 dB apart on a detailed photo (54.3 dB at 341x256): ten times below
#: the noise of the JPEG itself at quality 90. Reductions under 4x (a `crop` of a small
#: object, any photo under 2048 px on its short side) are the reference's resampling
#: exactly; `reference` hands the pipeline the whole image and is always exact.
REDUCING_GAP = 2.0


def _at_working_size(image: Image.Image, mask: np.ndarray, frame: Box,
                     size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    """`frame` of the image and of the mask at the working `size`, resampled as the
    pipeline itself would (PIL bicubic on 8 bits, nearest for the mask; large reductions
    in two steps, see `REDUCING_GAP`), so the model sees what the reference sees of that
    part of the image."""
    x0, y0, x1, y1 = frame
    part = image if frame == (0, 0, image.width, image.height) else image.crop(frame)
    # 0/1 bytes (a view of the bools, no arithmetic over the photo): nearest neighbour
    # picks pixels, so the values do not matter.
    binary = Image.fromarray(np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8))
    if part.size != size:
        part = part.resize(size, Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
        binary = binary.resize(size, Image.Resampling.NEAREST)
    return part, np.asarray(binary) > 0


#: Feather of the region put back, in working pixels: the working grid's steps at the
#: region's edge fade out over this instead of showing.
FEATHER_WORKING_PIXELS = 2


def _put_back(image: Image.Image, painted: Image.Image, region: torch.Tensor,
              mask: np.ndarray, frame: Box) -> Edit:
    """The model's picture of `frame` (at the working size) put back over `image`: the
    region it repainted (`region`, at the working size) feathered there, its weights
    enlarged to the input's pixels (bilinear) together with the dilated `mask` at full
    size, and the picture blended in with PIL bicubic (the reference's resampling), over
    the region's box only. Weights are computed at the working size: the cost does not
    grow with the photo's resolution."""
    fx0, fy0, fx1, fy1 = frame
    fw, fh = fx1 - fx0, fy1 - fy0
    h, w = region.shape
    weights, (wx0, wy0, wx1, wy1) = feathered(region.cpu().numpy(),
                                               FEATHER_WORKING_PIXELS)
    # The box at full size: the working pixels the weights cover (one more either side,
    # which bilinear enlarging reaches), and the mask's box.
    mx0, my0, mx1, my1 = grown_box(mask[fy0:fy1, fx0:fx1], 0)
    x0, y0, x1, y1 = mx0, my0, mx1, my1
    if wx1 > wx0:
        x0, x1 = min(x0, max(0, wx0 - 1) * fw // w), max(x1, -(-min(w, wx1 + 1) * fw // w))
        y0, y1 = min(y0, max(0, wy0 - 1) * fh // h), max(y1, -(-min(h, wy1 + 1) * fh // h))
    box = (fx0 + x0, fy0 + y0, fx0 + x1, fy0 + y1)
    bx0, by0, bx1, by1 = box
    alpha = np.zeros((by1 - by0, bx1 - bx0), np.float32)
    if wx1 > wx0:
        placed = np.zeros((h, w), np.float32)
        placed[wy0:wy1, wx0:wx1] = weights
        alpha = _enlarged(placed, (x0, y0, x1, y1), (fw, fh))
    alpha = np.maximum(alpha, mask[by0:by1, bx0:bx1])
    return composite(image, painted, alpha, box, frame=frame,
                     resample=Image.Resampling.BICUBIC)


def _enlarged(weights: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """(h, w) working-size `weights` over `box` of a picture of `size` (width, height),
    bilinear with pixel centres aligned (as F.interpolate, align_corners False): exactly 0
    wherever the nearest working pixels are all 0."""
    h, w = weights.shape

    def taps(lo: int, hi: int, full: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = ((np.arange(lo, hi) + 0.5) * (n / full) - 0.5).clip(0, n - 1)
        i0 = np.floor(u).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, (u - i0).astype(np.float32)

    c0, c1, tx = taps(box[0], box[2], size[0], w)
    r0, r1, ty = taps(box[1], box[3], size[1], h)
    cols = weights[:, c0] * (1 - tx) + weights[:, c1] * tx
    return cols[r0] * (1 - ty)[:, None] + cols[r1] * ty[:, None]
