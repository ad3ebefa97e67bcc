"""Assembly of the segmentation server: settings, model, worker, servicer."""

from __future__ import annotations

from typing import Any, ClassVar

from mic2e.v1 import segmentation_pb2_grpc
from pydantic import Field

from mic2e_services.api.segmentation import FEATURE_CACHE_MB, MODEL_INPUT_SIDE
from mic2e_services.runtime.model_api import Model
from mic2e_services.runtime.server import Server, build_model_server
from mic2e_services.runtime.settings import ModelServerSettings
from mic2e_services.segmentation.servicer import SERVICE_NAME, SegmentationServicer


class Settings(ModelServerSettings):
    """Segmentation server settings (`MIC2E_*` environment variables, CLI flags win)."""

    port: int = 50052
    model: str = Field("facebook/sam3", description="hub id or local folder of SAM3")
    feature_cache_mb: int = Field(FEATURE_CACHE_MB, ge=0,
                                  description="vision features of recent images, kept on "
                                  "the device for re-queries: at most this many MiB "
                                  "(about 80 MiB an image at full size)")

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "quality": {},
        # SAM3 has no steps or working size to trade: "fast" is "quality" here.
        "fast": {},
        # The model is 1.7 GB in fp16; the feature cache (~80 MiB per image) and the
        # decoded images are what grows: two images' features, 128 MiB of pixels.
        "low-memory": {"feature_cache_mb": 160, "image_cache_mb": 128},
    }


def build_model(settings: Settings) -> Model:
    # Imported here: torch loads only in a process that really serves the model.
    from mic2e_services.segmentation.model import Sam3Segmenter

    return Sam3Segmenter(settings.model, feature_cache_bytes=settings.feature_cache_mb * 2**20,
                         **settings.model_kwargs())


def create_server(settings: Settings, model: Model | None = None) -> tuple[Server, int]:
    """The server, not started, and its port; `model` defaults to the one in settings."""
    return build_model_server(
        settings, model or build_model(settings), name="segmentation",
        service_name=SERVICE_NAME,
        add_servicer=segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server,
        make_servicer=SegmentationServicer,
        # SAM3 sees every picture at 1008x1008: a phone's JPEG need not be decoded in full.
        decode_at_least=(MODEL_INPUT_SIDE, MODEL_INPUT_SIDE))
