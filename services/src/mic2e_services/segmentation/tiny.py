"""A tiny, randomly initialised SAM3 checkpoint in the real ``facebook/sam3`` folder layout.

The real checkpoint is a ``Sam3VideoModel`` save (``model_type: sam3_video``): the image
detector under ``detector_model.*``, the promptable tracker under ``tracker_model.*`` and
the tracker's own FPN neck under ``tracker_neck.*``, with ONE ViT backbone that both use.
``Sam3Model`` and ``Sam3TrackerModel`` each pick their part out of that file through
transformers' own key mapping, so writing the same layout here exercises exactly the
loading code the real weights go through.

Sizes follow MODELS.md (about 0.6 M parameters, ~2.5 MB; each call well under 0.1 s on a
CPU). The output is noise, but every tensor shape, the folder layout and the loading
path are the real ones.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

#: File that marks a folder as written by `write_tiny` (provenance reports "tiny").
TINY_MARKER = "mic2e_tiny.json"

# Image and feature sizes must agree: 224 / patch 14 = 16 tokens a side; the FPN levels
# the tracker decodes from are 4x, 2x and 1x that.
_IMAGE_SIZE = 224
_PATCH = 14
_GRID = _IMAGE_SIZE // _PATCH
_HIDDEN = 32


def _configs(vocab_size: int, bos_id: int, eos_id: int) -> dict:
    """The ``Sam3VideoConfig`` kwargs of the tiny model (plain dicts, as config.json has them)."""
    vit = {
        # A dict backbone_config is only resolved through AutoConfig with its model_type.
        "model_type": "sam3_vit_model",
        "hidden_size": _HIDDEN,
        "intermediate_size": 2 * _HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": _IMAGE_SIZE,
        "patch_size": _PATCH,
        "window_size": 8,
        "global_attn_indexes": [1],
        "pretrain_image_size": _IMAGE_SIZE,
    }
    vision = {
        "model_type": "sam3_vision_model",
        "backbone_config": vit,
        "fpn_hidden_size": _HIDDEN,
        "scale_factors": [4.0, 2.0, 1.0, 0.5],
        "backbone_feature_sizes": [[4 * _GRID] * 2, [2 * _GRID] * 2, [_GRID] * 2],
    }
    text = {
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": _HIDDEN,
        "intermediate_size": 2 * _HIDDEN,
        "projection_dim": _HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
        "hidden_act": "gelu",
        # CLIP pools at the eos id; the defaults are the 49 408-token vocabulary's ids.
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
    }
    small = {"hidden_size": _HIDDEN, "num_attention_heads": 4, "intermediate_size": 2 * _HIDDEN}
    detector = {
        "model_type": "sam3",
        "vision_config": vision,
        "text_config": text,
        "geometry_encoder_config": {**small, "num_layers": 1},
        "detr_encoder_config": {**small, "num_layers": 1},
        "detr_decoder_config": {**small, "num_layers": 1, "num_queries": 8},
        "mask_decoder_config": {
            "hidden_size": _HIDDEN,
            "num_upsampling_stages": 3,
            "num_attention_heads": 4,
        },
    }
    tracker = {
        "model_type": "sam3_tracker_video",
        "vision_config": vision,
        # The tracker config resets image_size to 1008 unless it is passed explicitly.
        "image_size": _IMAGE_SIZE,
        "prompt_encoder_config": {
            "hidden_size": _HIDDEN,
            "image_size": _IMAGE_SIZE,
            "patch_size": _PATCH,
            "mask_input_channels": 16,
        },
        "mask_decoder_config": {
            "hidden_size": _HIDDEN,
            "mlp_dim": 2 * _HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": _HIDDEN,
        },
        # Video-memory parts: unused by the image server but part of the real file.
        "memory_attention_hidden_size": _HIDDEN,
        "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 2 * _HIDDEN,
        "memory_attention_rope_feat_sizes": [_GRID, _GRID],
        "memory_encoder_hidden_size": _HIDDEN,
        "memory_encoder_output_channels": 16,
        "mask_downsampler_embed_dim": _HIDDEN,
        "memory_fuser_embed_dim": _HIDDEN,
        "memory_fuser_intermediate_dim": 2 * _HIDDEN,
        "memory_fuser_num_layers": 1,
    }
    return {"detector_config": detector, "tracker_config": tracker}


def write_tiny(path: Path, seed: int = 0) -> None:
    """Write the tiny SAM3 checkpoint into `path` (created if missing; files overwritten).

    Loads with ``Sam3Model`` / ``Sam3TrackerModel`` / ``Sam3Processor`` /
    ``Sam3TrackerProcessor.from_pretrained(path)`` with no missing or unexpected keys.
    The same seed gives byte-identical files.
    """
    import torch
    from transformers import (
        CLIPTokenizer,
        Sam3ImageProcessor,
        Sam3VideoConfig,
        Sam3VideoModel,
        Sam3VideoProcessor,
    )
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    from mic2e_services import tiny_tokenizers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    # 1. Tokenizer first: the text encoder's vocabulary must match it.
    tiny_tokenizers.save_clip_tokenizer(path, model_max_length=32)
    tokenizer = CLIPTokenizer.from_pretrained(str(path))

    # 2. Model: the whole video model, so the file holds the real key layout (detector,
    #    tracker, tracker neck, one backbone). fork_rng keeps the caller's RNG untouched.
    config = Sam3VideoConfig(
        **_configs(
            tiny_tokenizers.CLIP_VOCAB_SIZE,
            tiny_tokenizers.CLIP_BOS_TOKEN_ID,
            tiny_tokenizers.CLIP_EOS_TOKEN_ID,
        )
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3VideoModel(config).eval()
    # The default "original format" writes keys Sam3TrackerModel silently re-initialises.
    model.save_pretrained(str(path), save_original_format=False)

    # 3. Processor config. The processor would also re-save the tokenizer in its own
    #    byte layout; only processor_config.json is taken so the tokenizer files stay
    #    the canonical ones written in step 1.
    image_processor = Sam3ImageProcessor(
        size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
        mask_size={"height": 4 * _GRID, "width": 4 * _GRID},
    )
    video_processor = Sam2VideoVideoProcessor(
        size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
        image_mean=list(image_processor.image_mean),
        image_std=list(image_processor.image_std),
    )
    processor = Sam3VideoProcessor(
        image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer
    )
    with tempfile.TemporaryDirectory() as tmp:
        processor.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "processor_config.json", path / "processor_config.json")

    (path / TINY_MARKER).write_text(
        json.dumps({"model": "sam3", "seed": seed, "random_weights": True}, sort_keys=True)
        + "\n",
        encoding="utf-8",
    )
