"""Assembly of the object-clear server: settings, model, worker, servicer."""

from __future__ import annotations

from typing import Any, ClassVar

from mic2e.v1 import object_clear_pb2_grpc
from pydantic import Field

from mic2e_services.api.object_clear import CROP_MARGIN, GUIDANCE_SCALE, SHORT_SIDE, STEPS
from mic2e_services.object_clear.servicer import SERVICE_NAME, ObjectClearServicer
from mic2e_services.runtime.model_api import Model
from mic2e_services.runtime.server import Server, build_model_server
from mic2e_services.runtime.settings import ModelServerSettings


class Settings(ModelServerSettings):
    """Object-clear server settings (`MIC2E_*` environment variables, CLI flags win)."""

    port: int = 50053
    model: str = Field("jixin0101/ObjectClear", description="hub id or local folder")
    default_steps: int = Field(STEPS.default, ge=STEPS.lo, le=STEPS.hi, description=(
        f"denoising steps when the caller sets none (the reference's: {STEPS.default})"))
    default_guidance_scale: float = Field(
        GUIDANCE_SCALE.default, ge=GUIDANCE_SCALE.lo, le=GUIDANCE_SCALE.hi, description=(
            f"guidance when the caller sets none (the reference's: {GUIDANCE_SCALE.default})"))
    default_short_side: int = Field(
        SHORT_SIDE.default, ge=SHORT_SIDE.lo, le=SHORT_SIDE.hi, description=(
            f"working short side when the caller sets none (the reference's: "
            f"{SHORT_SIDE.default})"))
    vae_tiling: bool = Field(False, description="decode large images in tiles (saves memory)")
    crop_margin: int = Field(CROP_MARGIN, ge=0, le=4096, description=(
        "strategy crop: context kept around the mask's box on every side, in input pixels "
        "(the crop is then widened to at least the working short side)"))

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "quality": {},
        # A documented quality cut: half the steps at a smaller working size.
        "fast": {"default_steps": 10, "default_short_side": 384},
        # The 2.6 B-parameter UNet in int8 (half its fp16 memory), tiled VAE, and one
        # removal at a time (a batch's activations are what a small card lacks).
        "low-memory": {"quantization": "int8", "vae_tiling": True, "max_batch_size": 1},
    }

    def request_defaults(self) -> dict[str, Any]:
        """What an unset request option becomes."""
        return {"steps": self.default_steps, "guidance_scale": self.default_guidance_scale,
                "short_side": self.default_short_side, "crop_margin": self.crop_margin}


def build_model(settings: Settings) -> Model:
    # Imported here: torch loads only in a process that really serves the model.
    from mic2e_services.object_clear.model import ObjectClearModel

    return ObjectClearModel(settings.model, vae_tiling=settings.vae_tiling,
                            **settings.model_kwargs())


def create_server(settings: Settings, model: Model | None = None) -> tuple[Server, int]:
    """The server, not started, and its port; `model` defaults to the one in settings."""
    return build_model_server(
        settings, model or build_model(settings), name="object-clear",
        service_name=SERVICE_NAME,
        add_servicer=object_clear_pb2_grpc.add_ObjectClearServiceServicer_to_server,
        make_servicer=lambda worker, images: ObjectClearServicer(
            worker, images, defaults=settings.request_defaults()))
