"""Server settings: one pydantic-settings object per server, read once at start.

Values come from, highest priority first: CLI flags (passed as keyword arguments),
`MIC2E_*` environment variables, the defaults below. Nothing reads the environment at
import time; `load_settings` is called by the CLI and the result is passed down.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

from mic2e import codecs
from mic2e.channel import MAX_MESSAGE_MB
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mic2e_services.runtime.model_api import CompileSpec

S = TypeVar("S", bound="ServerSettings")


#: Defaults written once: the settings below and every constructor with a default read
#: these (the worker's queue and batch wait, the image store's size).
MAX_QUEUE = 64
MAX_WAIT_MS = 5.0
IMAGE_CACHE_MB = 512


class ServerSettings(BaseSettings):
    """What every server (model servers and orchestrator) has."""

    model_config = SettingsConfigDict(env_prefix="MIC2E_", extra="ignore")

    host: str = Field("[::]", description="address to bind")
    port: int = Field(0, description="port to bind (0: any free port)")
    max_message_mb: int = Field(MAX_MESSAGE_MB, ge=1, le=2048,
                                description="largest message, in MiB")
    max_image_pixels: int = Field(codecs.DEFAULT_MAX_PIXELS, ge=1,
                                  description="larger images are refused "
                                  "before decoding (the orchestrator decodes one only to "
                                  "build a whole picture from a patch)")
    keepalive_time_s: float = Field(30.0, gt=0, description="ping idle connections this often")
    keepalive_timeout_s: float = Field(10.0, gt=0, description="drop a connection whose ping "
                                       "is not answered within this")
    grace_period_s: float = Field(30.0, ge=0, description="on SIGTERM, let in-flight calls "
                                  "finish for this long")
    max_connection_age_s: float = Field(300.0, gt=0, description="close client connections "
                                        "this old (in-flight calls finish first), so clients "
                                        "re-resolve DNS and reach new replicas")
    max_connection_age_grace_s: float = Field(
        3600.0, gt=0, description="how long a call already running on an aged connection may "
        "go on: long enough for the longest call a server admits, so ageing never cuts "
        "accepted work (SIGTERM has its own grace_period_s)")
    image_cache_mb: int = Field(IMAGE_CACHE_MB, ge=1,
                                description="images received, kept for SHA-256 "
                                "references: at most this many MiB (decoded pixels on a model "
                                "server, encoded bytes on the orchestrator)")
    reflection: bool = Field(True, description="serve gRPC server reflection")
    log_level: str = Field("INFO", description="logging level")
    tls_cert_file: str | None = Field(None, description="PEM certificate: serve TLS only")
    tls_key_file: str | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: str | None = Field(None, description="PEM CA: require client "
                                           "certificates signed by it (mutual TLS)")
    auth_tokens: SecretStr | None = Field(None, description="comma-separated bearer tokens; "
                                          "when any is set, calls must carry one")
    auth_tokens_file: str | None = Field(None, description="file with one bearer token "
                                         "per line")
    metrics_port: int = Field(9090, ge=-1, le=65535, description="Prometheus /metrics port "
                              "(0: any free port, -1: off)")
    http_port: int = Field(-1, ge=-1, le=65535, description="HTTP port for the Connect "
                           "protocol (JSON and binary) and gRPC-Web, over HTTP/1.1 and "
                           "HTTP/2, and the playground page (0: any free port, -1: off)")
    http_cors_origins: str = Field("", description="comma-separated origins whose pages "
                                   "may call the HTTP port ('*': any); empty: same origin "
                                   "only")
    playground_dir: str | None = Field(None, description="built playground page served at "
                                       "/ of the HTTP port; default: client-ts/dist/"
                                       "playground of this checkout, when built")
    tracing: bool = Field(False, description="OpenTelemetry spans per RPC and model stage")
    otlp_endpoint: str | None = Field(None, description="OTLP/gRPC collector for spans, e.g. "
                                      "http://otel-collector:4317")


    @field_validator("port")
    @classmethod
    def _port_in_range(cls, port: int) -> int:
        # A validator, not Field bounds: servers override the default and keep the check.
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        return port


class ModelServerSettings(ServerSettings):
    """What every model server adds: the model, its device and its worker."""

    model: str = Field("", description="hub id or local folder of the checkpoint")
    revision: str | None = Field(None, description="the hub checkpoint's revision: a commit "
                                 "pins it (every replica loads the same files), a branch or "
                                 "tag follows it; default: main. Reported in every result's "
                                 "provenance. A folder is read as it is")
    # Its clients are orchestrators on round-robin channels that only re-resolve DNS when
    # a connection closes: a replica added by the autoscaler gets calls within a minute.
    # (Safe since ageing never cuts an accepted call: max_connection_age_grace_s.)
    max_connection_age_s: float = Field(60.0, gt=0, description="close client connections "
                                        "this old (in-flight calls finish first), so "
                                        "orchestrators re-resolve DNS and reach new replicas")
    model_name: str | None = Field(None, description="the model's name in responses "
                                   "(Provenance.model_id); default: its hub id, or the "
                                   "folder's name - never a server path")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or mps")
    dtype: str | None = Field(None, description="compute dtype; default: half on GPU, "
                              "float32 on CPU")
    max_queue: int = Field(MAX_QUEUE, ge=1, description="requests waiting beyond this are refused")
    max_batch_size: int | None = Field(None, ge=1, description="largest batch; default: the "
                                       "model's own")
    max_wait_ms: float = Field(MAX_WAIT_MS, ge=0, description="how long a batch waits for company")
    profile: Literal["quality", "fast", "low-memory"] = Field(
        "quality", description="named trade-off; fills every setting below that is not set "
        "on its own (see the README's profile table)")
    quantization: Literal["none", "int8", "fp8"] = Field(
        "none", description="weight-only quantisation of the big parts (torchao); fp8 needs "
        "a GPU that supports it")
    offload: Literal["none", "model"] = Field(
        "none", description="'model': keep idle components in CPU memory (diffusers model "
        "CPU offload); needs an accelerator")
    compile: bool = Field(False, description="torch.compile the heaviest module, during "
                          "warm-up (off until a GPU run has checked its speed and fidelity)")
    compile_backend: str = Field("inductor", description="torch.compile backend ('eager' "
                                 "exercises the path without code generation)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"] = Field(
        "reduce-overhead", description="Inductor mode; reduce-overhead records CUDA graphs "
        "(one per input shape); no effect on CPU")
    compile_cache_dir: str | None = Field(
        None, description="persistent torch.compile cache (Inductor + Triton): mount a "
        "volume here so a restart skips code generation; default: a temporary folder")

    #: Per profile, the values it gives to settings not set explicitly. "quality" is the
    #: model's own behaviour; each server lists its own "fast" and "low-memory".
    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"quality": {}, "fast": {},
                                                      "low-memory": {}}

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        # Runs on the merged CLI + environment values: what the caller set wins.
        if isinstance(data, dict):
            profile = data.get("profile") or "quality"
            for name, value in cls.PROFILES.get(str(profile), {}).items():
                if data.get(name) is None:
                    data[name] = value
        return data

    def model_kwargs(self) -> dict[str, Any]:
        """The model constructor's arguments every model server passes the same way."""
        kwargs: dict[str, Any] = dict(device=self.device, dtype=self.dtype,
                                      quantization=self.quantization, offload=self.offload,
                                      compile=self.compile_spec(),
                                      model_name=self.model_name, revision=self.revision)
        if self.max_batch_size:
            kwargs["max_batch_size"] = self.max_batch_size
        return kwargs

    def compile_spec(self) -> CompileSpec | None:
        """What the model is told about compilation; None when `compile` is off."""
        if not self.compile:
            return None
        return CompileSpec(backend=self.compile_backend, mode=self.compile_mode,
                           cache_dir=self.compile_cache_dir)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment plus the non-None `overrides` (CLI flags)."""
    return cls(**{k: v for k, v in overrides.items() if v is not None})
