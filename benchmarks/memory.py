"""Memory modes per model: peak device memory, load time, latency and fidelity under a cap.

Issue 10 item 3. For each model and each (mode, cap) run below, a fresh process:

1. caps its device memory at the card size (``torch.cuda.set_per_process_memory_fraction``,
   before anything is allocated), so a small card is reproduced on a big one;
2. loads the model through the model class's own ``load()`` with the mode's settings
   (quantisation layer by layer on the way to the device, model CPU offload, VAE
   tiling) - the same code a server runs with ``MIC2E_QUANTIZATION`` etc.;
3. times `--repeats` requests after `--warmup` (``torch.cuda.synchronize`` around each);
4. reports the allocator's peak (load and requests), load time, latency and requests/s,
   and saves its output.

A run that exceeds its cap ends in an out-of-memory error: reported as ``fits: false``
with the error, never hidden. The parent then compares every output with the resident
run's on the same weights and seed (random weights are seeded, so every process builds
the same ones): PSNR of the images, mask IoU for SAM3. A mode under 30 dB is marked lossy.
Last, the goals of issue 10 are checked: the fastest mode that fits each card, against
the resident latency.

Profiles:
* ``tiny`` (default): CPU, the tiny checkpoints loaded by the model classes from disk;
  modes that run on a CPU only (resident, int8), no caps. Proves the program works.
* ``full``: CUDA only. Full-size random weights built in CPU memory (seeded) and handed
  to the model class, which quantises / offloads / places them as a server would.

    uv run python -m benchmarks.memory                            # tiny, CPU
    uv run python -m benchmarks.memory --profile full --record    # a GPU machine
    uv run python -m benchmarks.memory --profile full --models flux --runs flux=int8+offload@16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO,
    SERVER_OF,
    add_output_args,
    box_mask,
    environment,
    finish,
    fmt_s,
    fmt_x,
    parse_size,
    pick_models,
    picture,
    profile_settings,
    quiet,
    quiet_env,
    ratio,
    summary,
    table,
)
from benchmarks.models import PROMPT, masks_iou, psnr

NAME = "memory"
MODELS = ("sam3", "objectclear", "flux")
#: Below this PSNR against the resident path a mode is documented as lossy.
LOSSY_DB = 30.0
SEED = 1234

#: Mode name -> the model class settings it sets (the servers' settings of the same name).
MODES: dict[str, dict[str, Any]] = {
    "resident": {},
    "int8": {"quantization": "int8"},
    "fp8": {"quantization": "fp8"},
    "tiling": {"vae_tiling": True},
    "int8+tiling": {"quantization": "int8", "vae_tiling": True},
    "offload": {"offload": "model"},
    "int8+offload": {"quantization": "int8", "offload": "model"},
    "fp8+offload": {"quantization": "fp8", "offload": "model"},
}

#: Per profile and model: the runs, "mode" or "mode@capGiB". The first is the reference
#: (resident, uncapped). Full: the cards of issue 10's goals.
RUNS: dict[str, dict[str, list[str]]] = {
    "tiny": {"sam3": ["resident", "int8"], "objectclear": ["resident", "int8"],
             "flux": ["resident", "int8"]},
    "full": {"sam3": ["resident", "resident@4", "int8@4"],
             "objectclear": ["resident", "resident@8", "int8@8", "int8+tiling@8", "offload@8",
                             "int8+offload@8"],
             "flux": ["resident", "int8@24", "offload@24", "int8+offload@24",
                      "int8+offload@16", "fp8+offload@16"]},
}

#: Issue 10's goals: (model, card GiB, latency at most this many times the resident one).
GOALS = [("flux", 24, 2.0), ("flux", 16, 2.0), ("objectclear", 8, 1.5), ("sam3", 4, 1.2)]

PROFILES: dict[str, dict[str, Any]] = {
    "tiny": dict(device="cpu", sam3_image="320x240", oc_image="320x256", oc_steps=2,
                 oc_short_side=256, flux_size=256, flux_steps=2, repeats=2, warmup=1),
    "full": dict(device="cuda", sam3_image="1008x1008", oc_image="512x512", oc_steps=20,
                 oc_short_side=512, flux_size=1024, flux_steps=4, repeats=3, warmup=1),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny",
                   help="tiny: CPU, tiny checkpoints (default); full: CUDA, full size")
    p.add_argument("--models", default=",".join(MODELS), help="subset of sam3,objectclear,flux")
    p.add_argument("--runs", action="append", default=[],
                   help="MODEL=RUN,RUN,... with RUN = MODE or MODE@CAP_GIB (repeatable); "
                   f"modes: {', '.join(MODES)}. The first run is the reference.")
    p.add_argument("--repeats", type=int, help="measured requests per run (tiny 2, full 3)")
    p.add_argument("--warmup", type=int, help="unmeasured requests first (1)")
    p.add_argument("--sam3-image", help="WIDTHxHEIGHT of the SAM3 picture")
    p.add_argument("--oc-image", help="WIDTHxHEIGHT of the ObjectClear picture")
    p.add_argument("--oc-steps", type=int, help="ObjectClear steps (full 20)")
    p.add_argument("--oc-short-side", type=int, help="ObjectClear working short side (512)")
    p.add_argument("--flux-size", type=int, help="FLUX square size (full 1024)")
    p.add_argument("--flux-steps", type=int, help="FLUX steps (4)")
    p.add_argument("--tiny-dir", type=Path, help="tiny checkpoints (tiny profile; written "
                   "there if missing; default: a temporary folder)")
    p.add_argument("--compile", action="store_true",
                   help="every run with torch.compile on (as MIC2E_COMPILE=1), the reference "
                   "too; the warm-up request compiles (int8 kernels are fast only compiled)")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   help="Inductor mode with --compile (reduce-overhead: CUDA graphs)")
    p.add_argument("--compile-cache-dir", default="/tmp/mic2e-compile",
                   help="compile cache with --compile (default /tmp/mic2e-compile)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run (900)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one run, as JSON
    add_output_args(p)
    return p


def parse_run(text: str) -> tuple[str, float | None]:
    """"int8@24" -> ("int8", 24.0); "resident" -> ("resident", None)."""
    mode, _, cap = text.strip().partition("@")
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r} in --runs; choose from {', '.join(MODES)}")
    return mode, float(cap) if cap else None


def run_label(mode: str, cap: float | None) -> str:
    return mode if cap is None else f"{mode}@{cap:g}GiB"


# -- one run, in its own process ---------------------------------------------------------------
def _build(job: dict[str, Any]) -> tuple[Any, Any]:
    """(model instance, request) for `job`; nothing loaded yet."""
    import torch
    from mic2e import codecs

    name, settings, tiny = job["model"], dict(MODES[job["mode"]]), job["profile"] == "tiny"
    if job.get("compile_cache_dir"):
        from mic2e_services.runtime.model_api import CompileSpec

        # As MIC2E_COMPILE=1: the first (warm-up) request compiles; cache shared by runs.
        settings["compile"] = CompileSpec(mode=job["compile_mode"],
                                          cache_dir=job["compile_cache_dir"])
    device = job["device"]
    if name == "sam3":
        from mic2e_services.segmentation.model import Sam3Segmenter, TextQuery

        width, height = parse_size(job["sam3_image"])
        image = codecs.decode_image(picture(7, width, height))
        request = TextQuery(image=image, image_key="memory", text="dog", score_threshold=0.0,
                            max_instances=8)
        if tiny:
            return Sam3Segmenter(job["checkpoint"], device=device, **settings), request
        from benchmarks import _full_models

        parts = _full_models.sam3("cpu", torch.float16, Path(job["workdir"]))
        return Sam3Segmenter.from_parts(parts, device=device, dtype="float16",
                                         **settings), request
    if name == "objectclear":
        from mic2e_services.object_clear.model import ClearQuery, ObjectClearModel

        width, height = parse_size(job["oc_image"])
        image = codecs.decode_image(picture(11, width, height))
        request = ClearQuery(image=image, mask=box_mask(width, height, (0.35, 0.3, 0.65, 0.75)),
                             steps=job["oc_steps"], guidance_scale=2.5,
                             short_side=job["oc_short_side"], seed=0, fusion=True)
        if tiny:
            return ObjectClearModel(job["checkpoint"], device=device, **settings), request
        from benchmarks import _full_models

        pipeline = _full_models.objectclear_pipeline("cpu", torch.float16, Path(job["workdir"]))
        return ObjectClearModel.from_parts(pipeline, device=device, dtype="float16",
                                              **settings), request
    from diffusers import FluxPipeline
    from mic2e_services.flux.model import FluxGenerator, GenerateQuery

    size = job["flux_size"]
    request = GenerateQuery(prompt=PROMPT, width=size, height=size, steps=job["flux_steps"],
                            seed=0)
    if tiny:
        return FluxGenerator(job["checkpoint"], device=device, **settings), request
    from benchmarks import _full_models

    pipe = FluxPipeline(**_full_models.flux("cpu", torch.bfloat16, Path(job["workdir"])))
    return FluxGenerator.from_parts(pipe, device=device, dtype="bfloat16",
                                       **settings), request


def _save_output(name: str, output: Any, path: Path) -> None:
    import numpy as np

    if name == "sam3":
        np.savez_compressed(path, *[s.mask for s in output.instances])
    else:
        output.image.save(path, format="PNG")


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One (model, mode, cap) run; never raises for an out-of-memory: that is a finding."""
    import torch
    from mic2e_services import errors
    from mic2e_services.runtime.model_api import QuietContext

    device = torch.device(job["device"])
    cuda = device.type == "cuda"
    out: dict[str, Any] = {"model": job["model"], "mode": job["mode"], "cap_gib": job["cap_gib"],
                           "settings": MODES[job["mode"]],
                           "compiled": bool(job.get("compile_cache_dir"))}
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        out["device_total_gib"] = total / 2**30
        if job["cap_gib"] is not None:
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, job["cap_gib"] * 2**30 / total), device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def peak() -> float | None:
        return torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None

    stage = "build"
    try:
        torch.manual_seed(SEED)  # the same random weights in every run of this model
        t0 = time.perf_counter()
        model, request = _build(job)
        out["build_s"] = time.perf_counter() - t0
        stage = "load"
        t0 = time.perf_counter()
        model.load()
        sync()
        out["load_s"] = time.perf_counter() - t0
        out["peak_after_load_gib"] = peak()
        stage = "requests"
        ctx = [QuietContext()]

        def call() -> Any:
            if hasattr(model, "clear_cache"):
                model.clear_cache()  # SAM3: every request encodes its image
            (result,) = model([request], ctx)
            if isinstance(result, BaseException):
                raise result
            return result

        for _ in range(job["warmup"]):
            call()
        times = []
        result = None
        for _ in range(job["repeats"]):
            sync()
            t0 = time.perf_counter()
            result = call()
            sync()
            times.append(time.perf_counter() - t0)
        out["latency_s"] = summary(times)
        out["requests_per_s"] = 1.0 / out["latency_s"]["median"]
        out["peak_gib"] = peak()
        out["peak_reserved_gib"] = (torch.cuda.max_memory_reserved(device) / 2**30
                                    if cuda else None)
        _save_output(job["model"], result, Path(job["output"]))
        out["fits"] = True
    except (torch.OutOfMemoryError, errors.ResourceExhausted) as exc:
        # The models turn an out-of-memory inside a request into RESOURCE_EXHAUSTED.
        if isinstance(exc, errors.ResourceExhausted) and exc.reason != "OUT_OF_MEMORY":
            raise
        out.update(fits=False, failed_at=stage, peak_gib=peak(),
                   error=f"out of memory: {str(exc).splitlines()[0]}")
    except ValueError as exc:  # a mode this device refuses (e.g. fp8 before Ada)
        out.update(fits=None, failed_at=stage, error=f"refused: {exc}")
    return out


def _child_main(spec: str) -> None:
    quiet()
    job = json.loads(spec)
    result = child(job)
    Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")


# -- the parent --------------------------------------------------------------------------------
def _spawn(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run `job` in a fresh process; its JSON result, or what went wrong."""
    import os

    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child",
                               json.dumps(job)], cwd=REPO, env={**os.environ, **quiet_env()},
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": job["model"], "mode": job["mode"], "cap_gib": job["cap_gib"],
                "fits": None, "error": f"timed out after {timeout:g} s"}
    result_file = Path(job["result"])
    if done.returncode != 0 or not result_file.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"model": job["model"], "mode": job["mode"], "cap_gib": job["cap_gib"],
                "fits": None, "error": f"process exited {done.returncode}: {' | '.join(tail)}"}
    result = json.loads(result_file.read_text(encoding="utf-8"))
    result["process_s"] = time.perf_counter() - started
    return result


def _fidelity(name: str, output: Path, reference: Path) -> float | None:
    """PSNR dB (images) or mean best-match mask IoU (SAM3) of `output` against `reference`."""
    import numpy as np

    if not (output.exists() and reference.exists()):
        return None
    if name == "sam3":
        xs, ys = (list(np.load(p).values()) for p in (output, reference))
        return masks_iou(xs, ys)
    from PIL import Image

    return psnr(Image.open(output).convert("RGB"), Image.open(reference).convert("RGB"))


def goals(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 10's goals: the fastest run that fits each card against the resident one."""
    rows = []
    for name, card, limit in GOALS:
        runs = results.get(name)
        if not runs:
            continue
        reference = runs[0].get("latency_s", {}).get("median")
        fitting = [r for r in runs if r.get("fits") and r.get("cap_gib") is not None
                   and r["cap_gib"] <= card]
        row: dict[str, Any] = {"model": name, "card_gib": card, "max_ratio": limit}
        if not fitting or not reference:
            row.update(met=False, gap="no run fitted a card this size"
                       if reference else "no resident reference")
        else:
            best = min(fitting, key=lambda r: r["latency_s"]["median"])
            slowdown = best["latency_s"]["median"] / reference
            row.update(run=run_label(best["mode"], best["cap_gib"]), ratio=slowdown,
                       met=slowdown <= limit,
                       gap=None if slowdown <= limit else f"{slowdown / limit:.2f}x too slow")
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = profile_settings(PROFILES, args, NAME)
    models = pick_models(args.models, MODELS)
    runs = {m: list(RUNS[args.profile][m]) for m in models}
    for item in args.runs:
        model, _, spec = item.partition("=")
        if model not in runs:
            raise SystemExit(f"--runs names {model!r}, which is not among --models")
        runs[model] = [r for r in spec.split(",") if r.strip()]

    results: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="mic2e-bench-memory-"))
        tiny_dir = None
        if args.profile == "tiny":
            from benchmarks._stack import tiny_checkpoints

            tiny_dir = stack.enter_context(tiny_checkpoints(args.tiny_dir,
                                                            [SERVER_OF[m] for m in models]))
        for name in models:
            results[name] = []
            outputs = []
            suffix = ".npz" if name == "sam3" else ".png"
            for i, spec in enumerate(runs[name]):
                mode, cap = parse_run(spec)
                output = Path(work) / f"{name}-{i}{suffix}"
                job = {**settings, "model": name, "mode": mode, "cap_gib": cap,
                       "compile_mode": args.compile_mode,
                       "compile_cache_dir": args.compile_cache_dir if args.compile else None,
                       "profile": args.profile, "workdir": work, "output": str(output),
                       "result": str(Path(work) / f"{name}-{i}.json"),
                       "checkpoint": str(tiny_dir / name) if tiny_dir else None}
                print(f"[memory] {name} {run_label(mode, cap)} ({args.profile}) ...",
                      file=sys.stderr, flush=True)
                results[name].append(_spawn(job, args.timeout))
                outputs.append(output)
            reference = results[name][0]
            for result, output in zip(results[name], outputs, strict=True):
                value = _fidelity(name, output, outputs[0])
                result["fidelity_vs_reference"] = value
                result["fidelity_metric"] = "mask IoU" if name == "sam3" else "PSNR dB"
                if name != "sam3" and value is not None:
                    result["lossy"] = value < LOSSY_DB
                result["latency_over_reference"] = ratio(
                    result.get("latency_s", {}).get("median"),
                    reference.get("latency_s", {}).get("median"))
    return {"profile": args.profile, "device": settings["device"], "settings": settings,
            "reference": "each model's first run (resident, no cap) on the same seeded "
                         "weights, inputs and seed", "runs": results,
            # The goals are about card sizes: only a capped GPU run can speak to them.
            "goals": goals(results) if settings["device"] != "cpu" else []}


def _gib(value: Any) -> str:
    return "" if value is None else f"{value:.2f}"


def report(result: dict[str, Any]) -> str:
    rows = []
    for name, runs in result["runs"].items():
        for r in runs:
            fid = r.get("fidelity_vs_reference")
            rows.append([name, run_label(r["mode"], r.get("cap_gib")),
                         {True: "yes", False: "NO", None: "?"}[r.get("fits")],
                         _gib(r.get("peak_gib")), fmt_s(r.get("load_s")),
                         fmt_s(r.get("latency_s", {}).get("median")),
                         fmt_x(r.get("latency_over_reference")),
                         "" if fid is None else fmt_x(fid, 3) + (" lossy" if r.get("lossy")
                                                                 else ""),
                         (r.get("error") or "")[:60]])
    text = table(["model", "run", "fits", "peak GiB", "load", "latency", "x resident",
                  "fidelity", "error"], rows)
    rows = [[g["model"], f"{g['card_gib']} GiB", f"<= {g['max_ratio']}x", g.get("run", ""),
             fmt_x(g.get("ratio")), "met" if g["met"] else f"MISSED: {g['gap']}"]
            for g in result["goals"]]
    if rows:
        text += table(["model", "card", "goal", "best run", "x resident", "result"], rows)
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet()
    args = build_parser().parse_args(argv)
    if args.child:
        _child_main(args.child)
        return {}
    env = environment(NAME, argv)
    measured = run(args)
    result = {"benchmark": NAME, "environment": env,
              "command_options": {k: (str(v) if isinstance(v, Path) else v)
                                  for k, v in vars(args).items() if k not in ("record", "child")},
              **measured}
    print(report(result), end="")
    return finish(result, args, f"{NAME}-{args.profile}")


if __name__ == "__main__":
    main()
