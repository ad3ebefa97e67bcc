"""The TypeScript client (client-ts/) against the live tiny stack.

Runs client-ts's node:test suite (test/*.test.ts compiled by tsc: RemoveObjects event
order and result size, a bad request's INVALID_ARGUMENT, the pass-through calls, a
4032x3024 photo's removal come back as a patch and rebuilt whole; the same over the
Connect protocol and gRPC-Web) as a subprocess with MIC2E_ADDRESS pointing at the
in-process orchestrator's gRPC port and MIC2E_HTTP_URL at its HTTP port. The subprocess is
awaited with asyncio so this event loop keeps serving the stack while node calls it.
Node.js and client-ts/node_modules come from `scripts/setup-ts.sh` (the test command runs
it); when they are missing this test fails rather than skips.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.asyncio(loop_scope="package")

CLIENT_TS = Path(__file__).resolve().parents[2] / "client-ts"
TSC = CLIENT_TS / "node_modules" / "typescript" / "bin" / "tsc"
MIN_NODE_TESTS = 34
SETUP_HINT = "run `bash scripts/setup-ts.sh` (npm ci + build in client-ts)"
TIMEOUT_S = 180


async def run(*args: str, env: dict[str, str] | None = None,
              cwd: Path = CLIENT_TS) -> tuple[int, str]:
    """Runs a command (in client-ts/ unless told) without blocking the loop; (exit code,
    stdout+stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"{' '.join(args)} ran past {TIMEOUT_S}s:\n{out.decode(errors='replace')}")
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_typescript_client_remove_objects(stack):
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"Node.js (`node`) is not on PATH; {SETUP_HINT}")
    if not TSC.is_file():
        pytest.fail(f"{CLIENT_TS / 'node_modules'} is missing or incomplete; {SETUP_HINT}")

    # Compile here too (about 2 s), so the test never runs JavaScript older than its source.
    code, out = await run(node, str(TSC), "-p", "tsconfig.json")
    assert code == 0, f"tsc failed in client-ts (exit {code}):\n{out}"

    # The compiled twins of test/*.test.ts (not whatever else lingers in dist/).
    tests = [f"dist/test/{p.stem}.js" for p in sorted((CLIENT_TS / "test").glob("*.test.ts"))]
    assert any(t.endswith("/remove_objects.test.js") for t in tests), tests
    env = {**os.environ, "MIC2E_ADDRESS": stack.address, "MIC2E_HTTP_URL": stack.http_url(),
           "NO_COLOR": "1"}
    env.pop("NODE_OPTIONS", None)
    code, out = await run(node, "--test", "--test-reporter=spec", *tests, env=env)
    print(out)  # shown by pytest -rP
    assert code == 0, f"the TypeScript client's tests failed (exit {code}):\n{out}"
    # Guard against a suite that silently ran nothing.
    ran = re.search(r"\btests (\d+)", out)
    assert ran and int(ran.group(1)) >= MIN_NODE_TESTS, (
        f"expected at least {MIN_NODE_TESTS} node tests to run:\n{out}")
    assert re.search(r"\bfail 0\b", out), out
