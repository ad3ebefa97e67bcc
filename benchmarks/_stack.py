"""Where the servers under test come from: in this process, child processes, or elsewhere.

* `in_process`: the tiny stack inside this process, through `mic2e_services.stack` (the
  launcher `mic2e-server up` and the end-to-end tests use), every server on port 0.
* `subprocesses`: each server its own `python -m mic2e_services.cli <server>` process, as
  `mic2e-server up` starts them, so each one's resident memory can be read on its own.
* `--full`: `in_process` on model instances from `full_size_models` - full-size random
  weights built directly on the GPU (CUDA only), so the servers' model times are real
  without any checkpoint on disk.
* `external`: a stack that is already running (a GPU machine, a cluster); addresses only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mic2e_dev.tiny import TINY_FOLDERS
from mic2e_services.stack import MODEL_SERVERS, ORCHESTRATOR

from benchmarks._common import quiet_env


@dataclass
class Endpoints:
    """Addresses of the servers under test and, where known, their process ids."""

    mode: str
    addresses: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)
    tiny_dir: Path | None = None
    logs: dict[str, Path] = field(default_factory=dict)

    def address(self, name: str) -> str:
        try:
            return self.addresses[name]
        except KeyError:
            raise SystemExit(f"no address for the {name} server; pass --{name}-address") from None


def add_stack_args(parser: Any, *, models: Sequence[str] = MODEL_SERVERS,
                   orchestrator: bool = True, subprocess_default: bool = False) -> None:
    """--*-address flags for a running stack, and the tiny stack's options."""
    group = parser.add_argument_group(
        "servers", "default: a tiny stack on CPU started by the benchmark itself; give "
        "addresses to measure a running stack instead (e.g. GPU servers)")
    if orchestrator:
        group.add_argument("--orchestrator-address", help="HOST:PORT of a running orchestrator")
    for name in models:
        group.add_argument(f"--{name}-address", dest=f"{name.replace('-', '_')}_address",
                           help=f"HOST:PORT of a running {name} server")
    group.add_argument("--tiny-dir", type=Path,
                       help="tiny checkpoints to use (written there if missing; default: a "
                       "temporary folder)")
    group.add_argument("--full", action="store_true",
                       help="CUDA only: the stack in this process on full-size "
                       "random-weight models built directly on the GPU (as benchmarks.models "
                       "--profile full); measures real model times without checkpoints")
    group.add_argument("--compile", action="store_true",
                       help="with --full: the model servers as with MIC2E_COMPILE=1 "
                       "(torch.compile during warm-up, CUDA graphs; compile cache in "
                       "--compile-cache-dir)")
    group.add_argument("--compile-cache-dir", default="/tmp/mic2e-compile",
                       help="compile cache for --compile (default /tmp/mic2e-compile)")
    if subprocess_default:
        group.add_argument("--in-process", dest="subprocess", action="store_false",
                           help="run the tiny stack inside this process instead of as child "
                           "processes")
        parser.set_defaults(subprocess=True)
    else:
        group.add_argument("--subprocess", action="store_true",
                           help="run the tiny stack as child processes (one per server, as "
                           "`mic2e-server up` does) instead of inside this process")
    group.add_argument("--token", help="bearer token for servers that require one")


def given_addresses(args: Any, names: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in names:
        value = getattr(args, f"{name.replace('-', '_')}_address", None)
        if value:
            out[name] = value
    return out


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


# -- tiny checkpoints -------------------------------------------------------------------------
@contextlib.contextmanager
def tiny_checkpoints(directory: Path | None, needed: Sequence[str] = MODEL_SERVERS
                     ) -> Iterator[Path]:
    """A folder with the tiny checkpoints of `needed` servers: `directory` (written there if
    missing) or a temporary one removed afterwards."""
    import shutil

    from mic2e_services.stack import tiny_models

    temp = directory is None
    root = Path(tempfile.mkdtemp(prefix="mic2e-bench-tiny-")) if temp else Path(directory)
    try:
        if needed:
            tiny_models(root, needed)
        yield root
    finally:
        if temp:
            shutil.rmtree(root, ignore_errors=True)


# -- full-size models in memory --------------------------------------------------------------
def no_cuda_message(what: str) -> str:
    import torch

    return (f"{what} needs a CUDA device, and there is none on this machine: "
            f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}). Run it on a GPU machine, or leave out --full "
            "to use the tiny CPU stack here.")


def full_size_models(names: Sequence[str], device: str = "cuda",
                     compile: Any = None) -> dict[str, Any]:
    """Model-class instances (not loaded yet) around full-size random weights built directly
    on `device` in the servers' dtypes; their servers' workers adopt them on load().
    `compile`: a CompileSpec, as the servers pass with MIC2E_COMPILE on."""
    import torch
    from diffusers import FluxPipeline
    from mic2e_services.flux.model import FluxGenerator
    from mic2e_services.object_clear.model import ObjectClearModel
    from mic2e_services.segmentation.model import Sam3Segmenter

    from benchmarks import _full_models as fm

    if not torch.cuda.is_available():
        raise SystemExit(no_cuda_message("--full"))
    work = Path(tempfile.mkdtemp(prefix="mic2e-bench-full-"))
    out: dict[str, Any] = {}
    for name in names:
        if name == "segmentation":
            out[name] = Sam3Segmenter.from_parts(fm.sam3(device, torch.float16, work),
                                                  compile=compile)
        elif name == "object-clear":
            out[name] = ObjectClearModel.from_parts(
                fm.objectclear_pipeline(device, torch.float16, work), compile=compile)
        elif name == "flux":
            out[name] = FluxGenerator.from_parts(FluxPipeline(
                **fm.flux(device, torch.bfloat16, work)), compile=compile)
    return out


# -- in this process --------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def in_process(*, models: Sequence[str] = MODEL_SERVERS, orchestrator: bool = True,
                     tiny_dir: Path | None = None, device: str = "cpu",
                     settings: dict[str, dict[str, Any]] | None = None,
                     model_paths: dict[str, str] | None = None,
                     prebuilt: dict[str, Any] | None = None) -> AsyncIterator[Endpoints]:
    """The tiny stack (or `model_paths`, or `prebuilt` model instances) in this process on
    127.0.0.1, port 0 each, through the one stack launcher."""
    from mic2e_services import stack

    from benchmarks._common import silence_loaded_libraries

    model_paths = model_paths or {}
    prebuilt = prebuilt or {}
    needed = [m for m in models if m not in model_paths and m not in prebuilt]
    with tiny_checkpoints(tiny_dir, needed) as root:
        silence_loaded_libraries()
        chosen = {name: prebuilt.get(name) or model_paths.get(name)
                  or str(root / TINY_FOLDERS[name]) for name in models}
        per_server = {name: {"device": device, "grace_period_s": 0,
                             **(settings or {}).get(name, {})} for name in models}
        per_server[ORCHESTRATOR] = {"grace_period_s": 0,
                                    **(settings or {}).get(ORCHESTRATOR, {})}
        async with stack.in_process(chosen, orchestrator=orchestrator,
                                    settings=per_server) as servers:
            addresses = {name: f"127.0.0.1:{server.port}" for name, server in servers.items()}
            pid = os.getpid()
            yield Endpoints("in-process", addresses, {n: pid for n in addresses}, root)


# -- child processes --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def subprocesses(*, models: Sequence[str] = MODEL_SERVERS, orchestrator: bool = True,
                 tiny_dir: Path | None = None, device: str = "cpu",
                 model_paths: dict[str, str] | None = None,
                 extra_args: dict[str, Sequence[str]] | None = None,
                 ready_timeout_s: float = 900) -> Iterator[Endpoints]:
    """Each server as its own child process, as `mic2e-server up` starts them (the one
    stack launcher), with its output in a log file; stopped with SIGTERM at the end."""
    from mic2e_services import stack

    model_paths = model_paths or {}
    extra_args = extra_args or {}
    needed = [m for m in models if m not in model_paths]
    log_dir = Path(tempfile.mkdtemp(prefix="mic2e-bench-logs-"))
    with tiny_checkpoints(tiny_dir, needed) as root:
        names = [*models, *([ORCHESTRATOR] if orchestrator else [])]
        ports = {name: free_port() for name in names}
        addresses = {name: f"127.0.0.1:{ports[name]}" for name in names}
        commands = {name: stack.command(
            name, ports[name], model=model_paths.get(name) or str(root / TINY_FOLDERS[name]),
            device=device, extra=["--grace-period-s", "5", *extra_args.get(name, ())])
            for name in models}
        if orchestrator:
            commands[ORCHESTRATOR] = stack.command(
                ORCHESTRATOR, ports[ORCHESTRATOR], addresses={m: addresses[m] for m in models},
                extra=["--grace-period-s", "5", *extra_args.get(ORCHESTRATOR, ())])
        logs = {name: log_dir / f"{name}.log" for name in names}
        # The orchestrator is ready once it reaches the model servers started here.
        ready = {ORCHESTRATOR: stack.orchestrator_ready(models)} if orchestrator else {}
        with stack.processes(commands, addresses, env=quiet_env(), logs=logs,
                             ready_timeout_s=ready_timeout_s, ready_services=ready) as procs:
            yield Endpoints("subprocess", addresses, {n: p.pid for n, p in procs.items()},
                            root, logs)


def stack_label(endpoints: Endpoints) -> str:
    """How the measured stack ran, for the JSON."""
    if endpoints.mode == "external":
        return "external (running servers)"
    if endpoints.mode.endswith("full-size"):
        from benchmarks._common import gpu_name

        return f"in-process, full-size random weights on {gpu_name()}"
    return f"tiny checkpoints on CPU, {endpoints.mode}"


def external(addresses: dict[str, str], pids: dict[str, int] | None = None) -> Endpoints:
    return Endpoints("external", dict(addresses), dict(pids or {}))


@contextlib.asynccontextmanager
async def stack_for(args: Any, *, models: Sequence[str], orchestrator: bool,
                    settings: dict[str, dict[str, Any]] | None = None,
                    extra_args: dict[str, Sequence[str]] | None = None
                    ) -> AsyncIterator[Endpoints]:
    """The servers a benchmark asked for: the running ones whose addresses were given, else
    a tiny stack (in this process, or as child processes with --subprocess)."""
    names = [*models, *([ORCHESTRATOR] if orchestrator else [])]
    addresses = given_addresses(args, names)
    if addresses:
        yield external(addresses)
    elif getattr(args, "full", False):
        spec = None
        if getattr(args, "compile", False):
            from mic2e_services.runtime.model_api import CompileSpec

            spec = CompileSpec(cache_dir=args.compile_cache_dir)
        prebuilt = full_size_models(models, compile=spec)
        async with in_process(models=models, orchestrator=orchestrator, device="cuda",
                              settings=settings, prebuilt=prebuilt) as endpoints:
            endpoints.mode = "in-process full-size"
            yield endpoints
    elif getattr(args, "subprocess", False):
        with subprocesses(models=models, orchestrator=orchestrator, tiny_dir=args.tiny_dir,
                          extra_args=extra_args) as endpoints:
            yield endpoints
    else:
        async with in_process(models=models, orchestrator=orchestrator, tiny_dir=args.tiny_dir,
                              settings=settings) as endpoints:
            yield endpoints
