"""A tiny, randomly initialised FLUX.1-schnell checkpoint in the real folder layout.

The FLUX server, its tests and the demo load it through the same
``FluxPipeline.from_pretrained`` as the real ``black-forest-labs/FLUX.1-schnell``, so
every code path but the weights' size is the real one. The architecture values are the
tiny ones of MODELS.md; everything else (latent channels, VAE scaling, scheduler kind,
no guidance embedding) is schnell's. Pictures are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mic2e_services import tiny_tokenizers

__all__ = ["write_tiny"]

#: Sixteen latent channels, packed 2x2 into the transformer's 64 input channels (as schnell).
LATENT_CHANNELS = 16


def write_tiny(path: Path, seed: int = 0) -> None:
    """Write the tiny checkpoint into `path` (created if missing; existing files replaced).

    The same `seed` gives byte-identical files on every run, so tests can build it on the
    fly. About 1 MB; each component loads with no missing or unexpected keys.
    """
    # Imported here: building a checkpoint is rare, and these imports are slow.
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    # 1. Tokenizers first: the text encoders' vocabularies must cover them.
    tiny_tokenizers.save_clip_tokenizer(path / "tokenizer", model_max_length=77)
    tiny_tokenizers.save_t5_tokenizer(path / "tokenizer_2", model_max_length=256)

    # 2. Each component from its own seed, so adding or resizing one leaves the others'
    #    weights unchanged.
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )

    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_tokenizers.clip_text_config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=32, hidden_act="quick_gelu")))

    torch.manual_seed(seed + 2)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=tiny_tokenizers.T5_VOCAB_SIZE,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            dropout_rate=0.0,
        )
    )

    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=256,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False
    )

    # 3. The pipeline writes model_index.json and every component folder.
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
        text_encoder_2=text_encoder_2,
        tokenizer_2=T5TokenizerFast.from_pretrained(path / "tokenizer_2"),
        transformer=transformer,
    )
    pipe.save_pretrained(path, safe_serialization=True)

    # 4. The tokenizers as written by tiny_tokenizers (the pipeline re-saved them with
    #    its own key order), so their bytes never depend on the save path.
    tiny_tokenizers.save_clip_tokenizer(path / "tokenizer", model_max_length=77)
    tiny_tokenizers.save_t5_tokenizer(path / "tokenizer_2", model_max_length=256)
    _stabilise_json(path)


def _stabilise_json(path: Path) -> None:
    """Drop the generator's library-version stamps from configs.

    They differ between environments (the GPU image ships older versions) and are not
    needed to load, so without them the same seed gives the same bytes everywhere.
    """
    for config in sorted(path.rglob("*.json")):
        if config.parent.name.startswith("tokenizer"):
            continue
        data = json.loads(config.read_text(encoding="utf-8"))
        changed = False
        for key in ("transformers_version", "_diffusers_version"):
            if key in data:
                del data[key]
                changed = True
        if changed:
            config.write_text(
                json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n"
            )
