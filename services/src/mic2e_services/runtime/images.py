"""Server-side image intake: decode once, keep recent images by SHA-256.

A client may send an image's bytes once and refer to it by SHA-256 afterwards; an unknown
reference is NOT_FOUND so the client knows to re-send. Decoding runs off the event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from mic2e import codecs
from PIL import Image

from mic2e_services.errors import InvalidArgument, NotFound

K = TypeVar("K")
V = TypeVar("V")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class LRU(Generic[K, V]):
    """A small thread-safe LRU map."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class StoredImage:
    """A decoded, upright RGB image and its reference."""

    sha256: str
    image: Image.Image

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


class ImageStore:
    """Decodes incoming images and remembers the recent ones (bounded LRU)."""

    def __init__(self, capacity: int = 64, max_pixels: int = codecs.DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = max_pixels
        self._cache: LRU[str, StoredImage] = LRU(capacity)
        #: How images arrived: as bytes, or as a reference (counted for tests and metrics).
        self.received_bytes = 0
        self.received_refs = 0
        self.ref_misses = 0

    async def resolve(self, data: bytes | None, sha256: str | None,
                      field: str = "image") -> StoredImage:
        """The image given as bytes or by reference; errors name `field`."""
        if data is not None:
            self.received_bytes += 1
            digest = codecs.sha256_hex(data)
            cached = self._cache.get(digest)
            if cached is not None:
                return cached
            try:
                image = await asyncio.to_thread(codecs.decode_image, data,
                                                max_pixels=self.max_pixels)
            except codecs.CodecError as exc:
                raise InvalidArgument(f"{field}.data", str(exc)) from None
            stored = StoredImage(digest, image)
            self._cache.put(digest, stored)
            return stored
        if sha256:
            self.received_refs += 1
            ref = sha256.lower()
            if not _SHA256.match(ref):
                raise InvalidArgument(f"{field}.sha256", "must be 64 hex characters")
            cached = self._cache.get(ref)
            if cached is None:
                self.ref_misses += 1
                raise NotFound(f"image {ref} is not held by this server; send its bytes",
                               reason="IMAGE_NOT_FOUND", metadata={"sha256": ref})
            return cached
        raise InvalidArgument(field, "an image is required (data or sha256)")

    def put(self, image: Image.Image, data: bytes) -> str:
        """Remember an image this server produced, so a client may refer to it."""
        digest = codecs.sha256_hex(data)
        self._cache.put(digest, StoredImage(digest, image))
        return digest
