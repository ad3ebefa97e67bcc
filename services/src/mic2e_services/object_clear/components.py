"""ObjectClear's own parts beside the SDXL components (torch only): the object's token
embedding (`PostfuseModule`, a checkpoint folder of its own), the attention capture that
Attention-Guided Fusion reads, the prompt, the pipeline's output, and the strict loading
of the published folder (`pipeline.ObjectClearPipeline.from_pretrained` uses it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn as nn
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

from mic2e_services.api.object_clear import working_size

#: The reference's prompt; its token 5 ("object") is replaced by the object embedding.
DEFAULT_PROMPT = "remove the instance of object"
#: Position of the object word in "<bos> remove the instance of object ...": the token the
#: object embedding replaces and whose cross-attention drives the fusion.
OBJECT_TOKEN_INDEX = 5
_SIZE_MULTIPLE = 16
#: Components the published model_index.json does not list: the reference passes them in.
EXTRA_COMPONENTS = ("image_prompt_encoder", "postfuse_module")
#: Every folder of the published checkpoint.
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
              "scheduler", *EXTRA_COMPONENTS)
#: What a hub download fetches: configs, tokenizers and weights of every published folder
#: (diffusers' own download would skip the two folders model_index.json does not list);
#: no fp16 variants, which from_pretrained does not read without `variant`.
HUB_PATTERNS = ("model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors")
HUB_IGNORE = ("*.fp16.*",)
# Tensors of the image prompt encoder's checkpoint (a whole CLIPModel) that only its text
# tower uses; loading the vision tower alone leaves them unread, by design.
_TEXT_TOWER_KEYS = re.compile(r"^(text_model\.|text_projection\.|logit_scale$)")


def prompt_for(label: str = "") -> str:
    """The prompt: the reference's, or with the caller's own label in place of "object".

    A label is a departure from the reference (which always says "object"): it moves the
    text embeddings of every token, and a label of several words pushes the object
    embedding onto its first word.
    """
    label = label.strip()
    return f"remove the instance of {label}" if label else DEFAULT_PROMPT


# ---------------------------------------------------------------------------------------
# The postfuse module: a checkpoint component of its own.


class _MLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, optionally with a residual around it."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, *, residual: bool) -> None:
        super().__init__()
        if residual and in_dim != out_dim:
            raise ValueError("a residual MLP needs in_dim == out_dim")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return x + y if self.residual else y


class PostfuseModule(ModelMixin, ConfigMixin):
    """Maps the CLIP image embedding of the object to a prompt-token embedding.

    mlp1 (no residual) lifts `embed_dim_img` (768: CLIP ViT-L/14 projection) to
    `embed_dim` (2048: both SDXL text encoders' hidden sizes side by side), mlp2 refines it
    with a residual, and a final LayerNorm matches the scale of the text tokens it stands
    in for. The published folder holds `config.json` (these two keys) and
    `model.safetensors` (tensors `mlp1.*`, `mlp2.*`, `layer_norm.*`).
    """

    config_name = "config.json"
    weights_name = "model.safetensors"

    @register_to_config
    def __init__(self, embed_dim: int = 2048, embed_dim_img: int = 768) -> None:
        super().__init__()
        self.mlp1 = _MLP(embed_dim_img, embed_dim, embed_dim, residual=False)
        self.mlp2 = _MLP(embed_dim, embed_dim, embed_dim, residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, object_embeds: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.mlp2(self.mlp1(object_embeds)))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        **_: Any,
    ) -> PostfuseModule:
        """Load a local folder in the published layout; every tensor must match the config.

        diffusers' own loader looks for `diffusion_pytorch_model.safetensors`; the
        published file is `model.safetensors` (`model.fp16.safetensors` as the fp16 variant).
        """
        from safetensors.torch import load_file

        folder = Path(pretrained_model_name_or_path) / (subfolder or "")
        module = cls.from_config(cls.load_config(folder))
        name = cls.weights_name if not variant else f"model.{variant}.safetensors"
        state = load_file(str(folder / name))
        result = module.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
            raise ValueError(f"{folder / name}: tensors do not match config.json (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]})")
        if torch_dtype is not None:
            module = module.to(torch_dtype)
        return module.eval()

    def save_pretrained(  # type: ignore[override]
        self, save_directory: str | Path, variant: str | None = None, **_: Any
    ) -> None:
        """Write `config.json` and `model[.variant].safetensors` (the published names)."""
        from safetensors.torch import save_file

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        name = self.weights_name if not variant else f"model.{variant}.safetensors"
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / name), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------


class TokenAttentionCapture(AttnProcessor2_0):
    """diffusers' SDPA attention processor that can also record one key token's attention
    probabilities.

    Installed once on the AGF layer and left there: the pipeline flips `capture` for the
    last step only, so the module graph never changes (no recompiles under torch.compile,
    unlike swapping processors as the reference does). The attention output is always the
    SDPA one; the reference's classic processor differs from it by float rounding only.
    `probs` holds (batch, heads, queries) in fp32.
    """

    def __init__(self, token_index: int = OBJECT_TOKEN_INDEX) -> None:
        super().__init__()
        self.token_index = token_index
        self.capture = False
        self.probs: torch.Tensor | None = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        if self.capture:
            # softmax(QK^T * scale) as Attention.get_attention_scores computes it, in fp32,
            # for the layer's plain cross-attention (3-D tokens, no norms, no mask). The
            # two projections run again on this one step; one key column is kept.
            batch, heads = hidden_states.shape[0], attn.heads
            query = attn.to_q(hidden_states).view(batch, -1, heads, attn.inner_dim // heads)
            key = attn.to_k(encoder_hidden_states).view(batch, -1, heads,
                                                        attn.inner_dim // heads)
            scores = torch.einsum("bqhd,bkhd->bhqk", query.float(), key.float()) * attn.scale
            self.probs = scores.softmax(dim=-1)[..., self.token_index]
        return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


@dataclass
class ObjectClearPipelineOutput:
    """Results of one batch.

    images: per input, the result (RGB) at that input's own size (`resize_back`, the
        reference's picture), else at the working size.
    prefusion: (B, 3, h, w) uint8 on the device: the decoded image before fusion, at the
        working size.
    attention_maps: (B, 1, h/8, w/8) in [0, 1] on the device (None without fusion).
    working_size: (width, height) the model ran at.
    regions: (B, 1, h, w) bool on the device, at the working size: where the result is
        the model's - the fusion's soft mask together with the mask (without fusion, the
        mask). Outside it the reference's picture is the input with its low frequencies
        taken from the generated image (the wavelet colour fix), or the generated image
        itself without fusion.
    """

    images: list[PIL.Image.Image]
    prefusion: torch.Tensor
    attention_maps: torch.Tensor | None
    working_size: tuple[int, int]
    regions: torch.Tensor


ImageInput = PIL.Image.Image | Sequence[PIL.Image.Image]
MaskInput = PIL.Image.Image | np.ndarray | Sequence[PIL.Image.Image | np.ndarray]
Generators = torch.Generator | Sequence[torch.Generator] | None
#: `callback_on_step_end(pipeline, step, timestep, {"latents": ...})`, diffusers style.
StepEndCallback = Callable[[Any, int, torch.Tensor, dict], dict]




def check_inputs(
    image: ImageInput,
    mask_image: MaskInput,
    prompt: str | Sequence[str] | None,
    short_side: int,
    num_inference_steps: int,
    guidance_scale: float,
    generator: Generators,
) -> tuple[list[PIL.Image.Image], list[PIL.Image.Image], list[str], tuple[int, int]]:
    """Normalise to lists and validate; returns (images, masks, prompts, working size)."""
    images = [image] if isinstance(image, PIL.Image.Image) else list(image)
    if isinstance(mask_image, (PIL.Image.Image, np.ndarray)):
        mask_image = [mask_image]
    masks = [mask_to_pil(m) for m in mask_image]
    if prompt is None:
        prompt = DEFAULT_PROMPT
    prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
    if not images:
        raise ValueError("no image given")
    if not len(images) == len(masks) == len(prompts):
        raise ValueError(f"got {len(images)} images, {len(masks)} masks and "
                         f"{len(prompts)} prompts")
    if isinstance(generator, Sequence) and len(generator) != len(images):
        raise ValueError(f"got {len(generator)} generators for {len(images)} images")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got "
                         f"{num_inference_steps!r}")
    if not math.isfinite(guidance_scale) or guidance_scale < 1.0:
        raise ValueError(f"guidance_scale must be finite and >= 1, got {guidance_scale}")
    if short_side < _SIZE_MULTIPLE:
        raise ValueError(f"short_side must be >= {_SIZE_MULTIPLE}, got {short_side}")
    sizes = set()
    for i, (img, m) in enumerate(zip(images, masks, strict=True)):
        if not isinstance(img, PIL.Image.Image):
            raise ValueError(f"image {i}: expected a PIL image, got {type(img).__name__}")
        if m.size != img.size:
            raise ValueError(f"mask {i}: size {m.size} differs from image {img.size}")
        sizes.add(working_size(img.width, img.height, short_side))
    if len(sizes) != 1:
        raise ValueError(f"a batch must share one working size, got {sorted(sizes)}")
    return images, masks, prompts, sizes.pop()


def load_strictly(root: Path, dtype: torch.dtype, given: dict[str, Any]) -> dict[str, Any]:
    """The components diffusers' loader would not load as the published folder needs:
    the transformers encoders, strictly, and the two components model_index.json does not
    list (the reference passes them in); those in `given` are left to the caller."""
    loaders = {
        "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
        "image_prompt_encoder": CLIPVisionModelWithProjection,
    }
    parts = {name: load_transformers_model(model_cls, root / name, dtype)
             for name, model_cls in loaders.items() if name not in given}
    if "postfuse_module" not in given:
        parts["postfuse_module"] = PostfuseModule.from_pretrained(
            root, subfolder="postfuse_module", torch_dtype=dtype)
    return parts


def publish_model_index(index_path: Path) -> None:
    """model_index.json in the published form: without the two extra components, so the
    reference's loader reads it too."""
    index = json.loads(index_path.read_text(encoding="utf-8"))
    for name in EXTRA_COMPONENTS:
        index.pop(name, None)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                          encoding="utf-8")


def mask_to_pil(mask: PIL.Image.Image | np.ndarray | torch.Tensor) -> PIL.Image.Image:
    """A mask as an 8-bit picture, 255 = object (the reference resizes it as such)."""
    if isinstance(mask, PIL.Image.Image):
        return mask.convert("L") if mask.mode != "L" else mask
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {array.shape}")
    return PIL.Image.fromarray(np.where(array > 0, 255, 0).astype(np.uint8))


def draw_normal(count: int, shape: tuple[int, ...], generator: Generators, device: torch.device
          ) -> list[torch.Tensor]:
    """`count` fp32 standard-normal tensors of `shape`, drawn in order from each generator
    on its own device, then moved to `device`.

    One generator per batch item draws that item's tensors alone, in order, so an item's
    numbers do not depend on what it is batched with. Drawing in fp32 keeps them identical
    across compute dtypes (fidelity checks compare fp16 against fp32 on the same seed).
    """
    if isinstance(generator, Sequence):
        per_item = [draw_normal(count, (1, *shape[1:]), g, device) for g in generator]
        return [torch.cat([item[k] for item in per_item]) for k in range(count)]
    source = generator.device if generator is not None else device
    return [torch.randn(shape, generator=generator, device=source, dtype=torch.float32).to(device)
            for _ in range(count)]


def load_transformers_model(model_cls: Any, folder: Path, dtype: torch.dtype) -> Any:
    """from_pretrained with the loading report checked: missing tensors are an error;
    unexpected ones other than an unused CLIP text tower are an error too, since they
    mean the checkpoint is not the architecture its config names."""
    model, info = model_cls.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(k for k in info.get("unexpected_keys", [])
                        if not (model_cls is CLIPVisionModelWithProjection
                                and _TEXT_TOWER_KEYS.match(k)))
    if missing or unexpected:
        raise ValueError(f"{folder}: the weights do not match {model_cls.__name__} "
                         f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} "
                         f"unexpected, e.g. {unexpected[:3]})")
    return model.eval()
