"""The configuration files of the published checkpoints, as published (package data).

One folder per checkpoint, mirroring its repository: `objectclear/`
(`jixin0101/ObjectClear`), `flux-schnell/` (`black-forest-labs/FLUX.1-schnell`) and
`sam3/` (`facebook/sam3`); where each file was established is in
`tests/fixtures/real_configs/<name>/SOURCES.md`, whose copies the layout test compares
against. They are the templates of `mic2e-server make-tiny`: a tiny checkpoint is the
published configs with sizes shrunk (`shrink` refuses to add a key) and nothing renamed,
so the servers load tiny and real weights through the same code. Weights and large
vocabularies are not here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["PublishedFile", "Whole", "published", "save_weights", "shrink"]


class PublishedFile:
    """One published JSON file: its data, and a writer that keeps its formatting."""

    def __init__(self, checkpoint: str, relpath: str) -> None:
        self.relpath = relpath
        self.text = resources.files(__name__).joinpath(checkpoint, relpath).read_text("utf-8")
        self.data: dict[str, Any] = json.loads(self.text)

    def write(self, root: Path, data: dict[str, Any] | None = None) -> None:
        """Write `data` (default: the file as published) to `root/relpath`, with the
        published file's indentation, key order and final newline, so a file whose values
        do not change is byte for byte the published one."""
        data = self.data if data is None else data
        lines = self.text.splitlines()
        indent = len(lines[1]) - len(lines[1].lstrip(" ")) if len(lines) > 1 else 2
        sort = list(self.data) == sorted(self.data)
        text = json.dumps(data, indent=indent, sort_keys=sort, ensure_ascii=False)
        path = Path(root) / self.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + ("\n" if self.text.endswith("\n") else ""), encoding="utf-8",
                        newline="\n")


def published(checkpoint: str, relpath: str) -> PublishedFile:
    """The published `relpath` of `checkpoint` (a folder name of this package)."""
    return PublishedFile(checkpoint, relpath)


class Whole(dict):
    """A dict value that `shrink` puts in place as a whole: for maps keyed by sizes, such
    as a tokenizer's `added_tokens_decoder` (token id -> token)."""


def shrink(config: dict[str, Any], sizes: dict[str, Any]) -> dict[str, Any]:
    """`config` with the values in `sizes` replaced (nested dicts recursively, but a
    `Whole` as it is).

    Only existing keys may be replaced: a tiny checkpoint has exactly the published keys.
    """
    out = dict(config)
    for key, value in sizes.items():
        if key not in config:
            raise KeyError(f"{key!r} is not a key of the published config")
        if isinstance(value, dict) and not isinstance(value, Whole) \
                and isinstance(config[key], dict):
            out[key] = shrink(config[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Whole) else value
    return out


def save_weights(state: dict[str, torch.Tensor], folder: Path, name: str,
                 fp16_variant: bool = False) -> None:
    """`state` as `folder/name` (safetensors, metadata format=pt as the libraries write),
    and as `name` with `.fp16` before the suffix in half precision when asked."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(folder / name), metadata={"format": "pt"})
    if fp16_variant:
        stem, suffix = name.rsplit(".", 1)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                  str(folder / f"{stem}.fp16.{suffix}"), metadata={"format": "pt"})
