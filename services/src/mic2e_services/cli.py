"""`mic2e-server`: run a model server, the orchestrator, the whole stack, or make tiny models.

    mic2e-server segmentation|object-clear|flux [--model PATH_OR_HUB_ID] [--device cpu|cuda:N]
                 [--port N] [--dtype D] [--print-settings]
    mic2e-server orchestrator [--port N] [--segmentation-address HOST:PORT] ...
    mic2e-server up [--tiny-dir DIR] [--device-segmentation cuda:0 ...]
    mic2e-server make-tiny DIR

Every flag also has a `MIC2E_*` environment variable (flags win); see the README.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

from mic2e_services.runtime.settings import load_settings

#: Server name -> module with `Settings`, `create_server(settings)`; imported lazily so the
#: orchestrator never imports torch.
SERVERS = {
    "segmentation": "mic2e_services.segmentation.server",
    "object-clear": "mic2e_services.object_clear.server",
    "flux": "mic2e_services.flux.server",
    "orchestrator": "mic2e_services.orchestrator.server",
}
MODEL_SERVERS = ("segmentation", "object-clear", "flux")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to bind (default [::])")
    p.add_argument("--port", type=int, help="port to bind")
    p.add_argument("--grace-period-s", type=float, dest="grace_period_s",
                   help="on SIGTERM, let in-flight calls finish for this long")
    p.add_argument("--print-settings", action="store_true",
                   help="print the effective settings as JSON and exit")
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--http-port", type=int, dest="http_port",
                   help="HTTP port for Connect and gRPC-Web (0: any free port, -1: off)")
    p.add_argument("--metrics-port", type=int, dest="metrics_port",
                   help="Prometheus /metrics port (0: any free port, -1: off)")
    p.add_argument("--image-cache-mb", type=int, dest="image_cache_mb",
                   help="images kept for SHA-256 references, at most this many MiB")
    p.add_argument("--max-connection-age-s", type=float, dest="max_connection_age_s",
                   help="close connections this old (calls on them finish first)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mic2e-server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODEL_SERVERS:
        p = sub.add_parser(name, help=f"run the {name} model server")
        _add_common(p)
        p.add_argument("--model", help="hub id or local checkpoint folder")
        p.add_argument("--model-name", dest="model_name",
                       help="the model's name in responses (default: its hub id)")
        if name == "segmentation":
            p.add_argument("--feature-cache-mb", type=int, dest="feature_cache_mb",
                           help="vision features of recent images, at most this many MiB")
        p.add_argument("--device", help="cpu, cuda, cuda:N or mps")
        p.add_argument("--dtype", help="float16, bfloat16 or float32 (default: half on GPU)")
        p.add_argument("--max-batch-size", type=int, dest="max_batch_size")
        p.add_argument("--max-queue", type=int, dest="max_queue")
        p.add_argument("--profile", choices=["quality", "fast", "low-memory"],
                       help="named trade-off (default quality); explicit settings win")
        p.add_argument("--quantization", choices=["none", "int8", "fp8"])
        p.add_argument("--offload", choices=["none", "model"])
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the heaviest module during warm-up")
        p.add_argument("--compile-mode", dest="compile_mode",
                       choices=["default", "reduce-overhead", "max-autotune",
                                "max-autotune-no-cudagraphs"],
                       help="Inductor mode (default reduce-overhead: CUDA graphs)")
        p.add_argument("--compile-cache-dir", dest="compile_cache_dir",
                       help="persistent compile cache folder (a volume), for quick restarts")
    p = sub.add_parser("orchestrator", help="run the orchestrator (no model, no torch)")
    _add_common(p)
    for model in MODEL_SERVERS:
        flag = f"--{model}-address"
        p.add_argument(flag, dest=f"{model.replace('-', '_')}_address",
                       help=f"HOST:PORT or dns:///name:port of the {model} server(s)")
    p.add_argument("--inpaint-address", dest="inpaint_address",
                   help="flux server(s) for Inpaint / ReplaceObjects (e.g. ones holding "
                        "FLUX.1-Fill-dev); default: the flux server(s)")
    p = sub.add_parser("up", help="start all four servers on this machine")
    p.add_argument("--tiny-dir", type=Path, default=Path(".tiny"),
                   help="tiny checkpoints (made if missing) used when no --model-* is given")
    for model in MODEL_SERVERS:
        key = model.replace("-", "_")
        p.add_argument(f"--model-{model}", dest=f"model_{key}", help=f"{model} checkpoint")
        p.add_argument(f"--device-{model}", dest=f"device_{key}", default="cpu",
                       help=f"device of the {model} server")
    p.add_argument("--base-port", type=int, default=50051,
                   help="orchestrator port; the model servers take the next three")
    p.add_argument("--http-port", type=int, default=8080, dest="http_port",
                   help="the orchestrator's HTTP port: Connect, gRPC-Web and the "
                        "playground page (-1: off)")
    p.add_argument("--metrics-base-port", type=int, default=9090,
                   help="orchestrator /metrics port; the model servers take the next three")
    p = sub.add_parser("make-tiny",
                       help="write tiny random checkpoints (sam3/, objectclear/, flux/)")
    p.add_argument("directory", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "make-tiny":
        from mic2e_services.tiny import make_tiny

        for name, path in make_tiny(args.directory).items():
            print(f"{name}: {path}")
        return 0
    if args.command == "up":
        from mic2e_services.stack import run_stack

        return run_stack(args)
    return run_server(args.command, vars(args))


def run_server(name: str, options: dict[str, Any]) -> int:
    module = importlib.import_module(SERVERS[name])
    flags = {k: v for k, v in options.items() if k not in ("command", "print_settings")}
    settings = load_settings(module.Settings, **flags)
    if options.get("print_settings"):
        print(settings.model_dump_json(indent=2))
        return 0
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mic2e_services.runtime.memory import return_freed_memory

    return_freed_memory()
    from mic2e_services.runtime.server import serve

    if name in MODEL_SERVERS:
        from mic2e_services.quiet import quiet_model_libraries

        quiet_model_libraries()
    try:
        # Builds the model object (not its weights): a memory mode the device cannot run
        # is refused here, naming the setting, before anything slow happens.
        model = None if name == "orchestrator" else module.build_model(settings)
    except ValueError as exc:
        print(f"mic2e-server {name}: error: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        if model is None:
            server, _ = module.create_server(settings)
        else:
            server, _ = module.create_server(settings, model)
        return await serve(server)

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
