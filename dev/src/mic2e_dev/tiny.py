"""`mic2e-server make-tiny DIR`: tiny random checkpoints with the real architectures
(development tooling: the mic2e-dev package, not installed with the servers).

Each writer produces the real folder layout, deterministically from a fixed seed, small
enough to build in seconds; the servers load them through the same `from_pretrained` code
as the real checkpoints. Their pictures are noise; everything around them is real.

Each folder written gets a stamp beside it (`.sam3.tiny-stamp` for `sam3/`; the folder
itself stays exactly the published layout): a hash of what made it (the writers' code, the
published configs, the seed and the model libraries' versions). A folder whose stamp
matches is up to date and not written again: checking costs milliseconds, writing all of
them half a minute (mostly importing torch and the model libraries).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

#: Sub-folder of DIR for each model server.
TINY_FOLDERS = {"segmentation": "sam3", "object-clear": "objectclear", "flux": "flux"}
#: Checkpoints beside them that a server may load instead (a flux server given this
#: folder inpaints with FLUX.1-Fill's layout).
EXTRA_TINY_FOLDERS = {"flux-fill": "flux-fill"}

_PACKAGE = Path(__file__).resolve().parent
#: Everything a tiny checkpoint's bytes follow from, beside the seed.
_SOURCES = ("tiny_tokenizers.py", "sam3.py", "objectclear.py", "flux.py")
_LIBRARIES = ("torch", "transformers", "diffusers", "safetensors", "tokenizers")


def fingerprint(seed: int = 0) -> str:
    """What the stamp of a folder written now holds; read from files, nothing imported."""
    digest = hashlib.sha256(f"seed={seed}\n".encode())
    files = [_PACKAGE / name for name in _SOURCES]
    files += sorted(p for folder in ("published", "tokenizer_data")
                    for p in (_PACKAGE / folder).rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.relative_to(_PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    for library in _LIBRARIES:
        try:
            digest.update(f"{library}={metadata.version(library)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{library}=none\n".encode())
    return digest.hexdigest()


def is_complete(folder: Path) -> bool:
    """A folder holding a checkpoint (writes are renamed into place whole)."""
    return (folder / "model_index.json").exists() or (folder / "config.json").exists()


def stamp_file(folder: Path) -> Path:
    """Where the stamp of `folder` is: a hidden file beside it."""
    return folder.with_name(f".{folder.name}.tiny-stamp")


def is_current(folder: Path, stamp: str) -> bool:
    """Complete and stamped with `stamp`."""
    try:
        return is_complete(folder) and stamp_file(folder).read_text().strip() == stamp
    except OSError:
        return False


def needs_writing(folder: Path, stamp: str) -> bool:
    """Missing, or stamped by other code. A complete folder without a stamp (written by
    the writers directly, as the tests' fixtures do) is used as it is."""
    if not is_complete(folder):
        return True
    try:
        return stamp_file(folder).read_text().strip() != stamp
    except FileNotFoundError:
        return False


def make_tiny(directory: Path, seed: int = 0, names: Iterable[str] | None = None, *,
              force: bool = False, progress: bool = False) -> dict[str, Path]:
    """Write sam3/, objectclear/, flux/ and flux-fill/ under `directory` (`names`: only
    those servers' or extra checkpoints'), skipping those already up to date unless
    `force`; returns server (or extra checkpoint) -> folder. `progress`: say on stderr
    what is written and how long it took (writing is the slow part)."""
    folders = {name: Path(directory) / {**TINY_FOLDERS, **EXTRA_TINY_FOLDERS}[name]
               for name in (names if names is not None else
                            [*TINY_FOLDERS, *EXTRA_TINY_FOLDERS])}
    stamp = fingerprint(seed)
    todo = [name for name, path in folders.items() if force or not is_current(path, stamp)]
    if not todo:
        return folders

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    started = time.monotonic()
    say(f"writing tiny checkpoints to {directory}: {', '.join(todo)} (loading the model "
        "libraries first)")
    from mic2e_services.quiet import quiet_model_libraries

    quiet_model_libraries()
    from mic2e_dev.flux import write_tiny as write_flux
    from mic2e_dev.flux import write_tiny_fill
    from mic2e_dev.objectclear import write_tiny as write_objectclear
    from mic2e_dev.sam3 import write_tiny as write_sam3

    writers = {"segmentation": write_sam3, "object-clear": write_objectclear,
               "flux": write_flux, "flux-fill": write_tiny_fill}
    for server in todo:
        path = folders[server]
        t0 = time.monotonic()
        # Written aside, then renamed into place: a write cut short (Ctrl-C) never leaves
        # a folder that looks complete.
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        stamp_file(path).unlink(missing_ok=True)
        try:
            writers[server](partial, seed=seed)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(partial, path)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        stamp_file(path).write_text(stamp + "\n")
        say(f"  {server}: {path} ({time.monotonic() - t0:.1f} s)")
    say(f"tiny checkpoints written in {time.monotonic() - started:.1f} s")
    return folders
