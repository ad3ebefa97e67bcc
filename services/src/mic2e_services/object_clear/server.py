"""Assembly of the object-clear server: settings, model, worker, servicer."""

from __future__ import annotations

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


def build_model(settings: Settings) -> Model:
    # Imported here: torch loads only in a process that really serves the model.
    from mic2e_services.object_clear.model import ObjectClearModel

    return ObjectClearModel(settings.model, device=settings.device, dtype=settings.dtype,
                            **({"max_batch_size": settings.max_batch_size}
                               if settings.max_batch_size else {}))


def create_server(settings: Settings, model: Model | None = None) -> tuple[Server, int]:
    """The server, not started, and its port; `model` defaults to the one in settings."""
    return build_model_server(
        settings, model or build_model(settings), name="object-clear",
        service_name=SERVICE_NAME,
        add_servicer=object_clear_pb2_grpc.add_ObjectClearServiceServicer_to_server,
        make_servicer=ObjectClearServicer)
