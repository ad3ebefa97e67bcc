"""ObjectClear: object-and-effect removal on SDXL-inpainting components (torch only).

Written from the description in MODELS.md ("ObjectClear"): an SDXL inpainting loop whose
prompt "remove the instance of {label}" carries, at token 5, an embedding of the object
itself (CLIP vision tower + a small "postfuse" MLP), plus Attention-Guided Fusion (AGF):
a latent blend after the first step and a pixel-space blend driven by the last step's
cross-attention to that token.

Everything stays on the pipeline's device; the denoising loop has no host syncs.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mic2e_services.errors import Cancelled
from mic2e_services.object_clear.fusion import attention_guided_fusion

__all__ = [
    "OBJECT_TOKEN_INDEX",
    "ObjectClearPipeline",
    "ObjectClearPipelineOutput",
    "PostfuseModule",
    "TokenAttentionCapture",
    "prompt_for",
    "working_size",
]

logger = logging.getLogger(__name__)

#: Position of the label word in "<bos> remove the instance of {label} ...": the token the
#: object embedding replaces and whose cross-attention drives the fusion.
OBJECT_TOKEN_INDEX = 5
#: The cross-attention layer whose map AGF reads (queries at half the latent resolution).
CAPTURE_LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
COMPONENTS = (
    "unet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
    "image_prompt_encoder",
    "postfuse_module",
)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SIZE_MULTIPLE = 16
_HUB_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
_WEIGHTED_COMPONENTS = (
    "unet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "image_prompt_encoder",
    "postfuse_module",
)


def prompt_for(label: str) -> str:
    """The ObjectClear prompt; the label word lands on token `OBJECT_TOKEN_INDEX`."""
    return f"remove the instance of {label.strip() or 'object'}"


def working_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short_side`, both multiples of 16."""
    scale = short_side / min(width, height)

    def snap(x: int) -> int:
        return max(_SIZE_MULTIPLE, round(x * scale / _SIZE_MULTIPLE) * _SIZE_MULTIPLE)

    return snap(width), snap(height)


# ---------------------------------------------------------------------------------------
# The two ObjectClear extras.


class _MLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, optionally with a residual around it."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, residual: bool) -> None:
        super().__init__()
        if residual and in_dim != out_dim:
            raise ValueError("a residual MLP needs in_dim == out_dim")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act = nn.GELU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.layernorm(x))))
        return x + y if self.residual else y


class PostfuseModule(nn.Module):
    """Maps the CLIP image embedding of the object to a prompt-token embedding.

    mlp1 (no residual) lifts `in_dim` (768: CLIP ViT-L/14 projection) to `out_dim` (2048:
    both SDXL text encoders' hidden sizes concatenated), mlp2 refines it with a residual,
    and a final LayerNorm matches the scale of the text tokens it stands in for.
    """

    WEIGHTS_NAME = "model.safetensors"
    CONFIG_NAME = "config.json"

    def __init__(self, in_dim: int = 768, out_dim: int = 2048) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.mlp1 = _MLP(in_dim, out_dim, out_dim, residual=False)
        self.mlp2 = _MLP(out_dim, out_dim, out_dim, residual=True)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, object_embeds: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.mlp2(self.mlp1(object_embeds)))

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / self.WEIGHTS_NAME), metadata={"format": "pt"})
        config = {
            "_class_name": type(self).__name__,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
        }
        (directory / self.CONFIG_NAME).write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        torch_dtype: torch.dtype = torch.float32,
        output_loading_info: bool = False,
    ) -> PostfuseModule | tuple[PostfuseModule, dict[str, list[str]]]:
        """Load from `directory`; dims from config.json, else from the weights' shapes."""
        from safetensors.torch import load_file

        directory = Path(directory)
        state = load_file(str(directory / cls.WEIGHTS_NAME))
        config_path = directory / cls.CONFIG_NAME
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            in_dim, out_dim = int(config["in_dim"]), int(config["out_dim"])
        else:
            out_dim, in_dim = state["mlp1.fc1.weight"].shape
        module = cls(in_dim=in_dim, out_dim=out_dim)
        result = module.load_state_dict(state, strict=False)
        info = {
            "missing_keys": list(result.missing_keys),
            "unexpected_keys": list(result.unexpected_keys),
        }
        module = module.to(dtype=torch_dtype).eval()
        return (module, info) if output_loading_info else module


class TokenAttentionCapture:
    """SDPA attention processor that can also record one key token's attention probabilities.

    Installed once on the AGF layer and left there: the pipeline flips `capture` for the
    last step only, so the module graph never changes (no recompiles under torch.compile,
    unlike swapping processors). The attention output is always the SDPA one, so
    capturing does not change the picture. `probs` holds (batch, heads, queries) in fp32.
    """

    def __init__(self, token_index: int = OBJECT_TOKEN_INDEX) -> None:
        self.token_index = token_index
        self.capture = False
        self.probs: torch.Tensor | None = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, key_len, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.capture:
            # softmax(QK^T * scale) as Attention.get_attention_scores computes it, in fp32;
            # only one key column is kept, so this costs one small matmul on one step.
            scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            self.probs = scores.softmax(dim=-1)[..., self.token_index]

        hidden_states = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            scale=attn.scale,
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# ---------------------------------------------------------------------------------------


@dataclass
class ObjectClearPipelineOutput:
    """Results of one batch, all on the pipeline's device.

    images: per input, (3, H, W) float in [0, 1] at that input's own size.
    attention_maps: (B, 1, h, w) in [0, 1] at the latent size (None without fusion).
    working_size: (width, height) the model ran at.
    """

    images: list[torch.Tensor]
    attention_maps: torch.Tensor | None
    working_size: tuple[int, int]


ImageInput = torch.Tensor | Sequence[torch.Tensor]
StepCallback = Callable[[int, int], None]


class ObjectClearPipeline:
    """SDXL-inpainting components + CLIP object embedding + Attention-Guided Fusion.

    Not thread-safe (the scheduler keeps the step index): one caller at a time, as the
    model worker does.
    """

    def __init__(
        self,
        *,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        scheduler: Any,
        image_prompt_encoder: Any,
        postfuse_module: PostfuseModule,
        revision: str | None = None,
        loading_info: dict[str, dict[str, list[str]]] | None = None,
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.scheduler = scheduler
        self.image_prompt_encoder = image_prompt_encoder
        self.postfuse_module = postfuse_module
        self.revision = revision
        self.loading_info = loading_info or {}
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

        time_ids_dim = 6 * unet.config.addition_time_embed_dim
        expected = time_ids_dim + text_encoder_2.config.projection_dim
        if unet.add_embedding.linear_1.in_features != expected:
            raise ValueError(
                "UNet added-condition size does not match 6 time ids + text_encoder_2 projection "
                f"({unet.add_embedding.linear_1.in_features} != {expected})"
            )
        self.attention_capture = TokenAttentionCapture(OBJECT_TOKEN_INDEX)
        self.unet.get_submodule(CAPTURE_LAYER).set_processor(self.attention_capture)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: str | torch.device) -> ObjectClearPipeline:
        """Move every weighted component to `device` (dtypes unchanged); returns self."""
        for name in _WEIGHTED_COMPONENTS:
            getattr(self, name).to(device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # -----------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        torch_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        revision: str | None = None,
    ) -> ObjectClearPipeline:
        """Load every component with its own library's from_pretrained.

        `path_or_hub_id`: a local folder in the checkpoint layout, or a hub id resolved
        through the local cache / hub (honours HF_HUB_OFFLINE). Missing weights (which would
        silently stay random) are an error; unexpected ones are logged.
        """
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
        from transformers import (
            CLIPModel,
            CLIPTextModel,
            CLIPTextModelWithProjection,
            CLIPTokenizer,
        )

        root, resolved_revision = _resolve_checkpoint(path_or_hub_id, revision)
        device = torch.device(device)
        info: dict[str, dict[str, list[str]]] = {}

        def load(name: str, loader: Callable[..., Any], **kwargs: Any) -> Any:
            model, loading = loader(str(root / name), output_loading_info=True, **kwargs)
            info[name] = {
                "missing_keys": sorted(loading.get("missing_keys", [])),
                "unexpected_keys": sorted(loading.get("unexpected_keys", [])),
            }
            return model

        unet = load("unet", UNet2DConditionModel.from_pretrained, torch_dtype=torch_dtype)
        # SDXL's VAE overflows in fp16 (its config says force_upcast): keep it in fp32
        # rather than casting it back and forth on every call.
        vae_config = AutoencoderKL.load_config(str(root / "vae"))
        vae_dtype = torch_dtype
        if torch_dtype == torch.float16 and vae_config.get("force_upcast", True):
            vae_dtype = torch.float32
        vae = load("vae", AutoencoderKL.from_pretrained, torch_dtype=vae_dtype)
        text_encoder = load("text_encoder", CLIPTextModel.from_pretrained, dtype=torch_dtype)
        text_encoder_2 = load(
            "text_encoder_2", CLIPTextModelWithProjection.from_pretrained, dtype=torch_dtype
        )
        image_prompt_encoder = load(
            "image_prompt_encoder", CLIPModel.from_pretrained, dtype=torch_dtype
        )
        postfuse_module = load(
            "postfuse_module", PostfuseModule.from_pretrained, torch_dtype=torch_dtype
        )
        # Only the vision tower and its projection are used: free the text tower.
        del image_prompt_encoder.text_model
        del image_prompt_encoder.text_projection

        for name, loading in info.items():
            if loading["missing_keys"]:
                raise ValueError(
                    f"{root / name}: weights missing for {len(loading['missing_keys'])} tensors "
                    f"(e.g. {loading['missing_keys'][:3]}); they would stay randomly initialised"
                )
            if loading["unexpected_keys"]:
                logger.warning(
                    "%s: %d unexpected tensors ignored (e.g. %s)",
                    root / name,
                    len(loading["unexpected_keys"]),
                    loading["unexpected_keys"][:3],
                )

        modules = [unet, vae, text_encoder, text_encoder_2, image_prompt_encoder, postfuse_module]
        for module in modules:
            module.to(device).eval().requires_grad_(False)
        return cls(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=CLIPTokenizer.from_pretrained(str(root / "tokenizer")),
            tokenizer_2=CLIPTokenizer.from_pretrained(str(root / "tokenizer_2")),
            scheduler=EulerDiscreteScheduler.from_pretrained(str(root / "scheduler")),
            image_prompt_encoder=image_prompt_encoder,
            postfuse_module=postfuse_module,
            revision=resolved_revision,
            loading_info=info,
        )

    # -----------------------------------------------------------------------------------
    # Steps of __call__

    def check_inputs(
        self,
        image: ImageInput,
        mask: ImageInput,
        label: str | Sequence[str],
        num_inference_steps: int,
        guidance_scale: float,
        short_side: int,
        strength: float,
        generator: torch.Generator | Sequence[torch.Generator] | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str], tuple[int, int]]:
        """Validate and normalise to lists; returns (images, masks, labels, working size)."""
        images = [image] if isinstance(image, torch.Tensor) else list(image)
        masks = [mask] if isinstance(mask, torch.Tensor) else list(mask)
        labels = [label] * len(images) if isinstance(label, str) else list(label)
        if not images:
            raise ValueError("no images given")
        if not (len(images) == len(masks) == len(labels)):
            raise ValueError(
                f"got {len(images)} images, {len(masks)} masks and {len(labels)} labels"
            )
        if isinstance(generator, Sequence) and len(generator) != len(images):
            raise ValueError(f"got {len(generator)} generators for {len(images)} images")
        sizes = set()
        for i, (img, m) in enumerate(zip(images, masks, strict=True)):
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f"image {i}: expected (3, H, W), got {tuple(img.shape)}")
            if m.shape != img.shape[1:]:
                raise ValueError(
                    f"mask {i}: shape {tuple(m.shape)} differs from image {tuple(img.shape[1:])}"
                )
            sizes.add(working_size(img.shape[2], img.shape[1], short_side))
        if len(sizes) != 1:
            raise ValueError(f"a batch must share one working size, got {sorted(sizes)}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(
                f"num_inference_steps must be a positive int, got {num_inference_steps}"
            )
        if not (math.isfinite(guidance_scale) and guidance_scale >= 1.0):
            raise ValueError(f"guidance_scale must be finite and >= 1, got {guidance_scale}")
        if short_side < _SIZE_MULTIPLE:
            raise ValueError(f"short_side must be >= {_SIZE_MULTIPLE}, got {short_side}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if int(num_inference_steps * strength) < 1:
            raise ValueError("strength leaves no denoising step")
        return images, masks, labels, sizes.pop()

    def preprocess(
        self, images: list[torch.Tensor], masks: list[torch.Tensor], width: int, height: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, h, w) fp32 image in [-1, 1] and (B, 1, h, w) binary mask at working size."""
        batch_images, batch_masks = [], []
        for img, m in zip(images, masks, strict=True):
            img = img.to(self.device)
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            img = F.interpolate(
                img[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0.0, 1.0)
            batch_images.append(img * 2.0 - 1.0)
            m = m.to(self.device).float()[None, None]
            m = F.interpolate(m, size=(height, width), mode="bilinear", antialias=True)
            batch_masks.append((m >= 0.5).float())
        return torch.cat(batch_images), torch.cat(batch_masks)

    def encode_prompt(self, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 77, d1 + d2) penultimate hidden states of both encoders, (B, proj) pooled."""
        prompts = [prompt_for(label) for label in labels]
        hidden, pooled = [], None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = getattr(out, "text_embeds", None)  # the second (projecting) encoder's
        return torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype)

    def encode_object(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, d1 + d2) token embedding of the masked object (CLIP vision + postfuse)."""
        encoder = self.image_prompt_encoder
        size = encoder.config.vision_config.image_size  # 224 for the real ViT-L/14
        # As the original: the [-1, 1] image, cut out by the mask, CLIP-normalised.
        pixels = image * (mask > 0.5)
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
        mean = torch.tensor(_CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(_CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).to(encoder.dtype)
        pooled = encoder.vision_model(pixel_values=pixels).pooler_output
        object_embeds = encoder.visual_projection(pooled)
        return self.postfuse_module(object_embeds.to(self.postfuse_module.layer_norm.weight.dtype))

    def encode_image(
        self, image: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None
    ) -> torch.Tensor:
        """Scaled VAE latents of the (unmasked) image, in the UNet's dtype."""
        latent_dist = self.vae.encode(image.to(self.vae.dtype)).latent_dist
        noise = _randn(latent_dist.mean.shape, generator, latent_dist.mean.device)
        latents = latent_dist.mean + latent_dist.std * noise.to(latent_dist.mean.dtype)
        return (latents * self.vae.config.scaling_factor).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) fp32 image in [0, 1]."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:
            latents = latents + shift
        image = self.vae.decode(latents).sample
        return (image.float() / 2.0 + 0.5).clamp(0.0, 1.0)

    def attention_map(self, latent_hw: tuple[int, int], do_cfg: bool) -> torch.Tensor:
        """(B, 1, h, w) min-max normalised last-step attention to the object token."""
        probs = self.attention_capture.probs
        if probs is None:
            raise RuntimeError("no attention was captured")
        self.attention_capture.probs = None
        if do_cfg:
            probs = probs.chunk(2)[1]  # conditional half
        h, w = latent_hw
        # down_blocks.0's stride-2 conv (padding 1) gives ceil(h / 2) x ceil(w / 2) queries.
        qh, qw = -(-h // 2), -(-w // 2)
        if probs.shape[-1] != qh * qw:
            raise RuntimeError(f"captured {probs.shape[-1]} queries, expected {qh}x{qw}")
        amap = probs.mean(dim=1).view(-1, 1, qh, qw)
        amap = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)
        lo = amap.amin(dim=(2, 3), keepdim=True)
        hi = amap.amax(dim=(2, 3), keepdim=True)
        return (amap - lo) / (hi - lo).clamp_min(1e-8)

    # -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        image: ImageInput,
        mask: ImageInput,
        label: str | Sequence[str] = "",
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 2.5,
        short_side: int = 512,
        strength: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        fusion: bool = True,
        callback: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ObjectClearPipelineOutput:
        """Remove the masked object(s) and their effects.

        image: (3, H, W) tensor (uint8, or float in [0, 1]) or a list of them; mask: (H, W)
        tensor (nonzero = object) or a list; one label per image (or one for all). All
        images of a batch must map to the same working size. `generator`: one, or one per
        image (CPU generators make the noise independent of the device). `callback(i,
        total)` runs after step i (0-based); `should_stop()` is polled before every step
        and raises `errors.Cancelled` when it returns True.
        """
        # 1. Check inputs
        images, masks, labels, (width, height) = self.check_inputs(
            image,
            mask,
            label,
            num_inference_steps,
            guidance_scale,
            short_side,
            strength,
            generator,
        )
        batch = len(images)
        do_cfg = guidance_scale > 1.0
        device, dtype = self.device, self.dtype
        if isinstance(generator, Sequence) and len(generator) == 1:
            generator = generator[0]

        # 2. Preprocess image and mask at the working size
        init_image, mask_image = self.preprocess(images, masks, width, height)

        # 3. Encode the prompt; the object embedding replaces the label token (positive only)
        prompt_embeds, pooled_embeds = self.encode_prompt(labels)
        object_embeds = self.encode_object(init_image, mask_image)
        prompt_embeds = prompt_embeds.clone()
        prompt_embeds[:, OBJECT_TOKEN_INDEX] = object_embeds.to(dtype)
        add_time_ids = torch.tensor(
            [[height, width, 0, 0, height, width]], device=device, dtype=dtype
        ).repeat(batch, 1)
        if do_cfg:
            # No negative prompt: zeros, as SDXL's force_zeros_for_empty_prompt.
            prompt_embeds = torch.cat([torch.zeros_like(prompt_embeds), prompt_embeds])
            pooled_embeds = torch.cat([torch.zeros_like(pooled_embeds), pooled_embeds])
            add_time_ids = torch.cat([add_time_ids, add_time_ids])
        added_cond = {"text_embeds": pooled_embeds, "time_ids": add_time_ids}

        # 4. Timesteps (strength < 1 starts part-way, as diffusers' inpaint pipeline)
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        t_start = num_inference_steps - min(
            int(num_inference_steps * strength), num_inference_steps
        )
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        scheduler.set_begin_index(t_start * scheduler.order)
        total_steps = len(timesteps)

        # 5. Image latents, encoded ONCE: the UNet's conditioning and AGF's blend target
        latent_hw = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = _randn((batch, self.vae.config.latent_channels, *latent_hw), generator, device)
        noise = noise.to(dtype)
        image_latents = self.encode_image(init_image, generator)
        if strength >= 1.0:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch))
        mask_latents = F.interpolate(mask_image, size=latent_hw, mode="nearest").to(dtype)
        condition = torch.cat([mask_latents, image_latents], dim=1)
        if do_cfg:
            condition = torch.cat([condition, condition])

        # 6. Denoising loop
        capture = self.attention_capture
        for i, t in enumerate(timesteps):
            if should_stop is not None and should_stop():
                raise Cancelled(f"cancelled before step {i + 1} of {total_steps}")
            model_input = torch.cat([latents, latents]) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            model_input = torch.cat([model_input, condition], dim=1)
            capture.capture = fusion and i == total_steps - 1
            try:
                noise_pred = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    added_cond_kwargs=added_cond,
                    return_dict=False,
                )[0]
            finally:
                capture.capture = False
            if do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if i == 0:
                # AGF latent blend: outside the object, restart from the image itself
                # (noised to the next timestep) so the background stays anchored.
                target = image_latents
                if total_steps > 1:
                    target = scheduler.add_noise(image_latents, noise, timesteps[1:2])
                latents = (1.0 - mask_latents) * target + mask_latents * latents
            if callback is not None:
                callback(i, total_steps)
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled after the last step")

        # 7. Decode
        generated = self.decode_latents(latents)

        # 8. Attention-guided fusion in pixel space, at the working size
        attention_maps = None
        if fusion:
            attention_maps = self.attention_map(latent_hw, do_cfg)
            original = (init_image + 1.0) / 2.0
            generated = attention_guided_fusion(original, generated, attention_maps)

        # 9. Back to each input's own size
        outputs = []
        for k, img in enumerate(images):
            size = tuple(img.shape[1:])
            out = generated[k : k + 1]
            if size != (height, width):
                out = F.interpolate(
                    out, size=size, mode="bicubic", antialias=True, align_corners=False
                )
            outputs.append(out[0].clamp(0.0, 1.0))
        return ObjectClearPipelineOutput(
            images=outputs, attention_maps=attention_maps, working_size=(width, height)
        )


def _randn(
    shape: tuple[int, ...],
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device,
) -> torch.Tensor:
    """fp32 standard normal noise drawn on the generator's device, then moved to `device`.

    One generator per batch item draws that item's noise alone, so an item's noise does not
    depend on what it is batched with. Drawing in fp32 keeps the noise identical across
    compute dtypes (fidelity checks compare fp16 against fp32 on the same seed).
    """
    if isinstance(generator, Sequence):
        parts = [_randn((1, *shape[1:]), g, device) for g in generator]
        return torch.cat(parts)
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=torch.float32).to(device)


def _resolve_checkpoint(path_or_hub_id: str | Path, revision: str | None) -> tuple[Path, str]:
    """A local folder for `path_or_hub_id` and the revision it holds.

    A local folder reports the snapshot hash when it is a hub cache snapshot, else "local".
    """
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        match = re.search(r"snapshots/([0-9a-f]{40})", path.resolve().as_posix())
        return path, match.group(1) if match else "local"
    from huggingface_hub import snapshot_download

    # Configs, tokenizers and safetensors weights only; fp16 variants would double the
    # download and are not what from_pretrained reads without `variant`.
    local = Path(
        snapshot_download(
            str(path_or_hub_id),
            revision=revision,
            allow_patterns=_HUB_PATTERNS,
            ignore_patterns=["*.fp16.*"],
        )
    )
    # A component published only as a pickle (.bin) still loads: fetch just that one.
    for name in _WEIGHTED_COMPONENTS:
        if not any((local / name).glob("*.safetensors")):
            local = Path(
                snapshot_download(
                    str(path_or_hub_id),
                    revision=revision,
                    allow_patterns=[f"{name}/*.bin"],
                    ignore_patterns=["*.fp16.*"],
                )
            )
    match = re.search(r"snapshots/([0-9a-f]{40})", local.as_posix())
    return local, match.group(1) if match else (revision or "unknown")
