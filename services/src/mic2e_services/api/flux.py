"""The flux model's plain request and result, and its fields' one declaration.

No torch, no protobuf: shared by the model (`model.py`), the servicer's conversions
(`convert.py`), the server's settings and the orchestrator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mic2e_services.edits import EditOutput
from mic2e_services.errors import FieldViolation
from mic2e_services.masked_image import with_masked_image
from mic2e_services.schema import Field, Request

#: Stage names of its progress events and timings (the servicer's and the orchestrator's).
STAGE = "generation"
INPAINT_STAGE = "inpainting"
#: T5 tokens FLUX.1-schnell reads (the pipeline's max_sequence_length, </s> included);
#: a longer prompt is cut, and the result says so.
MAX_SEQUENCE_LENGTH = 256

PROMPT = Field("prompt", str, required=True, max_chars=2000)
# Sides are multiples of 16: the VAE downsamples 8x and the transformer packs latents in
# 2x2 patches. Default 1024 and 4 steps: schnell's own.
WIDTH = Field("width", int, 1024, lo=256, hi=2048, multiple_of=16)
HEIGHT = Field("height", int, 1024, lo=256, hi=2048, multiple_of=16)
STEPS = Field("steps", int, 4, lo=1, hi=50)
SEED = Field("seed", int, lo=0, hi=2**64 - 1)
GENERATE = Request("GenerateRequest", {"prompt": PROMPT, "width": WIDTH, "height": HEIGHT,
                                       "steps": STEPS, "seed": SEED})


@dataclass(frozen=True)
class GenerateQuery:
    """One text-to-image request (the API's Generate fields)."""

    prompt: str
    width: int = WIDTH.default
    height: int = HEIGHT.default
    steps: int = STEPS.default
    seed: int | None = None  # None: the server draws one and reports it


def violations(query: GenerateQuery) -> list[FieldViolation]:
    """Every bad field of `query`, named as in the API."""
    return GENERATE.check(query)


@dataclass(frozen=True)
class GenerateOutput:
    """One generated picture and what it took to reproduce it."""

    image: Image.Image
    seed: int
    steps: int
    #: True when the prompt was longer than the T5 encoder reads.
    prompt_truncated: bool
    #: The text the model actually read when `prompt_truncated`; "" otherwise.
    truncated_prompt: str


# --------------------------------------------------------------------------------------
# Inpaint: the masked region of an image repainted from a prompt, the rest kept.

#: The picture area FLUX.1 is made for (1024x1024): larger images are inpainted at this
#: area (same aspect) and the repainted region is scaled back to the input's size.
MAX_WORKING_PIXELS = 1024 * 1024
_SIDE_MULTIPLE = 16

# Strength 1: the masked region starts from noise (a replacement); lower keeps more of
# what was there. Steps and guidance: the checkpoint's own unless set (schnell: 4 steps,
# no guidance input; FLUX.1-Fill: 50 steps, guidance 30).
STRENGTH = Field("options.strength", float, 1.0, lo=0.0, lo_exclusive=True, hi=1.0)
INPAINT_STEPS = Field("options.steps", int, lo=1, hi=50)
INPAINT_SEED = Field("options.seed", int, lo=0, hi=2**64 - 1)
GUIDANCE_SCALE = Field("options.guidance_scale", float, lo=0.0, hi=100.0)
# The mask grows by this many pixels first (a segmentation mask hugs the object; its
# outline and halo must be repainted too), then fades out over `feather` more.
MASK_DILATION = Field("options.mask_dilation", int, 8, lo=0, hi=256)
FEATHER = Field("options.feather", int, 8, lo=0, hi=128)
#: InpaintOptions' fields, by InpaintQuery attribute.
INPAINT_OPTIONS = {"strength": STRENGTH, "steps": INPAINT_STEPS, "seed": INPAINT_SEED,
                   "guidance_scale": GUIDANCE_SCALE, "mask_dilation": MASK_DILATION,
                   "feather": FEATHER}
INPAINT = Request("InpaintRequest", {"prompt": PROMPT, **INPAINT_OPTIONS})


def inpaint_working_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) an image is inpainted at: its own size, or scaled down to the area
    of MAX_WORKING_PIXELS, each side rounded down to a multiple of 16 (the VAE's 8x and
    the transformer's 2x2 packing; at least 16), so never above that area:
    4000x3000 -> 1168x880, 100x70 -> 96x64."""
    scale = min(1.0, math.sqrt(MAX_WORKING_PIXELS / (width * height)))

    def side(x: int) -> int:
        return max(_SIDE_MULTIPLE, int(x * scale) // _SIDE_MULTIPLE * _SIDE_MULTIPLE)

    return side(width), side(height)


def steps_run(steps: int, strength: float) -> int:
    """Denoising steps a request really runs: diffusers skips the first
    `int(steps - steps x strength)` of the schedule (FluxInpaintPipeline.get_timesteps),
    which is steps x strength rounded up; 0 when that product is too small to tell from
    0 in floating point (`inpaint_violations` refuses such a strength)."""
    return steps - int(max(steps - steps * strength, 0))


@dataclass(frozen=True, eq=False)
class InpaintQuery:
    """Repaint `mask` (bool HxW at the image's size, the caller's masks merged) of `image`
    from `prompt`. None for steps / guidance_scale: the checkpoint's own; seed None: the
    server draws one."""

    image: Image.Image
    mask: np.ndarray
    prompt: str
    strength: float = STRENGTH.default
    steps: int | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    mask_dilation: int = MASK_DILATION.default
    feather: int = FEATHER.default


def inpaint_violations(query: InpaintQuery, *, guided: bool, steps: int
                       ) -> list[FieldViolation]:
    """Every bad field of `query`, named as in the API. `guided`: whether the loaded
    checkpoint takes a guidance input; `steps`: the steps it would run at strength 1 (its
    own or the query's)."""
    bad = INPAINT.check(query)
    if not bad and steps_run(steps, query.strength) < 1:
        bad.append(FieldViolation(STRENGTH.path, f"{query.strength:g} x {steps} steps runs no "
                                  f"step: use at least {1 / steps:g}"))
    bad, usable = with_masked_image(bad, query.image, query.mask)
    if not usable:
        return bad
    if query.guidance_scale is not None and not guided:
        bad.append(FieldViolation(GUIDANCE_SCALE.path, "this checkpoint takes no guidance "
                                  "(FLUX.1-schnell is guidance-distilled): leave it unset"))
    return bad


@dataclass(frozen=True, eq=False, kw_only=True)
class InpaintOutput(EditOutput):
    """The inpainting as an `Edit` of the input (outside the feathered mask: the input's
    own pixels; the whole picture: `image`), and whether T5 cut the prompt (and what it
    kept)."""

    prompt_truncated: bool
    truncated_prompt: str
