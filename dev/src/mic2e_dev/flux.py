"""Tiny, randomly initialised FLUX.1-schnell and FLUX.1-Fill-dev checkpoints in their
published layouts.

Every file and config key of `black-forest-labs/FLUX.1-schnell`'s diffusers layout
(model_index.json, the schnell scheduler, CLIP and T5 tokenizers as published: vocab.json +
merges.txt, spiece.model + tokenizer.json), with only sizes shrunk and the weights in the
published dtypes (bf16, the VAE fp32). The FLUX server, its tests and the demo load it
through the same `FluxPipeline.from_pretrained` as the real weights. Not written: the
repository's original-format single files (`flux1-schnell.safetensors`, `ae.safetensors`),
its README and sample image, which nothing here reads; large weights come in shards in
the real repository and in one file here. Pictures are noise. The fill checkpoint
(`write_tiny_fill`) is the same with FLUX.1-Fill-dev's configs: `FluxFillPipeline`, a
transformer reading 384 channels (latents, masked-image latents, the 8x8-unshuffled mask)
with a guidance input, the dev scheduler.
"""

from __future__ import annotations

from pathlib import Path

from mic2e_dev import tiny_tokenizers
from mic2e_dev.published import Whole, published, save_weights, shrink

__all__ = ["LATENT_CHANNELS", "TINY_SIZES", "write_tiny", "write_tiny_fill"]

_CHECKPOINT = "flux-schnell"
_FILL_CHECKPOINT = "flux-fill"
#: Sixteen latent channels, packed 2x2 into the transformer's 64 input channels (as schnell).
LATENT_CHANNELS = 16
#: Size values that replace the published ones (nothing else changes). The transformer
#: keeps schnell's 128-wide heads (its rotary axes, 16 + 56 + 56, are not in the config)
#: with one head; CLIP and T5 are 32 wide with the tiny tokenizers' vocabularies.
TINY_SIZES: dict[str, dict] = {
    "transformer/config.json": {"num_attention_heads": 1, "num_layers": 1,
                                "num_single_layers": 1, "joint_attention_dim": 32,
                                "pooled_projection_dim": 32},
    "vae/config.json": {"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
                        "norm_num_groups": 4, "sample_size": 256},
    "text_encoder/config.json": {
        "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
        "num_hidden_layers": 2, "projection_dim": 32,
        "vocab_size": tiny_tokenizers.CLIP_VOCAB_SIZE},
    "text_encoder_2/config.json": {
        "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
        "num_heads": 4, "relative_attention_num_buckets": 8,
        "vocab_size": tiny_tokenizers.T5_VOCAB_SIZE},
}
#: Published files whose contents carry no size: written as published, byte for byte.
_AS_PUBLISHED = ("model_index.json", "scheduler/scheduler_config.json",
                 "tokenizer/special_tokens_map.json", "tokenizer_2/special_tokens_map.json")


def write_tiny(path: Path, seed: int = 0, checkpoint: str = _CHECKPOINT) -> None:
    """Write the tiny checkpoint into `path` (created if missing; existing files replaced);
    `checkpoint`: which published layout (flux-schnell, flux-fill).

    The same `seed` gives byte-identical files on every run. About 2 MB; each component
    loads with no missing or unexpected keys.
    """
    # Imported here: building a checkpoint is rare, and these imports are slow.
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    root = Path(path)
    configs = {name: shrink(published(checkpoint, name).data, sizes)
               for name, sizes in TINY_SIZES.items()}

    # 1. Tokenizers: the tiny vocabularies in the published files; the id-keyed map of
    #    each tokenizer_config.json names the tiny ids of the same special tokens.
    tiny_tokenizers.write_clip_vocab(root / "tokenizer")
    tiny_tokenizers.save_t5_tokenizer(root / "tokenizer_2")  # tokenizer.json
    tiny_tokenizers.write_t5_spiece(root / "tokenizer_2" / "spiece.model")
    for name in ("tokenizer", "tokenizer_2"):
        ids = tiny_tokenizers.special_token_ids(root / name)
        config = published(checkpoint, f"{name}/tokenizer_config.json")
        decoder = {str(ids[entry["content"]]): entry
                   for entry in config.data["added_tokens_decoder"].values()}
        config.write(root, shrink(config.data, {"added_tokens_decoder": Whole(
            sorted(decoder.items(), key=lambda item: int(item[0])))}))

    # 2. Each component from its own seed (changing one leaves the others' weights
    #    alone), built in fp32 and stored in the published dtypes.
    def build(offset: int, make):  # noqa: ANN001, ANN202
        torch.manual_seed(seed + offset)
        return make()

    def fp32(config):  # noqa: ANN001, ANN202
        config.dtype = torch.float32  # the config file keeps the published bfloat16
        return config

    with torch.random.fork_rng(devices=[]):
        parts = {
            "transformer": build(0, lambda: FluxTransformer2DModel.from_config(
                configs["transformer/config.json"])),
            "text_encoder": build(1, lambda: CLIPTextModel(fp32(
                CLIPTextConfig.from_dict(configs["text_encoder/config.json"])))),
            "text_encoder_2": build(2, lambda: T5EncoderModel(fp32(
                T5Config.from_dict(configs["text_encoder_2/config.json"])))),
            "vae": build(3, lambda: AutoencoderKL.from_config(configs["vae/config.json"])),
        }
    for name, module in parts.items():
        state = module.state_dict()
        if name == "text_encoder":  # transformers 4's names, as the published file
            state = {k if k.startswith("text_model.") else f"text_model.{k}": v
                     for k, v in state.items()}
        if name != "vae":
            state = {k: v.to(torch.bfloat16) for k, v in state.items()}
        weights = ("model.safetensors" if name.startswith("text_encoder")
                   else "diffusion_pytorch_model.safetensors")
        save_weights(state, root / name, weights)

    # 3. Configs: the published ones with tiny sizes, and the size-free ones as they are.
    for name, config in configs.items():
        published(checkpoint, name).write(root, config)
    for name in _AS_PUBLISHED:
        published(checkpoint, name).write(root)


def write_tiny_fill(path: Path, seed: int = 0) -> None:
    """The tiny FLUX.1-Fill-dev checkpoint (see the module docstring) into `path`."""
    write_tiny(path, seed, checkpoint=_FILL_CHECKPOINT)
