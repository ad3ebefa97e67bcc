"""Smoke runs of the benchmark programs on the tiny CPU stack: they run end to end and
report what they promise, with sane values. Nothing here asserts a speed.

Each program runs in this process through its `main(argv)` (the same code as
`python -m benchmarks.<name>`), with minimal repeats, so the whole file stays near a
minute on two cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import load, memory, models, overhead, photo_path, soak


@pytest.fixture(scope="module")
def tiny_dir(tiny_root: Path, tiny_sam3: Path, tiny_objectclear: Path, tiny_flux: Path) -> Path:
    """The session's tiny checkpoints, in the layout the benchmarks expect (sam3/, ...)."""
    return tiny_root


def _written(path: Path, result: dict) -> dict:
    on_disk = json.loads(path.read_text(encoding="utf-8"))  # strict JSON: no Infinity/NaN
    assert on_disk == result
    assert on_disk["environment"]["date"] and "torch" in on_disk["environment"]
    return on_disk


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_models_tiny_profile(tiny_dir, tmp_path):
    out = tmp_path / "models.json"
    r = models.main(["--tiny-dir", str(tiny_dir), "--repeats", "1", "--warmup", "0",
                     "--sam3-image", "320x240", "--sam3-batch", "2", "--oc-image", "320x256",
                     "--oc-steps", "2", "--old-steps", "1", "--flux-sizes", "256",
                     "--concurrency", "1,2", "--compile-backend", "eager",
                     "--out", str(out)])
    _written(out, r)
    assert r["profile"] == "tiny" and r["device"] == "cpu"
    assert set(r["models"]) == {"sam3", "objectclear", "flux"}

    sam3 = r["models"]["sam3"]
    assert set(sam3["paths"]) == {"text", "requery_cached", "text_batch2", "click"}
    for timing in sam3["paths"].values():
        assert timing["eager"]["s"]["median"] > 0 and timing["optimised"]["s"]["median"] > 0
        assert _finite(timing["speedup"])
    assert _finite(sam3["ratios"]["requery_over_text"])
    assert sam3["shares_backbone"] is True
    # Plain eager fp32 on CPU IS the reference: identical masks.
    assert sam3["fidelity"]["text_optimised_vs_eager_fp32"] == 1.0
    assert sam3["fidelity"]["click_optimised_vs_eager_fp32"] == 1.0

    oc = r["models"]["objectclear"]
    assert oc["paths"]["old_setting"]["sliced"]["s"]["median"] > 0
    assert _finite(oc["ratios"]["old_setting_over_optimised"])
    for key in ("optimised_vs_eager_fp32", "eager_vs_eager_fp32", "optimised_vs_eager"):
        psnr = oc["fidelity"][key]
        assert psnr == "inf" or psnr > 60, (key, psnr)

    flux = r["models"]["flux"]
    assert set(flux["paths"]) == {"generate_256", "inpaint_256"}
    # Inpaint ran on the resident components: not one byte of weights more.
    resident = flux["resident_bytes"]
    assert resident["shared"] and resident["before_inpaint"] == resident["after_inpaint"] > 0
    psnr = flux["fidelity"]["optimised_vs_eager_fp32"]
    assert psnr == "inf" or psnr > 60

    for name, m in r["models"].items():
        tp = m["throughput"]
        for level in ("1", "2"):
            assert tp[level]["requests"] == int(level) and tp[level]["requests_per_s"] > 0, name
        assert m["optimisation"].startswith("torch.compile of the"), m["optimisation"]


def test_models_full_profile_refuses_without_cuda(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        models.main(["--profile", "full"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "CUDA device" in message and "--profile full" in message


def test_memory_full_profile_refuses_without_cuda_and_bad_runs_are_named(monkeypatch,
                                                                          capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        memory.main(["--profile", "full"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "CUDA device" in message and "benchmarks.memory" in message
    with pytest.raises(SystemExit, match="unknown mode 'int4'"):
        memory.parse_run("int4@8")
    assert memory.parse_run("int8+offload@16") == ("int8+offload", 16.0)


def test_full_size_configs_have_the_real_parameter_counts(tmp_path):
    """Built on the meta device (no memory, no GPU): the sizes docs/models.md gives."""
    import torch

    from benchmarks import _full_models as fm

    sam3 = fm.sam3("meta", torch.float16, tmp_path)
    assert fm.sam3_parameters(sam3)["detector"] == pytest.approx(840e6, rel=0.01)
    assert sam3["tracker"].vision_encoder.backbone is sam3["detector"].vision_encoder.backbone
    oc = fm.parameters(fm.objectclear("meta", torch.float16, tmp_path))
    assert oc["unet"] == pytest.approx(2.567e9, rel=0.005)
    flux = fm.parameters(fm.flux("meta", torch.bfloat16, tmp_path))
    assert flux["transformer"] == pytest.approx(11.9e9, rel=0.01)
    assert flux["text_encoder_2"] == pytest.approx(4.76e9, rel=0.01)


def test_overhead(tiny_dir, tmp_path):
    out = tmp_path / "overhead.json"
    r = overhead.main(["--tiny-dir", str(tiny_dir), "--requests", "2", "--warmup", "1",
                       "--image-size", "256x192", "--out", str(out)])
    _written(out, r)
    assert set(r["targets"]) == {"mask", "text"}
    assert r["failures"] == 0
    for target in r["targets"].values():
        assert target["orchestrated_s"]["n"] == target["direct_s"]["n"] == 2
        assert _finite(target["overhead_ratio"]) and _finite(target["overhead_ms"])
    assert _finite(r["overhead_ratio"]) and isinstance(r["meets_target"], bool)
    # Fresh pictures: each one went as bytes (never by reference) to the orchestrator and,
    # on the direct path, to each server it needed (segmentation for text targets only).
    sent = r["images_sent"]
    assert sent["orchestrator"] == sent["object-clear"] == {"bytes": 2 * (1 + 2), "refs": 0}
    assert sent["segmentation"] == {"bytes": 1 + 2, "refs": 0}


def test_load(tiny_dir, tmp_path):
    out = tmp_path / "load.json"
    r = load.main(["--tiny-dir", str(tiny_dir), "--seconds", "5", "--capacity-requests", "3",
                   "--warmup", "1", "--out", str(out)])
    _written(out, r)
    q = r["requests"]
    assert q["offered"] > 0
    assert q["offered"] == q["accepted"] + q["refused"]
    assert q["accepted"] == q["completed"] + q["failed"]
    # Every refusal is RESOURCE_EXHAUSTED with RetryInfo (from_rpc_error -> retry_after_s).
    assert r["refused"]["with_retry_info"] == q["refused"]
    assert set(r["refused"]["reasons"]) <= {"QUEUE_FULL", "DEADLINE_TOO_SHORT"}
    # Admission control: what the server accepts, it finishes (an accepted request may
    # only fail by outliving its deadline, never with INTERNAL / UNAVAILABLE ...).
    assert all(code.startswith("DEADLINE_EXCEEDED") for code in r["failed"]["codes"]), r
    assert r["all_accepted_completed"] == (q["failed"] == 0 and q["completed"] > 0)
    if q["completed"]:
        lat = r["latency_s"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        assert _finite(r["p99_over_p50"])
    assert r["capacity"]["capacity_rps"] > 0 and r["deadline_s"] > 0


def test_soak(tiny_dir, tmp_path):
    out = tmp_path / "soak.json"
    r = soak.main(["--in-process", "--tiny-dir", str(tiny_dir), "--seconds", "5",
                   "--warmup-cycles", "1", "--sample-interval", "2", "--out", str(out)])
    _written(out, r)
    assert r["failures"]["total"] == 0, r["failure_examples"]
    for op in soak.OPS:
        assert r["requests"][op] >= 1, op
    mem = r["memory"]["stack (in-process)"]
    assert mem["rss_start_mib"] > 0 and mem["rss_end_mib"] > 0
    assert _finite(mem["growth_pct"])
    assert len(r["samples"]) >= 2 and all(r["servers_alive"].values())


def test_the_stack_launchers_commands_are_the_server_cli():
    """Child-process stacks (`up`, the soak's default) run commands `mic2e-server` accepts."""
    from mic2e_services.cli import build_parser
    from mic2e_services.stack import command as server_command

    parser = build_parser()
    for name in ("segmentation", "object-clear", "flux"):
        cmd = server_command(name, 5000, model="/x", device="cpu")
        assert cmd[1:3] == ["-m", "mic2e_services.cli"]
        args = parser.parse_args(cmd[3:])
        assert (args.command, args.port, args.model) == (name, 5000, "/x")
    cmd = server_command("orchestrator", 5001, addresses={"flux": "127.0.0.1:5004"})
    assert parser.parse_args(cmd[3:]).flux_address == "127.0.0.1:5004"


def test_memory_tiny_profile_runs_each_mode_in_its_own_process(tiny_dir, tmp_path):
    out = tmp_path / "memory.json"
    r = memory.main(["--tiny-dir", str(tiny_dir), "--models", "flux", "--repeats", "1",
                     "--warmup", "0", "--out", str(out)])
    _written(out, r)
    runs = r["runs"]["flux"]
    assert [x["mode"] for x in runs] == ["resident", "int8"]
    assert all(x["fits"] is True and x["load_s"] > 0 for x in runs), runs
    assert runs[0]["fidelity_vs_reference"] == "inf"  # the reference against itself
    int8 = runs[1]
    assert int8["settings"] == {"quantization": "int8"}
    assert _finite(int8["fidelity_vs_reference"]) and _finite(int8["latency_over_reference"])
    assert int8["lossy"] == (int8["fidelity_vs_reference"] < memory.LOSSY_DB)
    assert r["goals"] == []  # card-size goals need a capped GPU run


def test_memory_run_that_runs_out_of_memory_is_reported_as_not_fitting(monkeypatch, tmp_path):
    # The models turn an OOM inside a request into RESOURCE_EXHAUSTED (OUT_OF_MEMORY):
    # that is the finding "does not fit", not a crashed run.
    from mic2e_services import errors

    class OutOfMemory:
        def load(self) -> None:
            pass

        def __call__(self, requests, contexts):
            return [errors.ResourceExhausted("out of device memory", reason="OUT_OF_MEMORY")]

    monkeypatch.setattr(memory, "_build", lambda job: (OutOfMemory(), object()))
    job = {**memory.PROFILES["tiny"], "model": "flux", "mode": "int8", "cap_gib": None,
           "profile": "tiny", "output": str(tmp_path / "out.png")}
    result = memory.child(job)
    assert result["fits"] is False and result["failed_at"] == "requests", result
    assert "out of memory" in result["error"]


def test_memory_goals_pick_the_fastest_run_that_fits_each_card():
    def run(mode, cap, latency, fits=True):
        return {"mode": mode, "cap_gib": cap, "fits": fits, "latency_s": {"median": latency}}

    results = {"flux": [run("resident", None, 1.0), run("int8", 24, 1.5),
                        run("offload", 24, 3.0), run("int8+offload", 16, 2.5),
                        run("fp8+offload", 16, 0.1, fits=False)],
               "objectclear": [run("resident", None, 1.0), run("int8", 8, 1.2)]}
    rows = {(g["model"], g["card_gib"]): g for g in memory.goals(results)}
    assert rows[("flux", 24)]["run"] == "int8@24GiB" and rows[("flux", 24)]["met"]
    # A run that did not fit never counts, however fast it was.
    assert rows[("flux", 16)]["run"] == "int8+offload@16GiB"
    assert not rows[("flux", 16)]["met"] and rows[("flux", 16)]["gap"] == "1.25x too slow"
    assert rows[("objectclear", 8)]["met"]
    assert ("sam3", 4) not in rows  # not measured: not claimed either way


def test_photo_path(tiny_dir, tmp_path):
    """The removal paths at 0.3 and 1 MP, one request each (ReplaceObjects and
    SegmentByText would start two more servers: ~50 s more on two cores): every figure
    the program promises is there, per process and per hop, and sane."""
    import numpy as np
    from mic2e import codecs

    jpeg = photo_path.photo(64, 48)
    again = photo_path.fresh(jpeg, 1)  # new bytes, the same picture
    assert again != jpeg and np.array_equal(np.asarray(codecs.decode_image(again)),
                                            np.asarray(codecs.decode_image(jpeg)))
    assert photo_path.photo_mask(640, 480).mean() == pytest.approx(0.04, rel=0.02)

    out = tmp_path / "photo_path.json"
    r = photo_path.main(["--tiny-dir", str(tiny_dir), "--sizes", "0.3,1", "--ops", "remove",
                         "--requests", "1", "--warmup", "0", "--floor-repeats", "1",
                         "--goal-size", "1", "--out", str(out)])
    _written(out, r)
    assert r["failures"] == []
    for key, (width, height) in (("0.3", (640, 480)), ("1", (1152, 864))):
        e = r["sizes"][key]
        assert (e["width"], e["height"]) == (width, height) and e["jpeg_bytes"] > 0
        assert e["floor"]["decode_ms"] > 0 and e["floor"]["encode_region_ms"] > 0
        remove = e["remove"]
        assert set(remove) == {"new", "crop", "today"}
        for path, x in remove.items():
            assert x["n"] == 1
            cpu = x["cpu_outside_model_ms"]
            assert {"client", "orchestrator", "object-clear", "total"} <= set(cpu)
            assert all(_finite(v) and v >= 0 for v in cpu.values()), (path, cpu)
            assert _finite(x["model_cpu_ms"]) and x["model_cpu_ms"] > 0
            wire = x["wire_bytes"]
            # The photo goes up each hop once (fresh bytes: never by reference).
            assert wire["client->orchestrator"]["request"] > e["jpeg_bytes"]
            assert wire["orchestrator->object-clear"]["request"] > e["jpeg_bytes"]
            assert x["result_wire_bytes"] >= 2 * x["payload_bytes"] > 0
            assert _finite(x["ratio_to_floor"])
        # A patch of the repainted region (the mask, grown a little) instead of the picture.
        assert remove["new"]["payload"] == remove["crop"]["payload"] == "patch"
        assert remove["today"]["payload"] == "image"
        x0, y0, x1, y1 = remove["new"]["repainted_box"]
        assert (x1 - x0) * (y1 - y0) < 0.25 * width * height
        assert remove["new"]["result_wire_bytes"] < remove["today"]["result_wire_bytes"]
        assert _finite(remove["new"]["cpu_ratio_to_today"])
        assert _finite(remove["new"]["bytes_ratio_to_today"])
        assert remove["today"]["derived"]["result_wire_bytes"] > 0
        assert e["old_encoder"]["png6_bytes"] > 0
        assert e["client_parts_ms"]["jpeg_decode_photo_ms"] > 0
    goals = r["goals"]
    assert goals["evaluated"] and goals["size"] == "1"
    assert set(goals["checks"]) == {"cpu_vs_floor", "cpu_vs_today", "bytes_vs_today"}
    assert all(isinstance(c["met"], bool) for c in goals["checks"].values())
