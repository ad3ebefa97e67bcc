"""What every benchmark shares: statistics, inputs, the environment record, JSON output.

No torch at import time: the client-side benchmarks (overhead, load, soak) may run where
only the client is installed; `environment()` reports torch / the GPU when importable.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The benchmarks' model names and the server each is served by (`mic2e-server <server>`).
SERVER_OF = {"sam3": "segmentation", "objectclear": "object-clear", "flux": "flux"}


# -- quiet libraries -------------------------------------------------------------------------
def quiet_env() -> dict[str, str]:
    """Environment for quiet, offline model libraries (also handed to server subprocesses)."""
    return {
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error"),
        "DIFFUSERS_VERBOSITY": os.environ.get("DIFFUSERS_VERBOSITY", "error"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "ERROR"),
        # Several servers on one machine (or in one process): each takes any free
        # /metrics port instead of all fighting over 9090.
        "MIC2E_METRICS_PORT": os.environ.get("MIC2E_METRICS_PORT", "0"),
    }


def quiet() -> None:
    """No hub, no progress bars, no library chatter in this process (call before imports)."""
    os.environ.update(quiet_env())
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mic2e_services", "grpc"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # torchao (pulled in by diffusers) registers enums in a way torch now warns about.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*__array__ implementation.*")


def silence_loaded_libraries() -> None:
    """The model libraries as quiet as in a server (`mic2e_services.quiet`)."""
    from mic2e_services.quiet import quiet_model_libraries

    quiet_model_libraries()


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def summary(values: Iterable[float]) -> dict[str, float | int]:
    """n, median, p50/p95/p99, mean, min, max of `values` (seconds unless said otherwise)."""
    data = [float(v) for v in values]
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "median": percentile(data, 50),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "mean": sum(data) / len(data),
        "min": min(data),
        "max": max(data),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


# -- inputs ----------------------------------------------------------------------------------
def picture(seed: int, width: int, height: int, fmt: str = "jpeg") -> bytes:
    """A photo-like test picture (smooth gradients, a few shapes, mild noise), encoded.

    Distinct seeds give distinct bytes, so no server cache (decoded images, SAM3 vision
    features) can serve one request from another's work.
    """
    import numpy as np
    from mic2e import codecs
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(x / (width / (2 + 3 * rng.random())) + rng.random() * 6),
        128 + 100 * np.cos(y / (height / (2 + 3 * rng.random())) + rng.random() * 6),
        128 + 60 * np.sin((x + y) / (width / 3)),
    ], axis=-1)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        w, h = int(rng.integers(8, width // 3 + 9)), int(rng.integers(8, height // 3 + 9))
        base[y0:y0 + h, x0:x0 + w] = rng.integers(0, 255, 3)
    base += rng.normal(0, 6, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    return codecs.encode_image(img, fmt)


def box_mask(width: int, height: int,
             box: tuple[float, float, float, float] = (0.3, 0.3, 0.7, 0.7)):
    """A bool (height, width) mask covering the relative `box` (x0, y0, x1, y1)."""
    import numpy as np

    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    mask[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = True
    return mask


def parse_size(text: str) -> tuple[int, int]:
    """"640x480" -> (640, 480); "512" -> (512, 512)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[0]), int(parts[1])


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


# -- environment -----------------------------------------------------------------------------
def gpu_name() -> str | None:
    """This machine's first CUDA device name, or None (also when torch is not installed)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def environment(program: str, argv: Sequence[str] | None, started: str | None = None
                ) -> dict[str, Any]:
    """Date, machine, library versions, GPU and git commit: what a recorded number needs.

    `program` is the benchmark's module name, `argv` its arguments (None: sys.argv[1:]),
    `started` when the run began (default: now). Imports torch when it can (to name the
    GPU): client-side benchmarks call this after measuring, so that torch never weighs
    on the client's own memory figures.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env: dict[str, Any] = {
        "date": started or now(),
        "finished": now(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(shlex.quote(a) for a in
                            ["python", "-m", f"benchmarks.{program}", *args]),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        env["torch_threads"] = torch.get_num_threads()
        env["gpu"] = gpu_name()
        if env["gpu"]:
            props = torch.cuda.get_device_properties(0)
            env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    except ImportError:
        env["torch"] = None
        env["gpu"] = None
    for lib in ("diffusers", "transformers", "grpc"):
        try:
            env[lib] = __import__(lib).__version__
        except Exception:  # noqa: BLE001
            env[lib] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=5).stdout
        env["git_commit"] = commit or None
        env["git_dirty"] = bool(dirty.strip())
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


# -- resident memory -------------------------------------------------------------------------
#: The memory lines of /proc/<pid>/status that proc_status reads.
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")


def proc_status(pid: int | str = "self") -> dict[str, int] | None:
    """VmHWM, VmRSS, RssAnon, RssFile, RssShmem of a process in bytes, or None if gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in STATUS_KEYS:
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    return out


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of a process (VmRSS), or None if gone."""
    return (proc_status(pid) or {}).get("VmRSS")


# -- output ----------------------------------------------------------------------------------
def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="write the full JSON result to this file")
    parser.add_argument("--record", action="store_true",
                        help="also file it as benchmarks/results/<date>-<gpu>-<name>.json")
    parser.add_argument("--gpu-label", help="GPU name for --record when the GPU is not on "
                        "this machine (e.g. a remote stack); default: this machine's GPU or "
                        "'cpu'")


def jsonable(value: Any) -> Any:
    """Strict JSON: infinities and NaN become the strings "inf" / "-inf" / "nan"."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(jsonable(result), indent=2, sort_keys=False, allow_nan=False) + "\n"


def finish(result: dict[str, Any], args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Write `--out` / `--record` files; returns the (strict-JSON) result."""
    clean = jsonable(result)
    text = dumps(clean)
    if getattr(args, "out", None):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"JSON written to {args.out}")
    if getattr(args, "record", False):
        env = clean.get("environment", {})
        label = getattr(args, "gpu_label", None) or env.get("gpu") or "cpu"
        date = str(env.get("date", _dt.date.today().isoformat()))[:10]
        path = RESULTS_DIR / f"{date}-{slug(label)}-{name}.json"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"recorded in {path.relative_to(REPO)}")
    return clean


def fmt_s(value: Any) -> str:
    """Seconds for a table: ms below 1 s."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.3f} s"


def fmt_x(value: Any, digits: int = 2) -> str:
    if value is None or isinstance(value, str):
        return "-" if value is None else value
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = io.StringIO()
    for n, row in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    return out.getvalue()


def stack_main(name: str, argv: Sequence[str] | None, build_parser: Callable[[], Any],
               run: Callable[[argparse.Namespace], Any],
               report: Callable[[dict[str, Any]], str],
               extra_config: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
               record_as: Callable[[dict[str, Any]], str] | None = None,
               ) -> dict[str, Any]:
    """The shared `main` of the stack benchmarks: parse, run, print the table, save
    (`record_as(result)`: the name to file it under, default `name`)."""
    import asyncio

    quiet()
    args = build_parser().parse_args(argv)
    started = now()
    measured = asyncio.run(run(args))
    config = {k: (str(v) if k in ("out", "tiny_dir") and v else v)
              for k, v in vars(args).items() if k not in ("record", "token")}
    if extra_config is not None:
        config.update(extra_config(args))
    result = {"benchmark": name, "environment": environment(name, argv, started),
              "config": config, **measured}
    print(report(result), end="")
    return finish(result, args, record_as(result) if record_as else name)


# -- profiles of the model-class benchmarks (models, memory) ---------------------------------
def profile_settings(profiles: dict[str, dict[str, Any]], args: argparse.Namespace,
                     program: str) -> dict[str, Any]:
    """The profile's defaults with every non-None option of the same name over them.

    A CUDA profile on a machine without CUDA stops here (exit 2) with a message naming
    the missing device and the command to run instead.
    """
    settings = dict(profiles[args.profile])
    for key in list(settings):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if settings["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(f"benchmarks.{program} --profile {args.profile} needs a CUDA device, and "
                  "there is none on this machine: torch.cuda.is_available() is False (torch "
                  f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}). Run it on "
                  f"a GPU machine (`uv run python -m benchmarks.{program} --profile "
                  f"{args.profile} --record`), or use --profile tiny here.", file=sys.stderr)
            raise SystemExit(2)
    return settings


def pick_models(text: str, known: Sequence[str]) -> list[str]:
    """"sam3,flux" -> ["sam3", "flux"]; an unknown name stops the program, naming it."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = set(models) - set(known)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; choose from {tuple(known)}")
    return models
