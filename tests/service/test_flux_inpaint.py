"""FluxService.Inpaint over real gRPC on loopback, with the tiny FLUX checkpoints on CPU:
schnell (FluxInpaintPipeline on the resident components) and the fill layout
(FluxFillPipeline)."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from mic2e import codecs
from mic2e.v1 import common_pb2, flux_pb2, flux_pb2_grpc
from mic2e_services.flux.server import Settings, create_server
from PIL import Image

from tests.conftest import serving
from tests.grpc_helpers import detail, drain, rich_status
from tests.masks import within

pytestmark = pytest.mark.asyncio(loop_scope="module")

W, H = 96, 64


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def schnell(tiny_flux):
    # bfloat16, as served on a GPU: a pipeline made without the model's dtype would cast
    # the shared modules to float32 in place - twice the bytes, which the test would see.
    settings = Settings(host="127.0.0.1", port=0, model=str(tiny_flux), device="cpu",
                        dtype="bfloat16")
    async with serving(create_server(settings)) as (server, channel):
        yield server, flux_pb2_grpc.FluxServiceStub(channel)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fill(tiny_flux_fill):
    settings = Settings(host="127.0.0.1", port=0, model=str(tiny_flux_fill), device="cpu")
    async with serving(create_server(settings)) as (server, channel):
        yield server, flux_pb2_grpc.FluxServiceStub(channel)


def picture(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return codecs.encode_image(Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8)))


def rect_mask(x0: int, y0: int, x1: int, y1: int) -> common_pb2.Mask:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return common_pb2.Mask(width=W, height=H, png=codecs.encode_mask_png(m))


def inpaint(data: bytes, masks=None, prompt: str = "a cat", **options) -> flux_pb2.InpaintRequest:
    return flux_pb2.InpaintRequest(
        image=common_pb2.Image(data=data), prompt=prompt,
        masks=[rect_mask(30, 20, 60, 40)] if masks is None else masks,
        options=flux_pb2.InpaintOptions(**options))


async def test_outside_the_feathered_mask_every_pixel_is_the_inputs(schnell):
    _, stub = schnell
    data = picture(1)
    events = await drain(stub.Inpaint(inpaint(data, seed=3, mask_dilation=4, feather=6)))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["progress"] * 4 + ["result"]  # schnell's own 4 steps, strength 1
    assert {e.progress.stage for e in events[:-1]} == {"inpainting"}
    result = events[-1].result
    out = np.asarray(Image.open(io.BytesIO(result.image.data)).convert("RGB"))
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert out.shape == original.shape == (H, W, 3)
    used = codecs.decode_mask_png(result.mask.png)
    given = np.zeros((H, W), bool)
    given[20:40, 30:60] = True
    assert (used >= given).all() and used.sum() > given.sum(), "the mask was dilated"
    assert (used <= within(given, 4)).all(), "grown by 4 pixels, no more"
    # Beyond the feather every pixel is the input's, byte for byte; inside it changed.
    outside = ~within(used, 6)
    assert outside.sum() > 0.4 * W * H
    assert (out[outside] == original[outside]).all()
    assert (out[given] != original[given]).any(axis=-1).mean() > 0.9
    assert (result.provenance.steps, result.provenance.seed) == (4, 3)


async def test_the_resident_model_does_not_grow_when_inpaint_is_first_used(tiny_flux):
    settings = Settings(host="127.0.0.1", port=0, model=str(tiny_flux), device="cpu",
                        dtype="bfloat16")
    async with serving(create_server(settings)) as (server, channel):
        await _first_inpaint_keeps_the_resident_model(server,
                                                      flux_pb2_grpc.FluxServiceStub(channel))


async def _first_inpaint_keeps_the_resident_model(server, stub) -> None:
    model = server.worker.model
    assert model._inpaint_pipe is None, "a fresh server: nothing inpainted yet"
    before = model.resident_parameters()
    dtype = model._pipe.transformer.dtype
    await drain(stub.Inpaint(inpaint(picture(2), seed=1, steps=2)))
    assert model._inpaint_pipe is not None
    assert model.resident_parameters() == before
    assert model._pipe.transformer.dtype == dtype
    # Every module of the inpainting pipeline is the resident pipeline's own object.
    for name, component in model._inpaint_pipe.components.items():
        assert component is model._pipe.components[name], name
    # Generate still runs on the same weights afterwards.
    events = await drain(stub.Generate(flux_pb2.GenerateRequest(
        prompt="x", width=256, height=256, steps=1, seed=0)))
    assert events[-1].WhichOneof("event") == "result"


async def test_strength_runs_its_share_of_the_steps(schnell):
    _, stub = schnell
    events = await drain(stub.Inpaint(inpaint(picture(3), steps=4, strength=0.5, seed=0)))
    assert [e.progress.total_steps for e in events[:-1]] == [2, 2]
    assert events[-1].result.provenance.steps == 2


@pytest.mark.parametrize(("options", "masks", "field"), [
    ({"strength": 0.0}, None, "options.strength"),
    ({"strength": 1.5}, None, "options.strength"),
    ({"strength": 1e-20}, None, "options.strength"),  # in (0, 1] but runs no step
    ({"guidance_scale": 3.5}, None, "options.guidance_scale"),  # schnell takes none
    ({"feather": 500}, None, "options.feather"),
    ({}, [], "masks"),
    ({}, [common_pb2.Mask(width=W + 1, height=H, png=codecs.encode_mask_png(
        np.ones((H, W + 1), bool)))], "masks[0]"),
    ({}, [common_pb2.Mask(width=W, height=H, png=codecs.encode_mask_png(
        np.zeros((H, W), bool)))], "masks"),
])
async def test_bad_fields_are_named(schnell, options, masks, field):
    _, stub = schnell
    call = stub.Inpaint(inpaint(picture(4), masks=masks, **options))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = detail(await rich_status(call), error_details_pb2.BadRequest)
    assert field in [v.field for v in bad.field_violations], bad


async def test_a_fill_checkpoint_inpaints_with_its_own_defaults_and_refuses_generate(fill):
    server, stub = fill
    assert server.worker.model.fill
    events = await drain(stub.Inpaint(inpaint(picture(5), seed=2)))
    result = events[-1].result
    # FLUX.1-Fill-dev's own: 50 steps (guidance 30, which it takes).
    assert result.provenance.steps == 50 and len(events) == 51
    events = await drain(stub.Inpaint(inpaint(picture(5), seed=2, steps=2,
                                              guidance_scale=10.0)))
    assert events[-1].result.provenance.steps == 2
    call = stub.Generate(flux_pb2.GenerateRequest(prompt="x", width=256, height=256))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(call)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reason = detail(await rich_status(call), error_details_pb2.ErrorInfo)
    assert reason.reason == "FILL_MODEL_ONLY"

