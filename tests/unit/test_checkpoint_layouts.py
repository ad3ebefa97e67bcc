"""The tiny checkpoints are the published ones with sizes shrunk: same files, same config
keys, same class names (`mic2e-server make-tiny` against `tests/fixtures/real_configs`).

Two differences are by design and named here: weights the published repositories split
into shards (with an index) are one file in a tiny checkpoint, and files no loader of this
project reads (model cards, sample images, the original-format single-file checkpoints
beside the library layouts) are not written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.fixtures import REAL_CONFIGS  # noqa: E402

#: Published files that no loader here reads, per checkpoint (plus README.md and
#: .gitattributes everywhere).
NOT_READ = {
    "objectclear": set(),
    "flux-schnell": {"flux1-schnell.safetensors", "ae.safetensors", "schnell_grid.jpeg"},
    "flux-fill": {"flux1-fill-dev.safetensors", "ae.safetensors", "LICENSE.md"},
    "sam3": {"sam3.pt"},
}
#: Keys whose values name classes: they must be the published ones.
CLASS_KEYS = {"_class_name", "architectures", "model_type", "tokenizer_class",
              "processor_class", "image_processor_type", "video_processor_type"}
#: Maps keyed by token ids (a size): compared by what they hold, not by their keys.
ID_KEYED = {"added_tokens_decoder"}
_SHARD = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}(?P<suffix>\.safetensors)$")


def layout_files(names: set[str]) -> set[str]:
    """File names with shards and their index folded into the single file they make."""
    out = set()
    for name in names:
        if name.endswith(".safetensors.index.json"):
            continue
        folder, _, file = name.rpartition("/")
        shard = _SHARD.match(file)
        if shard:
            file = shard["stem"] + shard["suffix"]
        out.add(f"{folder}/{file}" if folder else file)
    return out


def config_differences(real: object, tiny: object, path: str = "") -> list[str]:
    """Where `tiny` lacks or adds a key of `real`, or names another class (recursively)."""
    if not isinstance(real, dict) or not isinstance(tiny, dict):
        return []
    problems = [f"{path}{k}: missing" for k in real.keys() - tiny.keys()]
    problems += [f"{path}{k}: added" for k in tiny.keys() - real.keys()]
    for key in real.keys() & tiny.keys():
        if key in ID_KEYED:
            contents = [sorted(v["content"] for v in d[key].values()) for d in (real, tiny)]
            if contents[0] != contents[1]:
                problems.append(f"{path}{key}: other tokens")
        elif key in CLASS_KEYS or (isinstance(real[key], list) and len(real[key]) == 2
                                   and all(isinstance(x, str) for x in real[key])):
            if real[key] != tiny[key]:
                problems.append(f"{path}{key}: {tiny[key]!r} instead of {real[key]!r}")
        else:
            problems += config_differences(real[key], tiny[key], f"{path}{key}.")
    return problems


def layout_problems(name: str, tiny: Path) -> list[str]:
    real_dir = REAL_CONFIGS / name
    published = set((real_dir / "files.txt").read_text().split())
    expected = layout_files(published - NOT_READ[name] - {"README.md", ".gitattributes"})
    written = {p.relative_to(tiny).as_posix() for p in tiny.rglob("*") if p.is_file()}
    problems = [f"{f}: not written" for f in sorted(expected - written)]
    problems += [f"{f}: not published" for f in sorted(written - expected)]
    for config in sorted(real_dir.rglob("*.json")):
        rel = config.relative_to(real_dir).as_posix()
        if not (tiny / rel).is_file():
            continue  # reported above
        problems += [f"{rel}: {p}" for p in config_differences(
            json.loads(config.read_text()), json.loads((tiny / rel).read_text()))]
    return problems


@pytest.fixture(params=["objectclear", "flux-schnell", "flux-fill", "sam3"])
def checkpoint(request, tiny_objectclear, tiny_flux, tiny_flux_fill, tiny_sam3):
    tiny = {"objectclear": tiny_objectclear, "flux-schnell": tiny_flux,
            "flux-fill": tiny_flux_fill, "sam3": tiny_sam3}
    return request.param, tiny[request.param]


def test_the_tiny_checkpoint_has_the_published_layout(checkpoint):
    name, tiny = checkpoint
    assert layout_problems(name, tiny) == []


def test_make_tiny_templates_are_the_published_configs(checkpoint):
    # make-tiny shrinks the copies in the package; they must be the fixtures' (whose
    # provenance SOURCES.md gives), byte for byte.
    from importlib import resources

    name, _ = checkpoint
    package = Path(str(resources.files("mic2e_dev.published") / name))
    ours = {p.relative_to(package).as_posix(): p.read_bytes()
            for p in package.rglob("*.json")}
    assert ours, name
    for rel, data in ours.items():
        assert (REAL_CONFIGS / name / rel).read_bytes() == data, rel


def test_a_dropped_or_renamed_key_is_caught(tiny_objectclear, tmp_path):
    # The checker itself: a tiny UNet config without one published key, and with it
    # renamed, and a file too many.
    broken = tmp_path / "objectclear"
    shutil.copytree(tiny_objectclear, broken)
    path = broken / "unet" / "config.json"
    config = json.loads(path.read_text())
    config["ema_decay"] = config.pop("decay")
    path.write_text(json.dumps(config))
    (broken / "unet" / "extra.json").write_text("{}")
    assert layout_problems("objectclear", broken) == [
        "unet/extra.json: not published",
        "unet/config.json: decay: missing",
        "unet/config.json: ema_decay: added",
    ]


def test_shrink_replaces_sizes_and_adds_nothing():
    from mic2e_dev.published import Whole, shrink

    config = {"hidden_size": 768, "vision": {"layers": 24, "act": "gelu"}, "ids": {"49406": 1}}
    assert shrink(config, {"vision": {"layers": 2}, "ids": Whole({"1175": 1})}) == {
        "hidden_size": 768, "vision": {"layers": 2, "act": "gelu"}, "ids": {"1175": 1}}
    with pytest.raises(KeyError, match="hidden_dim"):
        shrink(config, {"hidden_dim": 32})
    with pytest.raises(KeyError, match="heads"):
        shrink(config, {"vision": {"heads": 4}})
