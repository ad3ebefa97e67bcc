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
