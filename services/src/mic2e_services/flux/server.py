"""Assembly of the flux server: settings, model, worker, servicer."""

from __future__ import annotations

from typing import Any, ClassVar

from mic2e.v1 import flux_pb2_grpc
from pydantic import Field

from mic2e_services.api.flux import HEIGHT, STEPS, WIDTH
from mic2e_services.flux.servicer import SERVICE_NAME, FluxServicer
from mic2e_services.runtime.model_api import Model
from mic2e_services.runtime.server import Server, build_model_server
from mic2e_services.runtime.settings import ModelServerSettings


class Settings(ModelServerSettings):
    """Flux server settings (`MIC2E_*` environment variables, CLI flags win)."""

    port: int = 50054
    model: str = Field("black-forest-labs/FLUX.1-schnell", description="hub id or local folder")
    default_steps: int = Field(STEPS.default, ge=STEPS.lo, le=STEPS.hi, description=(
        f"steps when the caller sets none (schnell's own: {STEPS.default})"))
    default_width: int = Field(WIDTH.default, ge=WIDTH.lo, le=WIDTH.hi,
                               multiple_of=WIDTH.multiple_of,
                               description="width when the caller sets none")
    default_height: int = Field(HEIGHT.default, ge=HEIGHT.lo, le=HEIGHT.hi,
                                multiple_of=HEIGHT.multiple_of,
                                description="height when the caller sets none")
    vae_tiling: bool = Field(False, description="decode large images in tiles (saves memory)")

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "quality": {},
        # A documented quality cut: fewer steps at a smaller default size.
        "fast": {"default_steps": 2, "default_width": 768, "default_height": 768},
        # Transformer and T5 in int8, idle components in CPU memory, tiled VAE: the 12 B
        # transformer alone is 24 GB in bf16.
        "low-memory": {"quantization": "int8", "offload": "model", "vae_tiling": True},
    }

    def request_defaults(self) -> dict[str, Any]:
        """What an unset request field becomes."""
        return {"steps": self.default_steps, "width": self.default_width,
                "height": self.default_height}


def build_model(settings: Settings) -> Model:
    # Imported here: torch loads only in a process that really serves the model.
    from mic2e_services.flux.model import FluxGenerator

    return FluxGenerator(settings.model, vae_tiling=settings.vae_tiling,
                         **settings.model_kwargs())


def create_server(settings: Settings, model: Model | None = None) -> tuple[Server, int]:
    """The server, not started, and its port; `model` defaults to the one in settings."""
    return build_model_server(
        settings, model or build_model(settings), name="flux", service_name=SERVICE_NAME,
        add_servicer=flux_pb2_grpc.add_FluxServiceServicer_to_server,
        make_servicer=lambda worker, images: FluxServicer(
            worker, images, defaults=settings.request_defaults()))
