"""FLUX.1-schnell text-to-image as a resident `TorchModel` (diffusers `FluxPipeline`).

Model side only: torch and diffusers, never grpc or the generated protos. The servicer
converts protobuf messages to `GenerateQuery` / from `GenerateOutput` in its own module,
so this file can be loaded, tested and benchmarked without a server, and the servicer
(and the orchestrator) can be installed without torch.

A batch (same size and step count; the worker groups them) is one pipeline call with one
seeded generator per request, so a request's picture does not depend on its batch-mates.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from mic2e_services import errors
from mic2e_services.flux.types import (
    MAX_SEQUENCE_LENGTH,
    GenerateOutput,
    GenerateQuery,
    violations,
)
from mic2e_services.model_base import TorchModel
from mic2e_services.runtime.model_api import StepContext

__all__ = ["STAGE", "FluxGenerator", "GenerateOutput", "GenerateQuery"]

log = logging.getLogger(__name__)

#: Randomly drawn seeds stay below 2**32 so every client language can show them exactly.
RANDOM_SEED_LIMIT = 2**32
#: The warm-up request; estimates scale from its measured step time.
_WARMUP_SIZE = 512
_WARMUP_STEPS = 3
#: Per-step seconds at the warm-up size assumed before `warmup` measured it.
_DEFAULT_STEP_S = {"cpu": 0.5, "cuda": 0.08}

STAGE = "generation"


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
    """FLUX.1-schnell on one device."""

    STAGE: ClassVar[str] = STAGE
    # bf16 rather than fp16: FLUX is trained in bf16 and it measured faster (MODELS.md).
    HALF = torch.bfloat16
    # The diffusers layout only: the repository's original-format files beside it
    # (flux1-schnell.safetensors, ae.safetensors) are 24 GB nothing here reads.
    HUB_FILES = ("model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors")
    DEFAULT_BATCH = 4

    def __init__(self, model_id: str, **kwargs: Any) -> None:
        super().__init__(model_id, **kwargs)
        self._pipe: Any = None
        self._step_s = _DEFAULT_STEP_S.get(self.device.type, 0.5)
        self._fixed_s = 0.0

    @classmethod
    def main_module(cls, parts: Any) -> torch.nn.Module:
        return parts.transformer

    # -- loading -------------------------------------------------------------------------

    def load_parts(self, folder: Path) -> Any:
        from diffusers import FluxPipeline

        return FluxPipeline.from_pretrained(folder, dtype=self.dtype)

    def setup(self, pipe: Any) -> None:
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
            # A host sync is acceptable here only: warm-up is not a served request.
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            stamps.append(time.perf_counter())
            return {}

        query = GenerateQuery("a photo of a dog", _WARMUP_SIZE, _WARMUP_SIZE, _WARMUP_STEPS, 0)
        # An untimed first run pays the one-off costs (allocator, kernel selection, lazy
        # imports), which would otherwise inflate the estimate many times over.
        self._generate([query], [0], lambda pipe, i, t, kwargs: {})
        stamps.clear()
        start = time.perf_counter()
        self._generate([query], [0], on_step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total = time.perf_counter() - start
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
            other = GenerateQuery("a photo of a dog", _WARMUP_SIZE + 256, _WARMUP_SIZE, 1, 0)
            for n in sorted({1, min(2, self.max_batch_size)}):
                self._generate([other] * n, list(range(n)), lambda pipe, i, t, kwargs: {})

    # -- requests ------------------------------------------------------------------------

    def violations(self, request: GenerateQuery) -> list[errors.FieldViolation]:
        return violations(request)

    def batch_key(self, request: GenerateQuery) -> Hashable | None:
        """Same size and step count: one pipeline call, one generator per request."""
        return (request.width, request.height, request.steps)

    def estimate_seconds(self, request: GenerateQuery) -> float:
        """Warm-up step time x steps (+ text encoding and decoding), scaled by pixels.

        Linear in pixels overestimates large pictures a little (the transformer's cost
        grows more slowly at these sizes); for admission control that errs on the safe side.
        """
        scale = request.width * request.height / (_WARMUP_SIZE * _WARMUP_SIZE)
        return (self._fixed_s + self._step_s * request.steps) * scale

    def run(self, requests: Sequence[GenerateQuery], contexts: Sequence[StepContext]
            ) -> list[GenerateOutput | Exception]:
        # 1. Work whose caller already left gets no device time; draw the missing seeds
        #    now, so every picture is reproducible from its output.
        live = [i for i, context in enumerate(contexts) if not context.cancelled()]
        if not live:
            raise errors.Cancelled("cancelled before generation started")
        seeds = [_seed_of(requests[i]) for i in live]
        steps = requests[0].steps

        # 2. Per-step progress and cancellation. A cancelled request stops reporting; the
        #    batch stops at the end of this step only when every request is cancelled.
        stopped = [False] * len(live)

        def on_step(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            for j, k in enumerate(live):
                if stopped[j]:
                    continue
                contexts[k].progress(STAGE, i + 1, steps)
                stopped[j] = contexts[k].cancelled()
            if all(stopped):
                # The flag alone would skip the remaining steps but still decode; raising
                # also skips the VAE.
                pipe._interrupt = True
                raise errors.Cancelled(f"cancelled after step {i + 1} of {steps}")
            return {}

        # 3. One pipeline call, one seeded generator per request.
        images = self._generate([requests[i] for i in live], seeds, on_step)

        # 4. Report what the model saw: T5 reads MAX_SEQUENCE_LENGTH tokens, no more.
        results: list[GenerateOutput | Exception] = [
            errors.Cancelled("cancelled before generation started")] * len(requests)
        for j, i in enumerate(live):
            if stopped[j]:
                results[i] = errors.Cancelled("cancelled during generation")
                continue
            truncated, seen = self._t5_truncation(requests[i].prompt)
            results[i] = GenerateOutput(image=images[j], seed=seeds[j], steps=steps,
                                        prompt_truncated=truncated,
                                        truncated_prompt=seen if truncated else "")
        return results

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

    def _t5_truncation(self, prompt: str) -> tuple[bool, str]:
        """(whether T5 cut the prompt, the text it kept) - as the pipeline tokenizes it."""
        tokenizer = self._pipe.tokenizer_2
        ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
        if len(ids) <= MAX_SEQUENCE_LENGTH:
            return False, prompt
        # Truncation keeps MAX_SEQUENCE_LENGTH - 1 pieces and then appends </s>.
        kept = ids[: MAX_SEQUENCE_LENGTH - 1]
        return True, tokenizer.decode(kept, skip_special_tokens=True)


def _seed_of(request: GenerateQuery) -> int:
    return request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_LIMIT)
