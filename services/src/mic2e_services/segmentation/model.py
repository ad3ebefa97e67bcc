"""SAM3 on one device: text prompts -> all instances, points / box -> one object.

Model code only. It never imports grpc or the generated protobuf modules, so it can be
tested, benchmarked and reused without the transport; the servicer converts messages
to and from the plain dataclasses below.

Two transformers models share one checkpoint folder (``facebook/sam3`` layout):
``Sam3Model`` (detector: text -> instances) and ``Sam3TrackerModel`` (points / box ->
three candidate masks). Both run the same ViT backbone on the same pixels, which is by
far the most expensive part, so:

* the backbone module is held once on the device when both models carry equal weights;
* its output is cached per image (bounded LRU keyed by the image's SHA-256), and each
  path's FPN neck output is derived from it lazily and cached next to it. A second
  prompt on an image, text or click, skips the backbone (and, for the same path, the
  neck too).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch

from mic2e_services import errors
from mic2e_services.api.segmentation import (
    FEATURE_CACHE_MB,
    STAGE,
    PromptQuery,
    PromptResult,
    Query,
    Segment,
    TextQuery,
    TextResult,
    violations,
)
from mic2e_services.model_base import TorchModel
from mic2e_services.runtime.model_api import QuietContext
from mic2e_services.segmentation.features import (
    FeatureCache,
    Features,
    detector_levels,
    full_size_segments,
    same_weights,
    tracker_embeddings,
)
from mic2e_services.torch_device import translate_error

__all__ = ["PromptQuery", "PromptResult", "Sam3Segmenter", "Segment", "TextQuery",
           "TextResult"]



# --------------------------------------------------------------------------------------
# The model.


class Sam3Segmenter(TorchModel):
    """SAM3 text and point/box segmentation on one device.

    Recent images keep their vision features on the device, at most `feature_cache_bytes`
    in all (least recently used first out). At full size in fp16 an image costs up to
    ~80 MB (detector FPN ~56 MB, tracker levels ~11 MB, backbone output ~11 MB until both
    necks have run), whatever its pixel count: the processor resizes every image to one
    square first. The default 512 MiB holds about 6 images and, with the 1.7 GB model,
    fits SAM3's 4 GB card.
    Parts (`load_parts`, `from_parts`): a dict of ``detector`` (``Sam3Model``),
    ``tracker`` (``Sam3TrackerModel``), ``detector_processor`` and ``tracker_processor``.
    """

    STAGE: ClassVar[str] = STAGE
    # The transformers layout; the original-format sam3.pt beside it is never read.
    HUB_FILES = ("*.json", "*.txt", "model.safetensors")
    OFFLOAD_REFUSED = ("SAM3 is 1.7 GB in fp16 and fits a 4 GB card resident; moving it on "
                       "and off the device per call would cost more than the whole query "
                       "(to save more, MIC2E_QUANTIZATION=int8)")
    DEFAULT_BATCH = 4

    def __init__(self, model_id: str, *, feature_cache_bytes: int = FEATURE_CACHE_MB * 2**20,
                 **kwargs: Any) -> None:
        if feature_cache_bytes < 0:
            raise ValueError("feature_cache_bytes must be >= 0")
        super().__init__(model_id, **kwargs)
        self.features = FeatureCache(feature_cache_bytes)
        #: Images run through the ViT backbone so far (one per image encoded).
        self.vision_encoder_runs = 0
        #: True once load() found equal backbone weights and holds them once.
        self.shares_backbone = False

        self._detector: Any = None
        self._tracker: Any = None
        self._det_processor: Any = None
        self._trk_processor: Any = None
        self._shared_pixels = False
        # Rough per-part costs for admission control; replaced by warmup() measurements.
        self._encode_s = 0.05
        self._text_decode_s = 0.05
        self._prompt_decode_s = 0.02
        self._last_encode_s = 0.0

    @classmethod
    def main_module(cls, parts: dict[str, Any]) -> torch.nn.Module:
        return parts["detector"]

    # ------------------------------------------------------------------ lifecycle

    def load_parts(self, folder: Path) -> dict[str, Any]:
        from transformers import (
            Sam3Model,
            Sam3Processor,
            Sam3TrackerModel,
            Sam3TrackerProcessor,
        )

        # Loaded on the CPU first so a shared backbone never sits twice on the device.
        return {"detector": Sam3Model.from_pretrained(folder, dtype=self.dtype),
                "tracker": Sam3TrackerModel.from_pretrained(folder, dtype=self.dtype),
                "detector_processor": Sam3Processor.from_pretrained(folder),
                "tracker_processor": Sam3TrackerProcessor.from_pretrained(folder)}

    def setup(self, parts: dict[str, Any]) -> None:
        """Share the backbone when the weights are equal; quantise; place."""
        detector, tracker = parts["detector"], parts["tracker"]
        self._det_processor = parts["detector_processor"]
        self._trk_processor = parts["tracker_processor"]
        if same_weights(detector.vision_encoder.backbone, tracker.vision_encoder.backbone):
            tracker.vision_encoder.backbone = detector.vision_encoder.backbone
            self.shares_backbone = True
        # Features are shareable only if both paths also see the same pixels.
        self._shared_pixels = self.shares_backbone and (
            self._det_processor.image_processor.to_dict()
            == self._trk_processor.image_processor.to_dict()
        )
        # Quantised layer by layer on the way to the device (the shared ViT once).
        self.quantize([detector, tracker])
        for model in (detector, tracker):
            model.to(self.device).eval().requires_grad_(False)
        self._detector, self._tracker = detector, tracker

    def compile_targets(self) -> list[torch.nn.Module]:
        """The ViT backbone(s): most of a text query's time, and its input is always the
        processor's fixed square, so only the batch size varies. A shared backbone is
        one module, compiled once for both paths."""
        return [m.vision_encoder.backbone for m in (self._detector, self._tracker)]

    def translate_error(self, exc: BaseException) -> BaseException | None:
        if isinstance(exc, torch.OutOfMemoryError):
            # Cached features are the one thing here that can be given back.
            self.clear_cache()
        return translate_error(exc)

    def warmup(self) -> None:
        """Run a text and a point query on a synthetic image; time them for estimate_seconds."""
        pixels = np.full((64, 96, 3), 128, dtype=np.uint8)
        pixels[..., 0] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :]
        pixels[..., 1] = np.linspace(0, 255, 64, dtype=np.uint8)[:, None]
        image = PIL.Image.fromarray(pixels)
        key = "warmup:synthetic"
        text = TextQuery(image=image, image_key=key, text="object", score_threshold=0.0)
        point = PromptQuery(image=image, image_key=key, points=((48.0, 32.0, True),))
        ctx = [QuietContext()]

        # The first round pays one-off costs (allocator, kernel selection); the second is timed.
        for _ in range(2):
            self.features.drop(key)
            t0 = self.clock()
            results = self([text], ctx)
            t1 = self.clock()
            encode_s = self._last_encode_s
            results += self([point], ctx)
            t2 = self.clock()
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        self._encode_s = encode_s
        self._text_decode_s = max(t1 - t0 - encode_s, 0.0)
        self._prompt_decode_s = t2 - t1
        self.features.drop(key)
        if self.compile is not None and self.max_batch_size > 1:
            # Compiled: a batch of two now makes torch's automatic dynamic shapes
            # recompile the ViT for any batch size before SERVING, not on the first
            # batched request (the image side is fixed by the processor).
            keys = [f"{key}:{i}" for i in range(2)]
            batch = [TextQuery(image=image, image_key=k, text="object", score_threshold=0.0)
                     for k in keys]
            for result in self(batch, ctx * 2):
                if isinstance(result, BaseException):
                    raise result
            for k in keys:
                self.features.drop(k)

    def estimate_seconds(self, request: Any) -> float:
        """Decode cost of the request's path, plus the vision encoder unless its image is cached."""
        decode = self._text_decode_s if isinstance(request, TextQuery) else self._prompt_decode_s
        key = getattr(request, "image_key", None)
        return decode + (0.0 if key in self.features else self._encode_s)

    def batch_key(self, request: Any) -> Hashable | None:
        """Text queries always batch (fixed 32-token prompts, fixed image size); prompt
        queries batch when their prompt tensors have the same shape, so no padding point
        ever changes a result."""
        if isinstance(request, TextQuery):
            return ("text",)
        if isinstance(request, PromptQuery):
            return ("prompt", *self._prompt_shape(request))
        return None

    # ------------------------------------------------------------------ inference

    def violations(self, request: Any) -> list[errors.FieldViolation]:
        return violations(request)

    def run(self, requests: Sequence[Query], contexts: Sequence[Any]) -> list[Any]:
        """A ready batch: text queries, or prompt queries of one tensor shape."""
        queries = list(requests)
        text = isinstance(queries[0], TextQuery)
        with torch.inference_mode():
            # 1. Vision features, once per image for both paths; the cache has the rest.
            features = self._features(queries if text else [], [] if text else queries)

            # 2. Decode: the detector for text, the tracker for clicks.
            if text:
                outs = self._decode_text(queries, features)
            else:
                outs = self._decode_prompts(queries, self._prompt_shape(queries[0]), features)

        # 3. One result per request, in order, each with its (only) progress step.
        self.steps(queries[0], 1, contexts)(0)
        return outs

    # ------------------------------------------------------------------ cache

    @property
    def feature_cache_bytes(self) -> int:
        """The feature cache's budget (settable)."""
        return self.features.max_bytes

    @feature_cache_bytes.setter
    def feature_cache_bytes(self, value: int) -> None:
        self.features.max_bytes = value

    def clear_cache(self) -> None:
        """Forget every cached vision feature."""
        self.features.clear()

    def cached_image_keys(self) -> list[str]:
        """Image keys with cached features, least recently used first."""
        return self.features.keys()

    def cache_bytes(self) -> int:
        """Device bytes the feature cache holds now."""
        return self.features.bytes()

    # ------------------------------------------------------------------ vision

    def _features(
        self, text_queries: list[TextQuery], prompt_queries: list[PromptQuery]
    ) -> dict[str, Features]:
        """Features for every image of the call, computing only what the cache lacks.

        Entries are held here for the whole call, so an eviction by a large batch cannot
        take features away from a request still waiting for its decode.
        """
        entries: dict[str, Features] = {}
        images: dict[str, PIL.Image.Image] = {}
        needs: dict[str, set[str]] = {}
        for path, queries in (("detector", text_queries), ("tracker", prompt_queries)):
            for query in queries:
                if query.image_key not in entries:
                    entries[query.image_key] = self.features.lookup(query.image_key, query.size)
                    image = query.image
                    images[query.image_key] = image if image.mode == "RGB" else image.convert("RGB")
                needs.setdefault(query.image_key, set()).add(path)

        encode_s = 0.0
        for path in ("detector", "tracker"):
            missing = [
                key for key, paths in needs.items()
                if path in paths and getattr(entries[key], path) is None
            ]
            if not missing:
                continue
            slot = "shared" if self._shared_pixels else path
            # The worker's batch is at most max_batch_size: one backbone and neck run each.
            to_encode = [key for key in missing if slot not in entries[key].backbone]
            if to_encode:
                t0 = self.clock()
                hidden = self._run_backbone(path, [images[key] for key in to_encode])
                encode_s += self.clock() - t0
                for row, key in enumerate(to_encode):
                    entries[key].backbone[slot] = hidden[row : row + 1].clone()
            hidden = torch.cat([entries[key].backbone[slot] for key in missing])
            neck = self._detector_neck if path == "detector" else self._tracker_neck
            levels = neck(hidden)
            for row, key in enumerate(missing):
                setattr(entries[key], path, [lv[row : row + 1].clone() for lv in levels])

        for entry in entries.values():
            # Both necks done: the backbone output is no longer needed.
            if entry.detector is not None and entry.tracker is not None:
                entry.backbone.clear()
        self.features.trim()
        self._last_encode_s = encode_s
        return entries

    def _run_backbone(self, path: str, images: list[PIL.Image.Image]) -> torch.Tensor:
        """ViT backbone on a batch of images -> (batch, tokens, hidden)."""
        model = self._detector if path == "detector" else self._tracker
        processor = self._det_processor if path == "detector" else self._trk_processor
        pixels = processor.image_processor(
            images=images, return_tensors="pt", device=self.device
        )["pixel_values"].to(self.device, self.dtype)
        self.vision_encoder_runs += len(images)
        return model.vision_encoder.backbone(pixels).last_hidden_state

    def _detector_neck(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return detector_levels(self._detector, hidden)

    def _tracker_neck(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        return tracker_embeddings(self._tracker, hidden)

    # ------------------------------------------------------------------ text path

    def _decode_text(
        self, queries: list[TextQuery], features: dict[str, Features]
    ) -> list[TextResult]:
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        detector = self._detector
        neck = detector.vision_encoder.neck
        levels = tuple(
            torch.cat([features[q.image_key].detector[n] for q in queries])
            for n in range(len(features[queries[0].image_key].detector))
        )
        # Position encodings depend on shape only (transformers caches them).
        positions = tuple(neck.position_encoding(lv.shape, lv.device, lv.dtype) for lv in levels)
        vision = Sam3VisionEncoderOutput(fpn_hidden_states=levels, fpn_position_encoding=positions)

        max_tokens = detector.config.text_config.max_position_embeddings
        tokens = self._det_processor.tokenizer(
            [q.text.strip() for q in queries],
            padding="max_length",
            max_length=max_tokens,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        out = detector(
            vision_embeds=vision,
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
        )

        scores = out.pred_logits.float().sigmoid()
        if out.presence_logits is not None:
            scores = scores * out.presence_logits.float().sigmoid()
        results = []
        for row, query in enumerate(queries):
            order = torch.sort(scores[row], descending=True, stable=True).indices
            order = order[scores[row][order] > query.score_threshold]
            if query.max_instances:
                order = order[: query.max_instances]
            # Same order as the processor: probabilities are upsampled, then thresholded.
            probs = out.pred_masks[row, order].float().sigmoid()
            segments = full_size_segments(
                probs, scores[row, order], query.size, query.mask_threshold
            )
            # An instance without a single pixel at full size cannot be shown or removed.
            results.append(TextResult([s for s in segments if s.mask.any()]))
        return results

    # ------------------------------------------------------------------ prompt path

    @staticmethod
    def _prompt_shape(query: PromptQuery) -> tuple[int, bool, bool]:
        """(points, has box, multimask) - what the tracker's input tensors look like.

        Three candidates help an ambiguous single click; a box or several points are
        unambiguous and SAM's single-mask output is better there, unless the caller
        asked for alternatives.
        """
        n_points = len(query.points)
        has_box = query.box is not None
        multimask = query.return_alternatives or (n_points == 1 and not has_box)
        return (n_points, has_box, multimask)

    def _decode_prompts(
        self,
        queries: list[PromptQuery],
        shape: tuple[int, bool, bool],
        features: dict[str, Features],
    ) -> list[PromptResult]:
        n_points, has_box, multimask = shape
        tracker = self._tracker
        embeddings = [
            torch.cat([features[q.image_key].tracker[n] for q in queries])
            for n in range(len(features[queries[0].image_key].tracker))
        ]

        # The processor maps pixel coordinates of each original size to model input space.
        kwargs: dict[str, Any] = {}
        if n_points:
            kwargs["input_points"] = [[[[p[0], p[1]] for p in q.points]] for q in queries]
            kwargs["input_labels"] = [[[1 if p[2] else 0 for p in q.points]] for q in queries]
        if has_box:
            kwargs["input_boxes"] = [[list(q.box)] for q in queries]
        prompts = self._trk_processor(
            original_sizes=[[q.size[1], q.size[0]] for q in queries],
            return_tensors="pt",
            **kwargs,
        )
        inputs = {
            name: prompts[name].to(self.device)
            for name in ("input_points", "input_labels", "input_boxes")
            if name in prompts
        }
        out = tracker(image_embeddings=embeddings, multimask_output=multimask, **inputs)

        iou = out.iou_scores.float()  # (batch, 1, candidates)
        results = []
        for row, query in enumerate(queries):
            order = torch.sort(iou[row, 0], descending=True, stable=True).indices
            if not query.return_alternatives:
                order = order[:1]
            logits = out.pred_masks[row, 0, order].float()
            # Mask logits: the object is where the upsampled logit is positive.
            segments = full_size_segments(logits, iou[row, 0, order], query.size, 0.0)
            results.append(PromptResult(best=segments[0], alternatives=segments[1:]))
        return results

    # ------------------------------------------------------------------ helpers


