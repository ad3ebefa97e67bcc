"""Model paths timed inside the model classes: old setting vs plain eager vs optimised.

Issue 8 items 1 and 3. For each model (SAM3, ObjectClear, FLUX.1-schnell - Generate and
Inpaint, which runs on the same resident components), in one run:

* (a) the old service's setting - ObjectClear only: attention slicing (diffusers
  ``set_attention_slice("auto")``), 384 px, 8 steps, half precision;
* (b) plain eager at full quality - the model code as served, nothing added;
* (c) the optimised path - (b) plus `optimise()` below: the served `compile` setting
  (torch.compile of the hot module; on CUDA with mode reduce-overhead, CUDA graphs),
  switched on for the loaded model, so (b) and (c) run the same weights;

each timed inside the model class's own ``__call__`` (pre- and post-processing included,
``torch.cuda.synchronize()`` around every measured call, median of `--repeats` after
`--warmup`), with ratios; then throughput at concurrency 1, 2, 4, 8 through the model
worker (runtime/worker.py `ModelWorker`, batching as served); then fidelity: (c) against
plain eager fp32 on the same weights, inputs and seed - PSNR of the final images, mask IoU
for SAM3 (plus (b) vs fp32, the half-precision baseline, and (c) vs (b)).

Profiles:
* ``tiny`` (default): CPU, the tiny checkpoints (written by */tiny.py into a temporary or
  `--tiny-dir` folder) loaded with the libraries' ``from_pretrained``; reduced sizes so a
  run takes about a minute. Its times mean nothing; it proves the program works.
* ``full``: CUDA only. Full-size architectures with random weights built directly on the
  GPU in the servers' dtypes (fp16 SAM3 / ObjectClear, bf16 FLUX) - see _full_models.py;
  SAM3 text at 1008 px, ObjectClear 512 px / 20 steps / guidance 2.5 / fusion on, FLUX
  4 steps at 512 and 1024 px, generating and inpainting (the middle of the picture from
  noise); the FLUX entry also reports the resident parameter bytes before and after the
  first inpainting (equal: no weight is copied).

    uv run python -m benchmarks.models                           # tiny, CPU
    uv run python -m benchmarks.models --profile full --record   # a GPU machine
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    SERVER_OF,
    add_output_args,
    box_mask,
    environment,
    finish,
    fmt_s,
    fmt_x,
    parse_ints,
    parse_size,
    pick_models,
    picture,
    profile_settings,
    quiet,
    ratio,
    summary,
    table,
)

NAME = "models"
MODELS = ("sam3", "objectclear", "flux")
PROMPT = "a photo of a red bicycle leaning on a wall in a narrow street at sunset, detailed"

#: Per-profile defaults; every one can be overridden on the command line.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": dict(device="cpu", sam3_image="640x480", sam3_batch=4, sam3_max_instances=8,
                 oc_image="512x384", oc_steps=4, oc_short_side=256, old_steps=2,
                 old_short_side=256, flux_sizes="256,512", flux_steps=4, repeats=3, warmup=1,
                 concurrency="1,2,4,8", rounds=1, compile_mode="default"),
    "full": dict(device="cuda", sam3_image="1008x1008", sam3_batch=4, sam3_max_instances=8,
                 oc_image="512x512", oc_steps=20, oc_short_side=512, old_steps=8,
                 old_short_side=384, flux_sizes="512,1024", flux_steps=4, repeats=5, warmup=1,
                 concurrency="1,2,4,8", rounds=2, compile_mode="reduce-overhead"),
}


# =========================================================================================
# THE OPTIMISATION HOOK
#
# Path (c) "optimised" = the model code as served + what `optimise` turns on: the
# served `compile` setting, applied to the already-loaded model through the same
# `enable_compile(CompileSpec)` that `load()` calls when MIC2E_COMPILE is on - so (b)
# and (c) run the same weights, and (c) is exactly what a server with compile on runs.
# The optimisations that are always on (SDPA, one VAE encode, fusion in torch, cached
# SAM3 features, batching) are in both (b) and (c). Another hook can be given on the
# command line: --optimise-hook module:function (same signature). It must return an
# `undo` that restores plain eager: fidelity is measured against plain eager fp32 on the
# same weights, and throughput runs before `undo`.
# =========================================================================================
def optimise(name: str, model: Any, parts: Any, spec: Any = None
             ) -> tuple[Callable[[], None], str]:
    """Turn the optimised path on for `model` in place; returns (undo, description).

    name: "sam3" | "objectclear" | "flux". model: the loaded model class instance
    (Sam3Segmenter / ObjectClearModel / FluxGenerator), whose `enable_compile` compiles
    its hot module (SAM3's ViT, ObjectClear's UNet, FLUX's transformer). parts: what it
    was built from (unused here). spec: the `CompileSpec` from --compile-backend /
    --compile-mode; None means no compilation.
    """
    if spec is None:
        return (lambda: None), "none: the served model code as is (plain eager)"
    part = {"sam3": "ViT backbone", "objectclear": "UNet (dynamic sizes)",
            "flux": "transformer"}[name]
    undo = model.enable_compile(spec)
    return undo, f"torch.compile of the {part}: backend={spec.backend}, mode={spec.mode}"


# =========================================================================================


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.models",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny",
                   help="tiny: CPU, tiny checkpoints (default); full: CUDA, full-size "
                   "random weights")
    p.add_argument("--models", default=",".join(MODELS), help="subset of sam3,objectclear,flux")
    p.add_argument("--repeats", type=int, help="measured calls per path (tiny 3, full 5)")
    p.add_argument("--warmup", type=int, help="unmeasured calls per path first (default 1)")
    p.add_argument("--sam3-image", help="WIDTHxHEIGHT of the SAM3 picture (full 1008x1008)")
    p.add_argument("--sam3-batch", type=int, help="images in the batched SAM3 call (4)")
    p.add_argument("--sam3-max-instances", type=int,
                   help="instances kept per text query (8; threshold 0: random weights)")
    p.add_argument("--oc-image", help="WIDTHxHEIGHT of the ObjectClear picture")
    p.add_argument("--oc-steps", type=int, help="ObjectClear steps (full 20, tiny 4)")
    p.add_argument("--oc-short-side", type=int, help="ObjectClear working short side "
                   "(full 512, tiny 256)")
    p.add_argument("--guidance", type=float, default=2.5, help="ObjectClear guidance (2.5)")
    p.add_argument("--old-steps", type=int, help="old service's steps (full 8, tiny 2)")
    p.add_argument("--old-short-side", type=int, help="old service's short side (full 384)")
    p.add_argument("--flux-sizes", help="FLUX square sizes, comma-separated (full 512,1024)")
    p.add_argument("--flux-steps", type=int, help="FLUX steps (4)")
    p.add_argument("--concurrency", help="worker throughput levels (1,2,4,8)")
    p.add_argument("--rounds", type=int, help="requests per client per throughput level "
                   "(tiny 1, full 2)")
    p.add_argument("--max-batch", default="",
                   help="worker batch limits, e.g. objectclear=4 (default: each model's own)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-fidelity", action="store_true")
    p.add_argument("--optimise-hook", help="module:function used instead of `optimise`")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of path (c) (inductor; 'eager' only traces)")
    p.add_argument("--compile-mode", help="Inductor mode of path (c) (full: reduce-overhead, "
                   "i.e. CUDA graphs; tiny: default)")
    p.add_argument("--compile-cache-dir", help="persistent compile cache (default: a fresh "
                   "temporary one, so first_call_s is a cold compile)")
    p.add_argument("--no-compile", action="store_true",
                   help="path (c) without compilation (then (c) times the same code as (b))")
    p.add_argument("--tiny-dir", type=Path, help="tiny checkpoints (tiny profile; written "
                   "there if missing; default: a temporary folder)")
    add_output_args(p)
    return p


@dataclass
class Ctx:
    """One run's settings, resolved against the profile."""

    profile: str
    device: Any  # torch.device
    repeats: int
    warmup: int
    workdir: Path
    tiny_dir: Path | None
    settings: dict[str, Any]
    max_batch: dict[str, int]
    levels: list[int]
    rounds: int
    throughput: bool
    fidelity: bool
    hook: Callable[..., tuple[Callable[[], None], str]]
    compile_spec: Any = None  # CompileSpec | None
    notes: list[str] = field(default_factory=list)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# -- timing ------------------------------------------------------------------------------------
def _ok(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def timed(ctx: Ctx, run: Callable[[], Any], setup: Callable[[], None] | None = None
          ) -> tuple[dict[str, Any], Any]:
    """(median etc. of `repeats` synced calls after `warmup`, the last output)."""
    times: list[float] = []
    out = None
    for _ in range(ctx.warmup + ctx.repeats):
        if setup:
            setup()
        ctx.sync()
        t0 = time.perf_counter()
        out = run()
        ctx.sync()
        times.append(time.perf_counter() - t0)
    first = times[0] if ctx.warmup else None
    return {"s": summary(times[ctx.warmup:]), "first_call_s": first}, out


def compare_paths(ctx: Ctx, name: str, model: Any, parts: Any,
                  paths: dict[str, tuple[Callable[[], Any], Callable[[], None] | None]],
                  throughput: Callable[[], dict[str, Any]] | None
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """Time every path eager, then optimised; throughput while optimised; undo.

    Returns (timings per path, eager outputs, optimised outputs, hook description) and
    puts the throughput result under timings["throughput"].
    """
    timings: dict[str, Any] = {}
    eager_out: dict[str, Any] = {}
    opt_out: dict[str, Any] = {}
    for path, (run, setup) in paths.items():
        timings[path] = {}
        timings[path]["eager"], eager_out[path] = timed(ctx, run, setup)
    undo, description = ctx.hook(name, model, parts, ctx.compile_spec)
    try:
        for path, (run, setup) in paths.items():
            timings[path]["optimised"], opt_out[path] = timed(ctx, run, setup)
            timings[path]["speedup"] = ratio(timings[path]["eager"]["s"]["median"],
                                             timings[path]["optimised"]["s"]["median"])
        if throughput is not None and ctx.throughput:
            timings["throughput"] = throughput()
    finally:
        undo()
    return timings, eager_out, opt_out, description


# -- throughput through the model worker -------------------------------------------------------
class _Served:
    """A model that is already loaded and warmed, as the worker drives it."""

    def __init__(self, model: Any, max_batch_size: int) -> None:
        self._model = model
        self.max_batch_size = max_batch_size

    def __getattr__(self, name: str) -> Any:  # the rest of the Model protocol
        return getattr(self._model, name)

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def check(self, request: Any) -> None:
        self._model.check(request)

    def batch_key(self, request: Any) -> Any:
        return self._model.batch_key(request)

    def estimate_seconds(self, request: Any) -> float:
        return self._model.estimate_seconds(request)

    def __call__(self, requests: Sequence[Any], contexts: Sequence[Any]) -> list[Any]:
        return self._model(requests, contexts)


def worker_throughput(ctx: Ctx, name: str, model: Any,
                      make: Callable[[int, int, int], Any]) -> dict[str, Any]:
    """Closed loop: c clients x `rounds` requests each, for c in `levels`."""
    from mic2e_services.runtime.worker import ModelWorker

    max_batch = model.max_batch_size  # the model's own, or --max-batch

    async def run() -> dict[str, Any]:
        worker = ModelWorker(_Served(model, max_batch), max_queue=4096, max_wait_s=0.005,
                             name=name)
        await worker.start()
        out: dict[str, Any] = {"max_batch_size": max_batch}
        try:
            for c in ctx.levels:
                async def client(k: int, n: int, tag: str, c: int = c) -> list[float]:
                    lat = []
                    for j in range(n):
                        t0 = time.perf_counter()
                        await worker.submit(make(c, k, j if tag == "m" else -1 - j)).result()
                        lat.append(time.perf_counter() - t0)
                    return lat

                if max_batch > 1:  # a new batch shape's first call is not steady state
                    await asyncio.gather(*(client(k, 1, "w") for k in range(c)))
                b0, r0 = worker.batches_run, worker.requests_run
                t0 = time.perf_counter()
                lats = await asyncio.gather(*(client(k, ctx.rounds, "m") for k in range(c)))
                wall = time.perf_counter() - t0
                n = c * ctx.rounds
                batches = worker.batches_run - b0
                out[str(c)] = {"requests": n, "wall_s": wall, "requests_per_s": n / wall,
                               "latency_s": summary(x for lat in lats for x in lat),
                               "mean_batch": (worker.requests_run - r0) / batches
                               if batches else None}
        finally:
            await worker.stop()
        return out

    return asyncio.run(run())


# -- fidelity ------------------------------------------------------------------------------------
def psnr(a: Any, b: Any) -> float:
    """PSNR in dB of two PIL images (inf when identical)."""
    import numpy as np

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return math.nan
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def iou(a: Any, b: Any) -> float:
    import numpy as np

    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def masks_iou(xs: list[Any], ys: list[Any]) -> float:
    """Mean over masks `xs` of the best IoU in `ys` (order-free: near-tied scores may swap)."""
    if not xs and not ys:
        return 1.0
    if not xs or not ys:
        return 0.0
    return sum(max(iou(x, y) for y in ys) for x in xs) / len(xs)


def segments_iou(xs: list[Any], ys: list[Any]) -> float:
    """`masks_iou` of two lists of SAM3 segments."""
    return masks_iou([x.mask for x in xs], [y.mask for y in ys])


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """No TF32 in matmuls or convolutions: the reference is real fp32."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _pixel_std(image: Any) -> float:
    import numpy as np

    return float(np.asarray(image, dtype=np.float32).std())


def _fidelity_error(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


# -- SAM3 ----------------------------------------------------------------------------------------
def bench_sam3(ctx: Ctx) -> dict[str, Any]:
    import torch
    from mic2e import codecs
    from mic2e_services.runtime.model_api import QuietContext
    from mic2e_services.segmentation.model import PromptQuery, Sam3Segmenter, TextQuery
    from mic2e_services.torch_device import dtype_name, resolve_dtype

    s = ctx.settings
    dtype = resolve_dtype(None, ctx.device, half=torch.float16)
    t0 = time.perf_counter()
    if ctx.profile == "tiny":
        from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor

        folder = str(ctx.tiny_dir / "sam3")
        parts = {"detector": Sam3Model.from_pretrained(folder, dtype=dtype),
                 "tracker": Sam3TrackerModel.from_pretrained(folder, dtype=dtype),
                 "detector_processor": Sam3Processor.from_pretrained(folder),
                 "tracker_processor": Sam3TrackerProcessor.from_pretrained(folder)}
    else:
        from benchmarks import _full_models

        parts = _full_models.sam3(ctx.device, dtype, ctx.workdir)
    kwargs = {"max_batch_size": ctx.max_batch["sam3"]} if "sam3" in ctx.max_batch else {}
    model = Sam3Segmenter.from_parts(parts, device=str(ctx.device), dtype=dtype_name(dtype),
                                      **kwargs)
    model.load()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.warmup()
    warmup_s = time.perf_counter() - t0
    from benchmarks._full_models import sam3_parameters

    width, height = parse_size(s["sam3_image"])
    image = codecs.decode_image(picture(7, width, height))
    k, batch = s["sam3_max_instances"], s["sam3_batch"]
    one, many = [QuietContext()], [QuietContext() for _ in range(batch)]

    def text(key: str, words: str = "dog") -> Any:
        return TextQuery(image=image, image_key=key, text=words, score_threshold=0.0,
                         max_instances=k)

    click = PromptQuery(image=image, image_key="click", points=((width / 2, height / 2, True),))

    def cached_requery() -> None:
        if "requery" not in model.cached_image_keys():
            _ok(model([text("requery")], one))

    paths = {
        "text": (lambda: _ok(model([text("text")], one))[0], model.clear_cache),
        "requery_cached": (lambda: _ok(model([text("requery", "cat")], one))[0], cached_requery),
        f"text_batch{batch}": (lambda: _ok(model([text(f"b{i}") for i in range(batch)], many)),
                               model.clear_cache),
        "click": (lambda: _ok(model([click], one))[0], model.clear_cache),
    }

    def throughput() -> dict[str, Any]:
        return worker_throughput(ctx, "sam3", model, lambda c, k_, j: text(f"tp{c}-{k_}-{j}"))

    timings, eager, opt, description = compare_paths(ctx, "sam3", model, parts, paths,
                                                     throughput)
    text_s = timings["text"]["optimised"]["s"]["median"]
    ratios = {
        "requery_over_text": ratio(timings["requery_cached"]["optimised"]["s"]["median"], text_s),
        "batch_per_image_over_text": ratio(
            timings[f"text_batch{batch}"]["optimised"]["s"]["median"] / batch, text_s),
    }

    fidelity: dict[str, Any] = {}
    if ctx.fidelity:
        try:
            reference = model
            if dtype != torch.float32:
                model.clear_cache()
                parts["detector"].float()
                parts["tracker"].float()
                reference = Sam3Segmenter.from_parts(parts, device=str(ctx.device),
                                                      dtype="float32")
                reference.load()
            with strict_fp32():
                model.clear_cache()
                reference.clear_cache()
                ref_text = _ok(reference([text("fidelity")], one))[0]
                ref_click = _ok(reference([click], one))[0]
            fidelity = {
                "metric": "mask IoU (text: mean best-match over instances; click: best mask)",
                "text_optimised_vs_eager_fp32": segments_iou(opt["text"].instances,
                                                             ref_text.instances),
                "text_eager_vs_eager_fp32": segments_iou(eager["text"].instances,
                                                         ref_text.instances),
                "text_optimised_vs_eager": segments_iou(opt["text"].instances,
                                                        eager["text"].instances),
                "click_optimised_vs_eager_fp32": iou(opt["click"].best.mask, ref_click.best.mask),
                "click_eager_vs_eager_fp32": iou(eager["click"].best.mask, ref_click.best.mask),
                "instances": {"optimised": len(opt["text"].instances),
                              "eager_fp32": len(ref_text.instances)},
            }
        except torch.OutOfMemoryError as exc:
            fidelity = _fidelity_error(exc)
    return {"dtype": dtype_name(dtype), "parameters": sam3_parameters(parts),
            "shares_backbone": model.shares_backbone, "build_s": build_s,
            "model_warmup_s": warmup_s, "optimisation": description,
            "settings": {"image": f"{width}x{height}", "batch": batch, "max_instances": k,
                         "score_threshold": 0.0},
            "paths": {p: timings[p] for p in paths}, "ratios": ratios,
            "throughput": timings.get("throughput"), "fidelity": fidelity}


# -- ObjectClear ---------------------------------------------------------------------------------
@contextlib.contextmanager
def attention_slicing(pipeline: Any) -> Iterator[None]:
    """The old service's attention slicing on every layer but AGF's capture layer, whose
    processor the fusion reads (sliced attention there would only lose the map); restored
    to the served processors afterwards."""
    from mic2e_services.object_clear.pipeline import CAPTURE_LAYER

    unet = pipeline.unet
    saved = dict(unet.attn_processors)
    unet.set_attention_slice("auto")
    unet.get_submodule(CAPTURE_LAYER).set_processor(pipeline.attention_capture)
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


def bench_objectclear(ctx: Ctx) -> dict[str, Any]:
    import torch
    from mic2e import codecs
    from mic2e_services.object_clear.model import ClearQuery, ObjectClearModel
    from mic2e_services.object_clear.pipeline import ObjectClearPipeline
    from mic2e_services.runtime.model_api import QuietContext
    from mic2e_services.torch_device import dtype_name, resolve_dtype

    from benchmarks import _full_models

    s = ctx.settings
    dtype = resolve_dtype(None, ctx.device, half=torch.float16)
    t0 = time.perf_counter()
    if ctx.profile == "tiny":
        pipeline = ObjectClearPipeline.from_pretrained(ctx.tiny_dir / "objectclear",
                                                       torch_dtype=dtype).to(ctx.device)
    else:
        pipeline = _full_models.objectclear_pipeline(ctx.device, dtype, ctx.workdir)
    kwargs = ({"max_batch_size": ctx.max_batch["objectclear"]}
              if "objectclear" in ctx.max_batch else {})
    model = ObjectClearModel.from_parts(pipeline, **kwargs)
    model.load()
    build_s = time.perf_counter() - t0
    vae_dtype = dtype_name(pipeline.vae.dtype)  # fp32 where the VAE's config says force_upcast
    t0 = time.perf_counter()
    model.warmup()
    warmup_s = time.perf_counter() - t0

    width, height = parse_size(s["oc_image"])
    image = codecs.decode_image(picture(11, width, height))
    mask = box_mask(width, height, (0.35, 0.3, 0.65, 0.75))
    one = [QuietContext()]

    def query(steps: int, side: int, seed: int = 0) -> Any:
        return ClearQuery(image=image, mask=mask, steps=steps,
                          guidance_scale=s["guidance"], short_side=side, seed=seed, fusion=True)

    full_q = query(s["oc_steps"], s["oc_short_side"])
    old_q = query(s["old_steps"], s["old_short_side"])
    with attention_slicing(pipeline):
        old, _ = timed(ctx, lambda: _ok(model([old_q], one))[0])
    paths = {"full_quality": (lambda: _ok(model([full_q], one))[0], None)}

    def throughput() -> dict[str, Any]:
        return worker_throughput(ctx, "objectclear", model,
                                 lambda c, k, j: query(s["oc_steps"], s["oc_short_side"],
                                                       seed=1000 * c + 10 * k + j))

    timings, eager, opt, description = compare_paths(ctx, "objectclear", model, pipeline,
                                                     paths, throughput)
    full = timings["full_quality"]
    ratios = {
        "old_setting_over_eager": ratio(old["s"]["median"], full["eager"]["s"]["median"]),
        "old_setting_over_optimised": ratio(old["s"]["median"],
                                            full["optimised"]["s"]["median"]),
        "eager_over_optimised": full["speedup"],
    }

    fidelity: dict[str, Any] = {}
    if ctx.fidelity:
        try:
            reference = model
            if dtype != torch.float32:
                for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder,
                               pipeline.text_encoder_2, pipeline.image_prompt_encoder,
                               pipeline.postfuse_module):
                    module.float()
                reference = ObjectClearModel.from_parts(pipeline)
                reference.load()
            with strict_fp32():
                ref = _ok(reference([full_q], one))[0]
            fidelity = {
                "metric": "PSNR dB of the final image",
                "optimised_vs_eager_fp32": psnr(opt["full_quality"].image, ref.image),
                "eager_vs_eager_fp32": psnr(eager["full_quality"].image, ref.image),
                "optimised_vs_eager": psnr(opt["full_quality"].image,
                                           eager["full_quality"].image),
                "optimised_pixel_std": _pixel_std(opt["full_quality"].image),
            }
        except torch.OutOfMemoryError as exc:
            fidelity = _fidelity_error(exc)
    return {"dtype": dtype_name(dtype), "vae_dtype": vae_dtype,
            "parameters": _full_models.parameters(
                {k: getattr(pipeline, k) for k in ("unet", "vae", "text_encoder",
                                                    "text_encoder_2", "image_prompt_encoder",
                                                    "postfuse_module")}),
            "build_s": build_s, "model_warmup_s": warmup_s, "optimisation": description,
            "settings": {"image": f"{width}x{height}", "steps": s["oc_steps"],
                         "short_side": s["oc_short_side"], "guidance": s["guidance"],
                         "fusion": True, "old_steps": s["old_steps"],
                         "old_short_side": s["old_short_side"],
                         "old_attention": "set_attention_slice('auto')"},
            "paths": {"old_setting": {"sliced": old}, **{p: timings[p] for p in paths}},
            "ratios": ratios, "throughput": timings.get("throughput"), "fidelity": fidelity}


# -- FLUX ----------------------------------------------------------------------------------------
def bench_flux(ctx: Ctx) -> dict[str, Any]:
    import torch
    from diffusers import FluxPipeline
    from mic2e import codecs
    from mic2e_services.flux.model import FluxGenerator, GenerateQuery, InpaintQuery
    from mic2e_services.runtime.model_api import QuietContext
    from mic2e_services.torch_device import dtype_name, resolve_dtype

    from benchmarks import _full_models

    s = ctx.settings
    dtype = resolve_dtype(None, ctx.device, half=torch.bfloat16)
    t0 = time.perf_counter()
    if ctx.profile == "tiny":
        pipe = FluxPipeline.from_pretrained(ctx.tiny_dir / "flux")
        pipe.to(dtype=dtype)
    else:
        pipe = FluxPipeline(**_full_models.flux(ctx.device, dtype, ctx.workdir))
    kwargs = {"max_batch_size": ctx.max_batch["flux"]} if "flux" in ctx.max_batch else {}
    model = FluxGenerator.from_parts(pipe, device=str(ctx.device), **kwargs)
    model.load()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.warmup()
    warmup_s = time.perf_counter() - t0

    sizes, steps = parse_ints(s["flux_sizes"]), s["flux_steps"]
    one = [QuietContext()]

    def query(size: int, seed: int = 0) -> Any:
        return GenerateQuery(prompt=PROMPT, width=size, height=size, steps=steps, seed=seed)

    def generate(size: int) -> Callable[[], Any]:
        request = query(size)
        return lambda: _ok(model([request], one))[0]

    def inpaint(size: int) -> Callable[[], Any]:
        # The region a replacement repaints: the middle of the picture, from noise
        # (strength 1), as many steps as Generate - on the same resident components.
        image = codecs.decode_image(picture(size, size, size))
        request = InpaintQuery(image=image, mask=box_mask(size, size), prompt=PROMPT,
                               steps=steps, seed=0)
        return lambda: _ok(model([request], one))[0]

    resident_before = model.resident_parameters()
    paths = {f"generate_{size}": (generate(size), None) for size in sizes}
    paths.update({f"inpaint_{size}": (inpaint(size), None) for size in sizes})

    def throughput() -> dict[str, Any]:
        return worker_throughput(ctx, "flux", model,
                                 lambda c, k, j: query(sizes[0], seed=1000 * c + 10 * k + j))

    timings, eager, opt, description = compare_paths(ctx, "flux", model, pipe, paths,
                                                     throughput)
    resident_after = model.resident_parameters()  # (before fidelity casts to fp32)
    fidelity: dict[str, Any] = {}
    if ctx.fidelity:
        first = f"generate_{sizes[0]}"
        try:
            reference = model
            if dtype != torch.float32:
                pipe.to(torch.float32)
                reference = FluxGenerator.from_parts(pipe)
                reference.load()
            with strict_fp32():
                ref = _ok(reference([query(sizes[0])], one))[0]
            fidelity = {
                "metric": f"PSNR dB of the final image at {sizes[0]} px",
                "optimised_vs_eager_fp32": psnr(opt[first].image, ref.image),
                "eager_vs_eager_fp32": psnr(eager[first].image, ref.image),
                "optimised_vs_eager": psnr(opt[first].image, eager[first].image),
                "optimised_pixel_std": _pixel_std(opt[first].image),
            }
        except torch.OutOfMemoryError as exc:
            fidelity = _fidelity_error(exc)
    return {"dtype": dtype_name(dtype),
            # Inpaint runs FluxInpaintPipeline on the resident components: the
            # bytes of distinct parameters and buffers held must not change.
            "resident_bytes": {"before_inpaint": resident_before,
                               "after_inpaint": resident_after,
                               "shared": resident_before == resident_after},
            "parameters": _full_models.parameters(
                {k: getattr(pipe, k) for k in ("transformer", "text_encoder", "text_encoder_2",
                                               "vae")}),
            "build_s": build_s, "model_warmup_s": warmup_s, "optimisation": description,
            "settings": {"sizes": sizes, "steps": steps, "guidance": 0.0,
                         "t5_tokens": 256, "throughput_size": sizes[0]},
            "paths": {p: timings[p] for p in paths}, "ratios": {
                f"{p}_eager_over_optimised": timings[p]["speedup"] for p in paths},
            "throughput": timings.get("throughput"), "fidelity": fidelity}


BENCHES = {"sam3": bench_sam3, "objectclear": bench_objectclear, "flux": bench_flux}


# -- running ---------------------------------------------------------------------------------------
def _hook(spec: str | None) -> Callable[..., tuple[Callable[[], None], str]]:
    if not spec:
        return optimise
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func or "optimise")


def _memory(ctx: Ctx) -> dict[str, float] | None:
    import torch

    if ctx.device.type != "cuda":
        return None
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated(ctx.device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(ctx.device) / 2**30}


def _free(ctx: Ctx) -> None:
    import torch

    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from mic2e_services.runtime.model_api import CompileSpec

    settings = profile_settings(PROFILES, args, NAME)
    settings["guidance"] = args.guidance
    models = pick_models(args.models, MODELS)
    max_batch = {k: int(v) for k, v in (item.split("=", 1) for item in args.max_batch.split(",")
                                          if item.strip())}
    device = torch.device(settings["device"])
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mic2e-bench-models-") as work:
        tiny = contextlib.nullcontext(None)
        if args.profile == "tiny":
            from benchmarks._stack import tiny_checkpoints

            tiny = tiny_checkpoints(args.tiny_dir, [SERVER_OF[m] for m in models])
        with tiny as tiny_dir:
            from benchmarks._common import silence_loaded_libraries

            silence_loaded_libraries()
            ctx = Ctx(profile=args.profile, device=device, repeats=settings["repeats"],
                      warmup=settings["warmup"], workdir=Path(work), tiny_dir=tiny_dir,
                      settings=settings, max_batch=max_batch,
                      levels=parse_ints(settings["concurrency"]), rounds=settings["rounds"],
                      throughput=not args.skip_throughput, fidelity=not args.skip_fidelity,
                      hook=_hook(args.optimise_hook),
                      compile_spec=None if args.no_compile else CompileSpec(
                          backend=args.compile_backend, mode=settings["compile_mode"],
                          cache_dir=args.compile_cache_dir or str(Path(work) / "compile")))
            for name in models:
                _free(ctx)
                t0 = time.perf_counter()
                print(f"[models] {name} ({args.profile}, {device}) ...", file=sys.stderr,
                      flush=True)
                results[name] = BENCHES[name](ctx)
                results[name]["memory"] = _memory(ctx)
                results[name]["total_s"] = time.perf_counter() - t0
                _free(ctx)
    return {"profile": args.profile, "device": str(device), "settings": settings,
            "models": results}


def report(result: dict[str, Any]) -> str:
    rows = []
    for name, r in result["models"].items():
        for path, t in r["paths"].items():
            if "sliced" in t:
                rows.append([name, path + " (slicing)", fmt_s(t["sliced"]["s"]["median"]), "",
                             "", fmt_s(t["sliced"]["first_call_s"])])
                continue
            rows.append([name, path, fmt_s(t["eager"]["s"]["median"]),
                         fmt_s(t["optimised"]["s"]["median"]), fmt_x(t.get("speedup")),
                         fmt_s(t["optimised"]["first_call_s"])])
    text = table(["model", "path", "eager", "optimised", "speedup", "first call"], rows)
    rows = [[name, k, fmt_x(v)] for name, r in result["models"].items()
            for k, v in (r.get("ratios") or {}).items()]
    if rows:
        text += table(["model", "ratio", "value"], rows)
    rows = []
    for name, r in result["models"].items():
        for level, t in (r.get("throughput") or {}).items():
            if isinstance(t, dict):
                rows.append([name, level, f"{t['requests_per_s']:.2f}",
                             fmt_s(t["latency_s"].get("median")), fmt_x(t["mean_batch"])])
    if rows:
        text += table(["model", "concurrency", "req/s", "latency", "mean batch"], rows)
    rows = []
    for name, r in result["models"].items():
        f = r.get("fidelity") or {}
        for key, value in f.items():
            if key.endswith(("fp32", "vs_eager")) or key == "error":
                rows.append([name, key, value if isinstance(value, str) else fmt_x(value, 3)])
    if rows:
        text += table(["model", "fidelity", "value (PSNR dB / IoU)"], rows)
    rows = [[name, f"{r['resident_bytes']['before_inpaint'] / 2**20:.1f} MiB",
             f"{r['resident_bytes']['after_inpaint'] / 2**20:.1f} MiB",
             "yes" if r["resident_bytes"]["shared"] else "NO"]
            for name, r in result["models"].items() if "resident_bytes" in r]
    if rows:
        text += table(["model", "resident before inpaint", "after", "weights shared"], rows)
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet()
    args = build_parser().parse_args(argv)
    env = environment(NAME, argv)
    measured = run(args)
    result = {"benchmark": NAME, "environment": env,
              "command_options": {k: (str(v) if isinstance(v, Path) else v)
                                  for k, v in vars(args).items() if k != "record"},
              **measured}
    print(report(result), end="")
    return finish(result, args, f"{NAME}-{args.profile}")


if __name__ == "__main__":
    main()
