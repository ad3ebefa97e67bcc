"""A TINY randomly initialised ObjectClear checkpoint in the published layout.

Every file and config key of `jixin0101/ObjectClear` (model_index.json without the two
extra components, the postfuse module's own config keys, tokenizers as vocab.json +
merges.txt, fp16 weight variants, ...) with only sizes shrunk to the values in docs/models.md,
so `ObjectClearPipeline.from_pretrained` and the reference's loader both read it as they
read the real weights. It is the checkpoint of `tests/fixtures/parity/objectclear`, the
reference's outputs on these very weights. Pictures are noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mic2e_dev.published import published, save_weights, shrink

__all__ = ["TINY_SIZES", "build_components", "write_tiny"]

_CHECKPOINT = "objectclear"
#: Size values that replace the published ones (nothing else changes). The two text
#: encoders are 32 wide each, so the prompt embedding is 64 (the UNet's cross-attention
#: width) and the second projects to 32; the added condition is 6 time ids x 8 + 32.
TINY_SIZES: dict[str, dict] = {
    "unet/config.json": {
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [16, 32], "layers_per_block": 1, "attention_head_dim": [2, 4],
        "transformer_layers_per_block": [1, 1], "norm_num_groups": 8,
        "cross_attention_dim": 64, "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 80, "sample_size": 32,
    },
    "vae/config.json": {"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
                        "norm_num_groups": 4, "sample_size": 64},
    "text_encoder/config.json": {
        "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
        "num_hidden_layers": 2, "projection_dim": 32, "vocab_size": 1177},
    "text_encoder_2/config.json": {
        "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
        "num_hidden_layers": 2, "projection_dim": 32, "vocab_size": 1177},
    "image_prompt_encoder/config.json": {
        "projection_dim": 32,
        "text_config": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                        "num_hidden_layers": 2, "projection_dim": 32, "vocab_size": 1177},
        "vision_config": {"hidden_size": 32, "image_size": 32, "intermediate_size": 37,
                          "num_attention_heads": 4, "num_hidden_layers": 2, "patch_size": 8,
                          "projection_dim": 32},
    },
    "postfuse_module/config.json": {"embed_dim": 64, "embed_dim_img": 32},
}
#: Published files whose contents carry no size: written as published, byte for byte.
_AS_PUBLISHED = ("model_index.json", "scheduler/scheduler_config.json",
                 "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
                 "tokenizer_2/tokenizer_config.json", "tokenizer_2/special_tokens_map.json")


def write_tiny(path: Path, seed: int = 0) -> None:
    """Write a tiny ObjectClear checkpoint into `path` (created if missing).

    Deterministic: the same `seed` gives byte-identical files. About 3 MB. The global
    torch RNG state of the caller is left as it was.
    """
    import torch

    from mic2e_dev import tiny_tokenizers

    root = Path(path)
    with torch.random.fork_rng(devices=[]):
        components, configs = build_components(TINY_SIZES, seed=seed)
    # The tensor names the published files use: diffusers' for the UNet and VAE,
    # transformers 4's (`text_model.*` in both text encoders) for the CLIP parts.
    for name, module in components.items():
        state = module.state_dict()
        weights = "model.safetensors"
        if name in ("unet", "vae"):
            weights = "diffusion_pytorch_model.safetensors"
        elif name == "text_encoder":
            state = {k if k.startswith("text_model.") else f"text_model.{k}": v
                     for k, v in state.items()}
        save_weights(state, root / name, weights, fp16_variant=True)
    for name, config in configs.items():
        published(_CHECKPOINT, name).write(root, config)
    for name in _AS_PUBLISHED:
        published(_CHECKPOINT, name).write(root)
    for name in ("tokenizer", "tokenizer_2"):
        tiny_tokenizers.write_clip_vocab(root / name)


def build_components(sizes: dict[str, dict] | None = None, seed: int = 0
                     ) -> tuple[dict[str, Any], dict[str, dict]]:
    """The weighted components with random weights, from the published configs with
    `sizes` replaced (None: the full-size model), and the configs they were built from.

    Built in torch's current default device and dtype (benchmarks build the full size
    straight on a GPU in half precision, or on the meta device); each component from its
    own seed, so changing one leaves the others' weights alone. The image prompt encoder
    is the whole CLIPModel, as published.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from mic2e_services.object_clear.pipeline import PostfuseModule
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel
    from transformers import CLIPTextModelWithProjection as CLIPTextWithProjection

    sizes = sizes or {}
    configs = {name: shrink(published(_CHECKPOINT, name).data, sizes.get(name, {}))
               for name in TINY_SIZES}

    def build(seed_offset: int, make: Callable[[], Any]) -> Any:
        torch.manual_seed(seed + seed_offset)
        return make()

    def text_config(name: str) -> CLIPTextConfig:
        config = CLIPTextConfig.from_dict(configs[name])
        # The published configs say float16 (the dtype of their fp16 variant) while the
        # weights are fp32: build in the caller's dtype, keep the config file as is.
        config.dtype = torch.get_default_dtype()
        return config

    components = {
        "unet": build(0, lambda: UNet2DConditionModel.from_config(configs["unet/config.json"])),
        "vae": build(1, lambda: AutoencoderKL.from_config(configs["vae/config.json"])),
        "text_encoder": build(2, lambda: CLIPTextModel(text_config("text_encoder/config.json"))),
        "text_encoder_2": build(3, lambda: CLIPTextWithProjection(
            text_config("text_encoder_2/config.json"))),
        "image_prompt_encoder": build(4, lambda: CLIPModel(
            CLIPConfig.from_dict(configs["image_prompt_encoder/config.json"]))),
        "postfuse_module": build(5, lambda: PostfuseModule.from_config(
            configs["postfuse_module/config.json"])),
    }
    return components, configs
