"""The object-clear server over real gRPC on loopback, with the tiny ObjectClear on CPU."""

from __future__ import annotations

import asyncio
import io
import math

import grpc
import numpy as np
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from mic2e import codecs
from mic2e.v1 import common_pb2, object_clear_pb2, object_clear_pb2_grpc
from mic2e_services.object_clear.server import Settings, create_server
from mic2e_services.runtime import worker as worker_mod
from PIL import Image

from tests.conftest import serving
from tests.grpc_helpers import detail, drain, rich_status

pytestmark = pytest.mark.asyncio(loop_scope="module")

W, H = 120, 90


def picture() -> bytes:
    rng = np.random.default_rng(0)
    return codecs.encode_image(Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8)), "png")


def mask_msg(box=(40, 30, 80, 60), size=(W, H), rle=False) -> common_pb2.Mask:
    m = np.zeros((size[1], size[0]), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    if rle:
        return common_pb2.Mask(width=size[0], height=size[1],
                               rle=common_pb2.Rle(counts=codecs.rle_encode(m)))
    return common_pb2.Mask(width=size[0], height=size[1], png=codecs.encode_mask_png(m))


def req(steps=3, seed=1, masks=None, image=None, **opts) -> object_clear_pb2.ClearRequest:
    return object_clear_pb2.ClearRequest(
        image=image or common_pb2.Image(data=picture()),
        masks=[mask_msg()] if masks is None else masks, label="box",
        options=object_clear_pb2.ClearOptions(**{"steps": steps, "seed": seed,
                                                 "short_side": 256, **opts}))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def oc(tiny_objectclear):
    settings = Settings(host="127.0.0.1", port=0, model=str(tiny_objectclear), device="cpu")
    async with serving(create_server(settings)) as (server, channel):
        yield server, object_clear_pb2_grpc.ObjectClearServiceStub(channel)


async def test_progress_per_step_then_one_result_at_input_size(oc):
    _, stub = oc
    events = await drain(stub.Clear(req(steps=4)))
    assert [e.WhichOneof("event") for e in events] == ["progress"] * 4 + ["result"]
    assert [(e.progress.stage, e.progress.step, e.progress.total_steps)
            for e in events[:-1]] == [("object_clear", i, 4) for i in range(1, 5)]
    result = events[-1].result
    assert Image.open(io.BytesIO(result.image.data)).size == (W, H)
    assert (result.mask.width, result.mask.height) == (W, H)
    assert (result.provenance.server, result.provenance.steps, result.provenance.seed) == (
        "object-clear", 4, 1)


async def test_defaults_are_the_models_own(oc):
    _, stub = oc
    r = object_clear_pb2.ClearRequest(image=common_pb2.Image(data=picture()), masks=[mask_msg()])
    events = await drain(stub.Clear(r))
    assert sum(e.WhichOneof("event") == "progress" for e in events) == 20
    assert events[-1].result.provenance.steps == 20


async def test_same_seed_identical_bytes_and_reference_reuse(oc):
    server, stub = oc
    a = (await drain(stub.Clear(req(seed=5))))[-1].result.image.data
    refs_before = server.worker and server_images(server).received_refs
    sha = codecs.sha256_hex(picture())
    b = (await drain(stub.Clear(req(seed=5, image=common_pb2.Image(sha256=sha)))))
    assert b[-1].result.image.data == a
    assert server_images(server).received_refs == refs_before + 1
    c = (await drain(stub.Clear(req(seed=6))))[-1].result.image.data
    assert c != a


def server_images(server):
    # The servicer's image store (counts bytes vs references received).
    return server.servicer.images


async def test_masks_are_merged_and_dilated(oc):
    _, stub = oc
    two = [mask_msg((10, 10, 20, 20)), mask_msg((60, 40, 70, 50), rle=True)]
    result = (await drain(stub.Clear(req(masks=two, mask_dilation=3))))[-1].result
    used = codecs.decode_mask_png(result.mask.png)
    assert used[15, 15] and used[45, 65]
    assert used.sum() > 2 * 100  # grown by the dilation
    assert not used[80, 110]


async def test_cancel_after_two_steps_stops_within_one_step(oc, monkeypatch):
    server, stub = oc
    progress_calls: dict[int, int] = {}
    original = worker_mod.Job.progress

    def counting(self, stage, step, total):
        progress_calls[id(self)] = progress_calls.get(id(self), 0) + 1
        original(self, stage, step, total)

    monkeypatch.setattr(worker_mod.Job, "progress", counting)
    call = stub.Clear(req(steps=60))
    async for event in call:
        if event.progress.step == 2:
            call.cancel()
            break
    for _ in range(100):  # wait (bounded) until the worker gave the device back
        if server.worker.stats().running == 0:
            break
        await asyncio.sleep(0.05)
    assert server.worker.stats().running == 0
    assert list(progress_calls.values()) and max(progress_calls.values()) <= 3
    # and the next request runs at once: nothing queued ahead of it
    events = await drain(stub.Clear(req(steps=1)))
    queue_s = {t.stage: t.duration.ToNanoseconds() for t in events[-1].result.provenance.timings}
    assert events[-1].WhichOneof("event") == "result" and "queue" in queue_s


BAD = [
    ("no mask", dict(masks=[]), "masks"),
    ("mask wrong size", dict(masks=[mask_msg(size=(W + 1, H))]), "masks[0]"),
    ("second mask wrong size", dict(masks=[mask_msg(), mask_msg(size=(W, H - 2), rle=True)]),
     "masks[1]"),
    ("mask selects nothing", dict(masks=[mask_msg(box=(0, 0, 0, 0))]), "masks"),
    ("mask not a png", dict(masks=[common_pb2.Mask(width=W, height=H, png=b"xx")]), "masks[0]"),
    ("rle wrong total", dict(masks=[common_pb2.Mask(width=W, height=H,
                                                    rle=common_pb2.Rle(counts=[1, 2]))]),
     "masks[0]"),
    ("steps 0", dict(steps=0), "options.steps"),
    ("steps 101", dict(steps=101), "options.steps"),
    ("guidance NaN", dict(guidance_scale=math.nan), "options.guidance_scale"),
    ("guidance 50", dict(guidance_scale=50.0), "options.guidance_scale"),
    ("short side 64", dict(short_side=64), "options.short_side"),
    ("dilation 999", dict(mask_dilation=999), "options.mask_dilation"),
    ("format 7", dict(output_format=7), "options.output_format"),
    ("corrupt image", dict(image=common_pb2.Image(data=b"\x89PNG garbage")), "image.data"),
    ("no image", dict(image=common_pb2.Image()), "image"),
    ("bad reference", dict(image=common_pb2.Image(sha256="xyz")), "image.sha256"),
]


@pytest.mark.parametrize(("name", "change", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_names_the_field_and_server_keeps_serving(oc, name, change, field):
    _, stub = oc
    change = dict(change)
    base = {"steps": 1}
    r = req(**{**base, **{k: v for k, v in change.items() if k in ("masks", "steps", "image")}},
            **{k: v for k, v in change.items() if k not in ("masks", "steps", "image")})
    if change.get("image") is not None and not change["image"].ByteSize():
        r.ClearField("image")
    call = stub.Clear(r)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    bad = detail(await rich_status(call), error_details_pb2.BadRequest)
    assert field in [v.field for v in bad.field_violations], bad
    ok = await drain(stub.Clear(req(steps=1)))
    assert ok[-1].WhichOneof("event") == "result"


async def test_unknown_reference_is_not_found(oc):
    _, stub = oc
    call = stub.Clear(req(image=common_pb2.Image(sha256="0" * 64)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(call)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    info_detail = detail(await rich_status(call), error_details_pb2.ErrorInfo)
    assert info_detail.reason == "IMAGE_NOT_FOUND"


async def test_the_published_layout_serves_the_references_picture_through_clear():
    """`mic2e-server object-clear --model <the parity kit's checkpoint>` (the published
    layout, unedited) serves, and `Clear` with the seeded case's seed and the defaults
    draws the reference's picture."""
    import json

    from mic2e_services import cli
    from mic2e_services.runtime.settings import load_settings

    from tests.fixtures import OBJECTCLEAR_KIT

    case = OBJECTCLEAR_KIT / "cases" / "s320_seed"
    params = json.loads((case / "params.json").read_text())
    args = cli.build_parser().parse_args([
        "object-clear", "--model", str(OBJECTCLEAR_KIT / "checkpoint"), "--device", "cpu",
        "--host", "127.0.0.1", "--port", "0"])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "print_settings")}
    settings = load_settings(Settings, **flags)
    assert settings.model == str(OBJECTCLEAR_KIT / "checkpoint")
    mask = np.array(Image.open(case / "mask.png")) > 127
    request = object_clear_pb2.ClearRequest(
        image=common_pb2.Image(data=(case / "input.png").read_bytes()),
        masks=[common_pb2.Mask(width=mask.shape[1], height=mask.shape[0],
                               png=codecs.encode_mask_png(mask))],
        # The reference's picture is the reference strategy (resize keeps the photo's own
        # pixels outside the repainted region); all else: the server's defaults.
        options=object_clear_pb2.ClearOptions(
            seed=params["seed"], strategy=object_clear_pb2.CLEAR_STRATEGY_REFERENCE))
    async with serving(create_server(settings)) as (_, channel):
        events = await drain(object_clear_pb2_grpc.ObjectClearServiceStub(channel).Clear(request))
    result = events[-1].result
    assert result.provenance.steps == params["steps"] == 20
    ours = np.asarray(Image.open(io.BytesIO(result.image.data)).convert("RGB"), np.float64)
    theirs = np.asarray(Image.open(case / "final.png"), np.float64)
    mse = float(np.mean((ours - theirs) ** 2))
    assert mse == 0 or 10 * math.log10(255.0**2 / mse) >= 45.0, mse
