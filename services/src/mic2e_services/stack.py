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
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mic2e.channel import sync_channel

from mic2e_services.orchestrator.server import (
    FLUX_SERVICE,
    OBJECT_CLEAR_SERVICE,
    SEGMENTATION_SERVICE,
)
from mic2e_services.orchestrator.servicer import SERVICE_NAME as EDIT_SERVICE

#: Model servers in start order, and their offset from the base (orchestrator) port.
PORT_OFFSETS = {"segmentation": 1, "object-clear": 2, "flux": 3}
MODEL_SERVERS = tuple(PORT_OFFSETS)
ORCHESTRATOR = "orchestrator"


class TinyToolingMissing(RuntimeError):
    """Tiny checkpoints were asked for where the mic2e-dev package is not installed."""


def tiny_tooling() -> Any:
    """`mic2e_dev.tiny`: development tooling, installed by the repository's set-up but not
    with the servers (their wheel and image leave it out)."""
    try:
        from mic2e_dev import tiny
    except ImportError:
        raise TinyToolingMissing(
            "tiny checkpoints come with the mic2e-dev package, which a server install leaves "
            "out: run ./scripts/setup.sh in the repository (containers: the models-tiny "
            "image), or give every server a checkpoint (--model-segmentation, "
            "--model-object-clear, --model-flux)") from None
    return tiny


def tiny_models(tiny_dir: Path, names: Iterable[str] = MODEL_SERVERS, *, write: bool = True,
                progress: bool = False) -> dict[str, str]:
    """The tiny checkpoint of each of `names` under `tiny_dir`, written if missing or
    stamped by other code (a folder without a stamp, e.g. a test's, is used as it is);
    `write` False: only the paths. `progress`: say what is written (on stderr)."""
    names = list(names)
    if not names:
        return {}
    tiny = tiny_tooling()
    folders = {name: Path(tiny_dir) / tiny.TINY_FOLDERS[name] for name in names}
    stamp = tiny.fingerprint() if write else ""
    stale = [name for name, folder in folders.items()
             if write and tiny.needs_writing(folder, stamp)]
    if stale:
        tiny.make_tiny(tiny_dir, names=stale, force=True, progress=progress)
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


#: What the orchestrator must answer SERVING before a stack is ready: itself, and its
#: entry for each model service, SERVING only once it reaches that model server (so the
#: first call after "ready" finds every channel connected).
MODEL_SERVICES = {"segmentation": SEGMENTATION_SERVICE, "object-clear": OBJECT_CLEAR_SERVICE,
                  "flux": FLUX_SERVICE}


def orchestrator_ready(models: Iterable[str] = MODEL_SERVERS) -> tuple[str, ...]:
    """The orchestrator's health services that say it is ready for calls needing `models`."""
    return ("", EDIT_SERVICE, *(MODEL_SERVICES[m] for m in models))


ORCHESTRATOR_READY = orchestrator_ready()


@contextlib.contextmanager
def processes(commands: Mapping[str, list[str]], addresses: Mapping[str, str], *,
              env: Mapping[str, str] | None = None, logs: Mapping[str, Path] | None = None,
              stopping: Callable[[], bool] = lambda: False, ready_timeout_s: float = 600,
              ready_services: Mapping[str, Sequence[str]] | None = None,
              on_serving: Callable[[str, float], None] | None = None,
              on_waiting: Callable[[list[str], float], None] | None = None,
              ) -> Iterator[dict[str, subprocess.Popen]]:
    """Start every command, wait until each server at `addresses` is SERVING (giving up
    at once when `stopping()`), yield name -> process, stop them all with SIGTERM on exit.
    `logs`: a file per server for its output (default: this terminal). `ready_services`:
    the health services a server must answer SERVING for (default: its overall health "").
    `on_serving(name, seconds)` as each becomes SERVING, `on_waiting(names, seconds)`
    now and then while some are not."""
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           **(env or {})}
    procs: dict[str, subprocess.Popen] = {}
    with contextlib.ExitStack() as files:
        try:
            for name, cmd in commands.items():
                out = files.enter_context(open(logs[name], "wb")) if logs else None
                procs[name] = subprocess.Popen(cmd, env=env, stdout=out,
                                               stderr=subprocess.STDOUT if out else None)
            try:
                wait_all_serving({n: addresses[n] for n in procs}, ready_timeout_s, procs,
                                 stopping, ready_services or {}, on_serving, on_waiting)
            except NotServing as exc:
                if not logs:
                    raise
                # The server's own account went to its file: show its end.
                tail = Path(logs[exc.name]).read_text(errors="replace")[-3000:]
                raise NotServing(exc.name, exc.returncode, ready_timeout_s, tail) from None
            yield procs
        finally:
            stop_processes(procs.values(), timeout_s=40)


class NotServing(RuntimeError):
    """A server that exited (`returncode`) or timed out (None) before it was SERVING."""

    def __init__(self, name: str, returncode: int | None, timeout_s: float,
                 log_tail: str = "") -> None:
        what = (f"{name} exited with code {returncode} before it was SERVING"
                if returncode is not None else f"{name} not SERVING after {timeout_s:.0f} s")
        super().__init__(f"{what}\n{log_tail}".rstrip())
        self.name, self.returncode = name, returncode


def wait_all_serving(addresses: Mapping[str, str], timeout_s: float,
                     procs: Mapping[str, subprocess.Popen] | None = None,
                     stopping: Callable[[], bool] = lambda: False,
                     services: Mapping[str, Sequence[str]] | None = None,
                     on_serving: Callable[[str, float], None] | None = None,
                     on_waiting: Callable[[list[str], float], None] | None = None,
                     waiting_every_s: float = 15.0) -> None:
    """Poll every server's grpc.health.v1 together until all are SERVING (each reported
    to `on_serving` as it gets there); fail early when a process exits or we stop."""
    started = time.monotonic()
    channels = {name: sync_channel(address) for name, address in addresses.items()}
    pending = list(addresses)
    next_report = started + waiting_every_s
    try:
        while pending:
            if stopping():
                raise RuntimeError("stopped while starting")
            for name in list(pending):
                proc = (procs or {}).get(name)
                if proc is not None and proc.poll() is not None:
                    raise NotServing(name, proc.returncode, timeout_s)
                if _serving(channels[name], (services or {}).get(name, ("",))):
                    pending.remove(name)
                    if on_serving is not None:
                        on_serving(name, time.monotonic() - started)
            now = time.monotonic()
            if pending and now - started > timeout_s:
                raise NotServing(pending[0], None, timeout_s)
            if pending and now >= next_report and on_waiting is not None:
                on_waiting(list(pending), now - started)
                next_report = now + waiting_every_s
            if pending:
                time.sleep(0.2)
    finally:
        for channel in channels.values():
            channel.close()


def _serving(channel: grpc.Channel, services: Sequence[str]) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in services:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
        except grpc.RpcError:
            return False
        if status != health_pb2.HealthCheckResponse.SERVING:
            return False
    return True


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen | None = None,
                 stopping: Callable[[], bool] = lambda: False,
                 services: Sequence[str] = ("",)) -> None:
    """Poll grpc.health.v1 until SERVING (for each of `services`); fail early if the
    process died (or we stop)."""
    name = f"server at {address}"
    try:
        wait_all_serving({name: address}, timeout_s, None if proc is None else {name: proc},
                         stopping, {name: services})
    except NotServing as exc:
        # A timeout is a TimeoutError, as callers expect.
        raise (RuntimeError if exc.returncode is not None else TimeoutError)(str(exc)) from None


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


def _up_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `up`'s own flags, found before anything starts."""
    from mic2e_services.checkpoints import CheckpointError, check_source

    for flag, base in (("--base-port", args.base_port),
                       ("--metrics-base-port", args.metrics_base_port)):
        if not 1 <= base <= 65535 - len(PORT_OFFSETS):
            return (f"{flag} {base}: must be 1..{65535 - len(PORT_OFFSETS)} (the "
                    "orchestrator's; the model servers take the next three)")
    if not -1 <= args.http_port <= 65535:
        return f"--http-port {args.http_port}: must be 0..65535, or -1 for none"
    for name in MODEL_SERVERS:
        model = getattr(args, f"model_{name.replace('-', '_')}")
        if model is not None:
            try:
                check_source(model, f"--model-{name}")
            except CheckpointError as exc:
                return str(exc)
    return None


def plan(args: argparse.Namespace, tiny: Mapping[str, str]
         ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """`up`'s four command lines and gRPC addresses (`tiny`: the checkpoints of the model
    servers given no --model-*)."""
    ports = {ORCHESTRATOR: args.base_port,
             **{n: args.base_port + offset for n, offset in PORT_OFFSETS.items()}}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    metrics = {name: args.metrics_base_port + port - args.base_port
               for name, port in ports.items()}
    commands = {n: command(n, ports[n], metrics_port=metrics[n],
                           model=getattr(args, f"model_{n.replace('-', '_')}") or tiny[n],
                           device=getattr(args, f"device_{n.replace('-', '_')}"))
                for n in MODEL_SERVERS}
    commands[ORCHESTRATOR] = command(ORCHESTRATOR, ports[ORCHESTRATOR],
                                     metrics_port=metrics[ORCHESTRATOR],
                                     addresses={n: addresses[n] for n in MODEL_SERVERS},
                                     extra=["--http-port", str(args.http_port)])
    return commands, {n: addresses[n] for n in commands}


def run_stack(args: argparse.Namespace) -> int:
    """`mic2e-server up`: every server as a child process until Ctrl-C / SIGTERM, which
    stops them all gracefully - also while they are still starting. Each server is
    reported as it becomes SERVING, then "ready" once all are (the orchestrator only once
    it reaches every model server)."""
    if problem := _up_problem(args):
        print(f"mic2e-server up: error: {problem}", file=sys.stderr)
        return 2
    untold = [n for n in MODEL_SERVERS if getattr(args, f"model_{n.replace('-', '_')}") is None]
    if args.print_settings:
        from mic2e_services.cli import SettingsError, command_settings

        try:
            commands, _ = plan(args, tiny_models(args.tiny_dir, untold, write=False))
            settings = {n: command_settings(cmd) for n, cmd in commands.items()}
        except (SettingsError, TinyToolingMissing) as exc:
            print(f"mic2e-server up: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(settings, indent=2))
        return 0
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
    try:
        tiny = tiny_models(args.tiny_dir, untold, progress=True)
    except _Stopped:
        return 0
    except TinyToolingMissing as exc:
        print(f"mic2e-server up: error: {exc}", file=sys.stderr)
        return 2
    commands, addresses = plan(args, tiny)
    print(f"starting {', '.join(MODEL_SERVERS)} and the orchestrator; each is reported as "
          "it becomes SERVING (loading the models can take a minute)", flush=True)

    def serving(name: str, seconds: float) -> None:
        print(f"{name:>13}: SERVING on {addresses[name]} ({seconds:.1f} s)", flush=True)

    def waiting(names: list[str], seconds: float) -> None:
        print(f"{'':>13}  still starting: {', '.join(names)} ({seconds:.0f} s)", flush=True)

    children = True
    started = time.monotonic()
    try:
        with processes(commands, addresses, stopping=lambda: stopping,
                       ready_services={ORCHESTRATOR: ORCHESTRATOR_READY},
                       on_serving=serving, on_waiting=waiting) as procs:
            if args.http_port >= 0:
                print(f"{'HTTP':>13}: http://127.0.0.1:{args.http_port}/ (the playground; "
                      "Connect and gRPC-Web)", flush=True)
            where = ", ".join(f"{n} {addresses[n]}" for n in (ORCHESTRATOR, *MODEL_SERVERS))
            if args.http_port >= 0:
                where += f", HTTP http://127.0.0.1:{args.http_port}/"
            hint = "" if args.base_port == 50051 else f"--server {addresses[ORCHESTRATOR]} "
            print(f"ready in {time.monotonic() - started:.1f} s: {where}; try `mic2e {hint}"
                  "health`; Ctrl-C stops the stack", flush=True)
            while not stopping:
                if dead := [n for n, p in procs.items() if p.poll() is not None]:
                    print(f"mic2e-server up: server(s) exited: {', '.join(dead)}",
                          file=sys.stderr)
                    return 1
                time.sleep(0.2)
    except NotServing as exc:
        if not stopping:
            said = " (its error is above)" if exc.returncode is not None else ""
            if exc.returncode == 2:  # a setting: `up` chose its ports
                said += "; `up` takes its ports from --base-port and --metrics-base-port"
            print(f"mic2e-server up: {exc}{said}; stopped the others", file=sys.stderr)
            return 1
    except RuntimeError:
        if not stopping:
            raise
    return 0
