"""The whole tiny stack in-process: three model servers and the orchestrator."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import grpc
import pytest_asyncio
from mic2e.channel import channel_options
from mic2e_services.flux import server as flux_server
from mic2e_services.object_clear import server as oc_server
from mic2e_services.orchestrator import server as orch_server
from mic2e_services.runtime.server import Server
from mic2e_services.segmentation import server as seg_server


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


@contextlib.asynccontextmanager
async def started(*servers: Server):
    try:
        # One at a time: transformers/diffusers load weights under process-global "meta
        # device" switches, so concurrent loads in one process trip over each other. (In
        # production every model server is its own process.)
        for s in servers:
            await s.start()
            await s.wait_ready(180)
        yield servers
    finally:
        for s in servers:
            await s.stop(0)


def orchestrator_for(seg: str, oc: str, flux: str) -> Server:
    settings = orch_server.Settings(host="127.0.0.1", port=0, segmentation_address=seg,
                                    object_clear_address=oc, flux_address=flux)
    return orch_server.create_server(settings)[0]


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def stack(tiny_sam3, tiny_objectclear, tiny_flux):
    common = {"host": "127.0.0.1", "port": 0, "device": "cpu"}
    seg, _ = seg_server.create_server(seg_server.Settings(model=str(tiny_sam3), **common))
    oc, _ = oc_server.create_server(oc_server.Settings(model=str(tiny_objectclear), **common))
    fx, _ = flux_server.create_server(flux_server.Settings(model=str(tiny_flux), **common))
    async with started(seg, oc, fx):
        orch = orchestrator_for(*(f"127.0.0.1:{s.port}" for s in (seg, oc, fx)))
        async with started(orch):
            address = f"127.0.0.1:{orch.port}"
            channel = grpc.aio.insecure_channel(address, options=channel_options())
            yield Stack(seg, oc, fx, orch, address, channel)
            await channel.close()
