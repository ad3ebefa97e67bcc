"""grpc.aio server bootstrap shared by every server.

Health (grpc.health.v1) is NOT_SERVING until the model is loaded and warmed up; reflection
lists the served services; SIGTERM/SIGINT stop accepting, let in-flight calls finish within
the grace period, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mic2e_services.checkpoints import CheckpointError
from mic2e_services.runtime.http import HttpFront, HttpServer, bind_socket
from mic2e_services.runtime.http_handlers import HandlerRecorder, connect_applications
from mic2e_services.runtime.images import ImageStore
from mic2e_services.runtime.metrics import ServerMetrics
from mic2e_services.runtime.model_api import Model
from mic2e_services.runtime.reflection import enable_reflection
from mic2e_services.runtime.request_bytes import RequestBytes
from mic2e_services.runtime.security import TokenAuthInterceptor, load_tokens, server_credentials
from mic2e_services.runtime.settings import ModelServerSettings, ServerSettings
from mic2e_services.runtime.tracing import JobSpans, setup_tracing
from mic2e_services.runtime.tracing import server_interceptors as tracing_interceptors
from mic2e_services.runtime.worker import ModelWorker, WorkerCallback

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StartupError(Exception):
    """A setting this machine cannot honour, found while the server starts (a port already
    in use): an operator's ordinary mistake, so its message is the one line to show."""


_GRPC_PORT = ("gRPC", "MIC2E_PORT / --port", "stop the server that holds it, or choose "
              "another port")
_HTTP_PORT = ("HTTP", "MIC2E_HTTP_PORT / --http-port", "choose another port, 0 takes any "
              "free one, -1 turns the HTTP port off")
_METRICS_PORT = ("metrics", "MIC2E_METRICS_PORT / --metrics-port", "every server on one "
                 "machine needs its own (e.g. --metrics-port 9092), 0 takes any free port, "
                 "-1 turns /metrics off")


def _bind_error(kind: tuple[str, str, str], host: str, port: int,
                exc: OSError | None = None) -> StartupError:
    """`kind`: which port (`_GRPC_PORT`, ...): its name, its setting, how to fix a clash."""
    what, setting, fix = kind
    if exc is None or exc.errno == errno.EADDRINUSE:
        return StartupError(f"{what} port {port} on {host} is already in use ({setting}): "
                            f"{fix}")
    return StartupError(f"cannot listen on {what} port {port} on {host}: "
                        f"{exc.strerror or exc} ({setting})")


def _check_port_free(host: str, port: int, kind: tuple[str, str, str]) -> None:
    """Refuse a port in use with our own line, naming its setting (gRPC's own refusal is
    a generic RuntimeError after a C-level log line)."""
    if port <= 0:
        return
    try:
        with contextlib.closing(bind_socket(host, port)):
            pass
    except OSError as exc:
        raise _bind_error(kind, host, port, exc) from None


def check_ports_free(settings: ServerSettings) -> None:
    """Every fixed port the server will listen on is free now, or a `StartupError`:
    checked before the slow part of a start, so a clash is said at once."""
    _check_port_free(settings.host, settings.port, _GRPC_PORT)
    _check_port_free(settings.host, settings.http_port, _HTTP_PORT)
    _check_port_free(settings.host, settings.metrics_port, _METRICS_PORT)


def grpc_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Channel arguments: message size limits and keepalive."""
    max_bytes = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients (and meshes) may ping as often as we do without being called abusive.
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0),
        # Round-robin clients only re-resolve DNS when a connection closes: age them out so
        # replicas added by the autoscaler start getting calls.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        # A call running on an aged connection may finish (up to its own grace): ageing
        # must never cut work a server accepted.
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        # A second server on a port in use must fail, not silently share it (gRPC's default
        # SO_REUSEPORT would split the calls between the two).
        ("grpc.so_reuseport", 0),
    ]


class Server(WorkerCallback):
    """A started-or-not gRPC server, its health state and (for model servers) its worker,
    whose fatal event it hears as a `WorkerCallback`."""

    def __init__(self, grpc_server: grpc.aio.Server, port: int, settings: ServerSettings,
                 health_servicer: health.aio.HealthServicer, service_names: Sequence[str],
                 worker: ModelWorker | None, metrics: ServerMetrics,
                 tracer_provider: object | None = None) -> None:
        self.grpc_server = grpc_server
        self.metrics = metrics
        #: The OpenTelemetry provider when tracing is on (for downstream channels).
        self.tracer_provider = tracer_provider
        #: Port of /metrics once started (None: metrics off).
        self.metrics_port: int | None = None
        #: The HTTP port (Connect, gRPC-Web, the playground), when `http_port` is on.
        self.http: HttpServer | None = None
        self.port = port
        self.settings = settings
        self.health = health_servicer
        self.service_names = list(service_names)
        self.worker = worker
        #: The service implementation (its image store and counters), set by the builder.
        self.servicer: object | None = None
        self._ready = asyncio.Event()
        self._bring_up: asyncio.Task[None] | None = None
        self.startup_error: BaseException | None = None
        #: Set when the server must exit (device lost); `serve` then exits non-zero.
        self.fatal = asyncio.Event()
        #: Coroutine functions run beside the server from `start` until `stop` (the
        #: orchestrator's watch on its model servers' health).
        self.background: list[Callable[[], Awaitable[None]]] = []
        self._background_tasks: list[asyncio.Task[None]] = []
        if worker is not None:
            worker.add_callback(self)

    def on_fatal(self, worker: ModelWorker, error: BaseException) -> None:
        """From the device thread: go NOT_SERVING and let `serve` exit, so a supervisor
        restarts the process on a fresh CUDA context."""
        def report() -> None:
            asyncio.ensure_future(self._set_health(NOT_SERVING))
            self.fatal.set()

        self._loop.call_soon_threadsafe(report)

    async def start(self) -> None:
        """Start serving (health NOT_SERVING), then load the model in the background."""
        self._loop = asyncio.get_running_loop()
        await self._set_health(NOT_SERVING)
        if self.settings.metrics_port >= 0:
            try:
                self.metrics_port = self.metrics.serve(self.settings.host,
                                                       self.settings.metrics_port)
            except OSError as exc:
                await self.grpc_server.stop(None)  # bound, never started: let it go
                if self.http is not None:
                    self.http.socket.close()
                raise _bind_error(_METRICS_PORT, self.settings.host,
                                  self.settings.metrics_port, exc) from None
        await self.grpc_server.start()
        if self.http is not None:
            await self.http.start()
        self._background_tasks = [asyncio.create_task(run()) for run in self.background]
        self._bring_up = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            if self.worker is not None:
                await self.worker.start()
        except asyncio.CancelledError:
            log.info("stopped while loading the model")
            raise
        except CheckpointError as exc:
            # An operator's mistake (a missing folder, a model not downloaded): one line.
            self.startup_error = exc
            log.error("model failed to load: %s", exc)
            raise
        except BaseException as exc:
            self.startup_error = exc
            log.exception("model failed to load")
            raise
        await self._set_health(SERVING)
        self._ready.set()
        if self.worker is None:
            log.info("serving %s on port %d", ", ".join(self.service_names), self.port)
        else:  # which files it serves: what an operator pinning revisions checks
            model = self.worker.model
            log.info("serving %s on port %d: %s at revision %s", ", ".join(self.service_names),
                     self.port, model.model_id, model.revision)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until SERVING; raises the load error if loading failed."""
        assert self._bring_up is not None, "start() first"
        await asyncio.wait_for(asyncio.shield(self._bring_up), timeout_s)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, let in-flight ones finish."""
        grace = self.settings.grace_period_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        if self.worker is not None:
            self.worker.stop_accepting()
        # Cancelled and waited for (never raising here): a load cut short says so itself.
        cancelled = [t for t in [self._bring_up, *self._background_tasks]
                     if t is not None and not t.done()]
        for task in cancelled:
            task.cancel()
        if cancelled:
            await asyncio.wait(cancelled)
        if self.http is not None:
            await asyncio.gather(self.grpc_server.stop(grace), self.http.stop(grace))
        else:
            await self.grpc_server.stop(grace)
        if self.worker is not None:
            await self.worker.stop(timeout_s=grace)
        self.metrics.close()

    async def _set_health(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


def build_server(settings: ServerSettings, *, register: Callable[[grpc.aio.Server], None],
                 service_names: Sequence[str], worker: ModelWorker | None = None,
                 name: str = "server",
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> tuple[Server, int]:
    """Create (not start) a server with health, reflection and the given services.

    `register` adds the servicers; `service_names` are their full names (for health and
    reflection); `name` labels metrics and traces. Binds `settings.host:settings.port`
    (port 0 picks a free one) and returns the server and the bound port.
    """
    # Ports first: one in use is a one-line refusal before anything else is built.
    _check_port_free(settings.host, settings.port, _GRPC_PORT)
    http_socket = None
    if settings.http_port >= 0:
        try:
            http_socket = bind_socket(settings.host, settings.http_port)
        except OSError as exc:
            raise _bind_error(_HTTP_PORT, settings.host, settings.http_port, exc) from None
    metrics = ServerMetrics(name)
    provider = setup_tracing(settings, f"mic2e-{name}")
    if worker is not None:
        metrics.watch_worker(worker)
        if provider is not None:
            worker.add_callback(JobSpans())
    # Order matters: auth first (refused calls cost nothing), then traces, then metrics;
    # innermost, the request's bytes (undecodable ones are refused, and counted and traced
    # as such; large ones give their memory back).
    interceptors = [*tracing_interceptors(provider), metrics.interceptor(), *interceptors,
                    RequestBytes()]
    tokens = load_tokens(settings)
    if tokens:
        interceptors.insert(0, TokenAuthInterceptor(tokens))
    grpc_server = grpc.aio.server(options=grpc_options(settings), interceptors=interceptors)
    recorder = HandlerRecorder(grpc_server)
    register(recorder)  # type: ignore[arg-type]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    if settings.reflection:
        enable_reflection([*service_names, health.SERVICE_NAME], grpc_server)
    credentials = server_credentials(settings)
    address = f"{settings.host}:{settings.port}"
    try:
        port = (grpc_server.add_secure_port(address, credentials) if credentials is not None
                else grpc_server.add_insecure_port(address))
    except RuntimeError:
        port = 0  # taken between the check and now
    if port == 0:
        if http_socket is not None:
            http_socket.close()
        raise _bind_error(_GRPC_PORT, settings.host, settings.port)
    server = Server(grpc_server, port, settings, health_servicer, service_names, worker,
                    metrics, provider)
    if http_socket is not None:
        server.http = http_server(settings, recorder, interceptors, http_socket)
    return server, port


def http_server(settings: ServerSettings, recorder: HandlerRecorder,
                interceptors: Sequence[grpc.aio.ServerInterceptor],
                sock: socket.socket) -> HttpServer:
    """The HTTP port: the handlers the gRPC port registered, through the same
    interceptors, over Connect and gRPC-Web (on `sock`, bound; served from `start`)."""
    front = HttpFront(connect_applications(recorder, interceptors),
                      max_message_bytes=settings.max_message_mb * 2**20,
                      cors_origins=[o.strip() for o in settings.http_cors_origins.split(",")
                                    if o.strip()],
                      static_dir=playground_dir(settings))
    return HttpServer(front, sock,
                      certfile=settings.tls_cert_file, keyfile=settings.tls_key_file,
                      client_ca_file=settings.tls_client_ca_file)


def playground_dir(settings: ServerSettings) -> Path:
    """Where the built playground page is: the setting, else this checkout's build (looked
    up per request, so a page built after the server started is served; until then / says
    how to build it)."""
    if settings.playground_dir:
        return Path(settings.playground_dir)
    return Path(__file__).resolve().parents[4] / "client-ts" / "dist" / "playground"


def build_model_server(settings: ModelServerSettings, model: Model, *, name: str,
                       service_name: str, add_servicer: Callable[[object, grpc.aio.Server], None],
                       make_servicer: Callable[[ModelWorker, ImageStore], object],
                       decode_at_least: tuple[int, int] | None = None,
                       ) -> tuple[Server, int]:
    """The common shape of a model server: image store + worker + one servicer.
    `decode_at_least`: the size its model works at, for JPEGs decoded at a reduced scale
    (a model that needs the full resolution leaves it None)."""
    store = ImageStore(settings.image_cache_mb * 2**20, settings.max_image_pixels,
                       decode_at_least)
    worker = ModelWorker(model, max_queue=settings.max_queue,
                         max_wait_s=settings.max_wait_ms / 1000, name=name)
    servicer = make_servicer(worker, store)
    server, port = build_server(settings, register=lambda s: add_servicer(servicer, s),
                                service_names=[service_name], worker=worker, name=name)
    server.metrics.watch_images(store)
    server.servicer = servicer
    return server, port


async def serve(server: Server, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set, instead of the signals), then stop
    gracefully; the process exit code."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    names = ", ".join(server.service_names)
    http = "" if server.http is None else f", HTTP (Connect, gRPC-Web) on {server.http.port}"
    log.info("%s: listening on port %d%s%s", names, server.port, http,
             "; NOT_SERVING until the model is loaded" if server.worker is not None else "")
    assert server._bring_up is not None
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({server._bring_up, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if server._bring_up in done and server._bring_up.exception() is not None:
        await server.stop(grace_s=0)  # `_load` said why
        return 1
    if not server.ready:
        # SIGTERM while the model loads: nothing was accepted, so nothing to wait for; the
        # load itself cannot be interrupted and ends with the process.
        await server.stop(grace_s=0)
        return 0
    fatal = asyncio.create_task(server.fatal.wait())
    await asyncio.wait({waiter, fatal}, return_when=asyncio.FIRST_COMPLETED)
    if server.fatal.is_set():
        log.critical("device lost: exiting so the supervisor restarts this server")
        await server.stop(grace_s=0)
        return 3
    log.info("%s: stopping, letting in-flight calls finish (grace %.0fs)", names,
             server.settings.grace_period_s)
    await server.stop()
    return 0
