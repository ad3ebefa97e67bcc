"""benchmarks.host_memory's cheap parts: (a) the real segmentation server on the tiny
checkpoint, its RSS read from /proc, and (b) SAM3's full-size weight bytes counted on the
meta device. The full-size validation (c) and the loader probes (d) take minutes and
gigabytes: they are left to the program itself (`python -m benchmarks.host_memory`).
Nothing here asserts a speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import host_memory

MB = 10**6


def test_host_memory_baseline_and_weights(tiny_root: Path, tiny_sam3: Path, tmp_path):
    out = tmp_path / "host_memory.json"
    r = host_memory.main(["--models", "sam3", "--tiny-dir", str(tiny_root), "--requests", "1",
                          "--no-validate", "--no-loader-probe", "--out", str(out)])
    assert json.loads(out.read_text(encoding="utf-8")) == r  # strict JSON, as written
    assert r["benchmark"] == "host_memory"
    env = r["environment"]
    assert env["date"] and "torch" in env and "git_commit" in env
    assert set(r["models"]) == {"sam3"}
    sam3 = r["models"]["sam3"]
    assert sam3["server"] == "segmentation"

    # (a) The real server process: python, torch, transformers, grpc and the server.
    base = sam3["baseline"]
    for when in ("serving", "after_requests"):
        status = base[when]
        assert status["VmHWM"] >= status["VmRSS"] > 100 * MB, (when, status)
        assert status["RssAnon"] > 0 and status["RssFile"] > 0
    assert base["requests"] == 1
    assert base["peak_rss"] >= base["after_requests"]["VmRSS"]
    assert 100 * MB < base["peak_anon"] < base["peak_rss"]
    assert base["sampled"]["samples"] > 0 and base["sampled"]["peak_VmRSS"] > 100 * MB

    # (b) Counted, not allocated: float16, two bytes a parameter.
    w = sam3["weights"]
    assert w["served_dtype"] == "float16"
    assert 1.5e9 <= w["bytes_resident"] <= 2.0e9
    components = w["components"]
    assert set(components) == {"detector", "tracker"}
    for c in components.values():
        assert c["params"] > 0 and c["param_bytes"] == 2 * c["params"]
        assert c["checkpoint_dtype"] == "float32" and c["converted_at_load"] is True
        assert c["checkpoint_bytes"] == 4 * c["params"]
    assert components["detector"]["params"] == pytest.approx(840e6, rel=0.01)
    assert w["largest_component"]["name"] == "detector"
    # Both models are loaded whole before one ViT is shared: more at load than resident.
    assert w["bytes_at_load"] == w["bytes_resident"] + w["bytes_shared_after_load"]
    assert w["bytes_shared_after_load"] > 0.4e9
    assert [s["component"] for s in w["load_steps"]] == ["detector", "tracker"]
    assert w["load_peak_bytes"] == max(s["sum"] for s in w["load_steps"])

    # Predictions from (a) + (b).
    p = sam3["predicted"]
    assert p["simple_peak_rss"] == base["peak_rss"] + w["bytes_resident"]
    assert p["anon_peak"] == base["peak_anon"] + w["converted_at_load_bytes"]
    assert p["load_peak_rss"] == base["peak_rss"] + w["load_peak_bytes"] > p["simple_peak_rss"]
    assert r["validation"] == {"skipped": "--no-validate"}
    assert "loader" not in r
    assert r["notes"] and r["timings_s"]["total"] > 0


def test_weights_kept_in_float32_follow_the_library_rules():
    """transformers keeps T5's `wo` in float32 when loading in float16, not in bfloat16."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from benchmarks._full_models import building

    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu")
    for dtype, kept in ((torch.float16, True), (torch.bfloat16, False)):
        with building("meta", dtype):
            model = T5EncoderModel(config)
        sizes = host_memory.module_bytes(model, dtype)
        wo = sum(p.numel() for n, p in model.named_parameters() if ".wo." in n)
        assert sizes["params_kept_fp32"] == (wo if kept else 0), dtype
        assert sizes["param_bytes"] == 2 * sizes["params"] + (2 * wo if kept else 0)
