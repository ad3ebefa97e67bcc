"""`mic2e-server make-tiny DIR`: tiny random checkpoints with the real architectures.

Each writer produces the real folder layout, deterministically from a fixed seed, small
enough to build in seconds; the servers load them through the same `from_pretrained` code
as the real checkpoints. Their pictures are noise; everything around them is real.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

#: Sub-folder of DIR for each model server.
TINY_FOLDERS = {"segmentation": "sam3", "object-clear": "objectclear", "flux": "flux"}
#: Checkpoints beside them that a server may load instead (a flux server given this
#: folder inpaints with FLUX.1-Fill's layout).
EXTRA_TINY_FOLDERS = {"flux-fill": "flux-fill"}


def make_tiny(directory: Path, seed: int = 0, names: Iterable[str] | None = None
              ) -> dict[str, Path]:
    """Write sam3/, objectclear/, flux/ and flux-fill/ under `directory` (`names`: only
    those servers' or extra checkpoints'); returns server (or extra checkpoint) -> folder."""
    from mic2e_services.quiet import quiet_model_libraries

    quiet_model_libraries()
    from mic2e_services.flux.tiny import write_tiny as write_flux
    from mic2e_services.flux.tiny import write_tiny_fill
    from mic2e_services.object_clear.tiny import write_tiny as write_objectclear
    from mic2e_services.segmentation.tiny import write_tiny as write_sam3

    writers = {"segmentation": write_sam3, "object-clear": write_objectclear,
               "flux": write_flux, "flux-fill": write_tiny_fill}
    if names is not None:
        writers = {name: writers[name] for name in names}
    out = {}
    for server, write in writers.items():
        path = Path(directory) / {**TINY_FOLDERS, **EXTRA_TINY_FOLDERS}[server]
        # Written aside, then renamed into place: a write cut short (Ctrl-C) never leaves
        # a folder that looks complete.
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            write(partial, seed=seed)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(partial, path)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        out[server] = path
    return out
