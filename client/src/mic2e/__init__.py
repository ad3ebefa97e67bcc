"""mic2e: the typed Python client of mic2e-inference (no torch needed).

- `Client` / `AsyncClient`: typed calls on the orchestrator or a model server.
- `mic2e.types`: result dataclasses (PIL images, numpy masks).
- `mic2e.errors`: one exception class per gRPC status code, with the details.
- `mic2e.codecs`: image and mask codecs (PNG, RLE).
- `mic2e.v1`: the generated protobuf / gRPC stubs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mic2e.client import DEFAULT_ADDRESS, AsyncClient, Client
    from mic2e.errors import Mic2eError
    from mic2e.types import Point

__all__ = ["DEFAULT_ADDRESS", "AsyncClient", "Client", "Mic2eError", "Point"]

#: The module each name comes from, imported on first use: importing the package (as
#: `python -m mic2e.cli` does first) must not load gRPC yet, so the CLI can set gRPC's
#: logging, which gRPC reads once, when it loads.
_HOMES = {"DEFAULT_ADDRESS": "mic2e.client", "AsyncClient": "mic2e.client",
          "Client": "mic2e.client", "Mic2eError": "mic2e.errors", "Point": "mic2e.types"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'mic2e' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
