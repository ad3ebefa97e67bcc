"""Host (CPU RAM) memory of each model server: the measured process baseline, the counted
weight bytes, and the host peak they predict, checked on a real full-size SAM3 load.

For the Kubernetes memory requests and limits of the model servers. Every server reads
its checkpoint into host memory (`from_pretrained`, in the served half dtype) before it
moves the model to the device, so its host peak is about the process baseline plus the
weights. This program measures both terms and checks the sum:

a) **baseline**: each model server started as `mic2e-server up` starts it (its own
   `python -m mic2e_services.cli <server>` process, `benchmarks/_stack.py`), on the tiny
   checkpoints (kilobytes of weights), on CPU. Its peak RSS (VmHWM of /proc/<pid>/status)
   and current RSS (VmRSS) once SERVING and after `--requests` calls; a sampler
   (`--sample-interval`) also keeps the peaks of RssAnon (anonymous memory) and RssFile
   (mapped files) on the way.
b) **weights**: each model's full size, counted exactly in the served dtype (SAM3 and
   ObjectClear float16, FLUX bfloat16) without allocating anything: built on the ``meta``
   device by `benchmarks/_full_models.py` (the published configs; FLUX's transformer and
   T5 come to the byte to the published `total_size`). Per component; resident (what the
   device holds) and at load (what is in host memory at once: SAM3 loads its ViT twice,
   once in Sam3Model and once in Sam3TrackerModel, and shares it only after loading).
c) **validation** (`--no-validate` skips it): a full-size SAM3 checkpoint with random
   weights in the published layout (`facebook/sam3`: one float32 `model.safetensors` of a
   Sam3VideoModel, 3.44 GB) is written to a temporary folder and the real segmentation
   server is started on it (CPU, `--dtype float16`: the load path a GPU server runs);
   its VmHWM once SERVING is compared with (a) + (b).
d) **loader** (`--no-loader-probe` skips it): how transformers and diffusers read a
   checkpoint, on a small real component each (CLIP-L text tower, FLUX VAE), each load in
   a fresh process: a checkpoint in another dtype is copied into anonymous memory
   (converted), one already in the served dtype stays a mapping of the file (no copy; its
   pages count in RSS only once read, e.g. by the move to the device).

What (c) and (d) show is why the plain "baseline + weights" under-predicts: the
checkpoint file is memory-mapped while it is read. So the program also predicts
* the **anonymous** peak: baseline RssAnon + the weights converted at load (the copies
  that coexist; a component whose checkpoint is already in the served dtype adds none);
* the **RSS** peak (VmHWM): baseline VmHWM + the largest sum, over the load steps, of the
  converted copies so far and the checkpoint bytes that step maps (SAM3: detector, then
  tracker, each reading the float32 file; a pipeline: worst case, its largest file last).
Mapped file pages are clean page cache: the kernel can reclaim them under a cgroup limit
(a slower load, not an OOM kill), so the anonymous peak is the floor a limit must cover.

Not measurable here: the CUDA context (driver, kernels, cuBLAS/cuDNN handles) adds host
memory of its own on a GPU server, how much depends on the driver and the libraries
loaded; measure it on a GPU node before setting a limit from these numbers.

    uv run python -m benchmarks.host_memory                 # all three, ~4 min on 2 cores
    uv run python -m benchmarks.host_memory --record
    uv run python -m benchmarks.host_memory --models sam3 --requests 1 --no-validate \\
        --no-loader-probe                                   # the cheap parts (~30 s)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO,
    SERVER_OF,
    STATUS_KEYS,
    add_output_args,
    box_mask,
    environment,
    finish,
    fmt_x,
    now,
    parse_size,
    pick_models,
    picture,
    proc_status,
    quiet,
    quiet_env,
    ratio,
    table,
)

NAME = "host_memory"
MODELS = ("sam3", "objectclear", "flux")
MIB = 2**20

#: The dtype of each published checkpoint's weights, per component ("*": all), and how
#: that is known. None: not established here, counted as converted (the worst case).
CHECKPOINT_DTYPES: dict[str, dict[str, tuple[str | None, str]]] = {
    "sam3": {"*": ("float32", "published config.json says dtype float32; the "
                              "Sam3VideoModel save is 3.44 GB")},
    "objectclear": {"*": ("float32", "the non-variant files the server reads (it ignores "
                                     "*.fp16.*) hold fp32 weights (mic2e_dev.objectclear)")},
    "flux": {
        "transformer": ("bfloat16", "published index total_size 23782357120 = the count "
                                    "here at 2 bytes"),
        "text_encoder_2": ("bfloat16", "published index total_size 9524621312 = the count "
                                       "here at 2 bytes"),
        "text_encoder": ("bfloat16", "published config torch_dtype"),
        "vae": (None, "not established here: counted as converted (worst case)"),
    },
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

NOTES = [
    "CUDA context not included: a GPU server's driver, kernels and library handles add "
    "host memory of their own, not measurable on a machine without a GPU.",
    "Default memory mode (resident on the device, no quantisation, no offload). With "
    "MIC2E_OFFLOAD=model the weights stay in host memory for good: host = baseline + "
    "weights for the server's life.",
    "Converted copies are anonymous memory: the floor a memory limit must cover. Mapped "
    "checkpoint pages are clean page cache, charged to the container but reclaimable under "
    "its limit (a slower load, not an OOM kill).",
    "A checkpoint already in the served dtype (FLUX: bfloat16) is not copied at load; its "
    "pages are read, and counted in RSS, when the weights move to the device, component by "
    "component; the load-step prediction counts the largest such file.",
    "Load-step predictions of the pipelines (objectclear, flux) take the worst order (the "
    "largest file last); only SAM3's is validated here, on a real full-size load.",
    "Baselines: the tiny checkpoints served in float32 on CPU by the same torch build; "
    "their weights are kilobytes.",
]


# -- /proc ---------------------------------------------------------------------------------
def _children() -> list[int]:
    """Child process ids of this process (every thread's children)."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _server_name(pid: int) -> str | None:
    """The server a `python -m mic2e_services.cli <server>` child runs, else None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"mic2e_services.cli" in argv:
        i = argv.index(b"mic2e_services.cli")
        return argv[i + 1].decode() if i + 1 < len(argv) else None
    return None


class Sampler:
    """Samples the /proc status of this process's server children every `interval` s on
    a thread, from the moment they start: per process, the peak of VmRSS, RssAnon and
    RssFile and when each was reached (seconds since the process was first seen), and
    with `series_every` a coarse time series."""

    def __init__(self, interval: float, series_every: float | None = None) -> None:
        self.interval, self.series_every = interval, series_every
        self.procs: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        t = time.monotonic()
        for pid in _children():
            rec = self.procs.get(pid)
            if rec is None:
                name = _server_name(pid)
                if name is None:
                    continue
                rec = self.procs[pid] = {"server": name, "first_seen": t, "samples": 0,
                                         "peaks": {}, "series": [], "next_series": t}
            status = proc_status(pid)
            if status is None or any(k not in status for k in STATUS_KEYS):
                continue  # gone, or not yet / no longer a process with memory
            at = t - rec["first_seen"]
            rec["samples"] += 1
            for key in ("VmRSS", "RssAnon", "RssFile"):
                if status[key] > rec["peaks"].get(key, (-1, 0.0))[0]:
                    rec["peaks"][key] = (status[key], at)
            if self.series_every and t >= rec["next_series"]:
                rec["series"].append([round(at, 2), status["VmRSS"] // MIB,
                                      status["RssAnon"] // MIB, status["RssFile"] // MIB])
                rec["next_series"] = t + self.series_every

    def report(self, pid: int) -> dict[str, Any]:
        """The peaks seen for `pid` (bytes, and seconds after its start)."""
        rec = self.procs.get(pid)
        if rec is None:
            return {"samples": 0}
        out: dict[str, Any] = {"samples": rec["samples"], "interval_s": self.interval}
        for key, (value, at) in rec["peaks"].items():
            out[f"peak_{key}"] = value
            out[f"peak_{key}_at_s"] = round(at, 2)
        if self.series_every:
            out["series_every_s"] = self.series_every
            out["series_t_s_rss_anon_file_mib"] = rec["series"]
        return out

    def started(self, pid: int) -> float | None:
        rec = self.procs.get(pid)
        return rec["first_seen"] if rec else None


# -- (a) the baseline: real servers on tiny checkpoints -------------------------------------
def _final(stream: Any) -> None:
    result = None
    for msg in stream:
        if msg.WhichOneof("event") == "result":
            result = msg
    if result is None:
        raise RuntimeError("stream ended without a result")


def send_request(model: str, channel: Any, seed: int, image_size: tuple[int, int]) -> None:
    """One ordinary call to `model`'s server (tiny sizes: the baseline, not the model)."""
    from mic2e import codecs
    from mic2e.v1 import (
        common_pb2,
        flux_pb2,
        flux_pb2_grpc,
        object_clear_pb2,
        object_clear_pb2_grpc,
        segmentation_pb2,
        segmentation_pb2_grpc,
    )

    width, height = image_size
    if model == "flux":
        _final(flux_pb2_grpc.FluxServiceStub(channel).Generate(flux_pb2.GenerateRequest(
            prompt="a red bicycle on a street at sunset", width=256, height=256, steps=2,
            seed=seed), timeout=300))
        return
    image = common_pb2.Image(data=picture(seed, width, height))
    if model == "sam3":
        segmentation_pb2_grpc.SegmentationServiceStub(channel).SegmentByText(
            segmentation_pb2.SegmentByTextRequest(image=image, text="dog", score_threshold=0.0,
                                                  max_instances=3), timeout=300)
        return
    mask = common_pb2.Mask(width=width, height=height,
                           png=codecs.encode_mask_png(box_mask(width, height)))
    _final(object_clear_pb2_grpc.ObjectClearServiceStub(channel).Clear(
        object_clear_pb2.ClearRequest(image=image, masks=[mask], options=object_clear_pb2.
                                      ClearOptions(steps=4, short_side=256, seed=seed)),
        timeout=300))


def measure_baseline(models: Sequence[str], tiny_dir: Path | None, requests: int,
                     image_size: tuple[int, int], interval: float) -> dict[str, Any]:
    """(a): every server of `models` as its own process on the tiny checkpoints, as `up`
    starts them; /proc figures once all are SERVING and after `requests` calls each."""
    from mic2e.channel import sync_channel

    from benchmarks import _stack

    servers = [SERVER_OF[m] for m in models]
    out: dict[str, Any] = {}
    with Sampler(interval) as sampler:
        t0 = time.monotonic()
        with _stack.subprocesses(models=servers, orchestrator=False,
                                 tiny_dir=tiny_dir) as endpoints:
            ready_s = time.monotonic() - t0
            serving = {m: proc_status(endpoints.pids[SERVER_OF[m]]) for m in models}
            calls: dict[str, float] = {}
            for m in models:
                with sync_channel(endpoints.address(SERVER_OF[m])) as channel:
                    t = time.monotonic()
                    for k in range(requests):
                        send_request(m, channel, 100 + k, image_size)
                    calls[m] = time.monotonic() - t
            after = {m: proc_status(endpoints.pids[SERVER_OF[m]]) for m in models}
            sampler.sample()
            for m in models:
                pid = endpoints.pids[SERVER_OF[m]]
                at_serving, at_end = serving[m] or {}, after[m] or {}
                out[m] = {
                    "server": SERVER_OF[m],
                    "checkpoint": "tiny (mic2e-server make-tiny), CPU, float32",
                    "serving": at_serving,
                    "after_requests": at_end,
                    "requests": requests,
                    "requests_s": round(calls[m], 3),
                    "sampled": sampler.report(pid),
                    # The figure the prediction starts from: the highest RSS it ever had.
                    "peak_rss": max(at_serving.get("VmHWM", 0), at_end.get("VmHWM", 0)),
                    "peak_anon": max(sampler.report(pid).get("peak_RssAnon", 0),
                                     at_serving.get("RssAnon", 0), at_end.get("RssAnon", 0)),
                }
        stopped_s = time.monotonic() - t0
    return {"servers_ready_s": round(ready_s, 1), "total_s": round(stopped_s, 1),
            "started_together": True, "per_model": out}


# -- (b) weight bytes, counted on the meta device ------------------------------------------
def _keep_fp32(module: Any, dtype: Any) -> set[str]:
    """Module names the library keeps in float32 when loading `module` in `dtype`."""
    import torch

    if dtype not in (torch.float16, torch.bfloat16):
        return set()
    names: set[str] = set()
    kind = type(module).__module__.split(".")[0]
    if kind == "transformers":  # modeling_utils._get_dtype_plan
        if dtype == torch.float16:
            names |= set(getattr(module, "_keep_in_fp32_modules", None) or ())
        names |= set(getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    elif kind == "diffusers":  # ModelMixin.from_pretrained: any half dtype
        names |= set(getattr(module, "_keep_in_fp32_modules", None) or ())
    return names


def module_bytes(module: Any, dtype: Any) -> dict[str, int]:
    """Parameters and buffers of `module` (built on meta) as `from_pretrained(dtype=...)`
    loads them: floating tensors in `dtype` (float32 where the library keeps them so),
    whatever dtype the builder gave them (a config may name its own), others as they are."""
    keep = _keep_fp32(module, dtype)

    def size(name: str, t: Any) -> int:
        if not t.is_floating_point():
            return t.element_size()
        return 4 if keep and keep & set(name.split(".")) else dtype.itemsize

    params = param_bytes = kept = 0
    for name, p in module.named_parameters():
        params += p.numel()
        param_bytes += p.numel() * size(name, p)
        kept += p.numel() if p.is_floating_point() and size(name, p) > dtype.itemsize else 0
    buffers = sum(b.numel() * size(n, b) for n, b in module.named_buffers())
    return {"params": params, "param_bytes": param_bytes, "buffer_bytes": buffers,
            "bytes": param_bytes + buffers, "params_kept_fp32": kept}


def _served_dtype(model: str) -> Any:
    """The half dtype each model class serves in on an accelerator (`TorchModel.HALF`)."""
    if model == "sam3":
        from mic2e_services.segmentation.model import Sam3Segmenter as cls
    elif model == "objectclear":
        from mic2e_services.object_clear.model import ObjectClearModel as cls
    else:
        from mic2e_services.flux.model import FluxGenerator as cls
    return cls.HALF


def _component(name: str, sizes: dict[str, int], model: str, served: str) -> dict[str, Any]:
    known = CHECKPOINT_DTYPES[model]
    ckpt_dtype, source = known.get(name, known.get("*", (None, "unknown")))
    file_size = DTYPE_BYTES.get(ckpt_dtype or "float32", 4)
    return {**sizes, "checkpoint_dtype": ckpt_dtype, "checkpoint_dtype_source": source,
            # Bytes of the checkpoint this component's load reads (maps).
            "checkpoint_bytes": sizes["params"] * file_size,
            # Converted at load: an anonymous copy (else it stays a mapping of the file).
            "converted_at_load": ckpt_dtype != served}


def count_weights(model: str, workdir: Path) -> dict[str, Any]:
    """(b) for one model: per component, resident and at-load totals, the load steps."""
    import torch

    from benchmarks import _full_models as fm

    dtype = _served_dtype(model)
    served = str(dtype).removeprefix("torch.")
    t0 = time.perf_counter()
    if model == "sam3":
        parts = fm.sam3("meta", dtype, workdir)
        detector, tracker = parts["detector"], parts["tracker"]
        backbone = detector.vision_encoder.backbone  # shared by the two, as served
        modules = {"detector": detector, "tracker": tracker}
        shared = module_bytes(backbone, dtype)["bytes"]
        note = ("Sam3Model and Sam3TrackerModel are each loaded whole (from_pretrained), "
                "the tracker with its own copy of the ViT backbone; setup() shares one "
                "backbone only after both are loaded, so both copies are in host memory at "
                "once. Load order: detector, then tracker.")
    elif model == "objectclear":
        parts = fm.objectclear("meta", dtype, workdir)
        modules = {k: v for k, v in parts.items() if isinstance(v, torch.nn.Module)}
        shared = 0
        note = ("ObjectClearPipeline.from_pretrained; image_prompt_encoder is the vision "
                "tower alone (the published whole CLIPModel's text tower is never read).")
    else:
        parts = fm.flux("meta", dtype, workdir)
        modules = {k: v for k, v in parts.items() if isinstance(v, torch.nn.Module)}
        shared = 0
        note = "FluxPipeline.from_pretrained (FLUX.1-schnell)."
    components = {name: _component(name, module_bytes(m, dtype), model, served)
                  for name, m in modules.items()}
    at_load = sum(c["bytes"] for c in components.values())
    resident = at_load - shared
    largest = max(components, key=lambda n: components[n]["bytes"])
    # The steps of a load, each: the copies made so far + the file bytes it maps.
    order = list(components)
    if model != "sam3":  # worst case: the largest file read last, all copies made
        order.sort(key=lambda n: components[n]["checkpoint_bytes"])
    steps, copies = [], 0
    for name in order:
        c = components[name]
        copies += c["bytes"] if c["converted_at_load"] else 0
        steps.append({"component": name, "converted_so_far": copies,
                      "maps": c["checkpoint_bytes"], "sum": copies + c["checkpoint_bytes"]})
    return {
        "served_dtype": served,
        "components": components,
        "params_at_load": sum(c["params"] for c in components.values()),
        "bytes_at_load": at_load,
        "bytes_shared_after_load": shared,
        "bytes_resident": resident,
        "largest_component": {"name": largest, "bytes": components[largest]["bytes"]},
        "converted_at_load_bytes": copies,
        "load_steps": steps,
        "load_steps_order": ("as load_parts reads them" if model == "sam3" else
                             "worst case (the largest checkpoint file last)"),
        "load_peak_bytes": max(s["sum"] for s in steps),
        "how_loaded": note,
        "count_s": round(time.perf_counter() - t0, 2),
    }


def predict(weights: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Host peaks from a baseline (a) and the counted weights (b); None where no (a)."""
    if baseline is None:
        return {}
    return {
        # The plain formula: baseline + the weights the device will hold.
        "simple_peak_rss": baseline["peak_rss"] + weights["bytes_resident"],
        # Anonymous memory: baseline + every converted copy that coexists at load.
        "anon_peak": baseline["peak_anon"] + weights["converted_at_load_bytes"],
        # RSS: baseline + the largest (copies so far + file mapped) over the load steps.
        "load_peak_rss": baseline["peak_rss"] + weights["load_peak_bytes"],
        "cuda_context": "not included: a GPU server's CUDA context adds host memory of its "
                        "own (not measurable on this machine)",
    }


# -- (c) validation: the real server on a full-size SAM3 ------------------------------------
def write_full_sam3(folder: Path, seed: int = 0) -> dict[str, Any]:
    """A full-size SAM3 checkpoint with random weights in the published layout: the tiny
    writer's tokenizer and files, then the published config.json (the tiny tokenizer's
    special ids, as make-tiny sets them) and processor_config.json, and a float32
    Sam3VideoModel `model.safetensors` as published."""
    import torch
    from mic2e_dev import sam3 as tiny_sam3
    from mic2e_dev.published import published, save_weights, shrink
    from transformers import Sam3VideoConfig, Sam3VideoModel

    t0 = time.perf_counter()
    tiny_sam3.write_tiny(folder, seed=seed)  # tokenizer files; the rest is replaced below
    text_ids = {k: v for k, v in tiny_sam3.TINY_SIZES["config.json"]["detector_config"]
                ["text_config"].items() if k.endswith("_token_id")}
    config_file = published("sam3", "config.json")
    config = shrink(config_file.data, {"detector_config": {"text_config": text_ids}})
    config_file.write(folder, config)
    published("sam3", "processor_config.json").write(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3VideoModel(Sam3VideoConfig.from_dict(config)).eval()
    params = sum(p.numel() for p in model.parameters())
    save_weights(model.state_dict(), folder, "model.safetensors")
    return {"params": params, "file_bytes": (folder / "model.safetensors").stat().st_size,
            "write_s": round(time.perf_counter() - t0, 1)}


def _mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def validate_sam3(weights: dict[str, Any], baseline: dict[str, Any] | None,
                  workdir: Path | None, timeout_s: float, interval: float) -> dict[str, Any]:
    """(c): the real segmentation server on a full-size random SAM3, VmHWM once SERVING."""
    from mic2e_services.stack import NotServing

    from benchmarks import _stack

    need_disk, need_ram = 4 * 10**9, 8 * 2**30
    parent = workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(parent).free < need_disk:
        return {"skipped": f"needs {need_disk / 1e9:.0f} GB free disk under {parent}"}
    if _mem_available() < need_ram:
        return {"skipped": f"needs {need_ram / 2**30:.0f} GiB of available memory, "
                f"{_mem_available() / 2**30:.1f} GiB free"}
    folder = Path(tempfile.mkdtemp(prefix="mic2e-full-sam3-", dir=parent))
    out: dict[str, Any] = {"server": "segmentation", "device": "cpu", "dtype": "float16",
                           "checkpoint": "full-size random weights, published layout "
                                         "(float32 Sam3VideoModel model.safetensors)"}
    try:
        # In a child process: the 3.4 GB model it builds never weighs on this one.
        done = subprocess.run([sys.executable, "-m", "benchmarks.host_memory",
                               "--write-full-sam3", str(folder)], cwd=REPO,
                              env={**os.environ, **quiet_env()}, capture_output=True, text=True,
                              timeout=timeout_s)
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            return {**out, "skipped": f"writing the checkpoint failed: {tail}"}
        out["written"] = json.loads(done.stdout.strip().splitlines()[-1])
        with Sampler(interval, series_every=1.0) as sampler:
            t0 = time.monotonic()
            try:
                with _stack.subprocesses(
                        models=["segmentation"], orchestrator=False,
                        model_paths={"segmentation": str(folder)},
                        extra_args={"segmentation": ["--dtype", "float16"]},
                        ready_timeout_s=timeout_s) as endpoints:
                    pid = endpoints.pids["segmentation"]
                    out["serving"] = proc_status(pid)
                    started = sampler.started(pid)
                    out["serving_after_s"] = round(time.monotonic() - (started or t0), 1)
                    sampler.sample()
                    out["sampled"] = sampler.report(pid)
                    out["log_tail"] = endpoints.logs["segmentation"].read_text(
                        errors="replace").strip().splitlines()[-2:]
            except NotServing as exc:
                return {**out, "skipped": f"not SERVING: {str(exc).splitlines()[0]}"}
        out["requests"] = ("none: a full-size SAM3 query on 2 CPU cores in float16 takes "
                           "tens of seconds, and on a GPU server its activations live on "
                           "the device, not in host memory")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    measured = out["serving"]["VmHWM"]
    # When the peak came, and the most RSS after it: on this CPU the warm-up's activations
    # are host memory too (on a GPU they are device memory); they must not be the peak.
    peak_at = out["sampled"].get("peak_VmRSS_at_s")
    if peak_at is not None:
        later = [row[1] * MIB for row in out["sampled"]["series_t_s_rss_anon_file_mib"]
                 if row[0] > peak_at + 5]
        out["peak_at_s"] = peak_at
        out["max_rss_from_5s_after_the_peak_to_serving"] = max(later) if later else None
    out["measured_peak_rss"] = measured
    out["measured_peak_anon"] = out["sampled"].get("peak_RssAnon")
    out["measured_peak_file"] = out["sampled"].get("peak_RssFile")
    if baseline is not None:
        p = predict(weights, baseline)
        out["predicted"] = p
        out["ratio_measured_over_simple"] = ratio(measured, p["simple_peak_rss"])
        out["ratio_measured_over_load_peak"] = ratio(measured, p["load_peak_rss"])
        out["ratio_anon_measured_over_predicted"] = ratio(out["measured_peak_anon"],
                                                          p["anon_peak"])
    return out


# -- (d) how the libraries read a checkpoint -------------------------------------------------
PROBE_CASES = (("transformers", "float32", "float16"), ("transformers", "bfloat16", "bfloat16"),
               ("diffusers", "float32", "float16"), ("diffusers", "bfloat16", "bfloat16"))


def _probe_module(library: str) -> Any:
    """A small real component: CLIP-L's text tower (transformers), FLUX's VAE (diffusers)."""
    from benchmarks import _full_models as fm

    if library == "transformers":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**fm._clip_text(fm.CLIP_L_TEXT)))
    from diffusers import AutoencoderKL

    return AutoencoderKL(**fm.FLUX_VAE)


def _probe_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one checkpoint in this (fresh) process; how its RSS grew, sampled."""
    import torch

    library, folder = spec["library"], spec["folder"]
    dtype = getattr(torch, spec["dtype"])
    if library == "transformers":
        from transformers import CLIPTextModel as cls

        kwargs = {"dtype": dtype}
    else:
        from diffusers import AutoencoderKL as cls

        kwargs = {"torch_dtype": dtype}
    before = proc_status()
    assert before is not None
    peaks = {"RssAnon": before["RssAnon"], "RssFile": before["RssFile"]}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            s = proc_status()
            if s:
                for k in peaks:
                    peaks[k] = max(peaks[k], s[k])
            stop.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    model = cls.from_pretrained(folder, **kwargs)
    stop.set()
    thread.join()
    after = proc_status()
    assert after is not None
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    file_bytes = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    anon = max(peaks["RssAnon"], after["RssAnon"]) - before["RssAnon"]
    mapped = max(peaks["RssFile"], after["RssFile"]) - before["RssFile"]
    return {"library": library, "checkpoint_dtype": spec["file_dtype"], "load_dtype":
            spec["dtype"], "weight_bytes": weight_bytes, "file_bytes": file_bytes,
            "anon_growth": anon, "file_growth": mapped,
            "hwm_growth": after["VmHWM"] - before["VmRSS"],
            "anon_over_weights": anon / weight_bytes,
            "file_over_file_bytes": mapped / file_bytes,
            "copied": anon > 0.5 * weight_bytes}


def loader_probe(workdir: Path, timeout_s: float = 300) -> dict[str, Any]:
    """(d): each case of PROBE_CASES, the load in a fresh process."""
    import torch

    t0 = time.perf_counter()
    folders: dict[tuple[str, str], Path] = {}
    for library, file_dtype, _ in PROBE_CASES:
        if (library, file_dtype) in folders:
            continue
        torch.manual_seed(0)
        module = _probe_module(library).to(getattr(torch, file_dtype))
        folder = workdir / f"probe-{library}-{file_dtype}"
        module.save_pretrained(str(folder))
        folders[(library, file_dtype)] = folder
        del module
    cases = []
    for library, file_dtype, load_dtype in PROBE_CASES:
        spec = {"library": library, "file_dtype": file_dtype, "dtype": load_dtype,
                "folder": str(folders[(library, file_dtype)])}
        done = subprocess.run([sys.executable, "-m", "benchmarks.host_memory", "--probe",
                               json.dumps(spec)], cwd=REPO, env={**os.environ, **quiet_env()},
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            cases.append({**spec, "error": f"exited {done.returncode}: {tail}"})
            continue
        cases.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"components": {"transformers": "CLIPTextModel, CLIP-L text tower (123 M)",
                           "diffusers": "AutoencoderKL, FLUX VAE (84 M)"},
            "cases": cases, "total_s": round(time.perf_counter() - t0, 1)}


# -- the program ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_memory",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="subset of sam3,objectclear,flux")
    p.add_argument("--tiny-dir", type=Path, help="tiny checkpoints (written there if missing; "
                   "default: a temporary folder)")
    p.add_argument("--requests", type=int, default=3,
                   help="calls to each tiny server after SERVING (default 3)")
    p.add_argument("--image-size", default="320x240", help="WIDTHxHEIGHT of the pictures sent")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip (a), the tiny servers (no predictions then)")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip (c), the full-size SAM3 server (~3 min, 8 GiB of memory)")
    p.add_argument("--no-loader-probe", dest="loader_probe", action="store_false",
                   help="skip (d), how the libraries read a checkpoint (~1 min)")
    p.add_argument("--validate-timeout", type=float, default=600.0,
                   help="seconds for the full-size SAM3 to be written, and again to be "
                   "SERVING (600)")
    p.add_argument("--workdir", type=Path, help="where the full-size checkpoint and the probe "
                   "checkpoints go (default: a temporary folder; removed after)")
    p.add_argument("--sample-interval", type=float, default=0.02,
                   help="seconds between /proc samples of the servers (0.02)")
    p.add_argument("--write-full-sam3", type=Path, help=argparse.SUPPRESS)  # internal
    p.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one loader case, as JSON
    add_output_args(p)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    models = pick_models(args.models, MODELS)
    started = time.perf_counter()
    out: dict[str, Any] = {"models": {}, "timings_s": {}}
    baselines: dict[str, Any] = {}
    if args.baseline:
        base = measure_baseline(models, args.tiny_dir, args.requests,
                                parse_size(args.image_size), args.sample_interval)
        baselines = base.pop("per_model")
        out["baseline_run"] = base
        out["timings_s"]["baseline"] = base["total_s"]
    work = Path(tempfile.mkdtemp(prefix="mic2e-host-memory-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        for m in models:
            weights = count_weights(m, work)
            out["models"][m] = {"server": SERVER_OF[m], "baseline": baselines.get(m),
                                "weights": weights,
                                "predicted": predict(weights, baselines.get(m))}
        out["timings_s"]["count"] = round(time.perf_counter() - t0, 1)
        if args.validate:
            t0 = time.perf_counter()
            if "sam3" not in models:
                out["validation"] = {"skipped": "sam3 is not among --models"}
            else:
                out["validation"] = validate_sam3(
                    out["models"]["sam3"]["weights"], baselines.get("sam3"), args.workdir,
                    args.validate_timeout, args.sample_interval)
            out["timings_s"]["validation"] = round(time.perf_counter() - t0, 1)
        else:
            out["validation"] = {"skipped": "--no-validate"}
        if args.loader_probe:
            out["loader"] = loader_probe(work)
            out["timings_s"]["loader"] = out["loader"]["total_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["timings_s"]["total"] = round(time.perf_counter() - started, 1)
    out["notes"] = NOTES
    return out


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / MIB:,.0f}"


def report(result: dict[str, Any]) -> str:
    rows = []
    val = result.get("validation", {})
    for m, r in result["models"].items():
        w, b, p = r["weights"], r["baseline"] or {}, r["predicted"]
        largest = w["largest_component"]
        measured = val.get("measured_peak_rss") if m == "sam3" else None
        rows.append([m, r["server"], w["served_dtype"], _mib(b.get("peak_rss")),
                     _mib((b.get("after_requests") or {}).get("VmRSS")),
                     f"{w['bytes_resident'] / 1e9:.2f}",
                     f"{largest['name']} {largest['bytes'] / 1e9:.2f}",
                     _mib(p.get("simple_peak_rss")), _mib(measured)])
    text = table(["model", "server", "dtype", "baseline peak MiB", "baseline now MiB",
                  "weights GB", "largest GB", "baseline+weights MiB", "measured full MiB"],
                 rows)
    rows = []
    for m, r in result["models"].items():
        w, b, p = r["weights"], r["baseline"] or {}, r["predicted"]
        on_sam3 = m == "sam3" and "measured_peak_rss" in val
        rows.append([m, f"{w['bytes_at_load'] / 1e9:.2f}",
                     f"{w['converted_at_load_bytes'] / 1e9:.2f}",
                     f"{max(s['maps'] for s in w['load_steps']) / 1e9:.2f}",
                     _mib(b.get("peak_anon")), _mib(p.get("anon_peak")),
                     _mib(val.get("measured_peak_anon") if on_sam3 else None),
                     _mib(p.get("load_peak_rss")),
                     _mib(val.get("measured_peak_rss") if on_sam3 else None)])
    text += "\nat load (converted copies are anonymous memory; mapped files are page cache):\n"
    text += table(["model", "at load GB", "converted GB", "largest file GB",
                   "baseline anon MiB", "pred. anon MiB", "meas. anon MiB",
                   "pred. peak MiB", "meas. peak MiB"], rows)
    if "measured_peak_rss" in val:
        text += (f"\nSAM3 full size, real server (CPU, float16): VmHWM "
                 f"{_mib(val['measured_peak_rss'])} MiB once SERVING "
                 f"({val['serving_after_s']} s; the peak came at {val.get('peak_at_s')} s, "
                 "at most "
                 f"{_mib(val.get('max_rss_from_5s_after_the_peak_to_serving'))} MiB after "
                 f"it); measured / (baseline + weights) = "
                 f"{fmt_x(val.get('ratio_measured_over_simple'))}, measured / load-step "
                 f"prediction = {fmt_x(val.get('ratio_measured_over_load_peak'))}, anon "
                 f"measured / predicted = {fmt_x(val.get('ratio_anon_measured_over_predicted'))}"
                 "\n")
    elif val:
        text += f"\nvalidation skipped: {val.get('skipped')}\n"
    if result.get("loader"):
        rows = [[c["library"], f"{c['checkpoint_dtype']} -> {c['load_dtype']}",
                 _mib(c.get("weight_bytes")), _mib(c.get("anon_growth")),
                 _mib(c.get("file_growth")),
                 "copied" if c.get("copied") else ("mapped" if "copied" in c else c["error"])]
                for c in result["loader"]["cases"]]
        text += "\nloader: how a checkpoint is read (fresh process each):\n"
        text += table(["library", "file -> load", "weights MiB", "anon +MiB", "file +MiB",
                       "weights are"], rows)
    text += ("\nNot included: a GPU server's CUDA context adds host memory of its own. Took "
             f"{result['timings_s']['total']:.0f} s.\n")
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet()
    args = build_parser().parse_args(argv)
    if args.write_full_sam3:
        print(json.dumps(write_full_sam3(args.write_full_sam3)))
        return {}
    if args.probe:
        print(json.dumps(_probe_child(json.loads(args.probe))))
        return {}
    started = now()
    measured = run(args)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("record", "write_full_sam3", "probe")}
    result = {"benchmark": NAME, "environment": environment(NAME, argv, started),
              "config": config, **measured}
    print(report(result), end="")
    return finish(result, args, NAME)


if __name__ == "__main__":
    main()
