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

__all__ = ["CheckpointError", "check_source", "local_revision", "public_name",
           "resolve_checkpoint"]

_SNAPSHOT = re.compile(r"snapshots/([0-9a-f]{40})(/|$)")
_HUB_CACHE = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/")
#: What a hub id can be: ``name`` or ``org/name`` (the hub's own rule, loosely).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class CheckpointError(Exception):
    """The checkpoint cannot be had: a folder that does not exist, a hub id neither in the
    local cache nor downloadable now. An operator's mistake: the message is the one line
    that says what to do."""


def check_source(model_id: str | Path, setting: str = "MIC2E_MODEL / --model") -> None:
    """Refuse at once a value that reads as a folder (it has a path separator beyond a hub
    id's one, starts with ``.``, ``~`` or ``/``) but is none; before the hub is asked,
    which would call it an invalid repository id. `setting`: where the value came from."""
    text = str(model_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise CheckpointError(f"model {text!r} ({setting}) is a file, not a checkpoint "
                              "folder")
    if not _HUB_ID.fullmatch(text) or ".." in text or "\\" in text:
        raise CheckpointError(f"model folder {text!r} ({setting}) does not exist; give a "
                              "checkpoint folder, or a hub id such as org/name")


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
        found = snapshot.group(1) if snapshot else local_revision(path)
        if revision and revision != found:
            # A pinned revision that silently did not apply would defeat the pin.
            raise CheckpointError(f"{path} is a folder, read as it is (revision {found}); a "
                                  f"revision ({revision!r}, MIC2E_REVISION / --revision) "
                                  "applies to a hub id: give the hub id, or no revision")
        return path, found
    check_source(model_id)
    import huggingface_hub

    try:
        local = Path(huggingface_hub.snapshot_download(
            str(model_id), revision=revision,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            ignore_patterns=list(ignore_patterns) if ignore_patterns else None))
    except Exception as exc:
        error = _hub_error(str(model_id), revision, exc)
        if error is None:
            raise
        raise error from None
    snapshot = _SNAPSHOT.search(local.as_posix())
    return local, snapshot.group(1) if snapshot else (revision or "unknown")


def _hub_error(model_id: str, revision: str | None, exc: Exception) -> CheckpointError | None:
    """The hub's refusal as one line an operator can act on; None for anything unforeseen
    (raised as it is, with its traceback: it may be a bug)."""
    from huggingface_hub import constants, errors

    where = f"model {model_id!r}" + (f" at revision {revision!r}" if revision else "")
    if isinstance(exc, errors.GatedRepoError):
        return CheckpointError(f"{where} is gated: accept its licence on huggingface.co "
                               "with your account, then set HF_TOKEN")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return CheckpointError(f"{where} is no model on the hub and no folder here "
                               "(MIC2E_MODEL / --model)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return CheckpointError(f"{where}: no such revision on the hub")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else "the hub cannot be reached")
        return CheckpointError(
            f"{where} is not in the local hub cache ({constants.HF_HUB_CACHE}) and cannot be "
            f"downloaded now ({why}): download it once (`hf download {model_id}`), or set "
            "MIC2E_MODEL / --model to a checkpoint folder (`mic2e-server make-tiny DIR` "
            "writes tiny ones)")
    if isinstance(exc, errors.HFValidationError):
        return CheckpointError(f"{where} is neither a folder nor a hub id "
                               "(MIC2E_MODEL / --model)")
    if isinstance(exc, errors.HfHubHTTPError | OSError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CheckpointError(f"{where} could not be downloaded: {first}")
    return None


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
