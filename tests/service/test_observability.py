"""Metrics scraped by a real Prometheus, and one trace across orchestrator and model server
(over gRPC and over the HTTP port)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import httpx
import pytest
import pytest_asyncio
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    orchestrator_pb2_grpc,
    segmentation_pb2,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.grpc_helpers import drain

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def flux(tiny_flux):
    from mic2e_services.flux.server import Settings, create_server

    settings = Settings(host="127.0.0.1", port=0, metrics_port=0, model=str(tiny_flux))
    server, port = create_server(settings)
    await server.start()
    await server.wait_ready(120)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = flux_pb2_grpc.FluxServiceStub(channel)
    for seed in (1, 2):
        await drain(stub.Generate(flux_pb2.GenerateRequest(
            prompt="a red bicycle", width=256, height=256, steps=2, seed=seed)))
    with pytest.raises(grpc.aio.AioRpcError):
        await drain(stub.Generate(flux_pb2.GenerateRequest(prompt="")))
    # Valid, but more work than its deadline allows even on an idle server: refused as
    # DEADLINE_EXCEEDED (no retry could fit it), and no demand (no replica could serve it).
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(stub.Generate(flux_pb2.GenerateRequest(
            prompt="a red bicycle", width=512, height=512, steps=50, seed=3), timeout=0.5))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "give it a deadline of at least" in info.value.details()
    yield server
    await channel.close()
    await server.stop(0)


async def test_metrics_endpoint_has_the_families(flux):
    text = await asyncio.to_thread(get, f"http://127.0.0.1:{flux.metrics_port}/metrics")
    assert 'mic2e_requests_total{code="OK",rpc="Generate",server="flux"} 2.0' in text
    assert 'mic2e_requests_total{code="INVALID_ARGUMENT",rpc="Generate",server="flux"} 1.0' in text
    # The scaling signal: valid work offered, admitted or refused; never invalid requests,
    # nor work no replica could finish in its deadline (refusals for a queue too long are
    # demand: tests/service/test_newcomer_servers.py).
    demand = {line.split("outcome=")[1].split('"')[1]: float(line.split()[-1])
              for line in text.splitlines()
              if line.startswith("mic2e_demand_gpu_seconds_total{")}
    assert set(demand) == {"ADMITTED"}, demand
    assert demand["ADMITTED"] > 0
    for family in ("mic2e_request_seconds_bucket", "mic2e_queue_depth",
                   "mic2e_queued_gpu_seconds", "mic2e_batch_size_count",
                   "mic2e_step_seconds_count", "mic2e_image_cache_lookups_total"):
        assert family in text, family
    steps = [line for line in text.splitlines()
             if line.startswith('mic2e_step_seconds_count{server="flux"}')]
    assert steps and float(steps[0].split()[-1]) == 4.0  # 2 requests x 2 steps


async def test_real_prometheus_scrapes_the_autoscaling_metric(flux, tmp_path):
    assert shutil.which(PROMETHEUS) or shutil.which("prometheus"), (
        "Prometheus is missing: the test command installs Debian's 'prometheus' package")
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: flux\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{flux.metrics_port}']}}]\n")
    proc = subprocess.Popen(
        [shutil.which("prometheus") or PROMETHEUS, f"--config.file={config}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        query = urllib.parse.urlencode({"query": 'mic2e_queued_gpu_seconds{server="flux"}'})
        found = None
        until = time.monotonic() + 60
        while time.monotonic() < until and found is None:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                body = json.loads(await asyncio.to_thread(
                    get, f"http://127.0.0.1:{web}/api/v1/query?{query}"))
                if body["data"]["result"]:
                    found = body["data"]["result"]
            except OSError:
                pass
            await asyncio.sleep(0.5)
        assert found, "Prometheus never scraped mic2e_queued_gpu_seconds"
        assert found[0]["metric"]["server"] == "flux"
        assert float(found[0]["value"][1]) >= 0.0
        rate = urllib.parse.urlencode({"query": 'sum(mic2e_requests_total{server="flux"})'})
        total = json.loads(await asyncio.to_thread(
            get, f"http://127.0.0.1:{web}/api/v1/query?{rate}"))["data"]["result"]
        assert float(total[0]["value"][1]) == 4.0
        # The autoscalers' query (deploy/k8s: adapter rule and KEDA trigger) on the real
        # series: no traffic now, so no GPU busy: one replica.
        wanted = urllib.parse.urlencode({"query": (
            'floor(sum(rate(mic2e_demand_gpu_seconds_total{server="flux"}[1m]))) + 1')})
        answer = None
        while time.monotonic() < until and not answer:
            answer = json.loads(await asyncio.to_thread(
                get, f"http://127.0.0.1:{web}/api/v1/query?{wanted}"))["data"]["result"]
            await asyncio.sleep(0.5)
        assert answer and float(answer[0]["value"][1]) == 1.0
    finally:
        proc.terminate()
        proc.wait(10)


async def test_one_trace_spans_orchestrator_and_model_server(tiny_sam3):
    from mic2e_services.orchestrator import server as orch_server
    from mic2e_services.segmentation import server as seg_server

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    seg, seg_port = seg_server.create_server(seg_server.Settings(
        host="127.0.0.1", port=0, model=str(tiny_sam3), tracing=True))
    await seg.start()
    await seg.wait_ready(120)
    orch, orch_port = orch_server.create_server(orch_server.Settings(
        host="127.0.0.1", port=0, http_port=0, tracing=True,
        segmentation_address=f"127.0.0.1:{seg_port}"))
    await orch.start()
    await orch.wait_ready(10)
    try:
        from mic2e import codecs
        from PIL import Image

        data = codecs.encode_image(Image.new("RGB", (48, 32), (9, 99, 199)), "png")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{orch_port}") as channel:
            await orchestrator_pb2_grpc.EditServiceStub(channel).SegmentByText(
                segmentation_pb2.SegmentByTextRequest(image=common_pb2.Image(data=data),
                                                      text="dog"))
        spans = exporter.get_finished_spans()
        by_name = {s.name: s for s in spans}
        edit = by_name["/mic2e.v1.EditService/SegmentByText"]
        model_rpc = [s for s in spans if s.name == "/mic2e.v1.SegmentationService/SegmentByText"
                     and s.kind == trace.SpanKind.SERVER]
        assert model_rpc, sorted(by_name)
        assert "segmentation.model" in by_name and "segmentation.queue" in by_name
        trace_ids = {edit.context.trace_id, model_rpc[0].context.trace_id,
                     by_name["segmentation.model"].context.trace_id}
        assert len(trace_ids) == 1, "the trace did not cross the two servers"
        # The orchestrator's own polls of the model servers' health leave no traces.
        assert not [s for s in spans if s.name == "/grpc.health.v1.Health/Check"
                    and s.kind == trace.SpanKind.CLIENT]

        # Over the HTTP port, a caller's W3C trace context is taken up the same way.
        exporter.clear()
        caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{orch.http.port}") as client:
            response = await client.post(
                "/mic2e.v1.EditService/SegmentByText",
                json={"image": {"data": base64.b64encode(data).decode()}, "text": "dog"},
                headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
        assert response.status_code == 200, response.text
        spans = exporter.get_finished_spans()
        edit = [s for s in spans if s.name == "/mic2e.v1.EditService/SegmentByText"]
        model_rpc = [s for s in spans if s.name == "/mic2e.v1.SegmentationService/SegmentByText"
                     and s.kind == trace.SpanKind.SERVER]
        assert edit and model_rpc, sorted(s.name for s in spans)
        assert {f"{edit[0].context.trace_id:032x}", f"{model_rpc[0].context.trace_id:032x}"
                } == {caller_trace}
        assert f"{edit[0].parent.span_id:016x}" == caller_span
    finally:
        await orch.stop(0)
        await seg.stop(0)
