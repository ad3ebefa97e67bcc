"""A newcomer's first hour with the servers (issue #25): ordinary mistakes are one line
with the exit code the CLI documents, settings print as the server will use them, tiny
checkpoints are written once, and the orchestrator's health says which model servers it
reaches. (`mic2e-server up` saying "ready" only when a call through it succeeds:
tests/e2e/test_readme_curl.py, which starts `up` anyway.)"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mic2e_dev import tiny
from mic2e_services import checkpoints, cli, stack
from mic2e_services.errors import DeadlineExceeded, ResourceExhausted
from mic2e_services.runtime.server import build_server, serve
from mic2e_services.runtime.settings import ServerSettings
from mic2e_services.runtime.worker import ModelWorker
from prometheus_client import generate_latest

from tests.fakes import FakeModel, FakeRequest

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MODEL_SERVICES = ("mic2e.v1.SegmentationService", "mic2e.v1.ObjectClearService",
                  "mic2e.v1.FluxService")


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# -- one line per ordinary mistake, exit 2 -------------------------------------------------


@pytest.mark.parametrize(("argv", "env", "says"), [
    (["flux", "--port", "70000"], {}, "port must be 0..65535, got 70000 (MIC2E_PORT / --port)"),
    (["flux"], {"MIC2E_MAX_QUEUE": "many"}, "(MIC2E_MAX_QUEUE / --max-queue)"),
    (["flux", "--model", "/no/such/dir"], {}, "model folder '/no/such/dir' (MIC2E_MODEL / "
                                              "--model) does not exist"),
    (["up", "--model-flux", "/no/such/dir"], {}, "model folder '/no/such/dir' "
                                                 "(--model-flux) does not exist"),
    (["up", "--base-port", "65535"], {}, "--base-port 65535: must be 1..65532"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(argv, env, says, capsys, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and says in lines[0], lines


def test_a_port_in_use_is_one_line_naming_it_and_its_setting(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        grpc_clash = ["orchestrator", "--host", "127.0.0.1", "--port", str(port)]
        assert cli.main(grpc_clash) == 2
        lines = error_lines(capsys)
        assert len(lines) == 1 and f"gRPC port {port} on 127.0.0.1 is already in use " \
            "(MIC2E_PORT / --port)" in lines[0], lines
        metrics_clash = ["orchestrator", "--host", "127.0.0.1", "--port", "0",
                         "--metrics-port", str(port)]
        assert cli.main(metrics_clash) == 2
        lines = error_lines(capsys)
        assert len(lines) == 1 and f"metrics port {port} on 127.0.0.1 is already in use " \
            "(MIC2E_METRICS_PORT / --metrics-port)" in lines[0], lines
        assert "--metrics-port 9092" in lines[0]  # how to fix it


def test_a_model_not_in_the_offline_cache_says_how_to_get_it():
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.resolve_checkpoint("nobody/no-such-model")
    message = str(info.value)
    assert "not in the local hub cache" in message and "HF_HUB_OFFLINE" in message
    assert "hf download nobody/no-such-model" in message and "\n" not in message


def fake_server(model: FakeModel):
    settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=-1, grace_period_s=1)
    server, _ = build_server(settings, register=lambda s: None,
                             service_names=["mic2e.v1.FluxService"],
                             worker=ModelWorker(model, max_queue=4))
    return server


async def test_a_model_that_cannot_load_exits_1_with_one_line(caplog):
    model = FakeModel()
    model.load_error = checkpoints.CheckpointError("model folder '/x' does not exist")
    with caplog.at_level(logging.INFO, logger="mic2e_services"):
        assert await serve(fake_server(model), asyncio.Event()) == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "model failed to load: model folder '/x' does not exist"]
    assert errors[0].exc_info is None  # an operator's mistake: no traceback


async def test_sigterm_while_the_model_loads_is_a_quiet_stop(caplog):
    gate = threading.Event()
    model = FakeModel(load_gate=gate)
    server = fake_server(model)
    stop = asyncio.Event()
    try:
        with caplog.at_level(logging.INFO, logger="mic2e_services"):
            running = asyncio.create_task(serve(server, stop))
            while not model.threads["load"]:  # loading has begun
                await asyncio.sleep(0.01)
            stop.set()  # as SIGTERM does
            assert await asyncio.wait_for(running, 30) == 0
    finally:
        gate.set()
    said = [r.getMessage() for r in caplog.records if r.name.startswith("mic2e")]
    assert len(said) == 2 and said[0].endswith("NOT_SERVING until the model is loaded")
    assert said[1] == "stopped while loading the model"
    assert not [r for r in caplog.records if r.exc_info]


# -- admission: what no retry can fix is DEADLINE_EXCEEDED, and is no demand --------------


async def test_queue_refusals_are_demand_but_impossible_work_is_not():
    model = FakeModel(step_s=0.05, max_batch_size=1)
    server = fake_server(model)
    worker = server.worker
    await worker.start()
    try:
        long = worker.submit(FakeRequest(1, steps=100))  # ~5 s queued ahead
        with pytest.raises(ResourceExhausted) as busy:
            worker.submit(FakeRequest(2, steps=2), deadline=time.monotonic() + 2)
        assert busy.value.reason == "DEADLINE_TOO_SHORT" and busy.value.retry_after_s > 0
        with pytest.raises(DeadlineExceeded, match="deadline of at least 5.0s"):
            worker.submit(FakeRequest(3, steps=100), deadline=time.monotonic() + 2)
        long.cancel()
    finally:
        await worker.stop(timeout_s=5)
    text = generate_latest(server.metrics.registry).decode()
    demand = {line.split('outcome="')[1].split('"')[0]: float(line.split()[-1])
              for line in text.splitlines()
              if line.startswith("mic2e_demand_gpu_seconds_total{")}
    assert set(demand) == {"ADMITTED", "DEADLINE_TOO_SHORT"}, demand
    assert demand == pytest.approx({"ADMITTED": 5.0, "DEADLINE_TOO_SHORT": 0.1})


# -- settings as the servers will use them ---------------------------------------------------


def test_print_settings_shows_the_values_the_server_resolves(tiny_sam3, capsys):
    assert cli.main(["segmentation", "--model", str(tiny_sam3), "--print-settings"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # What the model object resolves at start (CPU: float32; SAM3's own batch of 4), and
    # the name callers see - not the nulls meaning "default".
    assert (shown["dtype"], shown["max_batch_size"], shown["model_name"]) == (
        "float32", 4, "sam3")


def test_up_print_settings_shows_the_four_servers_it_would_start(tiny_root, capsys):
    before = sorted(p.name for p in tiny_root.iterdir())
    assert cli.main(["up", "--print-settings", "--tiny-dir", str(tiny_root),
                     "--base-port", "7000", "--metrics-base-port", "8000"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert list(shown) == ["segmentation", "object-clear", "flux", "orchestrator"]
    assert {n: (s["port"], s["metrics_port"]) for n, s in shown.items()} == {
        "orchestrator": (7000, 8000), "segmentation": (7001, 8001),
        "object-clear": (7002, 8002), "flux": (7003, 8003)}
    assert shown["orchestrator"]["flux_address"] == "127.0.0.1:7003"
    assert shown["flux"]["model"] == str(tiny_root / "flux")
    assert shown["object-clear"]["dtype"] == "float32"
    assert sorted(p.name for p in tiny_root.iterdir()) == before  # nothing written


# -- tiny checkpoints: written once --------------------------------------------------------


def test_without_the_dev_package_tiny_checkpoints_are_one_line_and_exit_2(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mic2e_dev", None)  # as in a server's install
    assert cli.main(["make-tiny", str(tmp_path)]) == 2
    assert cli.main(["up", "--tiny-dir", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("mic2e-dev package" in line for line in lines), lines
    assert "Traceback" not in "".join(lines) and list(tmp_path.iterdir()) == []


def test_make_tiny_writes_only_what_is_not_up_to_date(tmp_path, monkeypatch):
    import mic2e_dev.sam3 as sam3_tiny

    written = []

    def write(folder: Path, seed: int = 0) -> None:
        written.append(folder.name)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(sam3_tiny, "write_tiny", write)
    tiny.make_tiny(tmp_path, names=["segmentation"])
    tiny.make_tiny(tmp_path, names=["segmentation"])
    assert len(written) == 1, "an up-to-date checkpoint was written again"
    tiny.stamp_file(tmp_path / "sam3").write_text("older code\n")
    stack.tiny_models(tmp_path, ["segmentation"])  # `up` rewrites one stamped by other code
    tiny.make_tiny(tmp_path, names=["segmentation"], force=True)
    assert len(written) == 3
    # A checkpoint without a stamp (written by the test fixtures) is used as it is by `up`.
    tiny.stamp_file(tmp_path / "sam3").unlink()
    stack.tiny_models(tmp_path, ["segmentation"])
    assert len(written) == 3


# -- the orchestrator's health, per model service -------------------------------------------


async def health(channel: grpc.aio.Channel, service: str) -> int:
    try:
        return (await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)).status
    except grpc.aio.AioRpcError:
        return -1


async def until(channel: grpc.aio.Channel, expected: dict[str, int]) -> dict[str, int]:
    """The health of `expected`'s services once they are as expected (or after 60 s)."""
    for _ in range(600):
        seen = {s: await health(channel, s) for s in expected}
        if seen == expected:
            break
        await asyncio.sleep(0.1)
    return seen


async def test_orchestrator_health_says_which_model_servers_it_reaches():
    from mic2e_services.orchestrator import server as orchestrator

    def stand_in(service: str):  # answers health for `service`, as a model server does
        return build_server(ServerSettings(host="127.0.0.1", port=0, metrics_port=-1),
                            register=lambda s: None, service_names=[service])[0]

    segmentation, object_clear = (stand_in(s) for s in MODEL_SERVICES[:2])
    for server in (segmentation, object_clear):
        await server.start()
    # The flux address points at the object-clear server: the wrong kind of server.
    orch, port = orchestrator.create_server(orchestrator.Settings(
        host="127.0.0.1", port=0, metrics_port=-1, downstream_health_interval_s=0.1,
        segmentation_address=f"127.0.0.1:{segmentation.port}",
        object_clear_address=f"127.0.0.1:{object_clear.port}",
        flux_address=f"127.0.0.1:{object_clear.port}"))
    await orch.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            all_up = {"": SERVING, "mic2e.v1.EditService": SERVING,
                      "mic2e.v1.SegmentationService": SERVING,
                      "mic2e.v1.ObjectClearService": SERVING,
                      "mic2e.v1.FluxService": NOT_SERVING}
            assert await until(channel, all_up) == all_up
            await object_clear.stop(0)
            # A model server going away takes only its own entry down: the orchestrator
            # still answers every call (UNAVAILABLE naming the stage for that model).
            one_down = {**all_up, "mic2e.v1.ObjectClearService": NOT_SERVING}
            assert await until(channel, one_down) == one_down
    finally:
        await orch.stop(0)
        await segmentation.stop(0)
