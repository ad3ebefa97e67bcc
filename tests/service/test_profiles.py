"""Profiles change the server's defaults; callers still override within the bounds."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from mic2e import codecs
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    object_clear_pb2,
    object_clear_pb2_grpc,
)
from mic2e_services.flux import server as flux_server
from mic2e_services.object_clear import server as oc_server
from PIL import Image

from tests.conftest import serving
from tests.grpc_helpers import detail, drain, rich_status


async def test_flux_fast_profile_defaults_and_overrides(tiny_flux):
    settings = flux_server.Settings(host="127.0.0.1", port=0, model=str(tiny_flux),
                                    profile="fast")
    async with serving(flux_server.create_server(settings)) as (_, channel):
        stub = flux_pb2_grpc.FluxServiceStub(channel)
        events = await drain(stub.Generate(flux_pb2.GenerateRequest(prompt="a bike", seed=1)))
        result = events[-1].result
        assert (result.image.width, result.image.height, result.provenance.steps) == (
            768, 768, 2)
        events = await drain(stub.Generate(flux_pb2.GenerateRequest(
            prompt="a bike", seed=1, steps=4, width=256, height=256)))
        assert (events[-1].result.provenance.steps, events[-1].result.image.width) == (4, 256)
        call = stub.Generate(flux_pb2.GenerateRequest(prompt="a bike", steps=99))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(call)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = detail(await rich_status(call), error_details_pb2.BadRequest)
        assert bad.field_violations[0].field == "steps"


async def test_object_clear_fast_profile_takes_ten_steps_unless_asked(tiny_objectclear):
    settings = oc_server.Settings(host="127.0.0.1", port=0, model=str(tiny_objectclear),
                                  profile="fast")
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    image = common_pb2.Image(data=codecs.encode_image(Image.new("RGB", (80, 60)), "png"))
    masks = [common_pb2.Mask(width=80, height=60, png=codecs.encode_mask_png(mask))]
    async with serving(oc_server.create_server(settings)) as (_, channel):
        stub = object_clear_pb2_grpc.ObjectClearServiceStub(channel)
        events = await drain(stub.Clear(object_clear_pb2.ClearRequest(image=image, masks=masks)))
        assert sum(e.WhichOneof("event") == "progress" for e in events) == 10
        assert events[-1].result.provenance.steps == 10
        events = await drain(stub.Clear(object_clear_pb2.ClearRequest(
            image=image, masks=masks, options=object_clear_pb2.ClearOptions(steps=3))))
        assert events[-1].result.provenance.steps == 3
