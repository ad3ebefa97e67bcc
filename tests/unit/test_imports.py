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


def test_the_servers_hold_no_tiny_tooling():
    """Tiny checkpoints are development tooling (dev/, the mic2e-dev package): no file of
    the servers' package is one, and only `stack.tiny_tooling` imports it, inside the
    function (`up --tiny-dir`, `make-tiny`: a clear error where it is not installed)."""
    files = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert files and not [f for f in files if "tiny" in f or f.startswith("published/")]
    importers = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                 if any(n.split(".")[0] == "mic2e_dev" for n in imported(p))}
    assert importers == {"stack.py"}
    top_level = {n for node in ast.parse((PACKAGE / "stack.py").read_text()).body
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 for n in imported_names(node)}
    assert not [n for n in top_level if n.startswith("mic2e_dev")]


def imported_names(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    return {node.module or ""}
