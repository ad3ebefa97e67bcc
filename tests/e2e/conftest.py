"""The whole tiny stack in-process: three model servers and the orchestrator, started by
the one stack launcher (`mic2e_services.stack.in_process`)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest_asyncio
from mic2e.channel import channel_options
from mic2e_services import stack as stack_launcher
from mic2e_services.runtime.server import Server


@dataclass
class Stack:
    segmentation: Server
    object_clear: Server
    flux: Server
    orchestrator: Server
    address: str
    channel: grpc.aio.Channel

    def model_address(self, server: Server) -> str:
        return f"127.0.0.1:{server.port}"

    def http_url(self, server: Server | None = None) -> str:
        """Base URL of a server's HTTP port (default: the orchestrator's)."""
        assert (server or self.orchestrator).http is not None
        return f"http://127.0.0.1:{(server or self.orchestrator).http.port}"


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def stack(tiny_sam3, tiny_objectclear, tiny_flux):
    models = {"segmentation": str(tiny_sam3), "object-clear": str(tiny_objectclear),
              "flux": str(tiny_flux)}
    # Every server also on an HTTP port (Connect, gRPC-Web), as `--http-port 0`.
    settings = {name: {"device": "cpu", "http_port": 0} for name in models}
    settings["orchestrator"] = {"http_port": 0}
    async with stack_launcher.in_process(models, settings=settings) as servers:
        address = f"127.0.0.1:{servers['orchestrator'].port}"
        channel = grpc.aio.insecure_channel(address, options=channel_options())
        yield Stack(servers["segmentation"], servers["object-clear"], servers["flux"],
                    servers["orchestrator"], address, channel)
        await channel.close()
