"""Server-side image intake: decode once, keep recent images by SHA-256.

A client may send an image's bytes once and refer to it by SHA-256 afterwards; an unknown
reference is NOT_FOUND so the client knows to re-send. Decoding runs off the event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from mic2e import codecs
from PIL import Image

from mic2e_services.errors import InvalidArgument, NotFound
from mic2e_services.runtime.settings import IMAGE_CACHE_MB

K = TypeVar("K")
V = TypeVar("V")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class LRU(Generic[K, V]):
    """A thread-safe LRU map bounded by the total size of its values in bytes (`size`);
    a value larger than the whole budget is not kept at all."""

    def __init__(self, max_bytes: int, size: Callable[[V], int] = len) -> None:  # type: ignore[assignment]
        self.max_bytes = max_bytes
        self._size = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        #: Bytes held now.
        self.bytes = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V) -> None:
        nbytes = self._size(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if nbytes > self.max_bytes:
                return
            self._items[key] = (value, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class StoredImage:
    """A decoded, upright RGB image (its ICC profile in ``image.info``) and its reference;
    `decode_s`: the seconds this call spent decoding it (0 when it was held). `size`: the
    picture's own (width, height) when `image` was decoded smaller (`ImageStore`'s
    `decode_at_least`); `width` and `height` are always the picture's own."""

    sha256: str
    image: Image.Image
    decode_s: float = 0.0
    size: tuple[int, int] | None = None

    @property
    def width(self) -> int:
        return self.size[0] if self.size else self.image.width

    @property
    def height(self) -> int:
        return self.size[1] if self.size else self.image.height


class ImageStore:
    """Decodes incoming images and remembers the recent ones a server accepted work for
    (an LRU bounded in bytes of decoded pixels), so a client may refer to them."""

    def __init__(self, max_bytes: int = IMAGE_CACHE_MB * 2**20,
                 max_pixels: int = codecs.DEFAULT_MAX_PIXELS,
                 decode_at_least: tuple[int, int] | None = None) -> None:
        self.max_pixels = max_pixels
        #: A model that works at this (width, height) or below gets JPEGs decoded at a
        #: reduced scale (`codecs.decode_image_at_least`); None: every image in full.
        self.decode_at_least = decode_at_least
        self._cache: LRU[str, StoredImage] = LRU(
            max_bytes, lambda s: s.image.width * s.image.height * len(s.image.getbands()))
        #: How images arrived: as bytes, or as a reference (counted for tests and metrics).
        self.received_bytes = 0
        self.received_refs = 0
        self.ref_misses = 0

    @property
    def bytes(self) -> int:
        """Decoded pixels held now."""
        return self._cache.bytes

    async def resolve(self, data: bytes | None, sha256: str | None,
                      field: str = "image") -> StoredImage:
        """The image given as bytes or by reference; errors name `field`. Bytes are not
        remembered until `keep` (only for work the server accepted)."""
        if data is not None:
            self.received_bytes += 1
            digest = codecs.sha256_hex(data)
            cached = self._cache.get(digest)
            if cached is not None:
                return cached
            started = time.perf_counter()
            try:
                if self.decode_at_least is None:
                    image, size = await asyncio.to_thread(
                        codecs.decode_image, data, max_pixels=self.max_pixels), None
                else:
                    image, size = await asyncio.to_thread(
                        codecs.decode_image_at_least, data, self.decode_at_least,
                        max_pixels=self.max_pixels)
            except codecs.CodecError as exc:
                raise InvalidArgument(f"{field}.data", str(exc)) from None
            return StoredImage(digest, image, time.perf_counter() - started, size)
        self.received_refs += 1
        ref = check_reference(sha256 or "", f"{field}.sha256")
        cached = self._cache.get(ref)
        if cached is None:
            self.ref_misses += 1
            raise NotFound(f"image {ref} is not held by this server; send its bytes",
                           reason="IMAGE_NOT_FOUND", metadata={"sha256": ref})
        return cached

    def keep(self, image: StoredImage) -> None:
        """Remember `image` for later references (the server accepted work on it)."""
        self._cache.put(image.sha256, image)


def check_reference(sha256: str, field: str) -> str:
    """An image reference, lowercased; one that is not 64 hex characters names `field`
    (the rule every server applies, the orchestrator included)."""
    ref = sha256.lower()
    if not _SHA256.match(ref):
        raise InvalidArgument(field, "an image reference is the SHA-256 of its bytes: 64 hex "
                                     "characters")
    return ref
