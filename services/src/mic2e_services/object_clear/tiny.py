"""A TINY randomly initialised ObjectClear checkpoint in the real folder layout.

Same architectures as the real `jixin0101/ObjectClear` components, shrunk to the
values in MODELS.md ("SDXL inpaint" tiny row), so `ObjectClearPipeline.from_pretrained`
loads it through the very same code as the real weights. Pictures are noise; shapes,
plumbing and timings of everything around the model are real.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_tiny"]

# The tiny CLIP text encoders: hidden 32 each, so the concatenated prompt embedding is
# 64-d (= the UNet's cross_attention_dim), and the second one projects to 32.
_TEXT_HIDDEN = 32
_PROJECTION = 32
_ADD_TIME_DIM = 8


def write_tiny(path: Path, seed: int = 0) -> None:
    """Write a tiny ObjectClear checkpoint into `path` (created if missing).

    Deterministic: the same `seed` gives byte-identical files. Under 5 MB. The global
    torch RNG state of the caller is left as it was.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    from mic2e_services import tiny_tokenizers
    from mic2e_services.object_clear.pipeline import PostfuseModule

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)

    text_config = tiny_tokenizers.clip_text_config(
        hidden_size=_TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=_PROJECTION)

    with torch.random.fork_rng(devices=[]):
        # Each component from its own seed: adding or changing one leaves the others'
        # bytes alone.
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=9,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            norm_num_groups=8,
            cross_attention_dim=2 * _TEXT_HIDDEN,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=_ADD_TIME_DIM,
            projection_class_embeddings_input_dim=6 * _ADD_TIME_DIM + _PROJECTION,
        )
        unet.save_pretrained(root / "unet")

        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.13025,
            force_upcast=True,
            use_quant_conv=True,
            use_post_quant_conv=True,
        )
        vae.save_pretrained(root / "vae")

        torch.manual_seed(seed + 2)
        CLIPTextModel(CLIPTextConfig(**text_config)).save_pretrained(root / "text_encoder")
        torch.manual_seed(seed + 3)
        CLIPTextModelWithProjection(CLIPTextConfig(**text_config)).save_pretrained(
            root / "text_encoder_2"
        )

        torch.manual_seed(seed + 4)
        clip = CLIPModel(
            CLIPConfig(
                text_config=text_config,
                vision_config=dict(
                    hidden_size=32,
                    intermediate_size=37,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    image_size=32,
                    patch_size=8,
                    projection_dim=_PROJECTION,
                ),
                projection_dim=_PROJECTION,
            )
        )
        clip.save_pretrained(root / "image_prompt_encoder")

        torch.manual_seed(seed + 5)
        PostfuseModule(in_dim=_PROJECTION, out_dim=2 * _TEXT_HIDDEN).save_pretrained(
            root / "postfuse_module"
        )

    for name in ("tokenizer", "tokenizer_2"):
        tiny_tokenizers.save_clip_tokenizer(root / name)

    # The SDXL base scheduler settings (the real checkpoint's scheduler_config.json).
    EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        timestep_spacing="leading",
        steps_offset=1,
        use_karras_sigmas=False,
    ).save_pretrained(root / "scheduler")

    _write_json(
        root / "model_index.json",
        {
            "_class_name": "ObjectClearPipeline",
            "force_zeros_for_empty_prompt": True,
            "requires_aesthetics_score": False,
            "image_prompt_encoder": ["transformers", "CLIPModel"],
            "postfuse_module": ["mic2e_services.object_clear.pipeline", "PostfuseModule"],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    _normalise_configs(root)


def _normalise_configs(root: Path) -> None:
    """Drop library versions from the configs so the bytes do not depend on them."""
    for config in root.glob("*/config.json"):
        _rewrite_without_versions(config)
    _rewrite_without_versions(root / "scheduler" / "scheduler_config.json")


def _rewrite_without_versions(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("_diffusers_version", "transformers_version"):
        data.pop(key, None)
    _write_json(path, data)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(
        json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n"
    )
