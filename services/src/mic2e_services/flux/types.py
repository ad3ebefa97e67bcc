"""The flux model's plain request and result, and its fields' one declaration.

No torch, no protobuf: shared by the model (`model.py`), the servicer's conversions
(`convert.py`), the server's settings and the orchestrator.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from mic2e_services.errors import FieldViolation
from mic2e_services.schema import Field, Request

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
