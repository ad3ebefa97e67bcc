"""Assembly of the object-clear server: settings, model, worker, servicer."""

from __future__ import annotations

from typing import Any, ClassVar

from mic2e.v1 import object_clear_pb2_grpc
from pydantic import Field

from mic2e_services.object_clear.servicer import SERVICE_NAME, ObjectClearServicer
from mic2e_services.runtime.model_api import Model
from mic2e_services.runtime.server import Server, build_model_server
from mic2e_services.runtime.settings import ModelServerSettings


class Settings(ModelServerSettings):
    """Object-clear server settings (`MIC2E_*` environment variables, CLI flags win)."""

    port: int = 50053
    model: str = Field("jixin0101/ObjectClear", description="hub id or local folder")
    default_steps: int = Field(20, ge=1, le=100, description="denoising steps when the "
                               "caller sets none (the model's own: 20)")
    default_guidance_scale: float = Field(2.5, ge=1.0, le=20.0, description="guidance when "
                                          "the caller sets none (the model's own: 2.5)")
    default_short_side: int = Field(512, ge=256, le=2048, description="working short side "
                                    "when the caller sets none (the model's own: 512)")
    vae_tiling: bool = Field(False, description="decode large images in tiles (saves memory)")

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
                "short_side": self.default_short_side}


def build_model(settings: Settings) -> Model:
    # Imported here: torch loads only in a process that really serves the model.
    from mic2e_services.object_clear.model import ObjectClearModel

    return ObjectClearModel(settings.model, device=settings.device, dtype=settings.dtype,
                            quantization=settings.quantization, offload=settings.offload,
                            vae_tiling=settings.vae_tiling, compile=settings.compile_spec(),
                            **({"max_batch_size": settings.max_batch_size}
                               if settings.max_batch_size else {}))


def create_server(settings: Settings, model: Model | None = None) -> tuple[Server, int]:
    """The server, not started, and its port; `model` defaults to the one in settings."""
    return build_model_server(
        settings, model or build_model(settings), name="object-clear",
        service_name=SERVICE_NAME,
        add_servicer=object_clear_pb2_grpc.add_ObjectClearServiceServicer_to_server,
        make_servicer=lambda worker, images: ObjectClearServicer(
            worker, images, defaults=settings.request_defaults()))
