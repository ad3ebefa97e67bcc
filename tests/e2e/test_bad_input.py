"""The bad-input suite: >= 40 cases against the live tiny stack, table-driven, each over
gRPC and over the HTTP port (the Connect protocol).

Each case asserts its status code (and, for INVALID_ARGUMENT, the field named in the
BadRequest details), that no case ever answers INTERNAL, and that the server it hit is
still SERVING and answers a valid request right after. Odd-but-valid inputs (CMYK,
16-bit, palette, EXIF-rotated, 1x1, all-on masks, odd unicode) must succeed.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mic2e import codecs
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    object_clear_pb2,
    object_clear_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from PIL import Image

from tests.grpc_helpers import detail, drain, rich_status
from tests.http_channel import HttpChannel

pytestmark = pytest.mark.asyncio(loop_scope="package")

OK = grpc.StatusCode.OK
BAD = grpc.StatusCode.INVALID_ARGUMENT
W, H = 96, 64


# -- images --------------------------------------------------------------------------------
def encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb(w: int = W, h: int = H) -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8))


def bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


def bad_crc(data: bytes, kind: bytes = b"IDAT") -> bytes:
    """`data` (a PNG) with one bit of chunk `kind` flipped and its CRC left as it was."""
    out = bytearray(data)
    at = data.index(kind) + 4 + 1
    out[at] ^= 0x01
    return bytes(out)


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees: W x H becomes H x W
    return encoded(rgb(), "JPEG", exif=exif)


def palette_with_transparency() -> bytes:
    img = rgb().convert("P")
    return encoded(img, transparency=0)


def sixteen_bit() -> bytes:
    return encoded(Image.fromarray((np.arange(W * H, dtype=np.uint16) * 7).reshape(H, W)))


PNG = encoded(rgb())
JPEG = encoded(rgb(), "JPEG")


def img(data: bytes = PNG) -> common_pb2.Image:
    return common_pb2.Image(data=data)


def mask(w: int = W, h: int = H, box=(20, 10, 60, 40), rle: bool = False) -> common_pb2.Mask:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    if rle:
        return common_pb2.Mask(width=w, height=h, rle=common_pb2.Rle(counts=codecs.rle_encode(m)))
    return common_pb2.Mask(width=w, height=h, png=codecs.encode_mask_png(m))


# -- calls ---------------------------------------------------------------------------------
FAST = {"steps": 1, "short_side": 256, "seed": 0}


def seg_text(image=None, text="dog", **kw):
    return ("segmentation", lambda ch: segmentation_pb2_grpc.SegmentationServiceStub(ch)
            .SegmentByText(segmentation_pb2.SegmentByTextRequest(
                image=image or img(), text=text, **kw)))


def seg_prompt(image=None, **kw):
    return ("segmentation", lambda ch: segmentation_pb2_grpc.SegmentationServiceStub(ch)
            .SegmentByPrompt(segmentation_pb2.SegmentByPromptRequest(
                image=image or img(), **kw)))


def clear(image=None, masks=None, label="", timeout=None, **options):
    opts = object_clear_pb2.ClearOptions(**{**FAST, **options})
    return ("object_clear", lambda ch: drain(object_clear_pb2_grpc.ObjectClearServiceStub(ch)
            .Clear(object_clear_pb2.ClearRequest(
                image=image or img(), masks=[mask()] if masks is None else masks, label=label,
                options=opts), timeout=timeout)))


def generate(prompt="a red bicycle", timeout=None, **kw):
    kw = {"width": 256, "height": 256, "steps": 1, "seed": 0, **kw}
    return ("flux", lambda ch: drain(flux_pb2_grpc.FluxServiceStub(ch).Generate(
        flux_pb2.GenerateRequest(prompt=prompt, **kw), timeout=timeout)))


def raw(server: str, method: str, data: bytes = b"\xff\xff\xff\xff"):
    """Bytes that are no protobuf message at all, sent to `method` as its request."""
    if method.endswith(("/Clear", "/Generate", "/RemoveObjects", "/Inpaint")):
        return (server, lambda ch: drain(ch.unary_stream(method)(data)))
    return (server, lambda ch: ch.unary_unary(method)(data))


def remove(image=None, clear_options=None, **kw):
    opts = object_clear_pb2.ClearOptions(**{**FAST, **(clear_options or {})})
    req = orchestrator_pb2.RemoveObjectsRequest(image=image or img(), clear_options=opts, **kw)
    if image is False:
        req.ClearField("image")
    return ("orchestrator", lambda ch: drain(orchestrator_pb2_grpc.EditServiceStub(ch)
            .RemoveObjects(req)))


def replace(image=None, replacement="a cat", options=None, timeout=None, **kw):
    opts = flux_pb2.InpaintOptions(**{"steps": 1, "seed": 0, **(options or {})})
    req = orchestrator_pb2.ReplaceObjectsRequest(image=image or img(), replacement=replacement,
                                                 inpaint_options=opts, **kw)
    return ("orchestrator", lambda ch: drain(orchestrator_pb2_grpc.EditServiceStub(ch)
            .ReplaceObjects(req, timeout=timeout)))


def inpaint(image=None, masks=None, prompt="a cat", timeout=None, via="flux", **options):
    """Inpaint on the flux server, or (`via` "orchestrator") passed through."""
    opts = flux_pb2.InpaintOptions(**{"steps": 1, "seed": 0, **options})
    stub = (flux_pb2_grpc.FluxServiceStub if via == "flux"
            else orchestrator_pb2_grpc.EditServiceStub)
    return (via, lambda ch: drain(stub(ch).Inpaint(
        flux_pb2.InpaintRequest(image=image or img(), masks=[mask()] if masks is None
                                else masks, prompt=prompt, options=opts), timeout=timeout)))


def strip(w: int, h: int) -> tuple[common_pb2.Image, list[common_pb2.Mask]]:
    """A w x h picture (a few KB as PNG however long) and a mask of its first pixels."""
    return img(encoded(rgb(w, h))), [mask(w, h, (0, 0, 1, 1), rle=True)]


TALL, WIDE = strip(1, 2_000_000), strip(20_000, 1)


TEXT = {"text": orchestrator_pb2.TextTarget(text="dog", min_score=0.0)}
BOX = {"box": common_pb2.Box(x0=10, y0=10, x1=40, y1=30)}
MASKS = {"masks": orchestrator_pb2.MaskTarget(masks=[mask()])}


@dataclass
class Case:
    name: str
    call: tuple[str, Callable]
    code: grpc.StatusCode = BAD
    field: str | None = None
    check: Callable | None = None


def rotated_size(resp) -> None:
    assert (resp.image_width, resp.image_height) == (H, W), "EXIF rotation not applied"


CASES = [
    # images: broken
    Case("zero-byte image", seg_text(img(b"")), field="image.data"),
    Case("corrupt image", seg_text(img(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)), field="image.data"),
    Case("truncated png", seg_text(img(PNG[: len(PNG) // 2])), field="image.data"),
    Case("truncated jpeg", clear(img(JPEG[: len(JPEG) // 3])), field="image.data"),
    Case("not an image", seg_prompt(img(b"hello world"), points=[common_pb2.Point(x=1, y=1)]),
         field="image.data"),
    Case("gif", seg_text(img(encoded(rgb(), "GIF"))), field="image.data"),
    Case("decompression bomb", seg_text(img(bomb())), field="image.data"),
    Case("bomb via orchestrator", remove(img(bomb()), **MASKS), field="image.data"),
    Case("huge image over the pixel limit", seg_text(img(encoded(
        Image.new("L", (8000, 5001)), optimize=False))), field="image.data"),
    Case("no image", seg_text(common_pb2.Image()), field="image"),
    Case("no image (orchestrator)", remove(False, **MASKS), field="image"),
    Case("malformed reference", seg_text(common_pb2.Image(sha256="not-hex")),
         field="image.sha256"),
    Case("malformed reference (orchestrator)", remove(common_pb2.Image(sha256="xyz"), **MASKS),
         field="image.sha256"),
    Case("png pixel data failing its crc", seg_text(img(bad_crc(PNG))), field="image.data"),
    Case("png header failing its crc", clear(img(bad_crc(PNG, b"IHDR"))), field="image.data"),
    Case("png without its end", seg_text(img(PNG[:-12])), field="image.data"),
    Case("unknown reference", seg_text(common_pb2.Image(sha256="ab" * 32)),
         grpc.StatusCode.NOT_FOUND),
    Case("unknown reference (orchestrator)", remove(common_pb2.Image(sha256="cd" * 32), **MASKS),
         grpc.StatusCode.NOT_FOUND),
    Case("unknown reference (object-clear)", clear(common_pb2.Image(sha256="ef" * 32)),
         grpc.StatusCode.NOT_FOUND),
    # images: odd but valid
    Case("1x1 image, text", seg_text(img(encoded(rgb(1, 1))), score_threshold=0.0), OK),
    Case("1x1 image, click", seg_prompt(img(encoded(rgb(1, 1))),
                                        points=[common_pb2.Point(x=0.5, y=0.5)]), OK),
    Case("1x1 image, removal", clear(img(encoded(rgb(1, 1))), masks=[mask(1, 1, (0, 0, 1, 1))]),
         OK),
    Case("cmyk jpeg", seg_text(img(encoded(rgb().convert("CMYK"), "JPEG"))), OK),
    Case("16-bit png", clear(img(sixteen_bit())), OK),
    Case("palette png with transparency", seg_text(img(palette_with_transparency())), OK),
    Case("exif-rotated jpeg", seg_text(img(exif_rotated())), OK, check=rotated_size),
    Case("webp", seg_text(img(encoded(rgb(), "WEBP"))), OK),
    # masks
    Case("mask of the wrong size", clear(masks=[mask(W + 2, H)]), field="masks[0]"),
    Case("rle mask of the wrong size", clear(masks=[mask(), mask(W, H - 1, rle=True)]),
         field="masks[1]"),
    Case("empty mask", clear(masks=[mask(box=(0, 0, 0, 0))]), field="masks"),
    Case("all-on mask", clear(masks=[mask(box=(0, 0, W, H))]), OK),
    Case("no mask", clear(masks=[]), field="masks"),
    Case("rle counts off", clear(masks=[common_pb2.Mask(
        width=W, height=H, rle=common_pb2.Rle(counts=[5, 5]))]), field="masks[0]"),
    Case("mask with no data", clear(masks=[common_pb2.Mask(width=W, height=H)]),
         field="masks[0]"),
    Case("png mask saying 7x7, holding 96x64",
         clear(masks=[common_pb2.Mask(width=7, height=7, png=mask().png)]), field="masks[0]"),
    Case("png mask saying the image's size, holding 7x7",
         clear(masks=[common_pb2.Mask(width=W, height=H, png=mask(7, 7, (0, 0, 3, 3)).png)]),
         field="masks[0]"),
    Case("33 masks", clear(masks=[mask()] * 33), field="masks"),
    Case("33 masks (orchestrator)", remove(masks=orchestrator_pb2.MaskTarget(masks=[mask()] * 33)),
         field="masks.masks"),
    Case("rle with more runs than pixels", clear(masks=[common_pb2.Mask(
        width=W, height=H, rle=common_pb2.Rle(counts=[0] * (W * H + 2)))]), field="masks[0]"),
    Case("orchestrator mask wrong size",
         remove(masks=orchestrator_pb2.MaskTarget(masks=[mask(10, 10)])),
         field="masks.masks[0]"),
    # text and prompts
    Case("empty text", seg_text(text=""), field="text"),
    Case("over-long text", seg_text(text="cat " * 100), field="text"),
    Case("odd unicode text", seg_text(text="🐕‍🦺 猫 \u202eevil\u202c é"), OK),
    Case("zero-width text", seg_text(text="\u200b\u200b"), OK),
    Case("empty prompt", generate(""), field="prompt"),
    Case("over-long prompt", generate("x" * 2001), field="prompt"),
    Case("odd unicode prompt", generate("一辆红色的自行车 🚲 \u0000 \u202e"), OK),
    Case("empty text target", remove(text=orchestrator_pb2.TextTarget(text="")),
         field="text.text"),
    Case("over-long label", clear(label="l" * 101), field="label"),
    # numbers
    Case("NaN score threshold", seg_text(score_threshold=math.nan), field="score_threshold"),
    Case("NaN min score (orchestrator)", remove(text=orchestrator_pb2.TextTarget(
        text="dog", min_score=math.nan)), field="text.min_score"),
    Case("infinite guidance", clear(guidance_scale=math.inf), field="options.guidance_scale"),
    Case("steps 0", clear(steps=0), field="options.steps"),
    Case("steps 101", clear(steps=101), field="options.steps"),
    Case("steps via orchestrator", remove(clear_options={"steps": 500}, **MASKS),
         field="clear_options.steps"),
    Case("short side 4096", clear(short_side=4096), field="options.short_side"),
    Case("mask dilation 999", clear(mask_dilation=999), field="options.mask_dilation"),
    Case("width 257", generate(width=257), field="width"),
    Case("height 4096", generate(height=4096), field="height"),
    Case("flux steps 51", generate(steps=51), field="steps"),
    # invalid whatever the deadline: never costed, so never "retry later"
    Case("100000x100000 with a deadline", generate(width=100_000, height=100_000, timeout=30),
         field="width"),
    Case("steps 2^32-1 with a deadline", generate(steps=4294967295, timeout=30), field="steps"),
    Case("short side 100000 with a deadline", clear(short_side=100_000, timeout=30),
         field="options.short_side"),
    Case("point outside", seg_prompt(points=[common_pb2.Point(x=W + 1, y=1)]), field="points[0]"),
    Case("point on the right edge", seg_prompt(points=[common_pb2.Point(x=W, y=1)]),
         field="points[0]"),
    Case("last pixel's point", seg_prompt(points=[common_pb2.Point(x=W - 0.5, y=H - 0.5)]), OK),
    Case("20,000 points", seg_prompt(points=[common_pb2.Point(x=1, y=1)] * 20_000),
         field="points"),
    Case("20,000 points (orchestrator)", remove(prompt=orchestrator_pb2.PromptTarget(
        points=[common_pb2.Point(x=1, y=1)] * 20_000)), field="prompt.points"),
    Case("NaN point", seg_prompt(points=[common_pb2.Point(x=1, y=math.nan)]), field="points[0]"),
    Case("infinite box", seg_prompt(box=common_pb2.Box(x0=0, y0=0, x1=math.inf, y1=5)),
         field="box"),
    Case("zero-area box", seg_prompt(box=common_pb2.Box(x0=5, y0=5, x1=5, y1=9)), field="box"),
    Case("box outside (orchestrator)", remove(prompt=orchestrator_pb2.PromptTarget(
        box=common_pb2.Box(x0=0, y0=0, x1=W * 3, y1=H))), field="prompt.box"),
    Case("mask dilation 300 (orchestrator)", remove(mask_dilation=300, **MASKS),
         field="mask_dilation"),
    # enums and oneofs
    Case("unknown mask format", seg_text(mask_format=42), field="mask_format"),
    Case("unknown point label", seg_prompt(points=[common_pb2.Point(x=1, y=1, label=9)]),
         field="points[0].label"),
    Case("unknown output format", generate(output_format=17), field="output_format"),
    Case("unknown clear output format", clear(output_format=5), field="options.output_format"),
    Case("no prompt at all", seg_prompt(), field="points"),
    Case("no target", remove(), field="target"),
    Case("empty prompt target", remove(prompt=orchestrator_pb2.PromptTarget()), field="prompt"),
    # inpainting and replacement
    Case("empty inpaint prompt", inpaint(prompt=""), field="prompt"),
    Case("inpaint strength 0", inpaint(strength=0.0), field="options.strength"),
    Case("inpaint strength 1.5", inpaint(strength=1.5), field="options.strength"),
    Case("guidance on schnell", inpaint(guidance_scale=3.5), field="options.guidance_scale"),
    Case("inpaint mask of the wrong size", inpaint(masks=[mask(W, H + 16)]), field="masks[0]"),
    Case("inpaint empty mask", inpaint(masks=[mask(box=(0, 0, 0, 0))]), field="masks"),
    Case("inpaint without masks", inpaint(masks=[]), field="masks"),
    Case("inpaint strength 0.3, one step", inpaint(strength=0.3), OK),
    Case("empty replacement", replace(replacement="", **BOX), field="replacement"),
    Case("replace strength 0", replace(options={"strength": 0.0}, **BOX),
         field="inpaint_options.strength"),
    Case("replace guidance on schnell", replace(options={"guidance_scale": 2.0}, **BOX),
         field="inpaint_options.guidance_scale"),
    Case("replace mask of the wrong size",
         replace(masks=orchestrator_pb2.MaskTarget(masks=[mask(10, 10)])),
         field="masks.masks[0]"),
    Case("fill box outside", replace(box=common_pb2.Box(x0=0, y0=0, x1=W + 5, y1=H)),
         field="box"),
    Case("fill box without area", replace(box=common_pb2.Box(x0=5, y0=5, x1=5, y1=9)),
         field="box"),
    Case("replace without a target", replace(), field="target"),
    Case("replace steps 51", replace(options={"steps": 51}, **BOX),
         field="inpaint_options.steps"),
    Case("replace strength that runs no step", replace(options={"strength": 1e-20}, **BOX),
         field="inpaint_options.strength"),
    Case("replace unknown output format", replace(options={"output_format": 9}, **BOX),
         field="inpaint_options.output_format"),
    # shapes no model can use: refused from the header, whatever the deadline
    Case("1x2,000,000 inpaint", inpaint(TALL[0], TALL[1]), field="image.data"),
    Case("1x2,000,000 inpaint with a deadline", inpaint(TALL[0], TALL[1], timeout=30),
         field="image.data"),
    Case("1x2,000,000 inpaint (orchestrator)", inpaint(TALL[0], TALL[1], via="orchestrator",
                                                       timeout=30), field="image.data"),
    Case("20000x1 inpaint", inpaint(WIDE[0], WIDE[1]), field="image.data"),
    Case("1x2,000,000 replace", replace(TALL[0], masks=orchestrator_pb2.MaskTarget(
        masks=TALL[1])), field="image.data"),
    Case("1x2,000,000 replace with a deadline", replace(TALL[0], masks=orchestrator_pb2.MaskTarget(
        masks=TALL[1]), timeout=30), field="image.data"),
    Case("20000x1 replace with a deadline", replace(WIDE[0], masks=orchestrator_pb2.MaskTarget(
        masks=WIDE[1]), timeout=30), field="image.data"),
    Case("1x20000 replace, text target", replace(strip(1, 20_000)[0], text=TEXT["text"]),
         field="image.data"),
    Case("1x2,000,000 removal", clear(TALL[0], TALL[1], timeout=30), field="image.data"),
    Case("1x2,000,000 segmentation", seg_text(TALL[0]), field="image.data"),
    Case("8:1 is still an image", clear(img(encoded(rgb(512, 64))),
                                        masks=[mask(512, 64, (0, 0, 8, 8))]), OK),
    Case("unknown strategy", clear(strategy=7), field="options.strategy"),
    Case("unknown strategy (orchestrator)", remove(clear_options={"strategy": 9}, **MASKS),
         field="clear_options.strategy"),
    # bytes that are no message at all
    Case("undecodable SegmentByText", raw("segmentation",
                                          "/mic2e.v1.SegmentationService/SegmentByText"),
         field="request"),
    Case("undecodable Clear", raw("object_clear", "/mic2e.v1.ObjectClearService/Clear"),
         field="request"),
    Case("undecodable Generate", raw("flux", "/mic2e.v1.FluxService/Generate"), field="request"),
    Case("undecodable Inpaint", raw("flux", "/mic2e.v1.FluxService/Inpaint"), field="request"),
    Case("undecodable RemoveObjects", raw("orchestrator", "/mic2e.v1.EditService/RemoveObjects",
                                          b"\x0a\xff\xff\xff\xff\x0f"), field="request"),
]


async def test_the_suite_is_big_enough():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


def channel_for(stack, server: str) -> grpc.aio.Channel:
    if server == "orchestrator":
        return stack.channel
    srv = getattr(stack, server)
    if not hasattr(srv, "_test_channel"):
        srv._test_channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
    return srv._test_channel


VALID = {"segmentation": seg_text(), "object_clear": clear(), "flux": generate(),
         "orchestrator": remove(**MASKS)}


def http_channel_for(stack, server: str) -> HttpChannel:
    """The same server's HTTP port, as a channel the gRPC stubs call over Connect."""
    srv = stack.orchestrator if server == "orchestrator" else getattr(stack, server)
    if not hasattr(srv, "_test_http_channel"):
        srv._test_http_channel = HttpChannel(f"http://127.0.0.1:{srv.http.port}")
    return srv._test_http_channel


# Every case runs over gRPC and over HTTP (the Connect protocol): the same codes and fields.
@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input(stack, case: Case, transport: str):
    server, call = case.call
    grpc_channel = channel_for(stack, server)
    channel = grpc_channel if transport == "grpc" else http_channel_for(stack, server)
    try:
        response = await call(channel)
        code = OK
    except grpc.aio.AioRpcError as exc:
        code, response = exc.code(), exc
    assert code != grpc.StatusCode.INTERNAL, response
    assert code == case.code, (code, getattr(response, "details", lambda: "")())
    if code == BAD:
        status = await rich_status(_failed_call(response))
        bad = detail(status, error_details_pb2.BadRequest)
        assert bad is not None and case.field in [v.field for v in bad.field_violations], bad
    if case.check is not None:
        case.check(response)
    # The server is still healthy and answers a valid request right after.
    health = await health_pb2_grpc.HealthStub(grpc_channel).Check(
        health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    await VALID[server][1](channel)


def _failed_call(exc: grpc.aio.AioRpcError):
    class _Trailers:
        async def trailing_metadata(self):
            return exc.trailing_metadata()
    return _Trailers()


async def test_message_over_the_size_limit(stack):
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{stack.segmentation.port}",
        options=[("grpc.max_send_message_length", 100 * 1024 * 1024)])
    huge = segmentation_pb2.SegmentByTextRequest(image=img(b"\x00" * (65 * 1024 * 1024)),
                                                 text="dog")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await segmentation_pb2_grpc.SegmentationServiceStub(channel).SegmentByText(huge)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await VALID["segmentation"][1](channel)
    await channel.close()


async def test_message_over_the_size_limit_over_http(stack):
    """The limit holds on the HTTP port too, before the body is parsed or even read."""
    channel = HttpChannel(stack.http_url(stack.segmentation))
    huge = segmentation_pb2.SegmentByTextRequest(image=img(b"\x00" * (65 * 1024 * 1024)),
                                                 text="dog")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await segmentation_pb2_grpc.SegmentationServiceStub(channel).SegmentByText(huge)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await VALID["segmentation"][1](channel)
    await channel.close()


async def test_invalid_work_behind_a_long_job_never_counts_in_the_backlog(stack):
    """Invalid requests without a deadline are refused before they are costed: the
    autoscaling signal does not move and valid callers with deadlines still get in."""
    registry = stack.flux.metrics.registry

    def backlog() -> float:
        return registry.get_sample_value("mic2e_queued_gpu_seconds", {"server": "flux"})

    stub = flux_pb2_grpc.FluxServiceStub(channel_for(stack, "flux"))
    running = stub.Generate(flux_pb2.GenerateRequest(prompt="a long job", width=512,
                                                     height=512, steps=50, seed=0))
    assert (await running.read()).WhichOneof("event") == "progress"
    during = backlog()
    assert during > 0
    for bad in ({"width": 100_000, "height": 100_000}, {"steps": 4294967295},
                {"width": 100_000, "steps": 4294967295}):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(stub.Generate(flux_pb2.GenerateRequest(prompt="x", **bad)))
        assert info.value.code() == BAD
        assert backlog() <= during
    quick = await drain(stub.Generate(flux_pb2.GenerateRequest(
        prompt="x", width=256, height=256, steps=1, seed=0), timeout=60))
    assert quick[-1].WhichOneof("event") == "result"
    last = None
    while (event := await running.read()) is not grpc.aio.EOF:
        last = event
    assert last is not None and last.WhichOneof("event") == "result"
    assert backlog() == 0


@pytest.mark.parametrize("server", ["object_clear", "orchestrator"])
async def test_a_refused_request_leaves_its_image_nowhere(stack, server):
    """A valid image in an invalid request is not kept: a later reference to it is
    unknown (and once a request on it is accepted, it is known)."""
    data = encoded(rgb(W + 16, H))
    reference = common_pb2.Image(sha256=codecs.sha256_hex(data))
    masks = [mask(W + 16, H)]
    if server == "object_clear":
        refused, by_reference, accepted = (
            clear(img(data), masks=masks, steps=0)[1], clear(reference, masks=masks)[1],
            clear(img(data), masks=masks)[1])
    else:
        target = {"masks": orchestrator_pb2.MaskTarget(masks=masks)}
        refused, by_reference, accepted = (  # refused by the object-clear server behind
            remove(img(data), masks=orchestrator_pb2.MaskTarget(masks=[mask(10, 10)]))[1],
            remove(reference, **target)[1], remove(img(data), **target)[1])
    channel = channel_for(stack, server)
    for call, code in ((refused, BAD), (by_reference, grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(channel)
        assert info.value.code() == code, info.value.details()
    await accepted(channel)
    assert (await by_reference(channel))[-1].WhichOneof("event") == "result"
