"""Assembly of the orchestrator: settings, downstream channels, servicer. No torch."""

from __future__ import annotations

from mic2e.channel import tls_credentials
from mic2e.v1 import flux_pb2, object_clear_pb2, orchestrator_pb2_grpc, segmentation_pb2
from pydantic import Field, SecretStr

from mic2e_services.orchestrator.downstream import Downstream, DownstreamHealth
from mic2e_services.orchestrator.servicer import IMAGE_CACHE_MB, SERVICE_NAME, EditServicer
from mic2e_services.runtime.server import Server, build_server
from mic2e_services.runtime.settings import ServerSettings
from mic2e_services.runtime.tracing import client_interceptors, setup_tracing


class Settings(ServerSettings):
    """Orchestrator settings (`MIC2E_*` environment variables, CLI flags win).

    An address may be `host:port` or a DNS name with several replicas behind it (a
    headless Service); calls are spread over all of them round-robin.
    """

    port: int = 50051
    segmentation_address: str = Field("localhost:50052", description="segmentation server(s)")
    object_clear_address: str = Field("localhost:50053", description="object-clear server(s)")
    flux_address: str = Field("localhost:50054", description="flux server(s)")
    inpaint_address: str | None = Field(None, description="flux server(s) for Inpaint and "
                                        "ReplaceObjects, e.g. ones holding FLUX.1-Fill-dev; "
                                        "default: the flux server(s)")
    image_cache_mb: int = Field(IMAGE_CACHE_MB, ge=1,
                                description="images received (encoded), kept for SHA-256 "
                                "references: at most this many MiB")
    downstream_tls_ca_file: str | None = Field(None, description="call the model servers "
                                               "over TLS, trusting this CA")
    downstream_tls_cert_file: str | None = Field(None, description="client certificate for "
                                                 "the model servers (mutual TLS)")
    downstream_tls_key_file: str | None = Field(None, description="its private key")
    downstream_token: SecretStr | None = Field(None, description="bearer token sent to the "
                                               "model servers")
    downstream_health_interval_s: float = Field(
        2.0, gt=0, description="how often the model servers' health is asked, for this "
        "server's health entries per model service")


#: The orchestrator's health entry for each model service, named as the service itself
#: (from the protos: the orchestrator imports no model server package).
SEGMENTATION_SERVICE, OBJECT_CLEAR_SERVICE, FLUX_SERVICE = (
    module.DESCRIPTOR.services_by_name[name].full_name for module, name in (
        (segmentation_pb2, "SegmentationService"), (object_clear_pb2, "ObjectClearService"),
        (flux_pb2, "FluxService")))


def create_server(settings: Settings) -> tuple[Server, int]:
    """The orchestrator, not started, and its port."""
    credentials = None
    if settings.downstream_tls_ca_file or settings.downstream_tls_cert_file:
        credentials = tls_credentials(settings.downstream_tls_ca_file,
                                      settings.downstream_tls_cert_file,
                                      settings.downstream_tls_key_file)

    # Downstream calls carry the trace context when tracing is on.
    interceptors = client_interceptors(setup_tracing(settings, "mic2e-orchestrator"))

    def downstream(address: str) -> Downstream:
        return Downstream(address, max_message_mb=settings.max_message_mb,
                          credentials=credentials,
                          token=(settings.downstream_token.get_secret_value()
                                 if settings.downstream_token else None),
                          interceptors=interceptors)

    segmentation = downstream(settings.segmentation_address)
    object_clear = downstream(settings.object_clear_address)
    flux = downstream(settings.flux_address)
    inpaint = downstream(settings.inpaint_address) if settings.inpaint_address else None
    servicer = EditServicer(segmentation, object_clear, flux, inpaint=inpaint,
                            image_cache_bytes=settings.image_cache_mb * 2**20,
                            max_image_pixels=settings.max_image_pixels)
    server, port = build_server(
        settings, register=lambda s: orchestrator_pb2_grpc.add_EditServiceServicer_to_server(
            servicer, s), service_names=[SERVICE_NAME], name="orchestrator")
    server.metrics.watch_cache("images", servicer.image_cache_bytes)
    server.servicer = servicer
    # "" and EditService stay SERVING while a model server is down: the orchestrator still
    # answers every call (those needing that model UNAVAILABLE, naming the stage), and a
    # readiness probe on it must not take the whole API away while one model scales.
    watch = DownstreamHealth({SEGMENTATION_SERVICE: [segmentation],
                              OBJECT_CLEAR_SERVICE: [object_clear],
                              FLUX_SERVICE: [flux, *([inpaint] if inpaint else [])]},
                             interval_s=settings.downstream_health_interval_s)
    server.background.append(lambda: watch.run(server.health.set))
    return server, port
