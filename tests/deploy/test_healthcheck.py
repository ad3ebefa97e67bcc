"""deploy/docker/healthcheck.py, the containers' HEALTHCHECK: which port it asks, and that
it passes only while the server answers grpc.health.v1 SERVING."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
from pathlib import Path

import pytest
from mic2e_services.runtime.server import build_server
from mic2e_services.runtime.settings import ServerSettings
from mic2e_services.runtime.worker import ModelWorker

from tests.fakes import FakeModel

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"


def _module():
    spec = importlib.util.spec_from_file_location("mic2e_healthcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("env", "argv", "port"), [
    ({}, ["mic2e-server", "segmentation"], 50052),
    ({}, ["/sbin/docker-init", "--", "mic2e-server", "flux"], 50054),
    ({}, ["mic2e-server", "object-clear", "--port", "6000"], 6000),
    ({}, ["mic2e-server", "orchestrator", "--port=7000"], 7000),
    ({"MIC2E_PORT": "6001"}, ["mic2e-server", "flux"], 6001),
    ({"MIC2E_PORT": "6001"}, ["mic2e-server", "flux", "--port", "6002"], 6002),
    ({"MIC2E_HEALTH_PORT": "6003", "MIC2E_PORT": "6001"}, ["mic2e-server", "flux"], 6003),
    ({}, ["mic2e-server", "make-tiny", "/models/tiny"], None),
])
def test_port_from_env_and_command_line(env, argv, port):
    assert _module().find_port(env, argv) == port


async def _healthcheck(port: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), env={"MIC2E_HEALTH_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 30)


async def test_passes_only_while_serving():
    gate = threading.Event()
    worker = ModelWorker(FakeModel(load_gate=gate), max_queue=4)
    settings = ServerSettings(host="127.0.0.1", port=0, grace_period_s=1, metrics_port=-1)
    server, port = build_server(settings, register=lambda s: None,
                                service_names=["mic2e.v1.FluxService"], worker=worker)
    await server.start()
    try:
        assert await _healthcheck(port) == 1, "NOT_SERVING while the model loads"
        gate.set()
        await server.wait_ready(30)
        assert await _healthcheck(port) == 0
    finally:
        gate.set()
        await server.stop(0)
    assert await _healthcheck(port) == 1, "stopped"
