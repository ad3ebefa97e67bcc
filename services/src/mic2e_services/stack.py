"""`mic2e-server up`: all four servers on this machine, as child processes.

Tiny checkpoints on CPU unless told otherwise; waits until every server reports SERVING,
then keeps them running until Ctrl-C / SIGTERM, which stops them all gracefully.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mic2e_services.tiny import TINY_FOLDERS

#: Model servers in start order, and their offset from the base (orchestrator) port.
PORT_OFFSETS = {"segmentation": 1, "object-clear": 2, "flux": 3}


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll grpc.health.v1 until SERVING; fail early if the process died."""
    until = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server at {address} exited with code {proc.returncode}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server at {address} not SERVING after {timeout_s:.0f}s")


def stack_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The command line of each server, model servers first."""
    base = [sys.executable, "-m", "mic2e_services.cli"]
    commands = {}
    for name, offset in PORT_OFFSETS.items():
        key = name.replace("-", "_")
        model = getattr(args, f"model_{key}") or str(args.tiny_dir / TINY_FOLDERS[name])
        commands[name] = [*base, name, "--model", model, "--device",
                          getattr(args, f"device_{key}"), "--port", str(args.base_port + offset),
                          "--host", "127.0.0.1", "--metrics-port",
                          str(args.metrics_base_port + offset)]
    commands["orchestrator"] = [
        *base, "orchestrator", "--port", str(args.base_port), "--host", "127.0.0.1",
        "--metrics-port", str(args.metrics_base_port),
        *[arg for name, offset in PORT_OFFSETS.items()
          for arg in (f"--{name}-address", f"127.0.0.1:{args.base_port + offset}")]]
    return commands


def run_stack(args: argparse.Namespace, *, ready_timeout_s: float = 600) -> int:
    uses_tiny = any(getattr(args, f"model_{n.replace('-', '_')}") is None for n in PORT_OFFSETS)
    if uses_tiny and not all((args.tiny_dir / d / "model_index.json").exists()
                             or (args.tiny_dir / d / "config.json").exists()
                             for d in TINY_FOLDERS.values()):
        from mic2e_services.tiny import make_tiny

        print(f"writing tiny checkpoints to {args.tiny_dir}", flush=True)
        make_tiny(args.tiny_dir)
    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    try:
        for name, cmd in stack_commands(args).items():
            procs[name] = subprocess.Popen(cmd, env=env)
        for name, proc in procs.items():
            port = args.base_port + PORT_OFFSETS.get(name, 0)
            wait_serving(f"127.0.0.1:{port}", ready_timeout_s, proc)
            print(f"{name:>13}: SERVING on 127.0.0.1:{port}", flush=True)
        print("stack is up; Ctrl-C stops it", flush=True)
        while not stopping:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                print(f"server(s) exited: {', '.join(dead)}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        stop_processes(procs.values(), timeout_s=40)


def stop_processes(procs: Iterable[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM every server (each finishes its in-flight calls), then kill stragglers."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
