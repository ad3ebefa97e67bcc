"""Phone photos keep their own pixels: a detailed 4032x3024 JPEG through the stack.

A removal repaints a small region; every pixel outside the region the result reports is
the decoded input's own (`resize`, the default), most of the photo is (`crop`), and the
reference's resampled picture is there for who asks (`reference`). Patches carry only the
changed part; the clients apply them; the colour profile comes back; `-o x.jpg` is a JPEG.
"""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
from mic2e import Client, cli, codecs
from mic2e.channel import channel_options
from mic2e.types import RemoveResult, ReplaceResult
from mic2e.v1 import (
    common_pb2,
    object_clear_pb2,
    object_clear_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)
from PIL import Image

from tests.photos import box_mask, detailed_photo, display_p3_icc, jpeg

pytestmark = pytest.mark.asyncio(loop_scope="package")

W, H = 4032, 3024
#: Tiny models on CPU: the model's work is small; the photo around it is full size.
FAST = {"steps": 2, "short_side": 256, "seed": 0}
#: With random tiny weights the fusion's attention map is noise, and its soft mask covers
#: much of the picture (with real weights: the object and its shadow); without fusion the
#: repainted region is the mask, as small as the object.
OBJECT_ONLY = {**FAST, "fusion": False}


@pytest.fixture(scope="module")
def photo() -> dict:
    """The JPEG (with a Display P3 profile), its decode as every server decodes it, and
    a mask of about 2 % of the area."""
    icc = display_p3_icc()
    data = jpeg(detailed_photo(W, H, seed=3), icc_profile=icc)
    mask = box_mask(W, H, 0.02)
    return {"data": data, "decoded": np.asarray(codecs.decode_image(data)), "icc": icc,
            "mask": mask}


def outside(box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    keep = np.ones((H, W), dtype=bool)
    keep[y0:y1, x0:x1] = False
    return keep


def remove(client: Client, photo: dict, **options) -> RemoveResult:
    events = list(client.remove_objects(photo["data"], masks=[photo["mask"]],
                                        **{**FAST, **options}))
    assert isinstance(events[-1], RemoveResult)
    return events[-1]


async def test_resize_keeps_every_pixel_outside_the_region_through_the_python_client(
        stack, photo):
    def run():
        with Client(stack.address, timeout=300) as client:  # patches: the default
            return (remove(client, photo, repainted_mask=True, fusion=False),
                    remove(client, photo, repainted_mask=True))

    result, fused = await asyncio.to_thread(run)
    # With fusion (its region: wherever the random attention map says), the same rule.
    keep = ~fused.repainted_mask
    assert fused.repainted_mask[photo["mask"]].all()
    assert np.array_equal(np.asarray(fused.image)[keep], photo["decoded"][keep])
    assert result.patch is not None and result.data is None, "the result came as a patch"
    out = np.asarray(result.image)
    assert out.shape == (H, W, 3)
    x0, y0, x1, y1 = result.repainted_box
    keep = outside(result.repainted_box)
    assert np.array_equal(out[keep], photo["decoded"][keep])
    # The region is the object (and what the model repainted around it), not the photo.
    assert result.repainted_mask is not None and result.repainted_mask[photo["mask"]].all()
    assert (x1 - x0) * (y1 - y0) < 0.10 * W * H
    # Inside the box too, every pixel outside the repainted region is the input's own.
    untouched = ~result.repainted_mask
    assert np.array_equal(out[untouched], photo["decoded"][untouched])
    assert result.image.info.get("icc_profile") == photo["icc"]


async def test_resize_through_the_orchestrator_for_a_caller_without_patches(stack, photo):
    """A caller that asks for no patch (grpcurl, another language) gets the whole picture,
    built by the orchestrator from the object-clear server's patch; the same pixels."""
    mask = common_pb2.Mask(width=W, height=H,
                           rle=common_pb2.Rle(counts=codecs.rle_encode(photo["mask"])))
    request = orchestrator_pb2.RemoveObjectsRequest(
        image=common_pb2.Image(data=photo["data"]),
        masks=orchestrator_pb2.MaskTarget(masks=[mask]),
        clear_options=object_clear_pb2.ClearOptions(**OBJECT_ONLY))
    stub = orchestrator_pb2_grpc.EditServiceStub(stack.channel)
    events = [e async for e in stub.RemoveObjects(request, timeout=300)]
    result = events[-1].result
    assert result.HasField("image") and not result.HasField("patch")
    with Image.open(io.BytesIO(result.image.data)) as img:
        assert img.format == "PNG" and img.info.get("icc_profile") == photo["icc"]
        out = np.asarray(img.convert("RGB"))
    box = result.repainted_box
    keep = outside((int(box.x0), int(box.y0), int(box.x1), int(box.y1)))
    assert keep.mean() > 0.9
    assert np.array_equal(out[keep], photo["decoded"][keep])


async def test_crop_keeps_most_pixels_and_reference_is_the_references_picture(stack, photo):
    def run():
        with Client(stack.address, timeout=300) as client:
            crop = remove(client, photo, strategy="crop")
            reference = remove(client, photo, strategy="reference")
        with Client(stack.address, timeout=300, image_patches=False) as client:
            whole = remove(client, photo, strategy="reference")
        return crop, reference, whole

    crop, reference, whole = await asyncio.to_thread(run)
    same = np.all(np.asarray(crop.image) == photo["decoded"], axis=-1)
    assert same.mean() >= 0.90, same.mean()
    assert np.array_equal(np.asarray(crop.image)[outside(crop.repainted_box)],
                          photo["decoded"][outside(crop.repainted_box)])
    # reference: every pixel is the working image resampled (the reference's picture),
    # the same through a patch as whole from the server.
    assert reference.repainted_box == (0, 0, W, H)
    assert whole.data is not None and whole.patch is None
    assert np.array_equal(np.asarray(reference.image), np.asarray(whole.image))
    assert np.all(np.asarray(whole.image) == photo["decoded"], axis=-1).mean() < 0.5


async def test_a_patch_costs_a_fraction_of_the_whole_picture(stack, photo):
    """The same removal as a patch and as the whole picture, straight from the object-clear
    server: the same pixels, a fraction of the bytes."""
    mask = common_pb2.Mask(width=W, height=H,
                           rle=common_pb2.Rle(counts=codecs.rle_encode(photo["mask"])))
    async with grpc.aio.insecure_channel(stack.model_address(stack.object_clear),
                                         options=channel_options()) as channel:
        stub = object_clear_pb2_grpc.ObjectClearServiceStub(channel)

        async def clear(patch: bool) -> object_clear_pb2.ClearResult:
            request = object_clear_pb2.ClearRequest(
                image=common_pb2.Image(data=photo["data"]), masks=[mask],
                options=object_clear_pb2.ClearOptions(**OBJECT_ONLY, output_patch=patch))
            return [e async for e in stub.Clear(request, timeout=300)][-1].result

        patched, whole = await clear(True), await clear(False)
    assert len(patched.patch.image.data) * 4 < len(whole.image.data)
    with Image.open(io.BytesIO(patched.patch.image.data)) as img:
        # RGBA; a patch whose every pixel changed is stored without alpha (all opaque)
        assert img.mode in ("RGBA", "RGB") and img.info.get("icc_profile") == photo["icc"]
        applied = codecs.apply_patch(codecs.decode_image(photo["data"]), img.convert("RGBA"),
                                     patched.patch.x, patched.patch.y)
    with Image.open(io.BytesIO(whole.image.data)) as img:
        assert np.array_equal(np.asarray(applied), np.asarray(img.convert("RGB")))
    assert patched.patch.base_sha256 == codecs.sha256_hex(photo["data"])


async def test_replace_keeps_the_photo_and_its_profile_through_a_patch(stack, photo):
    def run():
        with Client(stack.address, timeout=300) as client:
            events = list(client.replace_objects(photo["data"], "a cat",
                                                 masks=[photo["mask"]], steps=1, seed=0))
        return events[-1]

    result = await asyncio.to_thread(run)
    assert isinstance(result, ReplaceResult) and result.patch is not None
    keep = outside(result.repainted_box)
    assert np.array_equal(np.asarray(result.image)[keep], photo["decoded"][keep])
    assert result.image.info.get("icc_profile") == photo["icc"]


@pytest.mark.parametrize("name,fmt", [("out.jpg", "JPEG"), ("out.webp", "WEBP"),
                                      ("out.png", "PNG")])
async def test_the_cli_writes_the_format_its_output_names_with_the_profile(
        stack, tmp_path, name, fmt):
    # A smaller photo: the format and the profile do not depend on the size, and lossless
    # WebP takes seconds per megapixel.
    icc = display_p3_icc()
    source = tmp_path / "photo.jpg"
    source.write_bytes(jpeg(detailed_photo(800, 600, seed=5), icc_profile=icc))
    mask = tmp_path / "mask.png"
    mask.write_bytes(codecs.encode_mask_png(box_mask(800, 600, 0.02)))
    out = tmp_path / name
    code = await asyncio.to_thread(cli.main, [
        "remove", str(source), "--mask", str(mask), "-o", str(out), "--steps", "1",
        "--seed", "0", "--server", stack.address])
    assert code == 0
    with Image.open(out) as img:
        assert img.format == fmt and img.size == (800, 600)
        assert img.info.get("icc_profile") == icc


async def test_the_cli_refuses_a_format_it_cannot_write(tmp_path, capsys):
    assert cli.main(["remove", "photo.jpg", "--text", "dog", "-o", str(tmp_path / "out.bmp"),
                     "--server", "127.0.0.1:1"]) == 2
    assert "cannot write a .bmp file" in capsys.readouterr().err
    assert not (tmp_path / "out.bmp").exists()
