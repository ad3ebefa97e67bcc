"""Settings: environment, CLI flags, profiles, printing."""

from __future__ import annotations

import json

import pytest
from mic2e_services import cli
from mic2e_services.flux.server import Settings as FluxSettings
from mic2e_services.object_clear.server import Settings as ClearSettings
from mic2e_services.orchestrator.server import Settings as OrchestratorSettings
from mic2e_services.segmentation.server import Settings as SegSettings
from pydantic import ValidationError


def test_defaults_are_the_models_own():
    s = ClearSettings()
    assert (s.profile, s.default_steps, s.default_guidance_scale, s.default_short_side) == (
        "quality", 20, 2.5, 512)
    f = FluxSettings()
    assert (f.default_steps, f.default_width, f.default_height) == (4, 1024, 1024)
    assert (f.quantization, f.offload, f.compile) == ("none", "none", False)
    assert (SegSettings().port, ClearSettings().port, FluxSettings().port,
            OrchestratorSettings().port) == (50052, 50053, 50054, 50051)


def test_environment_then_flags(monkeypatch):
    monkeypatch.setenv("MIC2E_DEVICE", "cuda:1")
    monkeypatch.setenv("MIC2E_MAX_QUEUE", "7")
    s = FluxSettings()
    assert (s.device, s.max_queue) == ("cuda:1", 7)
    assert FluxSettings(max_queue=3).max_queue == 3  # a flag beats the environment


def test_profile_fills_only_what_is_not_set(monkeypatch):
    fast = ClearSettings(profile="fast")
    assert (fast.default_steps, fast.default_short_side) == (10, 384)
    assert ClearSettings(profile="fast", default_steps=20).default_steps == 20
    low = FluxSettings(profile="low-memory")
    assert (low.quantization, low.offload, low.vae_tiling) == ("int8", "model", True)
    monkeypatch.setenv("MIC2E_PROFILE", "low-memory")
    monkeypatch.setenv("MIC2E_OFFLOAD", "none")
    env = FluxSettings()
    assert (env.quantization, env.offload) == ("int8", "none")
    assert (SegSettings().feature_cache_mb, SegSettings().image_cache_mb) == (160, 128)


@pytest.mark.parametrize(("cls", "kwargs", "field"), [
    (ClearSettings, {"profile": "turbo"}, "profile"),
    (FluxSettings, {"default_width": 1000}, "default_width"),
    (ClearSettings, {"default_steps": 0}, "default_steps"),
    (FluxSettings, {"quantization": "int4"}, "quantization"),
    (SegSettings, {"port": 70000}, "port"),
])
def test_bad_settings_name_the_setting(cls, kwargs, field):
    with pytest.raises(ValidationError) as info:
        cls(**kwargs)
    assert field in str(info.value)


def test_print_settings_shows_effective_values_and_hides_secrets(capsys, monkeypatch):
    monkeypatch.setenv("MIC2E_AUTH_TOKENS", "super-secret")
    assert cli.main(["flux", "--profile", "fast", "--port", "6000", "--print-settings"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["profile"], printed["default_steps"], printed["port"]) == ("fast", 2, 6000)
    assert "super-secret" not in json.dumps(printed)


def test_compile_settings_become_one_spec_for_the_model(monkeypatch):
    assert FluxSettings().compile_spec() is None  # off by default
    monkeypatch.setenv("MIC2E_COMPILE", "1")
    monkeypatch.setenv("MIC2E_COMPILE_CACHE_DIR", "/var/cache/mic2e")
    spec = ClearSettings(compile_mode="max-autotune").compile_spec()
    assert (spec.backend, spec.mode, spec.cache_dir) == ("inductor", "max-autotune",
                                                         "/var/cache/mic2e")
    assert SegSettings().compile_spec().mode == "reduce-overhead"  # CUDA graphs by default
    with pytest.raises(ValueError, match="compile_mode"):
        FluxSettings(compile_mode="fastest")


def test_every_default_written_once_is_what_its_users_get():
    """The limits and sizes with a default in more than one place read one constant: the
    settings, the constructors, the Python channel and the TypeScript client agree."""
    import inspect
    import re
    from pathlib import Path

    from mic2e import channel
    from mic2e_services.orchestrator.servicer import EditServicer
    from mic2e_services.runtime import settings as s
    from mic2e_services.runtime.images import ImageStore
    from mic2e_services.runtime.worker import ModelWorker

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    served = FluxSettings()
    assert served.max_message_mb == channel.MAX_MESSAGE_MB == default(
        channel.aio_channel, "max_message_mb")
    assert default(ModelWorker, "max_queue") == served.max_queue == s.MAX_QUEUE
    assert default(ModelWorker, "max_wait_s") * 1000 == served.max_wait_ms == s.MAX_WAIT_MS
    assert default(ImageStore, "max_bytes") == served.image_cache_mb * 2**20
    assert default(EditServicer, "image_cache_bytes") == \
        OrchestratorSettings().image_cache_mb * 2**20
    ts = (Path(__file__).resolve().parents[2] / "client-ts/src/index.ts").read_text()
    limit = re.search(r"DEFAULT_MAX_MESSAGE_BYTES = (\d+) \* 1024 \* 1024;", ts)
    assert limit and int(limit.group(1)) == channel.MAX_MESSAGE_MB
