"""The flux server over real gRPC on loopback, with the tiny FLUX checkpoint on CPU."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from mic2e.v1 import flux_pb2, flux_pb2_grpc
from mic2e_services.flux.server import Settings, create_server
from PIL import Image

from tests.conftest import serving
from tests.grpc_helpers import detail, drain, rich_status

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def flux(tiny_flux):
    settings = Settings(host="127.0.0.1", port=0, model=str(tiny_flux), device="cpu")
    async with serving(create_server(settings)) as (server, channel):
        yield server, flux_pb2_grpc.FluxServiceStub(channel)


def req(**kw) -> flux_pb2.GenerateRequest:
    kw.setdefault("prompt", "a red bicycle")
    kw.setdefault("width", 256)
    kw.setdefault("height", 256)
    return flux_pb2.GenerateRequest(**kw)


async def test_events_in_order_and_result_size(flux):
    _, stub = flux
    events = await drain(stub.Generate(req(width=320, height=256, steps=3, seed=1)))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["progress"] * 3 + ["result"]
    assert [(e.progress.stage, e.progress.step, e.progress.total_steps) for e in events[:3]] == [
        ("generation", 1, 3), ("generation", 2, 3), ("generation", 3, 3)]
    result = events[-1].result
    img = Image.open(io.BytesIO(result.image.data))
    assert img.size == (320, 256) == (result.image.width, result.image.height)
    prov = result.provenance
    assert (prov.server, prov.steps, prov.seed, prov.dtype, prov.device) == (
        "flux", 3, 1, "float32", "cpu")
    assert {t.stage for t in prov.timings} == {"queue", "generation"}


async def test_default_steps_are_the_models_four(flux):
    _, stub = flux
    events = await drain(stub.Generate(req(seed=3)))
    assert events[-1].result.provenance.steps == 4
    assert sum(e.WhichOneof("event") == "progress" for e in events) == 4


async def test_same_seed_same_bytes_other_seed_differs(flux):
    _, stub = flux
    a = (await drain(stub.Generate(req(seed=7, steps=2))))[-1].result.image.data
    b = (await drain(stub.Generate(req(seed=7, steps=2))))[-1].result.image.data
    c = (await drain(stub.Generate(req(seed=8, steps=2))))[-1].result.image.data
    assert a == b
    assert a != c


async def test_unset_seed_is_drawn_and_reported(flux):
    _, stub = flux
    r1 = (await drain(stub.Generate(req(steps=1))))[-1].result
    again = (await drain(stub.Generate(req(steps=1, seed=r1.provenance.seed))))[-1].result
    assert again.image.data == r1.image.data


async def test_truncation_reported(flux):
    _, stub = flux
    long_prompt = " ".join(["red"] * 300)
    result = (await drain(stub.Generate(req(prompt=long_prompt, steps=1, seed=1))))[-1].result
    assert result.prompt_truncated
    assert 0 < len(result.truncated_prompt) < len(long_prompt)
    assert long_prompt.startswith(result.truncated_prompt.strip())


async def test_cancel_stops_within_one_step_and_frees_the_worker(flux):
    server, stub = flux
    call = stub.Generate(req(steps=50, seed=1))
    async for event in call:
        if event.progress.step == 1:
            call.cancel()
            break
    worker = server.worker
    # The next request runs at once: the cancelled one gave the device back.
    events = await asyncio.wait_for(drain(stub.Generate(req(steps=1, seed=2))), 30)
    assert events[-1].WhichOneof("event") == "result"
    assert worker.stats().queued == 0


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"width": 300}, "width"),
    ({"height": 100}, "height"),
    ({"width": 4096}, "width"),
    ({"steps": 0}, "steps"),
    ({"steps": 51}, "steps"),
    ({"output_format": 9}, "output_format"),
])
async def test_bad_input_names_the_field_and_server_keeps_serving(flux, kwargs, field):
    _, stub = flux
    call = stub.Generate(req(**kwargs))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = detail(await rich_status(call), error_details_pb2.BadRequest)
    assert field in [v.field for v in bad.field_violations]
    ok = await drain(stub.Generate(req(steps=1, seed=1)))
    assert ok[-1].WhichOneof("event") == "result"
