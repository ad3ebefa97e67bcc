"""Every library internal the model code reaches into, checked by name.

The model libraries are pinned to the minor versions the tests ran (services/pyproject.toml).
When one moves, this test says which internal is gone and which code used it, instead of
a model that fails (or silently changes its picture) at its first request.
"""

from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def has(owner: object, *names: str, used_by: str) -> None:
    missing = [n for n in names if not hasattr(owner, n)]
    assert not missing, (f"{getattr(owner, '__name__', owner)} lacks {missing}, which {used_by} "
                         f"uses (diffusers {diffusers.__version__}, transformers "
                         f"{transformers.__version__}, torch {torch.__version__})")


def accepts(function: object, *parameters: str, used_by: str) -> None:
    names = inspect.signature(function).parameters
    missing = [p for p in parameters if p not in names]
    assert not missing, f"{function} takes no {missing} any more; {used_by} passes them"


def test_sam3_internals(tiny_sam3):
    from transformers import Sam3Model, Sam3TrackerModel
    from transformers.models.sam3 import modeling_sam3

    has(modeling_sam3, "Sam3VisionEncoderOutput", used_by="Sam3Segmenter._decode_text")
    detector = Sam3Model.from_pretrained(tiny_sam3)
    tracker = Sam3TrackerModel.from_pretrained(tiny_sam3)
    has(detector.vision_encoder, "backbone", "neck", used_by="Sam3Segmenter (one shared ViT)")
    has(detector.vision_encoder.neck, "position_encoding", used_by="Sam3Segmenter._decode_text")
    accepts(detector.forward, "vision_embeds", "input_ids", "attention_mask",
            used_by="Sam3Segmenter._decode_text")
    has(tracker, "mask_decoder", "no_memory_embedding", "backbone_feature_sizes",
        used_by="Sam3Segmenter._tracker_neck")
    has(tracker.mask_decoder, "conv_s0", "conv_s1", used_by="Sam3Segmenter._tracker_neck")
    accepts(tracker.forward, "image_embeddings", "multimask_output", "input_points",
            "input_labels", "input_boxes", used_by="Sam3Segmenter._decode_prompts")


def test_diffusers_internals():
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler, FluxPipeline
    from diffusers.models import attention_processor
    from diffusers.models.attention_processor import Attention
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    attention = Attention(query_dim=8, cross_attention_dim=8, heads=2, dim_head=4)
    has(attention, "spatial_norm", "group_norm", "norm_q", "to_q", "to_k", "inner_dim",
        "scale", "heads", "set_processor", used_by="object_clear.pipeline.TokenAttentionCapture")
    has(attention_processor, "AttnProcessor2_0", used_by="TokenAttentionCapture")
    has(DiffusionPipeline, "_execution_device", "maybe_free_model_hooks",
        "enable_model_cpu_offload", "register_modules", used_by="ObjectClearPipeline")
    has(EulerDiscreteScheduler, "set_begin_index", "scale_model_input", "add_noise",
        used_by="ObjectClearPipeline.__call__")
    has(DiagonalGaussianDistribution(torch.zeros(1, 8, 2, 2)), "mean", "std",
        used_by="ObjectClearPipeline.prepare_latents")
    # The step callbacks stop a run by setting `_interrupt`, which the loop reads through
    # this property.
    has(FluxPipeline, "interrupt", used_by="FluxGenerator.run")
    accepts(FluxPipeline.__call__, "callback_on_step_end", "max_sequence_length", "generator",
            used_by="FluxGenerator._generate")


def test_torch_and_torchao_internals():
    torchao = pytest.importorskip("torchao.quantization")
    import torch._dynamo.config as dynamo
    import torch._functorch.config as functorch
    import torch._inductor.config as inductor

    has(dynamo, "recompile_limit", "accumulated_recompile_limit",
        used_by="torch_device.compile_module")
    has(inductor, "fx_graph_cache", used_by="torch_device.configure_compile_cache")
    has(functorch, "enable_autograd_cache", used_by="torch_device.configure_compile_cache")
    module = torch.nn.Linear(2, 2)
    module.compile(backend="eager")
    has(module, "_compiled_call_impl", used_by="compile_module's undo")
    accepts(torchao.quantize_, "filter_fn", "device", used_by="torch_device.quantize_weights")
    has(torchao, "Int8WeightOnlyConfig", "Float8WeightOnlyConfig",
        used_by="torch_device.quantize_weights")
