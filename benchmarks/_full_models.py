"""Full-size architectures with random weights, built directly on the device in the
target dtype (no download, no CPU copy, no fp32 detour).

Random weights run exactly as fast as real ones (docs/performance.md), so these give the real
models' speeds. ObjectClear is built from its published configs (`mic2e_dev.published`,
as make-tiny builds the tiny one); for the others, ``Sam3Config()`` and
``FluxTransformer2DModel()`` defaults ARE the full models, and CLIP-L, the FLUX VAE and
T5-XXL are spelled out below (the facts of docs/models.md).

Tokenizers are the offline tiny ones (`mic2e_dev.tiny_tokenizers`): what costs time is
the token COUNT, and the pipelines pad to the real lengths (SAM3 32, CLIP 77, T5 256);
the text encoders keep their real vocabulary sizes, with the tiny tokenizers' special
token ids.

Every builder also works on the ``meta`` device, which allocates nothing: the benchmark's
tests use that to check the parameter counts without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from mic2e_dev import tiny_tokenizers

#: Real vocabulary sizes (the tiny tokenizers' ids all fall inside them).
CLIP_VOCAB = 49408
T5_VOCAB = 32128

#: CLIP ViT-L/14 text tower (SDXL text_encoder, FLUX text_encoder).
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
#: FLUX's VAE (16 latent channels, no quant convs).
FLUX_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
    use_post_quant_conv=False, force_upcast=True)
#: T5-XXL encoder (4.76 B parameters).
T5_XXL = dict(vocab_size=T5_VOCAB, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
              num_heads=64, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
              tie_word_embeddings=False, dropout_rate=0.0)


@contextlib.contextmanager
def building(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on `device` in `dtype` (as from_pretrained does internally)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _clip_text(sizes: dict[str, Any]) -> dict[str, Any]:
    return tiny_tokenizers.clip_text_config(vocab_size=CLIP_VOCAB, **sizes)


def _frozen(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.eval().requires_grad_(False)


# -- SAM3 --------------------------------------------------------------------------------------
def sam3(device: str | torch.device, dtype: torch.dtype, workdir: Path) -> dict[str, Any]:
    """Sam3Model + Sam3TrackerModel (one shared ViT, as the real checkpoint) + processors."""
    from transformers import (
        CLIPTokenizer,
        Sam3Config,
        Sam3ImageProcessor,
        Sam3Model,
        Sam3Processor,
        Sam3TrackerConfig,
        Sam3TrackerModel,
        Sam3TrackerProcessor,
    )

    folder = Path(workdir) / "sam3-tokenizer"
    tiny_tokenizers.save_clip_tokenizer(folder, model_max_length=32)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    config = Sam3Config()  # the full model (840 M parameters)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, _clip_text({})[key])
    with building(device, dtype):
        detector = Sam3Model(config)
        tracker = Sam3TrackerModel(Sam3TrackerConfig())
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone  # one ViT, as real
    _frozen(detector, tracker)
    return {
        "detector": detector,
        "tracker": tracker,
        "detector_processor": Sam3Processor(image_processor=Sam3ImageProcessor(),
                                            tokenizer=tokenizer),
        "tracker_processor": Sam3TrackerProcessor(image_processor=Sam3ImageProcessor()),
    }


def sam3_parameters(parts: dict[str, Any]) -> dict[str, int]:
    detector, tracker = parts["detector"], parts["tracker"]
    shared = {id(p) for p in detector.parameters()}
    return {"detector": count(detector),
            "tracker_own": sum(p.numel() for p in tracker.parameters() if id(p) not in shared)}


# -- ObjectClear -------------------------------------------------------------------------------
def objectclear(device: str | torch.device, dtype: torch.dtype, workdir: Path) -> dict[str, Any]:
    """The components of `ObjectClearPipeline` at full size (its constructor's arguments),
    built from the published configs (`mic2e_dev.published`) as make-tiny builds the
    tiny ones; the image prompt encoder is the vision tower the pipeline loads."""
    from diffusers import EulerDiscreteScheduler
    from mic2e_dev import objectclear as tiny
    from mic2e_dev.published import published
    from transformers import CLIPTokenizer, CLIPVisionModelWithProjection

    tokenizers, root = {}, Path(workdir) / "objectclear"
    for name in ("tokenizer", "tokenizer_2"):
        tiny_tokenizers.write_clip_vocab(root / name)
        for file in ("tokenizer_config.json", "special_tokens_map.json"):
            published("objectclear", f"{name}/{file}").write(root)
        tokenizers[name] = CLIPTokenizer.from_pretrained(str(root / name))
    with building(device, dtype):
        parts, _ = tiny.build_components(None)
    clip = parts.pop("image_prompt_encoder")
    with torch.device("meta"):  # a shell: both of its parts are replaced just below
        tower = CLIPVisionModelWithProjection(clip.config.vision_config)
    tower.vision_model, tower.visual_projection = clip.vision_model, clip.visual_projection
    _frozen(tower, *parts.values())
    scheduler = published("objectclear", "scheduler/scheduler_config.json").data
    return {**parts, **tokenizers, "image_prompt_encoder": tower,
            "scheduler": EulerDiscreteScheduler.from_config(scheduler)}


def objectclear_pipeline(device: str | torch.device, dtype: torch.dtype, workdir: Path) -> Any:
    """`ObjectClearPipeline` around `objectclear(...)`; its revision says random-init."""
    from mic2e_services.object_clear.pipeline import ObjectClearPipeline

    pipeline = ObjectClearPipeline(**objectclear(device, dtype, workdir))
    pipeline.revision = "random-init"
    return pipeline


# -- FLUX.1-schnell ----------------------------------------------------------------------------
def flux(device: str | torch.device, dtype: torch.dtype, workdir: Path) -> dict[str, Any]:
    """The components of diffusers' `FluxPipeline` at full size."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    clip_dir, t5_dir = Path(workdir) / "flux-tokenizer", Path(workdir) / "flux-tokenizer_2"
    tiny_tokenizers.save_clip_tokenizer(clip_dir, model_max_length=77)
    tiny_tokenizers.save_t5_tokenizer(t5_dir, model_max_length=256)
    with building(device, dtype):
        transformer = FluxTransformer2DModel()  # the default config IS schnell (11.9 B)
        text_encoder = CLIPTextModel(CLIPTextConfig(**_clip_text(CLIP_L_TEXT)))
        text_encoder_2 = T5EncoderModel(T5Config(**T5_XXL))
        vae = AutoencoderKL(**FLUX_VAE)
    _frozen(transformer, text_encoder, text_encoder_2, vae)
    return {
        "transformer": transformer, "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2, "vae": vae,
        "tokenizer": CLIPTokenizer.from_pretrained(str(clip_dir)),
        "tokenizer_2": T5TokenizerFast.from_pretrained(str(t5_dir)),
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0,
                                                     use_dynamic_shifting=False),
    }


def parameters(parts: dict[str, Any]) -> dict[str, int]:
    """Parameter count of every module among `parts`."""
    return {k: count(v) for k, v in parts.items() if isinstance(v, torch.nn.Module)}
