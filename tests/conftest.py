"""Shared fixtures: offline hub, pinned threads, tiny checkpoints, in-process servers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# No hub is reachable: any attempt to download must fail at once, not hang.
os.environ["HF_HUB_OFFLINE"] = "1"
# Many servers share this process: each takes any free metrics port, never 9090.
os.environ["MIC2E_METRICS_PORT"] = "0"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:
        return
    # Bit-identical outputs need a fixed thread count (SDXL sums change with it), and this
    # 2-core machine runs servers and clients side by side.
    torch.set_num_threads(1)
    # As in every model server: the libraries' progress bars and chatter stay out.
    from mic2e_services.quiet import quiet_model_libraries

    quiet_model_libraries()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


def _tiny(root: Path, folder: str, writer_module: str) -> Path:
    import importlib

    path = root / folder
    if not path.exists():
        importlib.import_module(writer_module).write_tiny(path, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_sam3(tiny_root: Path) -> Path:
    return _tiny(tiny_root, "sam3", "mic2e_dev.sam3")


@pytest.fixture(scope="session")
def tiny_objectclear(tiny_root: Path) -> Path:
    return _tiny(tiny_root, "objectclear", "mic2e_dev.objectclear")


@pytest.fixture(scope="session")
def tiny_flux(tiny_root: Path) -> Path:
    return _tiny(tiny_root, "flux", "mic2e_dev.flux")


@pytest.fixture(scope="session")
def tiny_flux_fill(tiny_root: Path) -> Path:
    path = tiny_root / "flux-fill"
    if not path.exists():
        from mic2e_dev.flux import write_tiny_fill

        write_tiny_fill(path, seed=0)
    return path


@contextlib.asynccontextmanager
async def serving(server_and_port) -> AsyncIterator:
    """Start an in-process server, wait until SERVING, yield (server, channel), stop."""
    import grpc
    from mic2e.channel import channel_options

    server, port = server_and_port
    await server.start()
    await server.wait_ready(120)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.stop(0)
