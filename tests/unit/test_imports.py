"""Imports go one way. The three model packages are peers: none imports another (what
they share is the API layer, the runtime and the shared helpers beside them); the
orchestrator imports no model package, only the API layer; nothing under the runtime or
the API layer imports a model package or the orchestrator; the API layer imports neither
torch nor grpc. Read from the source (the import statements, at any depth), so an import
inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "services/src/mic2e_services"
MODELS = {"segmentation", "object_clear", "flux"}


def imported(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def sub_packages(names: set[str]) -> set[str]:
    """The mic2e_services sub-packages among `names`."""
    return {n.split(".")[1] for n in names if n.startswith("mic2e_services.")}


def forbidden(folder: str) -> set[str]:
    """The sub-packages a module under `folder` must not import."""
    if folder in MODELS:
        return (MODELS - {folder}) | {"orchestrator"}
    if folder == "orchestrator":
        return set(MODELS)
    return MODELS | {"orchestrator"}  # runtime, api


def modules() -> list[Path]:
    folders = [*sorted(MODELS), "orchestrator", "runtime", "api"]
    return [p for f in folders for p in sorted((PACKAGE / f).glob("*.py"))]


@pytest.mark.parametrize("path", modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_go_one_way(path: Path):
    folder = path.parent.name
    wrong = sub_packages(imported(path)) & forbidden(folder)
    assert not wrong, f"{folder}/{path.name} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "api").glob("*.py")),
                         ids=lambda p: p.name)
def test_the_api_layer_needs_neither_torch_nor_grpc(path: Path):
    roots = {name.split(".")[0] for name in imported(path)}
    assert not roots & {"torch", "grpc", "diffusers", "transformers"}, sorted(roots)


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "model.py"
    bad.write_text("def f():\n    from mic2e_services.object_clear.masks import x\n")
    assert sub_packages(imported(bad)) & forbidden("flux") == {"object_clear"}
    assert len(modules()) > 30
