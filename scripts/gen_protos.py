"""Regenerate the Python stubs of the mic2e.v1 API.

One command: `uv run python scripts/gen_protos.py`.

Writes `*_pb2.py`, `*_pb2_grpc.py` and their `.pyi` type stubs (mypy-protobuf), and the
Connect applications of the HTTP port (`*_connect.py`, protoc-gen-connect-python), into
client/src/mic2e/v1/. With `--check`, writes to a temporary folder instead and exits 1 when
the committed stubs differ, so CI catches stale stubs.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "client" / "src"
PACKAGE_DIR = Path("mic2e") / "v1"


def generate(out_root: Path) -> None:
    # protoc finds its plugins (mypy-protobuf, connect-python) on PATH; they sit beside
    # this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    protos = sorted(str(p.relative_to(PROTO_ROOT))
                    for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        f"--connect-python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(root: Path) -> set[str]:
    folder = root / PACKAGE_DIR
    return {p.name for p in [*folder.glob("*_pb2*.py*"), *folder.glob("*_connect.py")]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    if not args.check:
        for name in generated_files(OUT_ROOT):
            (OUT_ROOT / PACKAGE_DIR / name).unlink()
        generate(OUT_ROOT)
        print(f"generated {len(generated_files(OUT_ROOT))} files in {OUT_ROOT / PACKAGE_DIR}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        (tmp_root / PACKAGE_DIR).mkdir(parents=True)
        generate(tmp_root)
        fresh, committed = generated_files(tmp_root), generated_files(OUT_ROOT)
        stale = sorted(fresh ^ committed)
        stale += sorted(
            n for n in fresh & committed
            if not filecmp.cmp(tmp_root / PACKAGE_DIR / n, OUT_ROOT / PACKAGE_DIR / n,
                               shallow=False)
        )
        if stale:
            print("stale generated stubs (run `uv run python scripts/gen_protos.py`):", *stale,
                  sep="\n  ", file=sys.stderr)
            return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
