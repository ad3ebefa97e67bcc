"""A tiny, randomly initialised SAM3 checkpoint in the published ``facebook/sam3`` layout.

The published checkpoint is a ``Sam3VideoModel`` save (``model_type: sam3_video``): the
image detector under ``detector_model.*``, the promptable tracker under
``tracker_model.*`` and the tracker's own FPN neck under ``tracker_neck.*``, with ONE ViT
backbone that both use. ``Sam3Model`` and ``Sam3TrackerModel`` each pick their part out of
that file through transformers' own key mapping, so writing the same layout here exercises
exactly the loading code the real weights go through.

Every published file and config key (config.json as transformers wrote it at the
conversion, processor_config.json, the CLIP tokenizer's files) with only sizes shrunk, to
the values in docs/models.md (about 0.6 M parameters; each call well under 0.1 s on a CPU).
Not written: the original-format ``sam3.pt`` and the model card, which nothing here
reads. The output is noise, but every tensor shape, file and loading path is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

from mic2e_dev import tiny_tokenizers
from mic2e_dev.published import Whole, published, save_weights, shrink

__all__ = ["TINY_SIZES", "write_tiny"]

_CHECKPOINT = "sam3"
# Image and feature sizes must agree: 224 / patch 14 = 16 tokens a side; the FPN levels
# the tracker decodes from are 4x, 2x and 1x that.
_IMAGE_SIZE = 224
_GRID = _IMAGE_SIZE // 14
_HIDDEN = 32
_SMALL = {"hidden_size": _HIDDEN, "num_attention_heads": 4, "intermediate_size": 2 * _HIDDEN}
_VISION = {
    "backbone_config": {
        "hidden_size": _HIDDEN, "intermediate_size": 2 * _HIDDEN, "num_hidden_layers": 2,
        "num_attention_heads": 4, "image_size": _IMAGE_SIZE, "window_size": 8,
        "global_attn_indexes": [1], "pretrain_image_size": _IMAGE_SIZE},
    "fpn_hidden_size": _HIDDEN,
    "backbone_feature_sizes": [[4 * _GRID] * 2, [2 * _GRID] * 2, [_GRID] * 2],
}
#: Size values that replace the published ones (nothing else changes). CLIP's special
#: token ids are those of the tiny vocabulary (1177 tokens).
TINY_SIZES: dict[str, dict] = {
    "config.json": {
        "low_res_mask_size": 4 * _GRID,
        "detector_config": {
            "vision_config": _VISION,
            "text_config": {
                "vocab_size": tiny_tokenizers.CLIP_VOCAB_SIZE, "hidden_size": _HIDDEN,
                "intermediate_size": 2 * _HIDDEN, "projection_dim": _HIDDEN,
                "num_hidden_layers": 2, "num_attention_heads": 4,
                "bos_token_id": tiny_tokenizers.CLIP_BOS_TOKEN_ID,
                "eos_token_id": tiny_tokenizers.CLIP_EOS_TOKEN_ID},
            "geometry_encoder_config": {**_SMALL, "num_layers": 1},
            "detr_encoder_config": {**_SMALL, "num_layers": 1},
            "detr_decoder_config": {**_SMALL, "num_layers": 1, "num_queries": 8},
            "mask_decoder_config": {"hidden_size": _HIDDEN, "num_attention_heads": 4},
        },
        "tracker_config": {
            "vision_config": _VISION,
            "image_size": _IMAGE_SIZE,
            "prompt_encoder_config": {"hidden_size": _HIDDEN, "image_size": _IMAGE_SIZE},
            "mask_decoder_config": {"hidden_size": _HIDDEN, "mlp_dim": 2 * _HIDDEN,
                                    "num_attention_heads": 4, "iou_head_hidden_dim": _HIDDEN},
            # Video-memory parts: unused by the image server but part of the real file.
            "memory_attention_hidden_size": _HIDDEN, "memory_attention_num_layers": 1,
            "memory_attention_feed_forward_hidden_size": 2 * _HIDDEN,
            "memory_attention_rope_feat_sizes": [_GRID, _GRID],
            "memory_encoder_hidden_size": _HIDDEN, "memory_encoder_output_channels": 16,
            "mask_downsampler_embed_dim": _HIDDEN, "memory_fuser_embed_dim": _HIDDEN,
            "memory_fuser_intermediate_dim": 2 * _HIDDEN, "memory_fuser_num_layers": 1,
        },
    },
    "processor_config.json": {
        "image_processor": {"size": {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
                            "mask_size": {"height": 4 * _GRID, "width": 4 * _GRID}},
        "target_size": _IMAGE_SIZE,
        "video_processor": {"size": {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}},
    },
}


def write_tiny(path: Path, seed: int = 0) -> None:
    """Write the tiny SAM3 checkpoint into `path` (created if missing; files overwritten).

    Loads with ``Sam3Model`` / ``Sam3TrackerModel`` / ``Sam3Processor`` /
    ``Sam3TrackerProcessor.from_pretrained(path)`` with no missing or unexpected keys.
    The same seed gives byte-identical files.
    """
    import torch
    from transformers import CLIPTokenizer, Sam3VideoConfig, Sam3VideoModel

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    configs = {name: shrink(published(_CHECKPOINT, name).data, sizes)
               for name, sizes in TINY_SIZES.items()}

    # 1. Tokenizer: the tiny vocabulary (vocab.json, merges.txt, tokenizer.json) with the
    #    published tokenizer_config.json, whose id-keyed map names the tiny ids.
    tiny_tokenizers.save_clip_tokenizer(root, model_max_length=32)
    ids = tiny_tokenizers.special_token_ids(root)
    config = published(_CHECKPOINT, "tokenizer_config.json")
    decoder = {str(ids[entry["content"]]): entry
               for entry in config.data["added_tokens_decoder"].values()}
    config.write(root, shrink(config.data, {"added_tokens_decoder": Whole(decoder)}))
    # The published special_tokens_map.json was not established (see the fixtures'
    # SOURCES.md): written from the tokenizer's own special tokens.
    tokenizer = CLIPTokenizer.from_pretrained(str(root))
    (root / "special_tokens_map.json").write_text(
        json.dumps(tokenizer.special_tokens_map, indent=2, sort_keys=True) + "\n",
        encoding="utf-8", newline="\n")

    # 2. Model: the whole video model, so the file holds the real key layout (detector,
    #    tracker, tracker neck, one backbone). fork_rng keeps the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3VideoModel(Sam3VideoConfig.from_dict(configs["config.json"])).eval()
    # The names Sam3Model and Sam3TrackerModel read (transformers' "original format"
    # writes keys the tracker silently re-initialises).
    state = model.state_dict()
    save_weights(state, root, "model.safetensors")

    # 3. Configs: the published ones with tiny sizes.
    for name, data in configs.items():
        published(_CHECKPOINT, name).write(root, data)
