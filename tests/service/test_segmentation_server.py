"""The segmentation server over real gRPC on loopback, with the tiny SAM3 on CPU."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from mic2e import codecs
from mic2e.v1 import common_pb2, segmentation_pb2, segmentation_pb2_grpc
from mic2e_services.segmentation.server import Settings, create_server
from PIL import Image

from tests.conftest import serving
from tests.grpc_helpers import detail, rich_status

pytestmark = pytest.mark.asyncio(loop_scope="module")

W, H = 160, 120


def picture(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return codecs.encode_image(Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8)), "png")


def image(seed: int = 0) -> common_pb2.Image:
    return common_pb2.Image(data=picture(seed))


def mask_of(inst: common_pb2.Instance) -> np.ndarray:
    if inst.mask.WhichOneof("encoding") == "rle":
        return codecs.rle_decode(list(inst.mask.rle.counts), inst.mask.width, inst.mask.height)
    return codecs.decode_mask_png(inst.mask.png)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seg(tiny_sam3):
    settings = Settings(host="127.0.0.1", port=0, model=str(tiny_sam3), device="cpu")
    async with serving(create_server(settings)) as (server, channel):
        yield server, segmentation_pb2_grpc.SegmentationServiceStub(channel)


def assert_box_encloses(inst: common_pb2.Instance) -> None:
    m = mask_of(inst)
    ys, xs = np.nonzero(m)
    assert m.any()
    b = inst.box
    assert b.x0 <= xs.min() and xs.max() < b.x1 and b.y0 <= ys.min() and ys.max() < b.y1


@pytest.mark.parametrize("fmt", [common_pb2.MASK_FORMAT_PNG, common_pb2.MASK_FORMAT_RLE])
async def test_text_returns_instances_at_image_size_with_enclosing_boxes(seg, fmt):
    _, stub = seg
    resp = await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
        image=image(), text="dog", score_threshold=0.0, mask_format=fmt))
    assert resp.instances, "random tiny weights score ~0.25; threshold 0 must find some"
    assert (resp.image_width, resp.image_height) == (W, H)
    scores = [i.score for i in resp.instances]
    assert scores == sorted(scores, reverse=True)
    for inst in resp.instances:
        assert (inst.mask.width, inst.mask.height) == (W, H)
        assert mask_of(inst).shape == (H, W)
        assert_box_encloses(inst)
    assert resp.image_sha256 == codecs.sha256_hex(picture())
    assert resp.provenance.server == "segmentation"


async def test_max_instances_and_threshold(seg):
    _, stub = seg
    resp = await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
        image=image(), text="dog", score_threshold=0.0, max_instances=2))
    assert len(resp.instances) == 2
    none = await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
        image=image(), text="dog", score_threshold=1.0))
    assert list(none.instances) == []


@pytest.mark.parametrize("prompt", [
    {"points": [common_pb2.Point(x=80, y=60)]},
    {"box": common_pb2.Box(x0=40, y0=30, x1=120, y1=90)},
    {"points": [common_pb2.Point(x=80, y=60),
                common_pb2.Point(x=10, y=10, label=common_pb2.POINT_LABEL_NEGATIVE)],
     "box": common_pb2.Box(x0=40, y0=30, x1=120, y1=90)},
])
async def test_prompt_returns_one_best_mask(seg, prompt):
    _, stub = seg
    resp = await stub.SegmentByPrompt(segmentation_pb2.SegmentByPromptRequest(
        image=image(), **prompt))
    assert (resp.best.mask.width, resp.best.mask.height) == (W, H)
    assert list(resp.alternatives) == []


async def test_alternatives_when_asked(seg):
    _, stub = seg
    resp = await stub.SegmentByPrompt(segmentation_pb2.SegmentByPromptRequest(
        image=image(), points=[common_pb2.Point(x=80, y=60)], return_alternatives=True))
    assert len(resp.alternatives) == 2
    assert all(resp.best.score >= a.score for a in resp.alternatives)


async def test_same_request_twice_identical_bytes(seg):
    _, stub = seg
    r = segmentation_pb2.SegmentByTextRequest(image=image(), text="cat", score_threshold=0.0)
    a, b = await stub.SegmentByText(r), await stub.SegmentByText(r)
    a.ClearField("provenance")
    b.ClearField("provenance")
    assert a.SerializeToString() == b.SerializeToString()
    p = segmentation_pb2.SegmentByPromptRequest(image=image(),
                                                points=[common_pb2.Point(x=5, y=5)])
    a, b = await stub.SegmentByPrompt(p), await stub.SegmentByPrompt(p)
    assert a.best.SerializeToString() == b.best.SerializeToString()


async def test_second_prompt_on_same_image_skips_vision_encoder(seg):
    server, stub = seg
    model = server.worker.model
    fresh = image(seed=42)
    before = model.vision_encoder_runs
    first = await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
        image=fresh, text="cat", score_threshold=0.0))
    assert model.vision_encoder_runs == before + 1
    ref = common_pb2.Image(sha256=first.image_sha256)
    await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(image=ref, text="bird"))
    await stub.SegmentByPrompt(segmentation_pb2.SegmentByPromptRequest(
        image=ref, points=[common_pb2.Point(x=3, y=4)]))
    await stub.SegmentByPrompt(segmentation_pb2.SegmentByPromptRequest(
        image=fresh, box=common_pb2.Box(x0=1, y0=1, x1=50, y1=50)))
    assert model.vision_encoder_runs == before + 1
    assert server.servicer.images.received_refs >= 2


def text_req(**kw):
    kw.setdefault("image", image())
    kw.setdefault("text", "dog")
    return segmentation_pb2.SegmentByTextRequest(**kw)


def prompt_req(**kw):
    kw.setdefault("image", image())
    return segmentation_pb2.SegmentByPromptRequest(**kw)


BAD = [
    ("empty text", "SegmentByText", text_req(text=""), "text"),
    ("blank text", "SegmentByText", text_req(text="  \n "), "text"),
    ("long text", "SegmentByText", text_req(text="dog " * 60), "text"),
    ("threshold NaN", "SegmentByText", text_req(score_threshold=math.nan), "score_threshold"),
    ("threshold 2", "SegmentByText", text_req(score_threshold=2.0), "score_threshold"),
    ("mask format 9", "SegmentByText", text_req(mask_format=9), "mask_format"),
    ("no prompt", "SegmentByPrompt", prompt_req(), "points"),
    ("point outside", "SegmentByPrompt",
     prompt_req(points=[common_pb2.Point(x=10, y=10), common_pb2.Point(x=W + 5, y=10)]),
     "points[1]"),
    ("point NaN", "SegmentByPrompt", prompt_req(points=[common_pb2.Point(x=math.nan, y=1)]),
     "points[0]"),
    ("point label 7", "SegmentByPrompt", prompt_req(points=[common_pb2.Point(x=1, y=1, label=7)]),
     "points[0].label"),
    ("box outside", "SegmentByPrompt",
     prompt_req(box=common_pb2.Box(x0=10, y0=10, x1=W + 50, y1=50)), "box"),
    ("box zero area", "SegmentByPrompt",
     prompt_req(box=common_pb2.Box(x0=10, y0=10, x1=10, y1=50)), "box"),
    ("prompt mask format 5", "SegmentByPrompt",
     prompt_req(points=[common_pb2.Point(x=1, y=1)], mask_format=5), "mask_format"),
    ("no image", "SegmentByText", segmentation_pb2.SegmentByTextRequest(text="dog"), "image"),
    ("corrupt image", "SegmentByText", text_req(image=common_pb2.Image(data=b"GIF89a....")),
     "image.data"),
]


@pytest.mark.parametrize(("name", "rpc", "request_msg", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_names_the_field_and_server_keeps_serving(seg, name, rpc, request_msg,
                                                                  field):
    _, stub = seg
    call = getattr(stub, rpc)(request_msg)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    bad = detail(await rich_status(call), error_details_pb2.BadRequest)
    assert field in [v.field for v in bad.field_violations], bad
    ok = await stub.SegmentByPrompt(prompt_req(points=[common_pb2.Point(x=1, y=1)]))
    assert ok.best.mask.width == W


async def test_a_phone_jpeg_is_decoded_at_the_models_scale_and_answered_at_its_own(seg):
    """SAM3 sees 1008x1008: a 4032x3024 JPEG is decoded at half scale (2016x1512, a
    quarter of the pixels kept in the image cache), and every mask, box and coordinate is
    still at the photo's own size."""
    from tests.photos import detailed_photo, jpeg

    server, stub = seg
    data = jpeg(detailed_photo(4032, 3024, seed=8))
    resp = await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
        image=common_pb2.Image(data=data), text="dog", score_threshold=0.0,
        mask_format=common_pb2.MASK_FORMAT_RLE))
    assert (resp.image_width, resp.image_height) == (4032, 3024)
    assert resp.instances and all(mask_of(i).shape == (3024, 4032) for i in resp.instances)
    held = server.servicer.images._cache.get(resp.image_sha256)
    assert held is not None and held.image.size == (2016, 1512)
    assert (held.width, held.height) == (4032, 3024)
    ref = common_pb2.Image(sha256=resp.image_sha256)
    inside = await stub.SegmentByPrompt(segmentation_pb2.SegmentByPromptRequest(
        image=ref, points=[common_pb2.Point(x=4031.5, y=3000)]))
    assert mask_of(inside.best).shape == (3024, 4032)
    with pytest.raises(grpc.aio.AioRpcError) as info:  # the photo's coordinates, not 2016's
        await stub.SegmentByPrompt(segmentation_pb2.SegmentByPromptRequest(
            image=ref, points=[common_pb2.Point(x=4032, y=10)]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
