"""Where the servers under test come from: in this process, child processes, or elsewhere.

* `in_process`: the tiny stack inside this process (as tests/e2e/conftest.py builds it),
  every server on port 0 and started ONE AT A TIME - transformers / diffusers load weights
  under process-global "meta device" switches, so concurrent loads in one process trip
  over each other.
* `subprocesses`: each server its own `python -m mic2e_services.cli <server>` process, the
  commands `mic2e-server up` runs, so each one's resident memory can be read on its own.
* `--full`: `in_process` on model instances from `full_size_models` - full-size random
  weights built directly on the GPU (CUDA only), so the servers' model times are real
  without any checkpoint on disk.
* `external`: a stack that is already running (a GPU machine, a cluster); addresses only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import quiet_env

MODEL_SERVERS = ("segmentation", "object-clear", "flux")
ORCHESTRATOR = "orchestrator"
#: Sub-folder of the tiny directory per model server (as mic2e_services.tiny writes them).
TINY_FOLDERS = {"segmentation": "sam3", "object-clear": "objectclear", "flux": "flux"}


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

    temp = directory is None
    root = Path(tempfile.mkdtemp(prefix="mic2e-bench-tiny-")) if temp else Path(directory)
    try:
        writers = {"segmentation": "mic2e_services.segmentation.tiny",
                   "object-clear": "mic2e_services.object_clear.tiny",
                   "flux": "mic2e_services.flux.tiny"}
        for name in needed:
            folder = root / TINY_FOLDERS[name]
            if not ((folder / "config.json").exists() or (folder / "model_index.json").exists()):
                import importlib

                importlib.import_module(writers[name]).write_tiny(folder, seed=0)
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
            out[name] = Sam3Segmenter.from_models(**fm.sam3(device, torch.float16, work),
                                                  compile=compile)
        elif name == "object-clear":
            out[name] = ObjectClearModel.from_pipeline(
                fm.objectclear_pipeline(device, torch.float16, work), compile=compile)
        elif name == "flux":
            out[name] = FluxGenerator.from_pipeline(FluxPipeline(
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
    127.0.0.1, port 0 each."""
    from mic2e_services.flux import server as flux_server
    from mic2e_services.object_clear import server as oc_server
    from mic2e_services.orchestrator import server as orch_server
    from mic2e_services.segmentation import server as seg_server

    from benchmarks._common import silence_loaded_libraries

    modules = {"segmentation": seg_server, "object-clear": oc_server, "flux": flux_server}
    settings = settings or {}
    model_paths = model_paths or {}
    prebuilt = prebuilt or {}
    needed = [m for m in models if m not in model_paths and m not in prebuilt]
    with tiny_checkpoints(tiny_dir, needed) as root:
        silence_loaded_libraries()
        started = []
        try:
            addresses: dict[str, str] = {}
            for name in models:
                module = modules[name]
                model = (model_paths.get(name) or ("in-memory" if name in prebuilt else
                                                   str(root / TINY_FOLDERS[name])))
                cfg = module.Settings(model=model, host="127.0.0.1", port=0, device=device,
                                      grace_period_s=0, **settings.get(name, {}))
                server, port = module.create_server(cfg, prebuilt.get(name))
                await server.start()
                started.append(server)
                await server.wait_ready(600)  # one at a time: see the module docstring
                addresses[name] = f"127.0.0.1:{port}"
            if orchestrator:
                cfg = orch_server.Settings(
                    host="127.0.0.1", port=0, grace_period_s=0,
                    **{f"{m.replace('-', '_')}_address": addresses[m] for m in models},
                    **settings.get(ORCHESTRATOR, {}))
                server, port = orch_server.create_server(cfg)
                await server.start()
                started.append(server)
                await server.wait_ready(60)
                addresses[ORCHESTRATOR] = f"127.0.0.1:{port}"
            pid = os.getpid()
            yield Endpoints("in-process", addresses, {n: pid for n in addresses}, root)
        finally:
            for server in reversed(started):
                await server.stop(0)


# -- child processes --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(name: str, port: int, *, model: str | None = None, device: str = "cpu",
                   addresses: dict[str, str] | None = None,
                   extra: Sequence[str] = ()) -> list[str]:
    """The command line of one server, as `mic2e-server up` builds it."""
    cmd = [sys.executable, "-m", "mic2e_services.cli", name, "--host", "127.0.0.1",
           "--port", str(port), "--grace-period-s", "5"]
    if name == ORCHESTRATOR:
        for model_name, address in (addresses or {}).items():
            cmd += [f"--{model_name}-address", address]
    else:
        cmd += ["--model", str(model), "--device", device]
    return [*cmd, *extra]


@contextlib.contextmanager
def subprocesses(*, models: Sequence[str] = MODEL_SERVERS, orchestrator: bool = True,
                 tiny_dir: Path | None = None, device: str = "cpu",
                 model_paths: dict[str, str] | None = None,
                 extra_args: dict[str, Sequence[str]] | None = None,
                 ready_timeout_s: float = 900) -> Iterator[Endpoints]:
    """Each server as its own child process (all started at once: separate processes may
    load concurrently); stopped with SIGTERM at the end."""
    from mic2e_services.stack import stop_processes, wait_serving

    model_paths = model_paths or {}
    extra_args = extra_args or {}
    needed = [m for m in models if m not in model_paths]
    log_dir = Path(tempfile.mkdtemp(prefix="mic2e-bench-logs-"))
    env = {**os.environ, **quiet_env()}
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    files = []
    with tiny_checkpoints(tiny_dir, needed) as root:
        try:
            ports = {name: free_port() for name in [*models, ORCHESTRATOR]}
            addresses = {name: f"127.0.0.1:{ports[name]}" for name in models}
            commands = {name: server_command(
                name, ports[name], model=model_paths.get(name) or str(root / TINY_FOLDERS[name]),
                device=device, extra=extra_args.get(name, ())) for name in models}
            if orchestrator:
                addresses[ORCHESTRATOR] = f"127.0.0.1:{ports[ORCHESTRATOR]}"
                commands[ORCHESTRATOR] = server_command(
                    ORCHESTRATOR, ports[ORCHESTRATOR],
                    addresses={m: addresses[m] for m in models},
                    extra=extra_args.get(ORCHESTRATOR, ()))
            for name, cmd in commands.items():
                logs[name] = log_dir / f"{name}.log"
                f = open(logs[name], "wb")  # noqa: SIM115 - closed in finally
                files.append(f)
                procs[name] = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                               cwd=Path(__file__).resolve().parent.parent)
            for name, proc in procs.items():
                try:
                    wait_serving(addresses[name], ready_timeout_s, proc)
                except (RuntimeError, TimeoutError) as exc:
                    tail = logs[name].read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} did not come up: {exc}\n--- log tail ---\n"
                                       f"{tail}") from None
            yield Endpoints("subprocess", addresses, {n: p.pid for n, p in procs.items()},
                            root, logs)
        finally:
            stop_processes(procs.values(), timeout_s=30)
            for f in files:
                f.close()


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
