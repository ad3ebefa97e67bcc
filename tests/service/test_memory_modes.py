"""Memory modes on CPU with the tiny checkpoints: what can run serves a request; what needs
an accelerator is refused at start-up, naming the setting."""

from __future__ import annotations

import numpy as np
import pytest
from mic2e import codecs
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    object_clear_pb2,
    object_clear_pb2_grpc,
)
from mic2e_services import cli
from mic2e_services.flux import server as flux_server
from mic2e_services.object_clear import server as oc_server
from PIL import Image

from tests.conftest import serving
from tests.grpc_helpers import drain


@pytest.mark.parametrize(("argv", "setting"), [
    (["flux", "--profile", "low-memory"], "offload"),
    (["flux", "--offload", "model"], "offload"),
    (["object-clear", "--quantization", "fp8"], "quantization"),
    (["object-clear", "--offload", "model"], "offload"),
    (["segmentation", "--offload", "model"], "offload"),
    (["flux", "--offload", "model", "--compile"], "compile"),
    (["object-clear", "--offload", "model", "--compile"], "compile"),
    (["segmentation", "--quantization", "fp8"], "quantization"),
])
def test_modes_the_cpu_cannot_run_are_refused_at_start_up(argv, setting, capsys):
    assert cli.main([*argv, "--device", "cpu", "--model", "unused"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and setting in err and f"MIC2E_{setting.upper()}" in err


async def test_flux_int8_tiled_compiled_serves(tiny_flux):
    settings = flux_server.Settings(host="127.0.0.1", port=0, model=str(tiny_flux),
                                    quantization="int8", vae_tiling=True, compile=True,
                                    compile_backend="eager")
    server, port = flux_server.create_server(settings)
    async with serving((server, port)) as (_, channel):
        model = server.worker.model
        for part in (model._pipe.transformer, model._pipe.text_encoder_2):
            weights = {type(p).__name__ for p in part.parameters() if p.dim() == 2}
            assert any("Int8" in w for w in weights), weights
        assert model._pipe.vae.use_tiling
        assert model._pipe.transformer._compiled_call_impl is not None
        events = await drain(flux_pb2_grpc.FluxServiceStub(channel).Generate(
            flux_pb2.GenerateRequest(prompt="a red bicycle", width=256, height=256, steps=2,
                                     seed=1)))
        assert events[-1].result.image.width == 256


async def test_object_clear_int8_tiled_compiled_serves(tiny_objectclear):
    settings = oc_server.Settings(host="127.0.0.1", port=0, model=str(tiny_objectclear),
                                  profile="low-memory", compile=True, compile_backend="eager")
    assert (settings.quantization, settings.vae_tiling) == ("int8", True)
    server, port = oc_server.create_server(settings)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:40] = True
    request = object_clear_pb2.ClearRequest(
        image=common_pb2.Image(data=codecs.encode_image(Image.new("RGB", (64, 48)), "png")),
        masks=[common_pb2.Mask(width=64, height=48, png=codecs.encode_mask_png(mask))],
        options=object_clear_pb2.ClearOptions(steps=2, short_side=256, seed=0))
    async with serving((server, port)) as (_, channel):
        model = server.worker.model
        unet = model.pipeline.unet
        weights = [type(p).__name__ for p in unet.parameters() if p.dim() == 2]
        assert any("Int8" in w for w in weights), set(weights)
        assert unet._compiled_call_impl is not None
        events = await drain(object_clear_pb2_grpc.ObjectClearServiceStub(channel).Clear(request))
        assert events[-1].result.image.width == 64
