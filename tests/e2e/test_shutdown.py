"""SIGTERM on a real server process: stop accepting, finish in-flight work, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import grpc
import pytest
from mic2e.v1 import flux_pb2, flux_pb2_grpc
from mic2e_services.stack import wait_serving

pytestmark = pytest.mark.asyncio(loop_scope="package")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_sigterm_finishes_in_flight_call_and_exits_zero(tiny_flux):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mic2e_services.cli", "flux", "--model", str(tiny_flux),
        "--host", "127.0.0.1", "--port", str(port), "--grace-period-s", "30",
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_serving, f"127.0.0.1:{port}", 120)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = flux_pb2_grpc.FluxServiceStub(channel)
            call = stub.Generate(flux_pb2.GenerateRequest(
                prompt="a red bicycle", width=256, height=256, steps=30, seed=1))
            events = []
            async for event in call:
                events.append(event.WhichOneof("event"))
                if len(events) == 2:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.3)
                    # a new call while stopping is refused, the in-flight one goes on
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
                            await flux_pb2_grpc.FluxServiceStub(fresh).Generate(
                                flux_pb2.GenerateRequest(prompt="x", steps=1), timeout=5
                            ).read()
                    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                                 grpc.StatusCode.DEADLINE_EXCEEDED)
            assert events[-1] == "result" and events.count("progress") == 30
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
