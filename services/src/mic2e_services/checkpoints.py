"""Where a checkpoint's files are, and which revision they are: the one way all models ask.

A local folder is used as it is; its revision is a short hash of its configs and weight
sizes (the same folder always gives the same name, and two different checkpoints almost
never do). A hub id is resolved through the local cache or the hub (honouring
HF_HUB_OFFLINE), fetching only the files the model reads; its revision is the commit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["local_revision", "public_name", "resolve_checkpoint"]

_SNAPSHOT = re.compile(r"snapshots/([0-9a-f]{40})(/|$)")
_HUB_CACHE = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/")


def public_name(model_id: str | Path) -> str:
    """How a model is named to callers: its hub id; for a folder in a hub cache the id it
    was downloaded as (``models--org--name/snapshots/...`` -> ``org/name``); for any other
    folder its own name. Never a path: where a server keeps its files is not the caller's
    business (and may say more than it should)."""
    text = str(model_id)
    path = Path(text).expanduser()
    if not path.is_dir():
        return text
    cached = _HUB_CACHE.search(path.resolve().as_posix())
    return f"{cached[1]}/{cached[2]}" if cached else path.resolve().name


def resolve_checkpoint(model_id: str | Path, revision: str | None = None, *,
                       allow_patterns: Sequence[str] | None = None,
                       ignore_patterns: Sequence[str] | None = None) -> tuple[Path, str]:
    """(local folder, revision) of `model_id`: a folder, or a hub id with `revision`.

    From the hub only `allow_patterns` minus `ignore_patterns` are fetched (a repository
    may hold other copies of the weights many gigabytes large that no loader here reads).
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        snapshot = _SNAPSHOT.search(path.resolve().as_posix())
        return path, snapshot.group(1) if snapshot else local_revision(path)
    from huggingface_hub import snapshot_download

    local = Path(snapshot_download(str(model_id), revision=revision,
                                   allow_patterns=list(allow_patterns) if allow_patterns else None,
                                   ignore_patterns=list(ignore_patterns) if ignore_patterns
                                   else None))
    snapshot = _SNAPSHOT.search(local.as_posix())
    return local, snapshot.group(1) if snapshot else (revision or "unknown")


def local_revision(folder: Path) -> str:
    """``local-`` and a short hash of a folder's configs and weight-file sizes.

    Weights are not hashed (gigabytes); configs plus sizes tell apart the checkpoints one
    actually meets, and the same folder always gives the same name.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        if path.suffix in (".json", ".txt"):
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return "local-" + digest.hexdigest()[:12]
