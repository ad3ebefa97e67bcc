"""Give freed memory back to the system, so one caller's large request does not leave the
process holding it for everyone after (a 30 MB upload is copied a few times on its way
through; a 6000x6000 PNG of 120 KB decodes to 108 MB).

glibc's malloc keeps what is freed in its heaps (one per thread that allocates, and gRPC
runs several) for reuse; a 30 MB message read from a socket in small slices leaves tens of
megabytes there, every time in another heap. Two things hand it back:
- `return_freed_memory()`: blocks of 1 MiB or more get mappings of their own, unmapped
  when freed (glibc would otherwise raise that threshold, up to 32 MiB, as it sees large
  blocks freed, and then serve them from its heaps);
- `trim_soon()`: after a large request, `malloc_trim` releases the heaps' free pages, at
  most once per half second, on a thread of its own.
Where the C library is not glibc both do nothing.

What this costs, and what is kept instead: memory the system hands out again arrives
zero-filled, page by page, so each new mapping costs time when first written. Pictures are
the one large allocation of every call, so Pillow keeps up to `PILLOW_BLOCKS` of its
16 MiB blocks for the next picture (64 MiB: a 12 MP photo, at four bytes a pixel), a fixed
amount whatever callers send. In the recorded photo_path runs
(benchmarks/results/*-photo_path-tiny.json) the object-clear server's 12 MP decode took
103 ms against the floor's 65 ms (the same decode in the benchmark's own process) before,
62.5 against 56.0 ms after (the run recorded at 8b2ff00).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from typing import Any

from PIL import Image

__all__ = ["return_freed_memory", "trim_soon"]

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # <malloc.h>
_MMAP_THRESHOLD_BYTES = 1 << 20
#: How long a trim waits for the call's buffers to be freed, and how often it may run.
_TRIM_DELAY_S = 0.5
#: Pillow's blocks kept for reuse (16 MiB each; see the module docstring).
PILLOW_BLOCKS = 4

_glibc: Any = None
_lock = threading.Lock()
_wanted = threading.Event()
_trimmer: threading.Thread | None = None
#: Trims run so far (for tests).
trims = 0


def _libc() -> Any:
    """glibc, or None."""
    global _glibc
    if _glibc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _glibc = libc
        except (OSError, AttributeError, TypeError):
            _glibc = False
    return _glibc or None


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process, and keep `PILLOW_BLOCKS` of Pillow's
    blocks for reuse; False where there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    Image.core.set_blocks_max(PILLOW_BLOCKS)
    if libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) != 1:
        log.warning("could not set malloc's mmap threshold; freed memory may be kept")
        return False
    return True


def trim_soon() -> None:
    """Release the heaps' free memory shortly (after the current call has let go of its
    buffers); calls in the meantime share one trim."""
    global _trimmer
    if _libc() is None:
        return
    with _lock:
        if _trimmer is None:
            _trimmer = threading.Thread(target=_trim_forever, name="malloc-trim", daemon=True)
            _trimmer.start()
    _wanted.set()


def _trim_forever() -> None:
    global trims
    libc = _libc()
    while True:
        _wanted.wait()
        time.sleep(_TRIM_DELAY_S)
        _wanted.clear()
        libc.malloc_trim(0)
        trims += 1
