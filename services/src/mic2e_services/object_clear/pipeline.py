"""ObjectClear as a diffusers pipeline: remove an object and its effects (torch only).

ObjectClear (github.com/zjx0101/ObjectClear, weights `jixin0101/ObjectClear`) is an
SDXL inpainting loop whose prompt "remove the instance of object" carries, at token 5, an
embedding of the object itself (a CLIP vision tower + a small "postfuse" MLP), plus
Attention-Guided Fusion (AGF): a latent blend after the first step and a pixel-space blend
driven by the last step's cross-attention to that token.

This pipeline draws what the reference pipeline and its inference script draw on the same
weights (`tests/fixtures/parity/objectclear` holds the reference's outputs; the parity
test checks every stage), and loads the published checkpoint as it is. What it adds for
serving: one pipeline call runs a batch of compatible removals, each with its own
generator, object token and fusion; cancellation between steps; the fusion runs in torch
on the device, emulating the reference's 8-bit NumPy/OpenCV steps there; the image is
VAE-encoded once (the reference encodes the same pixels twice and draws two samples).

Steps that must stay as the reference has them (each changes the picture):
- working size: `working_size` (no scaling below a 512 short side, sides rounded UP to 16);
- resizing with PIL on 8-bit pictures: bicubic for the image, nearest for the mask, and
  bicubic back to the input size;
- random numbers per generator, in this order: the VAE posterior sample of the image (the
  step-0 blend target), the initial noise, a second posterior sample (the UNet's condition);
- the step-0 latent blend only when fusion is on;
- the prompt "remove the instance of object", token 5 replaced (positive half only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from mic2e_services.api.object_clear import (
    GUIDANCE_SCALE,
    REFERENCE_SHORT_SIDE,
    STEPS,
    working_size,
)
from mic2e_services.checkpoints import resolve_checkpoint
from mic2e_services.errors import Cancelled
from mic2e_services.object_clear.components import (
    COMPONENTS,
    DEFAULT_PROMPT,
    EXTRA_COMPONENTS,
    HUB_IGNORE,
    HUB_PATTERNS,
    OBJECT_TOKEN_INDEX,
    Generators,
    ImageInput,
    MaskInput,
    ObjectClearPipelineOutput,
    PostfuseModule,
    StepEndCallback,
    TokenAttentionCapture,
    check_inputs,
    load_strictly,
    prompt_for,
    publish_model_index,
)

# The draws in the reference's order (the parity test checks them here).
from mic2e_services.object_clear.components import draw_normal as _draw
from mic2e_services.object_clear.fusion import attention_guided_fusion, fusion_masks

__all__ = [
    "CAPTURE_LAYER",
    "COMPONENTS",
    "EXTRA_COMPONENTS",
    "HUB_IGNORE",
    "HUB_PATTERNS",
    "DEFAULT_PROMPT",
    "OBJECT_TOKEN_INDEX",
    "REFERENCE_SHORT_SIDE",
    "ObjectClearPipeline",
    "ObjectClearPipelineOutput",
    "PostfuseModule",
    "TokenAttentionCapture",
    "prompt_for",
    "working_size",
]

#: The cross-attention layer whose map AGF reads (queries at half the latent resolution).
CAPTURE_LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ---------------------------------------------------------------------------------------


class ObjectClearPipeline(DiffusionPipeline):
    """SDXL-inpainting components + CLIP object embedding + Attention-Guided Fusion.

    Loads the published `jixin0101/ObjectClear` layout as it is (`from_pretrained`), and
    works with `save_pretrained`, `.to()`, `enable_model_cpu_offload()` and quantised
    components as any diffusers pipeline. Not thread-safe (the scheduler keeps the step
    index): one caller at a time, as the model worker does.
    """

    model_cpu_offload_seq = ("text_encoder->text_encoder_2->image_prompt_encoder->postfuse_module"
                             "->unet->vae")

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: EulerDiscreteScheduler,
        image_prompt_encoder: CLIPVisionModelWithProjection,
        postfuse_module: PostfuseModule,
        force_zeros_for_empty_prompt: bool = True,
        requires_aesthetics_score: bool = False,
    ) -> None:
        super().__init__()
        if requires_aesthetics_score:
            # SDXL-refiner micro-conditioning; no ObjectClear checkpoint uses it.
            raise ValueError("requires_aesthetics_score=True is not supported")
        self.register_modules(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
            image_prompt_encoder=image_prompt_encoder, postfuse_module=postfuse_module,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
                                requires_aesthetics_score=requires_aesthetics_score)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        time_ids_dim = 6 * unet.config.addition_time_embed_dim
        expected = time_ids_dim + text_encoder_2.config.projection_dim
        if unet.add_embedding.linear_1.in_features != expected:
            raise ValueError(
                "UNet added-condition size does not match 6 time ids + text_encoder_2 projection "
                f"({unet.add_embedding.linear_1.in_features} != {expected})"
            )
        layer = self.unet.get_submodule(CAPTURE_LAYER)
        if any(getattr(layer, n) is not None for n in ("spatial_norm", "group_norm", "norm_q")):
            raise ValueError(f"{CAPTURE_LAYER} is not a plain cross-attention")
        self.attention_capture = TokenAttentionCapture(OBJECT_TOKEN_INDEX)
        layer.set_processor(self.attention_capture)
        self.revision: str | None = None
        self._interrupt = False

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # -----------------------------------------------------------------------------------
    # Loading and saving

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        torch_dtype: torch.dtype = torch.float32,
        revision: str | None = None,
        **kwargs: Any,
    ) -> ObjectClearPipeline:
        """Load the published layout: a hub id (through the local cache / hub, honouring
        HF_HUB_OFFLINE) or a local folder, unchanged.

        The published model_index.json lists neither `image_prompt_encoder` (a whole
        CLIPModel checkpoint, of which only the vision tower and its projection are
        loaded) nor `postfuse_module`, as the reference passes both in; they are loaded
        here from their folders. The transformers components load strictly: a missing
        tensor (which would silently stay random) is an error.
        """
        root, resolved_revision = resolve_checkpoint(
            pretrained_model_name_or_path, revision, allow_patterns=HUB_PATTERNS,
            ignore_patterns=HUB_IGNORE)
        kwargs = {**load_strictly(root, torch_dtype, given=kwargs), **kwargs}
        pipe = super().from_pretrained(str(root), dtype=torch_dtype, **kwargs)
        pipe.revision = resolved_revision
        return pipe

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Save every component; model_index.json stays in the published form, without the
        two extra components, so the reference's loader reads it too.

        One departure: `image_prompt_encoder/` holds the vision tower only (the published
        folder is a whole CLIPModel whose text tower is never used).
        """
        super().save_pretrained(str(save_directory), **kwargs)
        publish_model_index(Path(save_directory) / "model_index.json")

    # -----------------------------------------------------------------------------------
    # Steps of __call__

    check_inputs = staticmethod(check_inputs)

    def preprocess(
        self, images: list[PIL.Image.Image], masks: list[PIL.Image.Image], width: int, height: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At the working size, on the device: the image as uint8 (B, 3, h, w) and in
        [-1, 1] fp32, and the binary mask (B, 1, h, w).

        PIL does the resizing, on 8-bit pictures, as the reference script does: bicubic
        for the image, nearest for the mask.
        """
        device = self._execution_device
        pixels, binary = [], []
        for img, m in zip(images, masks, strict=True):
            img = img.convert("RGB") if img.mode != "RGB" else img
            if img.size != (width, height):
                img = img.resize((width, height), PIL.Image.Resampling.BICUBIC)
                m = m.resize((width, height), PIL.Image.Resampling.NEAREST)
            pixels.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
            binary.append(torch.from_numpy(np.array(m) >= 128)[None])
        image_u8 = torch.stack(pixels).to(device)
        mask = torch.stack(binary).to(device=device, dtype=torch.float32)
        return image_u8, image_u8.float() / 255.0 * 2.0 - 1.0, mask

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 77, d1 + d2) penultimate hidden states of both encoders, (B, proj) pooled
        output of the second, as SDXL's encode_prompt without clip skip."""
        device = self._execution_device
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder),
                                   (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            out = encoder(ids.to(device), output_hidden_states=True)
            if out[0].ndim == 2:  # the projecting encoder's text_embeds
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        dtype = self.text_encoder_2.dtype
        return torch.cat(hidden, dim=-1).to(dtype), pooled.to(dtype)

    def encode_object(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, d1 + d2) token embedding of the masked object: the [-1, 1] image cut out by
        the mask, at the vision tower's size (bilinear, antialiased), CLIP-normalised,
        through the vision tower and its projection, then the postfuse module."""
        encoder = self.image_prompt_encoder
        size = encoder.config.image_size  # 224 for the real ViT-L/14
        pixels = image * (mask > 0.5)
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
        mean = torch.tensor(_CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(_CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
        object_embeds = encoder(pixel_values=((pixels - mean) / std).to(encoder.dtype)).image_embeds
        return self.postfuse_module(object_embeds[:, None].to(self.postfuse_module.dtype))[:, 0]

    def prepare_latents(
        self, image: torch.Tensor, generator: Generators, latent_hw: tuple[int, int],
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image_latents, noise, masked_image_latents) with the reference's draws.

        The reference encodes the same unmasked image twice and samples each posterior:
        first for the step-0 blend target, then (after drawing the initial noise) for the
        UNet's masked-image condition. One encode gives the same posterior; the three
        draws keep their order, per generator.
        """
        self._upcast_vae_if_needed()
        latent_dist = self.vae.encode(image.to(self.vae.dtype)).latent_dist
        shape = (image.shape[0], self.vae.config.latent_channels, *latent_hw)
        eps_image, noise, eps_condition = _draw(3, shape, generator, image.device)
        scale = self.vae.config.scaling_factor

        def sample(eps: torch.Tensor) -> torch.Tensor:
            latents = latent_dist.mean + latent_dist.std * eps.to(latent_dist.mean.dtype)
            return (scale * latents).to(dtype)

        return sample(eps_image), noise.to(dtype), sample(eps_condition)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) uint8: ``round(clamp(x / 2 + 0.5, 0, 1) * 255)`` as diffusers'
        image processor quantises."""
        self._upcast_vae_if_needed()
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        return ((image.float() / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)

    def attention_map(self, latent_hw: tuple[int, int], do_cfg: bool) -> torch.Tensor:
        """(B, 1, h, w) min-max normalised last-step attention to the object token
        (conditional half under CFG), as the reference computes it."""
        probs = self.attention_capture.probs
        if probs is None:
            raise RuntimeError("no attention was captured")
        self.attention_capture.probs = None
        if do_cfg:
            probs = probs.chunk(2)[1]
        h, w = latent_hw
        # down_blocks.0's stride-2 conv (padding 1) gives ceil(h / 2) x ceil(w / 2) queries.
        qh, qw = -(-h // 2), -(-w // 2)
        if probs.shape[-1] != qh * qw:
            raise RuntimeError(f"captured {probs.shape[-1]} queries, expected {qh}x{qw}")
        amap = probs.mean(dim=1).view(-1, 1, qh, qw)
        amap = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)
        lo = amap.amin(dim=(2, 3), keepdim=True)
        hi = amap.amax(dim=(2, 3), keepdim=True)
        return (amap - lo) / (hi - lo + 1e-8)

    def _upcast_vae_if_needed(self) -> None:
        # A VAE whose config says force_upcast overflows in fp16: run it in fp32 for good
        # rather than casting back and forth on every call (the published config says
        # false, so the published VAE runs in the pipeline's dtype).
        if self.vae.dtype == torch.float16 and self.vae.config.force_upcast:
            self.vae.to(dtype=torch.float32)

    # -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        image: ImageInput,
        mask_image: MaskInput,
        prompt: str | Sequence[str] | None = None,
        *,
        short_side: int = REFERENCE_SHORT_SIDE,
        num_inference_steps: int = STEPS.default,
        guidance_scale: float = GUIDANCE_SCALE.default,
        fusion: bool = True,
        generator: Generators = None,
        callback_on_step_end: StepEndCallback | None = None,
        resize_back: bool = True,
    ) -> ObjectClearPipelineOutput:
        """Remove the masked object(s) and their effects.

        image: a PIL image or a list of them; mask_image: per image a PIL image or an
        (H, W) array at that image's size (nonzero = object). prompt: None for the
        reference's; one for all or one per image. The defaults are the reference
        script's (20 steps, guidance 2.5, short side 512, fusion on). All images of a
        batch must map to the same working size. generator: one, or one per image (an
        item's numbers then do not depend on its batch-mates); CPU generators make them
        independent of the device. `callback_on_step_end(pipe, i, t, {"latents": ...})`
        runs after step i, diffusers style; setting `pipe._interrupt` there stops the run
        before the next step with `errors.Cancelled` (nothing is decoded). `resize_back`
        False leaves the results at the working size (with `regions`, for a caller that
        puts only the repainted region back into the full-size picture).
        """
        # 1. Check inputs
        images, masks, prompts, (width, height) = self.check_inputs(
            image, mask_image, prompt, short_side, num_inference_steps, guidance_scale,
            generator)
        self._interrupt = False
        batch = len(images)
        do_cfg = guidance_scale > 1.0
        device, dtype = self._execution_device, self.unet.dtype
        if isinstance(generator, Sequence) and len(generator) == 1:
            generator = generator[0]
        latent_hw = (height // self.vae_scale_factor, width // self.vae_scale_factor)

        # 2. Image and mask at the working size
        image_u8, init_image, mask = self.preprocess(images, masks, width, height)

        # 3. Prompt embeddings; the object embedding replaces token 5 (positive half only)
        prompt_embeds, pooled_embeds = self.encode_prompt(prompts)
        prompt_embeds = prompt_embeds.clone()
        prompt_embeds[:, OBJECT_TOKEN_INDEX] = self.encode_object(init_image, mask).to(
            prompt_embeds.dtype)
        add_time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device,
                                    dtype=prompt_embeds.dtype).repeat(batch, 1)
        if do_cfg:
            negative, negative_pooled = self._negative_embeddings(prompt_embeds, pooled_embeds)
            prompt_embeds = torch.cat([negative, prompt_embeds])
            pooled_embeds = torch.cat([negative_pooled, pooled_embeds])
            add_time_ids = torch.cat([add_time_ids, add_time_ids])
        added_cond = {"text_embeds": pooled_embeds.to(device), "time_ids": add_time_ids}
        prompt_embeds = prompt_embeds.to(device)

        # 4. Timesteps
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        scheduler.set_begin_index(0)
        timesteps = scheduler.timesteps

        # 5. Latents: the reference's three draws; pure noise to start (strength 1)
        image_latents, noise, masked_image_latents = self.prepare_latents(
            init_image, generator, latent_hw, dtype)
        latents = noise * scheduler.init_noise_sigma
        mask_latents = F.interpolate(mask, size=latent_hw, mode="nearest").to(dtype)
        condition = torch.cat([mask_latents, masked_image_latents], dim=1)
        if do_cfg:
            condition = torch.cat([condition, condition])

        # 6. Denoising loop
        capture = self.attention_capture
        total = len(timesteps)
        for i, t in enumerate(timesteps):
            if self.interrupt:
                raise Cancelled(f"cancelled before step {i + 1} of {total}")
            model_input = torch.cat([latents, latents]) if do_cfg else latents
            model_input = torch.cat([scheduler.scale_model_input(model_input, t), condition], 1)
            capture.capture = fusion and i == total - 1
            try:
                noise_pred = self.unet(model_input, t, encoder_hidden_states=prompt_embeds,
                                       added_cond_kwargs=added_cond, return_dict=False)[0]
            finally:
                capture.capture = False
            if do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if fusion and i == 0:
                # AGF's latent blend: outside the object, restart from the image itself
                # (noised to the next timestep) so the background stays anchored.
                target = image_latents
                if total > 1:
                    target = scheduler.add_noise(image_latents, noise, timesteps[1:2])
                latents = (1.0 - mask_latents) * target + mask_latents * latents
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, t, {"latents": latents})
                latents = outputs.get("latents", latents) if outputs else latents
        if self.interrupt:
            raise Cancelled("cancelled after the last step")

        # 7. Decode (8-bit, as the reference's output)
        generated = self.decode_latents(latents)

        # 8. Attention-guided fusion in pixel space, at the working size, on the device
        attention_maps, final, regions = None, generated, mask > 0.5
        if fusion:
            attention_maps = self.attention_map(latent_hw, do_cfg)
            hard, soft = fusion_masks(attention_maps, (height, width))
            final = attention_guided_fusion(image_u8, generated, attention_maps,
                                            masks=(hard, soft))
            regions = regions | (soft > 0)

        # 9. Back to each input's own size (PIL bicubic on 8-bit, as the reference script)
        outputs = []
        for k, pixels in enumerate(final.permute(0, 2, 3, 1).cpu().numpy()):
            out = PIL.Image.fromarray(pixels)
            if resize_back and out.size != images[k].size:
                out = out.resize(images[k].size, PIL.Image.Resampling.BICUBIC)
            outputs.append(out)
        self.maybe_free_model_hooks()
        return ObjectClearPipelineOutput(images=outputs, prefusion=generated,
                                         attention_maps=attention_maps,
                                         working_size=(width, height), regions=regions)

    def _negative_embeddings(self, prompt_embeds: torch.Tensor, pooled_embeds: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros, as SDXL's force_zeros_for_empty_prompt (the published setting), else the
        embeddings of an empty prompt. There is no negative prompt."""
        if self.config.force_zeros_for_empty_prompt:
            return torch.zeros_like(prompt_embeds), torch.zeros_like(pooled_embeds)
        embeds, pooled = self.encode_prompt([""] * prompt_embeds.shape[0])
        return embeds.to(prompt_embeds.dtype), pooled.to(pooled_embeds.dtype)
