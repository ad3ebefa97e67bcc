"""The flux model's plain request and result (no torch, no protobuf).

Shared by the model (`model.py`) and the servicer's conversions (`convert.py`), so the
servicer never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class GenerateQuery:
    """One text-to-image request (the API's Generate fields)."""

    prompt: str
    width: int = 1024
    height: int = 1024
    steps: int = 4
    seed: int | None = None  # None: the server draws one and reports it


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
