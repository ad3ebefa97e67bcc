"""The model contract (contract.py) for the three models; a fourth subclasses it too."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")

from mic2e import codecs  # noqa: E402
from mic2e.v1 import (  # noqa: E402
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    object_clear_pb2,
    object_clear_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from mic2e_services.api.flux import GenerateQuery  # noqa: E402
from mic2e_services.api.object_clear import ClearQuery  # noqa: E402
from mic2e_services.api.segmentation import TextQuery  # noqa: E402
from mic2e_services.flux import server as flux_server  # noqa: E402
from mic2e_services.object_clear import server as oc_server  # noqa: E402
from mic2e_services.segmentation import server as seg_server  # noqa: E402
from PIL import Image  # noqa: E402

from tests.contract.contract import ModelContract  # noqa: E402


def picture(seed: int, width: int = 96, height: int = 72) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def same_picture(a: Image.Image, b: Image.Image, min_db: float = 50.0) -> bool:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = float(np.mean((x - y) ** 2))
    return mse == 0 or 10 * np.log10(255.0**2 / mse) >= min_db


def png(image: Image.Image) -> bytes:
    return codecs.encode_image(image, "png")


async def last(call) -> object:
    return [m async for m in call][-1].result


class TestObjectClear(ModelContract):
    server_module = oc_server
    checkpoint_fixture = "tiny_objectclear"
    steps = 3

    def query(self, variant: int = 0) -> ClearQuery:
        mask = np.zeros((72, 96), bool)
        mask[20:50, 30:70] = True
        return ClearQuery(picture(variant), mask, steps=self.steps, seed=1 + variant)

    def bad_query(self) -> tuple[ClearQuery, list[str]]:
        query = ClearQuery(picture(0), np.zeros((72, 96), bool), steps=0,
                           guidance_scale=float("nan"), label="x" * 101)
        return query, ["options.steps", "options.guidance_scale", "label", "masks"]

    async def call(self, channel, bad: bool = False):
        mask = self.query().mask
        options = object_clear_pb2.ClearOptions(steps=0 if bad else self.steps, seed=1,
                                                guidance_scale=99.0 if bad else 2.5)
        request = object_clear_pb2.ClearRequest(
            image=common_pb2.Image(data=png(picture(0))), options=options,
            masks=[common_pb2.Mask(width=96, height=72, png=codecs.encode_mask_png(mask))])
        return await last(object_clear_pb2_grpc.ObjectClearServiceStub(channel).Clear(request))

    def same(self, a, b) -> bool:
        return same_picture(a.image, b.image)

    def heavy_module(self, model):
        return model.pipeline.unet


class TestFlux(ModelContract):
    server_module = flux_server
    checkpoint_fixture = "tiny_flux"
    steps = 3

    def query(self, variant: int = 0) -> GenerateQuery:
        return GenerateQuery(["a red bicycle", "a dog on a beach"][variant], 256, 256,
                             steps=self.steps, seed=1 + variant)

    def bad_query(self) -> tuple[GenerateQuery, list[str]]:
        return GenerateQuery("", 100, 4096, steps=0), ["prompt", "width", "height", "steps"]

    async def call(self, channel, bad: bool = False):
        request = flux_pb2.GenerateRequest(prompt="" if bad else "a red bicycle",
                                           width=100 if bad else 256, height=256,
                                           steps=self.steps, seed=1)
        return await last(flux_pb2_grpc.FluxServiceStub(channel).Generate(request))

    def same(self, a, b) -> bool:
        return same_picture(a.image, b.image)

    def heavy_module(self, model):
        return model._pipe.transformer


class TestSam3(ModelContract):
    server_module = seg_server
    checkpoint_fixture = "tiny_sam3"
    steps = 1

    def query(self, variant: int = 0) -> TextQuery:
        image = picture(10 + variant, 160, 120)
        return TextQuery(image=image, image_key=hashlib.sha256(image.tobytes()).hexdigest(),
                         text="a dog", score_threshold=0.0)

    def bad_query(self) -> tuple[TextQuery, list[str]]:
        query = TextQuery(image=picture(0), image_key="k", text=" ", score_threshold=2.0,
                          max_instances=-1)
        return query, ["text", "score_threshold", "max_instances"]

    async def call(self, channel, bad: bool = False):
        image = picture(10, 160, 120)
        request = segmentation_pb2.SegmentByTextRequest(
            image=common_pb2.Image(data=png(image)), text=" " if bad else "a dog",
            score_threshold=2.0 if bad else 0.0)
        return await segmentation_pb2_grpc.SegmentationServiceStub(channel).SegmentByText(
            request)

    def same(self, a, b) -> bool:
        masks = [[s.mask for s in r.instances] for r in (a, b)]
        return len(masks[0]) == len(masks[1]) > 0 and all(
            np.array_equal(x, y) for x, y in zip(*masks, strict=True))

    def heavy_module(self, model):
        return model._detector.vision_encoder.backbone

    def forget(self, model) -> None:
        model.clear_cache()  # image features: a second call would skip the backbone


