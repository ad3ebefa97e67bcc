"""torch.compile behind the `compile` settings, on CPU with the tiny checkpoints.

Inductor really generates code here (C++ on CPU), so these check what a GPU run relies
on: the compiled path gives the eager masks, and a restart with the persistent cache
directory reuses the compiled graphs instead of generating them again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from mic2e import codecs
from mic2e.v1 import common_pb2, segmentation_pb2, segmentation_pb2_grpc
from mic2e_services.segmentation import server as seg_server
from PIL import Image

from tests.conftest import serving

ROOT = Path(__file__).resolve().parents[2]


def _start(checkpoint: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tests.compile_probe", str(checkpoint),
                           str(cache_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_compiled_sam3_matches_eager_and_a_restart_reuses_the_cache(tiny_sam3, tmp_path):
    cache = tmp_path / "compile-cache"
    first = _start(tiny_sam3, cache)
    assert first["fxgraph_cache_miss"] >= 1 and first["fxgraph_cache_hit"] == 0, first
    assert first["masks"] >= 2 and first["min_iou"] >= 0.99, first
    assert any(cache.iterdir()), "nothing was written to the compile cache"

    second = _start(tiny_sam3, cache)  # a restart: a new process, the same volume
    assert second["fxgraph_cache_hit"] >= 1 and second["fxgraph_cache_miss"] == 0, second
    assert second["min_iou"] >= 0.99, second


async def test_segmentation_int8_and_compile_settings_reach_the_model_and_serve(tiny_sam3):
    settings = seg_server.Settings(host="127.0.0.1", port=0, model=str(tiny_sam3),
                                   quantization="int8", compile=True, compile_backend="eager")
    server, port = seg_server.create_server(settings)
    async with serving((server, port)) as (_, channel):
        model = server.worker.model
        backbone = model._detector.vision_encoder.backbone
        assert model._tracker.vision_encoder.backbone is backbone  # still held once
        assert backbone._compiled_call_impl is not None
        weights = {type(p).__name__ for p in backbone.parameters() if p.dim() == 2}
        assert any("Int8" in w for w in weights), weights
        pixels = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        reply = await segmentation_pb2_grpc.SegmentationServiceStub(channel).SegmentByText(
            segmentation_pb2.SegmentByTextRequest(
                image=common_pb2.Image(data=codecs.encode_image(Image.fromarray(pixels),
                                                                "png")),
                text="dog", score_threshold=0.0, max_instances=3))
        assert 1 <= len(reply.instances) <= 3
        assert all(i.mask.width == 160 and i.mask.height == 120 for i in reply.instances)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _ok(results: list) -> None:
    for r in results:
        assert not isinstance(r, BaseException), r


def test_warm_up_compiles_every_shape_so_no_request_recompiles(tiny_sam3, tiny_objectclear,
                                                                tiny_flux, tiny_flux_fill):
    # The "eager" backend traces exactly as Inductor would (same graphs, same recompiles)
    # without generating code. After warm-up, no size or batch may compile again: with a
    # cold cache on a GPU that recompile would take minutes inside a request.
    from mic2e_services.flux.model import FluxGenerator, GenerateQuery, InpaintQuery
    from mic2e_services.object_clear.model import ClearQuery, ObjectClearModel
    from mic2e_services.runtime.model_api import CompileSpec, QuietContext
    from mic2e_services.segmentation.model import Sam3Segmenter, TextQuery

    spec = CompileSpec(backend="eager")
    ctx = QuietContext()

    flux = FluxGenerator(str(tiny_flux), compile=spec, max_batch_size=4)
    flux.load()
    flux.warmup()
    before = _graphs()
    for (w, h), n in (((256, 256), 1), ((256, 256), 3), ((384, 256), 2), ((1024, 512), 1)):
        _ok(flux([GenerateQuery("a dog", w, h, 2, i) for i in range(n)], [ctx] * n))
    assert _graphs() == before, "a FLUX request compiled a new graph after warm-up"
    mask = np.zeros((300, 400), bool)
    mask[100:200, 100:250] = True
    inpaint = InpaintQuery(Image.new("RGB", (400, 300)), mask, "a cat", steps=2)
    _ok(flux([inpaint] * 2, [ctx] * 2))  # the resident transformer, other inputs
    assert _graphs() == before, "a FLUX inpainting compiled a new graph after warm-up"

    # A fill checkpoint warms up by inpainting (it cannot Generate): the same guarantee.
    fill = FluxGenerator(str(tiny_flux_fill), compile=spec, max_batch_size=4)
    fill.load()
    fill.warmup()
    before = _graphs()
    for (w, h), n in (((256, 256), 1), ((256, 256), 3), ((700, 300), 2)):
        m = np.zeros((h, w), bool)
        m[h // 4:h // 2, w // 4:w // 2] = True
        _ok(fill([InpaintQuery(Image.new("RGB", (w, h)), m, "a cat", steps=2, seed=i)
                  for i in range(n)], [ctx] * n))
    assert _graphs() == before, "a FLUX fill request compiled a new graph after warm-up"

    clear = ObjectClearModel(str(tiny_objectclear), compile=spec, max_batch_size=2)
    clear.load()
    clear.warmup()
    before = _graphs()
    for w, h in ((256, 256), (320, 256), (256, 400), (700, 300)):
        mask = np.zeros((h, w), bool)
        mask[40:120, 40:120] = True
        query = ClearQuery(Image.new("RGB", (w, h)), mask, "dog", steps=2, short_side=256)
        _ok(clear([query, query], [ctx, ctx]))
    assert _graphs() == before, "an ObjectClear request compiled a new graph after warm-up"

    seg = Sam3Segmenter(str(tiny_sam3), compile=spec, max_batch_size=4)
    seg.load()
    seg.warmup()
    before = _graphs()
    rng = np.random.default_rng(1)
    for n in (1, 3, 4):
        images = [Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
                  for _ in range(n)]
        _ok(seg([TextQuery(image=im, image_key=f"k{n}-{i}", text="dog", score_threshold=0.0)
                 for i, im in enumerate(images)], [ctx] * n))
    assert _graphs() == before, "a SAM3 request compiled a new graph after warm-up"
