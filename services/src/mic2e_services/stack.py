"""The one launcher of a whole stack on this machine: `mic2e-server up`, the benchmarks and
the end-to-end tests all start their servers here.

`in_process` runs the servers inside this process (tests, benchmarks), port 0 each, started
ONE AT A TIME: transformers / diffusers load weights under process-global "meta device"
switches, so concurrent loads in one process trip over each other. `processes` runs each
as its own ``python -m mic2e_services.cli <server>`` process, all starting at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mic2e_services.tiny import TINY_FOLDERS

#: Model servers in start order, and their offset from the base (orchestrator) port.
PORT_OFFSETS = {"segmentation": 1, "object-clear": 2, "flux": 3}
MODEL_SERVERS = tuple(PORT_OFFSETS)
ORCHESTRATOR = "orchestrator"


def tiny_models(tiny_dir: Path, names: Iterable[str] = MODEL_SERVERS, *, write: bool = True,
                progress: bool = False) -> dict[str, str]:
    """The tiny checkpoint of each of `names` under `tiny_dir`, written if missing or
    stamped by other code (a folder without a stamp, e.g. a test's, is used as it is);
    `write` False: only the paths. `progress`: say what is written (on stderr)."""
    from mic2e_services.tiny import fingerprint, make_tiny, needs_writing

    folders = {name: Path(tiny_dir) / TINY_FOLDERS[name] for name in names}
    stamp = fingerprint() if write else ""
    stale = [name for name, folder in folders.items()
             if write and needs_writing(folder, stamp)]
    if stale:
        make_tiny(tiny_dir, names=stale, force=True, progress=progress)
    return {name: str(folder) for name, folder in folders.items()}


@contextlib.asynccontextmanager
async def in_process(models: Mapping[str, Any], *, orchestrator: bool = True,
                     settings: Mapping[str, Mapping[str, Any]] | None = None,
                     host: str = "127.0.0.1") -> AsyncIterator[dict[str, Any]]:
    """Servers in this process, one per entry of `models` (name -> checkpoint path, or a
    model built in memory), then the orchestrator wired to them. Yields name -> `Server`."""
    settings = settings or {}
    started: dict[str, Any] = {}
    try:
        for name in [*models, *([ORCHESTRATOR] if orchestrator else [])]:
            module = importlib.import_module(f"mic2e_services.{name.replace('-', '_')}.server")
            extra = dict(settings.get(name, {}))
            model = models.get(name)
            if name == ORCHESTRATOR:
                extra.update({f"{n.replace('-', '_')}_address": f"{host}:{s.port}"
                              for n, s in started.items()})
            else:
                extra["model"] = str(model) if isinstance(model, str | Path) else "in-memory"
            config = module.Settings(host=host, port=0, **extra)
            server, _ = (module.create_server(config) if isinstance(model, str | Path | None)
                         else module.create_server(config, model))
            started[name] = server
            await server.start()
            await server.wait_ready(600)
        yield started
    finally:
        for server in reversed(list(started.values())):
            await server.stop(0)


def command(name: str, port: int, *, model: str | None = None, device: str = "cpu",
            metrics_port: int | None = None, addresses: Mapping[str, str] | None = None,
            extra: Iterable[str] = ()) -> list[str]:
    """The command line of one server: a model server, or the orchestrator wired to the
    model servers at `addresses`."""
    cmd = [sys.executable, "-m", "mic2e_services.cli", name, "--host", "127.0.0.1",
           "--port", str(port)]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port)]
    if name == ORCHESTRATOR:
        cmd += [arg for n, a in (addresses or {}).items() for arg in (f"--{n}-address", a)]
    else:
        cmd += ["--model", str(model), "--device", device]
    return [*cmd, *extra]


@contextlib.contextmanager
def processes(commands: Mapping[str, list[str]], addresses: Mapping[str, str], *,
              env: Mapping[str, str] | None = None, logs: Mapping[str, Path] | None = None,
              stopping: Callable[[], bool] = lambda: False, ready_timeout_s: float = 600
              ) -> Iterator[dict[str, subprocess.Popen]]:
    """Start every command, wait until each server at `addresses` is SERVING (giving up
    at once when `stopping()`), yield name -> process, stop them all with SIGTERM on exit.
    `logs`: a file per server for its output (default: this terminal)."""
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           **(env or {})}
    procs: dict[str, subprocess.Popen] = {}
    with contextlib.ExitStack() as files:
        try:
            for name, cmd in commands.items():
                out = files.enter_context(open(logs[name], "wb")) if logs else None
                procs[name] = subprocess.Popen(cmd, env=env, stdout=out,
                                               stderr=subprocess.STDOUT if out else None)
            for name, proc in procs.items():
                try:
                    wait_serving(addresses[name], ready_timeout_s, proc, stopping)
                except (RuntimeError, TimeoutError) as exc:
                    tail = Path(logs[name]).read_text(errors="replace")[-3000:] if logs else ""
                    raise RuntimeError(f"{name} did not come up: {exc}\n{tail}") from None
            yield procs
        finally:
            stop_processes(procs.values(), timeout_s=40)


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
    """Poll grpc.health.v1 until SERVING; fail early if the process died (or we stop)."""
    until = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until and not stopping():
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server at {address} exited with code {proc.returncode}")
            with contextlib.suppress(grpc.RpcError):
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise RuntimeError("stopped while starting") if stopping() else TimeoutError(
        f"server at {address} not SERVING after {timeout_s:.0f}s")


def stop_processes(procs: Iterable[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM every server (each finishes its in-flight calls), then kill stragglers."""
    procs = [p for p in procs if p.poll() is None]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class _Stopped(Exception):
    """SIGTERM / Ctrl-C before any server process was started."""


def run_stack(args: argparse.Namespace) -> int:
    """`mic2e-server up`: every server as a child process until Ctrl-C / SIGTERM, which
    stops them all gracefully - also while they are still starting."""
    stopping = False
    children = False

    def stop(*_: object) -> None:
        nonlocal stopping
        if not stopping and not children:
            stopping = True
            raise _Stopped  # nothing started yet (e.g. writing tiny models): leave now
        # Children run: `processes` sees the flag within a second and stops them all.
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    models = {n: getattr(args, f"model_{n.replace('-', '_')}") for n in MODEL_SERVERS}
    try:
        tiny = tiny_models(args.tiny_dir, [n for n, m in models.items() if m is None])
    except _Stopped:
        return 0
    ports = {ORCHESTRATOR: args.base_port,
             **{n: args.base_port + offset for n, offset in PORT_OFFSETS.items()}}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    metrics = {name: args.metrics_base_port + port - args.base_port
               for name, port in ports.items()}
    commands = {n: command(n, ports[n], model=models[n] or tiny[n], metrics_port=metrics[n],
                           device=getattr(args, f"device_{n.replace('-', '_')}"))
                for n in MODEL_SERVERS}
    commands[ORCHESTRATOR] = command(ORCHESTRATOR, ports[ORCHESTRATOR],
                                     metrics_port=metrics[ORCHESTRATOR],
                                     addresses={n: addresses[n] for n in MODEL_SERVERS},
                                     extra=["--http-port", str(args.http_port)])
    children = True
    try:
        with processes(commands, addresses, stopping=lambda: stopping) as procs:
            for name in procs:
                print(f"{name:>13}: SERVING on {addresses[name]}", flush=True)
            if args.http_port >= 0:
                print(f"{'HTTP':>13}: http://127.0.0.1:{args.http_port}/ (the playground; "
                      "Connect and gRPC-Web)", flush=True)
            print("stack is up; Ctrl-C stops it", flush=True)
            while not stopping:
                if dead := [n for n, p in procs.items() if p.poll() is not None]:
                    print(f"server(s) exited: {', '.join(dead)}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
    except RuntimeError as exc:
        if not stopping:
            print(f"mic2e-server up: {exc}", file=sys.stderr)
            return 1
    return 0
