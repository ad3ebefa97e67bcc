"""The client, its CLI and the orchestrator work where torch is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import sys, importlib.abc

    class NoTorch(importlib.abc.MetaPathFinder):
        # Behave as if torch and the model libraries were not installed at all.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "diffusers", "transformers",
                                      "accelerate", "safetensors"}:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
            return None

    sys.meta_path.insert(0, NoTorch())
""")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_client_and_cli_import_without_torch():
    proc = run("""
        import mic2e, mic2e.cli, mic2e.client, mic2e.codecs, mic2e.v1.orchestrator_pb2_grpc
        from mic2e import Client, AsyncClient
        try:
            mic2e.cli.main(["--help"])
        except SystemExit as e:
            assert e.code == 0, e.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers"))
        assert not heavy, heavy
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "usage: mic2e" in proc.stdout and proc.stdout.rstrip().endswith("OK")


def test_orchestrator_builds_without_torch():
    proc = run("""
        import asyncio
        from mic2e_services.orchestrator.server import Settings, create_server
        from mic2e_services import cli

        async def main():
            server, port = create_server(Settings(host="127.0.0.1", port=0))
            await server.start()
            await server.wait_ready(10)
            await server.stop(0)
            return port

        assert asyncio.run(main()) > 0
        assert "torch" not in sys.modules
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


def test_blocker_really_blocks_torch():
    # The tests above mean something only if torch cannot sneak in.
    proc = run("import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr
