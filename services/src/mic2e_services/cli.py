"""`mic2e-server`: run a model server, the orchestrator, the whole stack, or make tiny models.

    mic2e-server segmentation|object-clear|flux [--model PATH_OR_HUB_ID] [--device cpu|cuda:N]
                 [--port N] [--dtype D] [--print-settings]
    mic2e-server orchestrator [--port N] [--segmentation-address HOST:PORT] ...
    mic2e-server up [--tiny-dir DIR] [--device-segmentation cuda:0 ...] [--print-settings]
    mic2e-server make-tiny DIR [--force]

Every flag also has a `MIC2E_*` environment variable (flags win); see the README.
Exit codes: 0 stopped cleanly (SIGTERM / Ctrl-C, also while loading); 1 the model failed
to load, or a server of `up` stopped; 2 a usage or settings error (a bad flag or value, a
missing model folder, a port already in use); 3 the device was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
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
        p.add_argument("--revision", help="the hub checkpoint's commit (pins it), branch or "
                                          "tag (default: main)")
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
    p.add_argument("--print-settings", action="store_true",
                   help="print the effective settings of the four servers as JSON and exit")
    p = sub.add_parser("make-tiny",
                       help="write tiny random checkpoints (sam3/, objectclear/, flux/); "
                            "those already written by this code are kept")
    p.add_argument("directory", type=Path)
    p.add_argument("--force", action="store_true", help="write them all again")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "make-tiny":
        from mic2e_services.stack import TinyToolingMissing, tiny_tooling

        try:
            written = tiny_tooling().make_tiny(args.directory, force=args.force, progress=True)
        except (OSError, TinyToolingMissing) as exc:
            print(f"mic2e-server make-tiny: error: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, TinyToolingMissing) else 1
        for name, path in written.items():
            print(f"{name}: {path}")
        return 0
    if args.command == "up":
        from mic2e_services.stack import run_stack

        return run_stack(args)
    return run_server(args.command, vars(args))


class SettingsError(ValueError):
    """Settings that cannot be used: the message names the setting (one line)."""


def server_settings(name: str, options: dict[str, Any]) -> Any:
    """Server `name`'s settings from the environment and `options` (its parsed flags)."""
    from pydantic import ValidationError

    module = importlib.import_module(SERVERS[name])
    flags = {k: v for k, v in options.items() if k not in ("command", "print_settings")}
    try:
        return load_settings(module.Settings, **flags)
    except ValidationError as exc:
        raise SettingsError(_settings_message(exc, set(options))) from None


def _settings_message(exc: Any, flags: set[str]) -> str:
    """A pydantic ValidationError as one line naming each setting, its environment
    variable and its flag (`flags`: the settings the command has a flag for)."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        # A secret is never echoed back; other values are, unless the message has them.
        if "token" not in field and "got" not in message and "input" in error:
            message += f", got {error['input']!r}"
        flag = f" / --{field.replace('_', '-')}" if field in flags else ""
        problems.append(f"{field}: {message} (MIC2E_{field.upper()}{flag})")
    return "; ".join(problems)


def effective_settings(name: str, settings: Any) -> dict[str, Any]:
    """What `--print-settings` shows: the settings, with what a model server resolves
    from them at start (dtype, largest batch, public model name) filled in the same way
    it does - by building its model object, which loads no weight."""
    shown = json.loads(settings.model_dump_json())  # secrets come out masked
    if name in MODEL_SERVERS:
        module = importlib.import_module(SERVERS[name])
        from mic2e_services.quiet import quiet_model_libraries

        quiet_model_libraries()
        try:
            model = module.build_model(settings)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        shown.update(dtype=model.dtype_name, max_batch_size=model.max_batch_size,
                     model_name=model.model_id)
    return shown


def command_settings(argv: list[str]) -> dict[str, Any]:
    """The effective settings of the server a `python -m mic2e_services.cli ...` command
    line would start (as `up` starts them)."""
    args = build_parser().parse_args(argv[3:])
    return effective_settings(args.command, server_settings(args.command, vars(args)))


def _usage_error(name: str, message: object) -> int:
    print(f"mic2e-server {name}: error: {message}", file=sys.stderr)
    return 2


def run_server(name: str, options: dict[str, Any]) -> int:
    def stopped(*_: object) -> None:
        # Nothing serves yet and nothing needs saving: leave at once. Not an exception:
        # the model libraries' imports catch and ignore those.
        print(f"mic2e-server {name}: stopped while starting", file=sys.stderr, flush=True)
        os._exit(0)

    # A SIGTERM while the model libraries import (seconds) is a stop like any other: quiet,
    # exit 0. The server's own handler replaces this one once it runs.
    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        return _run_server(name, options)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_server(name: str, options: dict[str, Any]) -> int:
    from mic2e_services.checkpoints import CheckpointError, check_source

    module = importlib.import_module(SERVERS[name])
    try:
        settings = server_settings(name, options)
        if name in MODEL_SERVERS:
            check_source(settings.model)  # a missing folder: now, not after the imports
        if options.get("print_settings"):
            print(json.dumps(effective_settings(name, settings), indent=2))
            return 0
    except (SettingsError, CheckpointError) as exc:
        return _usage_error(name, exc)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mic2e_services.runtime.memory import return_freed_memory

    return_freed_memory()
    from mic2e_services.runtime.server import StartupError, check_ports_free, serve

    try:
        check_ports_free(settings)  # now, not after the model libraries' import
        if name in MODEL_SERVERS:
            from mic2e_services.quiet import quiet_model_libraries

            quiet_model_libraries()
        # Builds the model object (not its weights): a memory mode the device cannot run
        # is refused here, naming the setting, before anything slow happens.
        model = None if name == "orchestrator" else module.build_model(settings)
    except (StartupError, ValueError) as exc:
        return _usage_error(name, exc)

    servers = []

    async def run() -> int:
        if model is None:
            server, _ = module.create_server(settings)
        else:
            server, _ = module.create_server(settings, model)
        servers.append(server)
        return await serve(server)

    try:
        code = asyncio.run(run())
    except StartupError as exc:  # a port taken since the check above
        return _usage_error(name, exc)
    stopped_loading = servers and not servers[0].ready and servers[0].startup_error is None
    if model is not None and stopped_loading:
        # Stopped while the model loaded: its thread is still inside the model libraries,
        # whose C++ state the interpreter's teardown would destroy under it (an abort,
        # "terminate called ..."). Nothing is left to clean up: leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
