#!/opt/venv/bin/python3
"""Container HEALTHCHECK: exit 0 only when the local server answers grpc.health.v1 SERVING.

One image runs any of the servers, so the port is found, in this order, from:
MIC2E_HEALTH_PORT; a `--port N` on the container's command line (PID 1's argv, which
under `docker run --init` / compose `init: true` still holds the whole command);
MIC2E_PORT; the default port of the server named on that command line.

NOT_SERVING (still loading the model, or shutting down), no answer, or any error: exit 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

DEFAULT_PORTS = {"orchestrator": 50051, "segmentation": 50052, "object-clear": 50053,
                 "flux": 50054}


def pid1_argv() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def find_port(env: Mapping[str, str], argv: Sequence[str]) -> int | None:
    """The port to ask, or None if nothing says which server this is."""
    if env.get("MIC2E_HEALTH_PORT"):
        return int(env["MIC2E_HEALTH_PORT"])
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    if env.get("MIC2E_PORT"):
        return int(env["MIC2E_PORT"])
    for arg in argv:
        if arg in DEFAULT_PORTS:
            return DEFAULT_PORTS[arg]
    return None


def check(address: str, timeout_s: float) -> str:
    """The overall ("") health status name, e.g. SERVING; raises grpc.RpcError."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main() -> int:
    port = find_port(os.environ, pid1_argv())
    if port is None:
        print("healthcheck: no port (set MIC2E_PORT or MIC2E_HEALTH_PORT)", file=sys.stderr)
        return 1
    host = os.environ.get("MIC2E_HEALTH_HOST", "localhost")
    timeout_s = float(os.environ.get("MIC2E_HEALTH_TIMEOUT_S", "3"))
    try:
        status = check(f"{host}:{port}", timeout_s)
    except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
        print(f"healthcheck: {host}:{port}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"healthcheck: {host}:{port}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
