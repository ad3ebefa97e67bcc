"""ReplaceObjects through the orchestrator, beyond the clients' tests: an orchestrator that
sends inpainting to a server of its own (a FLUX fill checkpoint) and generation to the
schnell one."""

from __future__ import annotations

import numpy as np
import pytest
from mic2e import codecs
from mic2e.v1 import common_pb2, flux_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from mic2e_services.flux.server import Settings as FluxSettings
from mic2e_services.flux.server import create_server as create_flux
from mic2e_services.orchestrator.server import Settings, create_server
from PIL import Image

from tests.conftest import serving
from tests.grpc_helpers import drain

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def test_inpainting_can_go_to_a_fill_server_of_its_own(stack, tiny_flux_fill):
    fill_settings = FluxSettings(host="127.0.0.1", port=0, model=str(tiny_flux_fill),
                                 device="cpu")
    async with serving(create_flux(fill_settings)) as (fill, _):
        settings = Settings(
            host="127.0.0.1", port=0, segmentation_address=stack.model_address(
                stack.segmentation), object_clear_address=stack.model_address(
                stack.object_clear), flux_address=stack.model_address(stack.flux),
            inpaint_address=f"127.0.0.1:{fill.port}")
        async with serving(create_server(settings)) as (_, channel):
            stub = orchestrator_pb2_grpc.EditServiceStub(channel)
            rng = np.random.default_rng(3)
            data = codecs.encode_image(Image.fromarray(
                rng.integers(0, 255, (64, 96, 3), np.uint8)))
            events = await drain(stub.ReplaceObjects(orchestrator_pb2.ReplaceObjectsRequest(
                image=common_pb2.Image(data=data), replacement="a vase",
                box=common_pb2.Box(x0=10, y0=10, x1=50, y1=40),
                inpaint_options=flux_pb2.InpaintOptions(steps=2, seed=0))))
            (stage,) = events[-1].result.stages
            assert stage.model_id == "flux-fill", "the fill server inpainted"
            events = await drain(stub.Generate(flux_pb2.GenerateRequest(
                prompt="x", width=256, height=256, steps=1, seed=0)))
            assert events[-1].result.provenance.model_id == "flux", "schnell generated"
