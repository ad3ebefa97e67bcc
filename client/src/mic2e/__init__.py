"""mic2e: the typed Python client of mic2e-inference (no torch needed).

- `Client` / `AsyncClient`: typed calls on the orchestrator or a model server.
- `mic2e.types`: result dataclasses (PIL images, numpy masks).
- `mic2e.errors`: one exception class per gRPC status code, with the details.
- `mic2e.codecs`: image and mask codecs (PNG, RLE).
- `mic2e.v1`: the generated protobuf / gRPC stubs.
"""

from mic2e.client import DEFAULT_ADDRESS, AsyncClient, Client
from mic2e.errors import Mic2eError
from mic2e.types import Point

__all__ = ["DEFAULT_ADDRESS", "AsyncClient", "Client", "Mic2eError", "Point"]
