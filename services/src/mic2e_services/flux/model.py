"""FLUX.1 as a resident `TorchModel`: text to image (diffusers `FluxPipeline`) and
inpainting on the same components.

Model side only: torch and diffusers, never grpc or the generated protos. The servicer
converts protobuf messages to `GenerateQuery` / `InpaintQuery` and back in its own
module, so this file can be loaded, tested and benchmarked without a server, and the
servicer (and the orchestrator) can be installed without torch.

Inpainting: with FLUX.1-schnell (the default checkpoint) a `FluxInpaintPipeline` built on
the resident pipeline's own modules (transformer, text encoders, VAE) - no second copy of
any weight, none cast. With a fill checkpoint (`FluxFillPipeline` layout, e.g.
FLUX.1-Fill-dev) that pipeline itself; such a server cannot Generate (its transformer
reads image and mask channels). The result is composited at the input's size: pixels
outside the dilated, feathered mask are the input's own, byte for byte.

A batch (same kind, size and step count; the worker groups them) is one pipeline call
with one seeded generator per request, so a request's picture does not depend on its
batch-mates.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from mic2e_services import errors
from mic2e_services.api.flux import (
    INPAINT_STAGE,
    MAX_SEQUENCE_LENGTH,
    STAGE,
    STEPS,
    GenerateOutput,
    GenerateQuery,
    InpaintOutput,
    InpaintQuery,
    inpaint_violations,
    inpaint_working_size,
    steps_run,
    violations,
)
from mic2e_services.masks import dilated_array
from mic2e_services.model_base import TorchModel
from mic2e_services.regions import composite, feathered
from mic2e_services.runtime.model_api import StepContext

__all__ = ["INPAINT_STAGE", "STAGE", "FluxGenerator", "GenerateOutput", "GenerateQuery",
           "InpaintOutput", "InpaintQuery"]

log = logging.getLogger(__name__)

#: The warm-up request; estimates scale from its measured step time.
_WARMUP_SIZE = 512
_WARMUP_STEPS = 3
#: Per-step seconds at the warm-up size assumed before `warmup` measured it.
_DEFAULT_STEP_S = {"cpu": 0.5, "cuda": 0.08}

#: A fill checkpoint's own defaults (FLUX.1-Fill-dev's model card: 50 steps, guidance 30).
_FILL_STEPS, _FILL_GUIDANCE = 50, 30.0
#: A guidance-distilled text-to-image checkpoint (FLUX.1-dev) used for inpainting.
_GUIDED_STEPS, _GUIDED_GUIDANCE = 28, 3.5


class _NoPromptText(logging.Filter):
    """Drops the pipeline's warning that quotes the cut-off end of a long prompt (CLIP
    reads 77 tokens, T5 `max_sequence_length`): a caller's text never reaches the logs, at
    any verbosity. The response says what T5 kept (`prompt_truncated`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The following part of your input was truncated")


def _keep_prompts_out_of_logs(pipe: Any) -> None:
    logger = logging.getLogger(type(pipe).__module__)
    if not any(isinstance(f, _NoPromptText) for f in logger.filters):
        logger.addFilter(_NoPromptText())


class FluxGenerator(TorchModel):
    """FLUX.1 on one device: Generate (text to image) and Inpaint; see the module
    docstring for which checkpoint does what."""

    STAGE: ClassVar[str] = STAGE
    # bf16 rather than fp16: FLUX is trained in bf16 and it measured faster (docs/models.md).
    HALF = torch.bfloat16
    # The diffusers layout only: the repository's original-format files beside it
    # (flux1-schnell.safetensors, ae.safetensors) are 24 GB nothing here reads.
    HUB_FILES = ("model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors")
    DEFAULT_BATCH = 4

    def __init__(self, model_id: str, **kwargs: Any) -> None:
        super().__init__(model_id, **kwargs)
        self._pipe: Any = None
        self._inpaint_pipe: Any = None  # made from the resident one at first use
        #: True when the checkpoint is a fill model (FluxFillPipeline layout).
        self.fill = False
        self._step_s = _DEFAULT_STEP_S.get(self.device.type, 0.5)
        self._fixed_s = 0.0

    @classmethod
    def main_module(cls, parts: Any) -> torch.nn.Module:
        return parts.transformer

    # -- loading -------------------------------------------------------------------------

    def load_parts(self, folder: Path) -> Any:
        """The pipeline the checkpoint's model_index.json names: FluxFillPipeline for a fill
        checkpoint, FluxPipeline otherwise."""
        import json

        from diffusers import FluxFillPipeline, FluxPipeline

        index = json.loads((Path(folder) / "model_index.json").read_text())
        cls = FluxFillPipeline if index.get("_class_name") == "FluxFillPipeline" else FluxPipeline
        return cls.from_pretrained(folder, dtype=self.dtype)

    def setup(self, pipe: Any) -> None:
        self.fill = type(pipe).__name__ == "FluxFillPipeline"
        _keep_prompts_out_of_logs(pipe)
        if pipe.transformer.dtype != self.dtype:  # never serve silently in another dtype
            pipe.to(dtype=self.dtype)
        # The 12 B transformer and the 4.8 B T5 are the big parts.
        self.quantize([pipe.transformer, pipe.text_encoder_2])
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        self.place(pipe)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe

    def compile_targets(self) -> Iterable[torch.nn.Module]:
        # Sizes stay the caller's: warm-up's second size and batch turn on dynamic
        # shapes, which serve the rest.
        return [self._pipe.transformer]

    def warmup(self) -> None:
        """One small generation; its step time calibrates `estimate_seconds`."""
        stamps: list[float] = []

        def on_step(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            stamps.append(self.clock())
            return {}

        if self.fill:  # no text-to-image path: time an inpainting instead
            query: Any = InpaintQuery(Image.new("RGB", (_WARMUP_SIZE, _WARMUP_SIZE), "gray"),
                                      _warmup_mask(_WARMUP_SIZE, _WARMUP_SIZE),
                                      "a photo of a dog", steps=_WARMUP_STEPS, seed=0)
            run = lambda on: self._inpaint([query], [0], on)  # noqa: E731
        else:
            query = GenerateQuery("a photo of a dog", _WARMUP_SIZE, _WARMUP_SIZE,
                                  _WARMUP_STEPS, 0)
            run = lambda on: self._generate([query], [0], on)  # noqa: E731
        # An untimed first run pays the one-off costs (allocator, kernel selection, lazy
        # imports), which would otherwise inflate the estimate many times over.
        run(lambda pipe, i, t, kwargs: {})
        stamps.clear()
        start = self.clock()
        run(on_step)
        total = self.clock() - start
        # Later steps only: the first one carries one-off costs (kernel selection, caches).
        self._step_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        self._fixed_s = max(0.0, total - self._step_s * _WARMUP_STEPS)
        log.info("flux warm-up: %.4f s per step, %.4f s fixed at %dx%d", self._step_s,
                 self._fixed_s, _WARMUP_SIZE, _WARMUP_SIZE)
        if self.compile is not None:
            # Compiled: calls at another size, alone and (when batching is on) batched,
            # make torch's automatic dynamic shapes recompile NOW, before SERVING, not on
            # the first real request of another size or batch (cold: minutes). Both are
            # needed: a batch of 1 is always specialised apart from larger ones.
            width = _WARMUP_SIZE + 256
            if self.fill:
                other: Any = InpaintQuery(Image.new("RGB", (width, _WARMUP_SIZE), "gray"),
                                          _warmup_mask(width, _WARMUP_SIZE), "a photo of a dog",
                                          steps=1, seed=0)
                again: Callable[..., Any] = self._inpaint
            else:
                other = GenerateQuery("a photo of a dog", width, _WARMUP_SIZE, 1, 0)
                again = self._generate
            for n in sorted({1, min(2, self.max_batch_size)}):
                again([other] * n, list(range(n)), lambda pipe, i, t, kwargs: {})

    # -- requests ------------------------------------------------------------------------

    def check(self, request: Any) -> None:
        if isinstance(request, GenerateQuery) and self.fill:
            raise errors.FailedPrecondition(
                "this server holds a FLUX fill checkpoint, which only inpaints: Generate "
                "needs a text-to-image checkpoint (FLUX.1-schnell)", reason="FILL_MODEL_ONLY",
                metadata={"model": self.model_id})
        super().check(request)

    def violations(self, request: GenerateQuery | InpaintQuery) -> list[errors.FieldViolation]:
        if isinstance(request, InpaintQuery):
            steps, _ = self._inpaint_settings(request)
            return inpaint_violations(request, guided=self._guided(), steps=steps)
        return violations(request)

    def inpaint_defaults(self) -> tuple[int, float | None]:
        """(steps, guidance scale) of an Inpaint that sets neither: the checkpoint's own."""
        if self.fill:
            return _FILL_STEPS, _FILL_GUIDANCE
        if self._guided():
            return _GUIDED_STEPS, _GUIDED_GUIDANCE
        return STEPS.default, None

    def _guided(self) -> bool:
        """Whether the transformer takes a guidance input (schnell: no, dev and fill: yes)."""
        transformer = self._pipe.transformer if self._pipe is not None else None
        return bool(transformer is not None and transformer.config.guidance_embeds)

    def batch_key(self, request: GenerateQuery | InpaintQuery) -> Hashable | None:
        """Same kind, size and step count: one pipeline call, one generator per request."""
        if isinstance(request, InpaintQuery):
            steps, guidance = self._inpaint_settings(request)
            return ("inpaint", *inpaint_working_size(*request.image.size), steps,
                    request.strength, guidance)
        return ("generate", request.width, request.height, request.steps)

    def estimate_seconds(self, request: GenerateQuery | InpaintQuery) -> float:
        """Warm-up step time x steps (+ text encoding and decoding), scaled by pixels.

        Linear in pixels overestimates large pictures a little (the transformer's cost
        grows more slowly at these sizes); for admission control that errs on the safe side.
        Inpainting also encodes the image: one more fixed part, unless the warm-up was an
        inpainting already (a fill checkpoint's).
        """
        if isinstance(request, InpaintQuery):
            width, height = inpaint_working_size(*request.image.size)
            steps, _ = self._inpaint_settings(request)
            fixed = self._fixed_s * (1 if self.fill else 2)
            work = fixed + self._step_s * steps_run(steps, request.strength)
        else:
            width, height = request.width, request.height
            work = self._fixed_s + self._step_s * request.steps
        return work * width * height / (_WARMUP_SIZE * _WARMUP_SIZE)

    def stage_of(self, request: GenerateQuery | InpaintQuery) -> str:
        return INPAINT_STAGE if isinstance(request, InpaintQuery) else STAGE

    def run(self, batch: Sequence[GenerateQuery | InpaintQuery],
            contexts: Sequence[StepContext]) -> list[Any]:
        """A batch of one kind: Generate queries, or Inpaint queries (see `batch_key`)."""
        inpaint = isinstance(batch[0], InpaintQuery)

        # 1. The missing seeds, drawn now: every picture is reproducible from its output.
        seeds = self.seeds(batch)
        if inpaint:
            steps, _ = self._inpaint_settings(batch[0])
            total = steps_run(steps, batch[0].strength)
        else:
            total = batch[0].steps

        # 2. Per-step progress and cancellation.
        steps_done = self.steps(batch[0], total, contexts)

        # 3. One pipeline call, one seeded generator per request (inpainting: at the
        #    working size, on the grown masks; the work before the first step stops too
        #    when every caller has left).
        if inpaint:
            started = time.perf_counter()

            def check() -> None:
                if self.all_cancelled(contexts):
                    raise errors.Cancelled("cancelled before inpainting started")

            masks = []
            for q in batch:
                check()
                masks.append(dilated_array(q.mask, q.mask_dilation, self.device))
            grown_s, resized = time.perf_counter() - started, {"prepare": 0.0}
            pictures = self._inpaint(batch, seeds, steps_done.callback, masks, check, resized)
            # Mask growth and resizing, not the pipeline call between them and the end.
            prepare_s = (grown_s + resized["prepare"]) / len(batch)
        else:
            pictures = self._generate(batch, seeds, steps_done.callback)

        # 4. Report what the model saw (T5 reads MAX_SEQUENCE_LENGTH tokens, no more);
        #    an inpainting back at its input's size, the input's own pixels outside the
        #    feathered mask. (A request stopped on the way gets Cancelled from the base.)
        results: list[Any] = []
        for j, query in enumerate(batch):
            truncated, seen = self._t5_truncation(query.prompt)
            facts = {"seed": seeds[j], "steps": total, "prompt_truncated": truncated,
                     "truncated_prompt": seen if truncated else ""}
            if steps_done.stopped[j]:
                results.append(errors.Cancelled(f"cancelled during {steps_done.stage}"))
            elif inpaint:
                started = time.perf_counter()
                alpha, box = feathered(masks[j], query.feather)
                edit = composite(query.image, pictures[j], alpha, box)
                results.append(InpaintOutput(
                    edit=edit, mask=masks[j], timings={
                        "prepare": prepare_s, "composite": time.perf_counter() - started},
                    **facts))
            else:
                results.append(GenerateOutput(image=pictures[j], **facts))
        return results

    def _inpaint_settings(self, query: InpaintQuery) -> tuple[int, float | None]:
        steps, guidance = self.inpaint_defaults()
        return (query.steps if query.steps is not None else steps,
                query.guidance_scale if query.guidance_scale is not None else guidance)

    def inpaint_pipeline(self) -> Any:
        """The pipeline Inpaint runs: the fill checkpoint's own, or FluxInpaintPipeline on
        the resident components, the same module objects. Built by its constructor rather
        than `from_pipe`, which ends with `.to(dtype)`: that would cast the shared modules
        in place (to float32 without a dtype; in fp16, T5's `wo` layers, which transformers
        keeps in float32 so that T5 does not overflow), changing Generate's numbers too."""
        if self.fill:
            return self._pipe
        if self._inpaint_pipe is None:
            from diffusers import FluxInpaintPipeline

            wanted = inspect.signature(FluxInpaintPipeline.__init__).parameters
            pipe = FluxInpaintPipeline(**{name: part for name, part
                                          in self._pipe.components.items() if name in wanted})
            pipe.set_progress_bar_config(disable=True)
            _keep_prompts_out_of_logs(pipe)
            self._inpaint_pipe = pipe
        return self._inpaint_pipe

    def resident_parameters(self) -> int:
        """Bytes of the distinct parameter and buffer tensors every pipeline held here
        reaches (a module shared by two pipelines counts once)."""
        seen: dict[int, int] = {}
        for pipe in (self._pipe, self._inpaint_pipe):
            for component in (pipe.components.values() if pipe is not None else ()):
                if isinstance(component, torch.nn.Module):
                    for tensor in (*component.parameters(), *component.buffers()):
                        seen[id(tensor)] = tensor.numel() * tensor.element_size()
        return sum(seen.values())

    # -- helpers -------------------------------------------------------------------------

    def _generate(self, batch: Sequence[GenerateQuery], seeds: Sequence[int],
                  on_step: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
                  ) -> list[Image.Image]:
        first = batch[0]
        # CPU generators: the same seed gives the same starting noise on every device, so
        # GPU pictures can be checked against the CPU / fp32 reference path.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        out = self._pipe(
            prompt=[q.prompt for q in batch], width=first.width, height=first.height,
            num_inference_steps=first.steps,
            guidance_scale=0.0,  # schnell is guidance-distilled: no guidance input
            max_sequence_length=MAX_SEQUENCE_LENGTH, generator=generators, output_type="pil",
            callback_on_step_end=on_step)
        return list(out.images)

    def _inpaint(self, batch: Sequence[InpaintQuery], seeds: Sequence[int],
                 on_step: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]],
                 masks: Sequence[np.ndarray] | None = None,
                 check: Callable[[], None] = lambda: None,
                 timings: dict[str, float] | None = None) -> list[Image.Image]:
        """The repainted pictures at the working size (not yet composited). `check()`
        runs before each picture's resizing (it raises when every caller has left);
        `timings["prepare"]` gets the seconds spent resizing, before the pipeline."""
        started = time.perf_counter()
        first = batch[0]
        width, height = inpaint_working_size(*first.image.size)
        steps, guidance = self._inpaint_settings(first)
        if masks is None:
            masks = [dilated_array(q.mask, q.mask_dilation, self.device) for q in batch]
        images, mask_images = [], []
        for q, m in zip(batch, masks, strict=True):
            check()
            image = q.image if q.image.mode == "RGB" else q.image.convert("RGB")
            images.append(image.resize((width, height), Image.Resampling.LANCZOS))
            mask_images.append(_working_mask(m, width, height, self.device))
        check()
        if timings is not None:
            timings["prepare"] = time.perf_counter() - started
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        kwargs: dict[str, Any] = {}
        if guidance is not None:
            kwargs["guidance_scale"] = guidance
        out = self.inpaint_pipeline()(
            prompt=[q.prompt for q in batch], image=images, mask_image=mask_images,
            width=width, height=height, strength=first.strength, num_inference_steps=steps,
            max_sequence_length=MAX_SEQUENCE_LENGTH, generator=generators,
            output_type="pil", callback_on_step_end=on_step, **kwargs)
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


def _working_mask(mask: np.ndarray, width: int, height: int, device: torch.device
                  ) -> Image.Image:
    """`mask` at the working size, every 8x8 latent cell it touches whole. The pipeline
    samples the mask once per latent cell (nearest); a thin mask, or one scaled down from
    a large image, could fall between the samples and go silently unrepainted."""
    cells = torch.nn.functional.adaptive_max_pool2d(
        torch.from_numpy(mask).to(device)[None, None].float(), (height // 8, width // 8))
    whole = cells[0, 0].repeat_interleave(8, 0).repeat_interleave(8, 1)
    return Image.fromarray((whole > 0).cpu().numpy().astype(np.uint8) * 255)


def _warmup_mask(width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[height // 4:-height // 4, width // 4:-width // 4] = True
    return mask
