"""The TypeScript client's README examples, run as written against the live tiny stack.

Every ```js block marked `<!-- README test: ts-NAME -->` in README.md ("TypeScript
client") and client-ts/README.md runs in a copy of client-ts/dist/example-project, the
project `scripts/setup-ts.sh` made by installing the packed client as the READMEs say
(`npm install .../client-ts/dist/mic2e-client-<version>.tgz`). Only the addresses change:
`localhost:50051` becomes the in-process orchestrator's gRPC address and
`http://localhost:8080` its HTTP port's URL. Each block is type-checked as TypeScript
(client-ts's own tsc, strict) and run with node next to a 320x240 `photo.jpg`; what it
printed and wrote is checked. With tiny random weights "dog" is never found, so the
NotFound paths run. No npm command runs here: the copy is made of hard links, offline.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_typescript_client import run

REPO = Path(__file__).resolve().parents[2]
CLIENT_TS = REPO / "client-ts"
READMES = [REPO / "README.md", CLIENT_TS / "README.md"]
PROJECT = CLIENT_TS / "dist" / "example-project"
TSC = CLIENT_TS / "node_modules" / "typescript" / "bin" / "tsc"
SETUP_HINT = "run `bash scripts/setup-ts.sh` (it packs client-ts and installs it there)"
BLOCK = re.compile(r"<!-- README test: (ts-[\w-]+) -->\n```js\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    """Every marked block of both READMEs, by name."""
    found: dict[str, str] = {}
    for readme in READMES:
        text = readme.read_text()
        if readme.parent == REPO:  # only the main README's "TypeScript client" section
            text = text[text.index("## TypeScript client"):]
            text = text[:text.index("\n## ")]
        for name, code in BLOCK.findall(text):
            assert name not in found, f"two examples named {name}"
            found[name] = code
    return found


def tarball_name() -> str:
    version = json.loads((CLIENT_TS / "package.json").read_text())["version"]
    return f"mic2e-client-{version}.tgz"


def png_of_photo_size(path: Path) -> None:
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (320, 240), (picture.format,
                                                                        picture.size)


def check_readme_remove(out: str, folder: Path) -> None:
    assert "0 dogs" in out and "no instance of 'dog' found" in out, out  # NotFound path ran
    png_of_photo_size(folder / "no-dog.png")


def check_readme_http(out: str, folder: Path) -> None:
    assert re.fullmatch(r"score [\d.e-]+ box \d+ \d+ \d+ \d+\n", out), out


def check_client_remove(out: str, folder: Path) -> None:
    assert "segmentation 1 / 1" in out and "0 dogs" in out, out
    assert "no instance of 'dog' found" in out, out
    png_of_photo_size(folder / "no-dog.png")


def check_client_errors(out: str, folder: Path) -> None:
    lines = out.splitlines()
    assert lines[0].startswith("InvalidArgument - "), out  # refused before any event
    assert "clear_options.steps -> must be 1 to 100, got 500" in lines, out


def check_client_http(out: str, folder: Path) -> None:
    lines = [line.rsplit(" ", 1)[0] for line in out.splitlines()]  # less the score
    assert lines == [f"{name} 320 x 240 score" for name in ("connect", "json", "grpcWeb")], out


CHECKS: dict[str, Callable[[str, Path], None]] = {
    "ts-readme-remove": check_readme_remove,
    "ts-readme-http": check_readme_http,
    "ts-client-remove": check_client_remove,
    "ts-client-errors": check_client_errors,
    "ts-client-http": check_client_http,
}


def test_the_readmes_have_the_examples():
    found = examples()
    assert set(found) == set(CHECKS)
    for name, code in found.items():
        assert "localhost:50051" in code or "http://localhost:8080" in code, name
        assert 'from "@mic2e/client"' in code, name
    # Both READMEs install the tarball the set-up makes, by its name for this version.
    for readme in READMES:
        assert (f"npm install /path/to/mic2e-inference/client-ts/dist/{tarball_name()}\n"
                in readme.read_text()), readme


def installed_client_is_current() -> None:
    """The example project holds the tarball of today's client-ts/dist/src."""
    installed = PROJECT / "node_modules" / "@mic2e" / "client"
    if not (installed / "package.json").is_file():
        pytest.fail(f"{PROJECT} has no @mic2e/client installed; {SETUP_HINT}")
    dependency = json.loads((PROJECT / "package.json").read_text())["dependencies"]
    assert dependency == {"@mic2e/client": f"file:../{tarball_name()}"}, dependency
    built = CLIENT_TS / "dist" / "src"
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    packed = sorted(p.relative_to(installed / "dist" / "src")
                    for p in (installed / "dist" / "src").rglob("*") if p.is_file())
    stale = files != packed or any(
        (built / f).read_bytes() != (installed / "dist" / "src" / f).read_bytes() for f in files)
    if stale:
        pytest.fail(f"the client installed in {PROJECT} is older than client-ts/dist/src; "
                    f"{SETUP_HINT}")


@pytest.mark.asyncio(loop_scope="package")
async def test_typescript_readme_examples(stack, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"Node.js (`node`) is not on PATH; {SETUP_HINT}")
    if not TSC.is_file():
        pytest.fail(f"{TSC} is missing; {SETUP_HINT}")
    installed_client_is_current()
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("NODE_OPTIONS", None)

    # A copy of the project outside client-ts/: node and tsc then find only the packages
    # the tarball brought (client-ts/node_modules is no parent of it).
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, symlinks=True, copy_function=os.link)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), np.uint8)).save(
        project / "photo.jpg", quality=90)
    found = examples()
    for name, code in found.items():
        code = code.replace("http://localhost:8080", stack.http_url())
        code = code.replace("localhost:50051", stack.address)
        (project / f"{name}.mjs").write_text(code)
        (project / f"{name}.ts").write_text(code)
    (project / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {
            "target": "ES2022", "lib": ["ES2022"], "module": "NodeNext", "strict": True,
            "noEmit": True, "skipLibCheck": True, "types": ["node"],
            "typeRoots": [str(CLIENT_TS / "node_modules" / "@types")],
        },
        "files": [f"{name}.ts" for name in found],
    }))

    async def run_examples() -> None:
        for name in sorted(found):
            (project / "no-dog.png").unlink(missing_ok=True)
            code, out = await run(node, f"{name}.mjs", env=env, cwd=project)
            print(f"--- {name}\n{out}")  # shown by pytest -rP
            assert code == 0, f"{name} failed (exit {code}):\n{out}"
            CHECKS[name](out, project)

    # Type-checking (about 2 s of CPU) overlaps the examples' calls.
    typecheck = asyncio.ensure_future(
        run(node, str(TSC), "-p", "tsconfig.json", env=env, cwd=project))
    try:
        await run_examples()
    finally:
        code, out = await typecheck
    assert code == 0, f"the examples do not type-check as TypeScript (exit {code}):\n{out}"
