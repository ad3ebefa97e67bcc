"""The README's Python example, run as written against the live tiny stack.

The block marked `<!-- README test: python -->` runs in a folder holding a 320x240
`photo.jpg`, with only the address changed (the README says localhost:50051). With tiny
random weights "dog" is never found, so its `NotFoundError` path runs as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.asyncio(loop_scope="package")

README = Path(__file__).resolve().parents[2] / "README.md"


def python_example() -> str:
    (block,) = re.findall(r"<!-- README test: python -->\n```python\n(.*?)```",
                          README.read_text(), re.S)
    return block


def run_in(folder: Path, code: str) -> str:
    """Runs `code` with `folder` as the working directory; what it printed."""
    out = io.StringIO()
    here = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md (python example)", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(here)
    return out.getvalue()


async def test_readme_python_example(stack, tmp_path):
    rng = np.random.default_rng(11)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), np.uint8)).save(
        tmp_path / "photo.jpg", quality=90)
    code = python_example()
    assert "localhost:50051" in code
    # The servers run on this event loop: the synchronous client runs in a thread.
    printed = await asyncio.to_thread(run_in, tmp_path,
                                      code.replace("localhost:50051", stack.address))
    assert "no instance of 'dog'" in printed, printed  # the "nothing found" path ran
    for name in ("no-dog.jpg", "cat.jpg", "vase.jpg"):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "JPEG" and picture.size == (320, 240), name
