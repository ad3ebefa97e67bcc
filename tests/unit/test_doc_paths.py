"""Every repository path the docs and the code's comments name exists.

A newcomer follows the READMEs' paths and the comments' "see ..." to files; a moved or
never-committed file (a design note kept outside the repository, a renamed test) leaves
them at a dead end. Paths are taken from backticks and links in the READMEs and docs, and
from comments and docstrings in the code: anything shaped like a path under one of the
repository's top-level folders, or a file name with an extension the repository uses.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "deploy/README.md", "client-ts/README.md", "benchmarks/README.md",
        "docs/models.md", "docs/performance.md"]
CODE_GLOBS = ["services/src/**/*.py", "client/src/mic2e/*.py", "benchmarks/*.py",
              "deploy/*.py", "deploy/*.sh", "scripts/*", "client-ts/src/*.ts",
              "client-ts/scripts/*.mjs", "deploy/docker/Dockerfile",
              "deploy/service-times.h200.json"]
EXTENSIONS = ("md", "py", "json", "yaml", "yml", "sh", "ts", "mjs", "toml", "proto", "txt")


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


FILES = tracked()
TOP = {p.split("/", 1)[0] for p in FILES if "/" in p} - {".ci"} | {".ci"}
BASENAMES = {p.rsplit("/", 1)[-1] for p in FILES}
# A path under a top-level folder, or a file name with one of our extensions.
_TOPS = "|".join(re.escape(t) for t in sorted(TOP, key=len, reverse=True))
_EXTS = "|".join(EXTENSIONS)
PATH = re.compile(rf"(?<![\w/.:@*$<>{{-])((?:{_TOPS})/[\w.*/-]*[\w*/]|[\w.-]+\.(?:{_EXTS}))"
                  r"(?![\w/-])")


#: Files named on purpose that are not in this repository: a checkpoint's files, the
#: reference implementation's script, and what a program writes when it runs.
ELSEWHERE = {
    "tokenizer.json",  # a checkpoint's tokenizer file (written by the tiny builders)
    "inference_objectclear.py",  # the reference ObjectClear's script, in its own repo
    "times.json",  # capacity.py's example argument: your measured service times
    "benchmarks/results/gpu-run",  # where gpu-run.sh writes when no $OUT is given
    # the TypeScript READMEs' examples, saved by the user in their own project
    "remove.mjs", "remove.ts", "first.mjs", "first.ts",
}


def exists(path: str, base: Path) -> bool:
    path = path.rstrip("/").removeprefix("./")
    if path in ELSEWHERE or re.search(r"\b(NAME|FILE|DIR)\b", path):  # or a placeholder
        return True
    if "*" in path:
        return any(fnmatch.fnmatch(f, path) or fnmatch.fnmatch(f, path + "/*")
                   for f in FILES)
    if "/" not in path:  # a bare file name: somewhere in the repository
        return path in BASENAMES or (ROOT / path).exists()
    return ((ROOT / path).exists() or (base / path).exists()
            or any(f.startswith(path + "/") for f in FILES))


def named_in_doc(text: str) -> set[str]:
    """Paths in backticks and link targets (not in URLs)."""
    found = set()
    for chunk in re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)#\s]+)", text):
        if "://" in chunk:
            continue
        found |= {m.group(1) for m in PATH.finditer(chunk)}
    return found


def named_in_code(text: str) -> set[str]:
    """Paths in comments and docstrings (not in URLs)."""
    comments = re.findall(r"#[^\n]*|//[^\n]*|\"\"\"[\s\S]*?\"\"\"", text)
    found = set()
    for chunk in comments:
        chunk = re.sub(r"\S*://\S*", "", chunk)
        found |= {m.group(1) for m in PATH.finditer(chunk)}
    return found


def cases() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for path in sorted(named_in_doc((ROOT / doc).read_text())):
            out.append((doc, path))
    for pattern in CODE_GLOBS:
        for file in sorted(ROOT.glob(pattern)):
            if file.is_file() and "/gen/" not in str(file):
                for path in sorted(named_in_code(file.read_text(errors="replace"))):
                    out.append((str(file.relative_to(ROOT)), path))
    return out


CASES = cases()


def test_the_check_sees_paths():
    """Enough paths found that a silent regex failure cannot pass for a clean tree."""
    assert len(CASES) > 100
    assert ("README.md", "scripts/setup.sh") in CASES or any(
        doc == "README.md" and path.startswith("deploy/") for doc, path in CASES)
    assert not exists("docs/no-such-note.md", ROOT) and not exists("MODELS.md", ROOT)
    assert "MODELS.md" in named_in_code("# the sizes (MODELS.md)\n")


@pytest.mark.parametrize(("where", "path"), CASES, ids=[f"{w}:{p}" for w, p in CASES])
def test_named_path_exists(where: str, path: str):
    assert exists(path, (ROOT / where).parent), f"{where} names {path}, which does not exist"
