"""The HTTP port (Connect and gRPC-Web) of the live tiny stack: the same handlers as gRPC,
streamed as the work happens, with the same errors, deadlines, cancellation, tokens,
limits, CORS and metrics.

The bad-input suite runs every case over HTTP too (test_bad_input.py); the README's curl
calls run against `mic2e-server up` (test_readme_curl.py); TLS over HTTP is in
tests/service/test_security.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.rpc import error_details_pb2
from mic2e import codecs
from mic2e.v1 import (
    common_pb2,
    object_clear_pb2,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from mic2e_services.orchestrator import server as orch_server
from mic2e_services.runtime.worker import WorkerCallback
from PIL import Image

from tests.grpc_helpers import detail, drain, rich_status
from tests.http_channel import HttpChannel, envelope

pytestmark = pytest.mark.asyncio(loop_scope="package")

W, H = 96, 64
BOX = common_pb2.Box(x0=20, y0=10, x1=60, y1=40)


def photo(w: int = W, h: int = H) -> bytes:
    rng = np.random.default_rng(7)
    return codecs.encode_image(Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)),
                               "png")


def mask(w: int = W, h: int = H) -> common_pb2.Mask:
    on = np.zeros((h, w), bool)
    on[10:40, 20:60] = True
    return common_pb2.Mask(width=w, height=h, png=codecs.encode_mask_png(on))


def remove_request(steps: int = 2, size: tuple[int, int] = (W, H), **options
                   ) -> orchestrator_pb2.RemoveObjectsRequest:
    return orchestrator_pb2.RemoveObjectsRequest(
        image=common_pb2.Image(data=photo(*size)),
        masks=orchestrator_pb2.MaskTarget(masks=[mask(*size)]),
        clear_options=object_clear_pb2.ClearOptions(steps=steps, short_side=256, seed=1,
                                                    **options))


def as_json(message) -> dict:
    return json_format.MessageToDict(message)


class Steps(WorkerCallback):
    """Counts the denoising steps a worker ran (on the device thread)."""

    def __init__(self) -> None:
        self.count = 0

    def on_step(self, worker, seconds) -> None:
        self.count += 1


@pytest.fixture
def object_clear_steps(stack):
    steps = Steps()
    stack.object_clear.worker.add_callback(steps)
    yield steps
    stack.object_clear.worker.callbacks.remove(steps)


async def stream_json(client: httpx.AsyncClient, path: str, body: dict, headers=None):
    """The messages of a Connect server stream in JSON, each as it arrives; the end-of-
    stream message last (as {"end": ...})."""
    buffer = bytearray()
    async with client.stream("POST", path, content=envelope(json.dumps(body).encode()),
                             headers={"content-type": "application/connect+json",
                                      **(headers or {})}) as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_bytes():
            buffer += chunk
            while len(buffer) >= 5 and len(buffer) >= 5 + int.from_bytes(buffer[1:5], "big"):
                size = int.from_bytes(buffer[1:5], "big")
                flags, payload = buffer[0], json.loads(bytes(buffer[5:5 + size]) or b"{}")
                del buffer[:5 + size]
                yield {"end": payload} if flags & 0x02 else payload


# -- the same answers ----------------------------------------------------------------------
async def test_json_unary_is_the_grpc_answer(stack):
    request = segmentation_pb2.SegmentByPromptRequest(image=common_pb2.Image(data=photo()),
                                                      box=BOX)
    by_grpc = await orchestrator_pb2_grpc.EditServiceStub(stack.channel).SegmentByPrompt(request)
    async with httpx.AsyncClient(base_url=stack.http_url()) as client:
        response = await client.post("/mic2e.v1.EditService/SegmentByPrompt",
                                     json=as_json(request))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    by_http = json_format.ParseDict(response.json(), segmentation_pb2.SegmentByPromptResponse())
    by_grpc.ClearField("provenance")
    by_http.ClearField("provenance")
    assert by_http.best.mask.png and by_http == by_grpc


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_binary_unary_on_a_model_server(stack, http2):
    """Model servers speak HTTP as well (the same code serves them), over HTTP/1.1 and
    HTTP/2 without TLS (prior knowledge)."""
    request = segmentation_pb2.SegmentByPromptRequest(image=common_pb2.Image(data=photo()),
                                                      box=BOX)
    async with httpx.AsyncClient(base_url=stack.http_url(stack.segmentation), http2=http2,
                                 http1=not http2) as client:
        response = await client.post("/mic2e.v1.SegmentationService/SegmentByPrompt",
                                     content=request.SerializeToString(),
                                     headers={"content-type": "application/proto"})
    assert response.status_code == 200, response.text
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    result = segmentation_pb2.SegmentByPromptResponse.FromString(response.content)
    assert (result.image_width, result.image_height) == (W, H)
    assert codecs.decode_mask_png(result.best.mask.png).shape == (H, W)


@pytest.mark.parametrize("protocol", ["connect", "grpc-web"])
async def test_streamed_removal_over_connect_and_grpc_web(stack, protocol):
    channel = HttpChannel(stack.http_url(), protocol)
    try:
        events = await drain(orchestrator_pb2_grpc.EditServiceStub(channel)
                             .RemoveObjects(remove_request()))
    finally:
        await channel.close()
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    assert kinds.count("progress") >= 2
    result = events[-1].result
    assert (result.image.width, result.image.height) == (W, H)
    assert Image.open(io.BytesIO(result.image.data)).size == (W, H)


async def test_progress_arrives_before_the_last_step_ran(stack, object_clear_steps):
    """Each Progress event is sent when it happens: the first denoising step's event
    reaches the HTTP client while the model still has steps to run."""
    steps = 12
    request = as_json(remove_request(steps=steps))
    seen_at_first: int | None = None
    async with httpx.AsyncClient(base_url=stack.http_url(), timeout=120) as client:
        async for message in stream_json(client, "/mic2e.v1.EditService/RemoveObjects",
                                         request):
            progress = message.get("progress", {})
            if progress.get("stage") == "object_clear" and seen_at_first is None:
                seen_at_first = object_clear_steps.count
    assert seen_at_first is not None
    assert seen_at_first < steps, "the first step's event came after every step ran"
    assert object_clear_steps.count == steps


# -- errors --------------------------------------------------------------------------------
async def test_errors_carry_their_google_rpc_details_in_connect_json(stack):
    async with httpx.AsyncClient(base_url=stack.http_url()) as client:
        response = await client.post(
            "/mic2e.v1.EditService/SegmentByText",
            json={"image": {"data": base64.b64encode(photo()).decode()}, "text": ""})
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "invalid_argument"
    bad = [d for d in error["details"] if d["type"] == "google.rpc.BadRequest"]
    assert bad, error
    violations = error_details_pb2.BadRequest.FromString(base64.b64decode(
        bad[0]["value"] + "=" * (-len(bad[0]["value"]) % 4))).field_violations
    assert [v.field for v in violations] == ["text"]


async def test_a_stream_error_ends_the_stream_with_its_details(stack):
    request = as_json(remove_request(steps=500))  # over the limit of 100
    async with httpx.AsyncClient(base_url=stack.http_url()) as client:
        messages = [m async for m in stream_json(client, "/mic2e.v1.EditService/RemoveObjects",
                                                  request)]
    end = messages[-1]["end"]
    assert end["error"]["code"] == "invalid_argument"
    assert any(d["type"] == "google.rpc.BadRequest" for d in end["error"]["details"])


async def test_json_that_is_no_request_names_the_request(stack):
    async with httpx.AsyncClient(base_url=stack.http_url()) as client:
        response = await client.post("/mic2e.v1.EditService/SegmentByText",
                                     content=b'{"image": 12}',
                                     headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"
    assert "SegmentByTextRequest" in response.json()["message"]


# -- deadlines and cancellation ------------------------------------------------------------
async def wait_idle(stack, steps: Steps, timeout_s: float = 30) -> None:
    """Until the object-clear worker has run no step for a while (the work stopped)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    last = -1
    while loop.time() < until:
        stats = stack.object_clear.worker.stats()
        if steps.count == last and stats.queued == 0 and stats.running == 0:
            return
        last = steps.count
        await asyncio.sleep(0.5)
    raise AssertionError("the object-clear server kept working")


async def test_deadline_over_http_stops_the_work(stack, object_clear_steps):
    channel = HttpChannel(stack.http_url())
    steps = 100
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(orchestrator_pb2_grpc.EditServiceStub(channel).RemoveObjects(
                remove_request(steps=steps, size=(384, 256)), timeout=1.0))
        assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                     grpc.StatusCode.RESOURCE_EXHAUSTED), info.value
        await wait_idle(stack, object_clear_steps)
        assert object_clear_steps.count < steps
        # The server serves the next caller at once.
        events = await drain(orchestrator_pb2_grpc.EditServiceStub(channel)
                             .RemoveObjects(remove_request(), timeout=60))
        assert events[-1].WhichOneof("event") == "result"
    finally:
        await channel.close()


async def test_client_going_away_stops_the_work(stack, object_clear_steps):
    steps = 100
    request = as_json(remove_request(steps=steps))
    async with httpx.AsyncClient(base_url=stack.http_url(), timeout=120) as client:
        async for message in stream_json(client, "/mic2e.v1.EditService/RemoveObjects",
                                         request):
            if message.get("progress", {}).get("stage") == "object_clear":
                break  # leaves the stream: the connection closes
    await wait_idle(stack, object_clear_steps)
    ran = object_clear_steps.count
    assert ran < steps, "the model ran every step for a caller who had left"
    await removal_succeeds(stack.http_url())


async def removal_succeeds(url: str, **headers: str) -> None:
    """A small removal over the HTTP port runs to its result."""
    channel = HttpChannel(url, headers=headers)
    try:
        events = await drain(orchestrator_pb2_grpc.EditServiceStub(channel)
                             .RemoveObjects(remove_request()))
        assert events[-1].WhichOneof("event") == "result"
    finally:
        await channel.close()


# -- tokens, limits, CORS, metrics, logs ---------------------------------------------------
@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def guarded(stack):
    """An orchestrator with bearer tokens, a 1 MiB message limit and one allowed origin,
    calling the stack's model servers."""
    settings = orch_server.Settings(
        host="127.0.0.1", port=0, http_port=0, metrics_port=-1, auth_tokens="tok3n",
        max_message_mb=1, http_cors_origins="https://app.example",
        segmentation_address=stack.model_address(stack.segmentation),
        object_clear_address=stack.model_address(stack.object_clear),
        flux_address=stack.model_address(stack.flux))
    server, _ = orch_server.create_server(settings)
    await server.start()
    await server.wait_ready(30)
    yield f"http://127.0.0.1:{server.http.port}"
    await server.stop(0)


@pytest.mark.parametrize("token", [None, "wrong", "tok3n-but-longer"])
async def test_missing_or_wrong_token_is_unauthenticated_over_http(guarded, token):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=guarded, headers=headers) as client:
        response = await client.post("/mic2e.v1.EditService/SegmentByPrompt",
                                     json=as_json(segmentation_pb2.SegmentByPromptRequest(
                                         image=common_pb2.Image(data=photo()), box=BOX)))
        assert response.status_code == 401 and response.json()["code"] == "unauthenticated"
        messages = [m async for m in stream_json(client, "/mic2e.v1.EditService/RemoveObjects",
                                                  as_json(remove_request()))]
        assert messages[-1]["end"]["error"]["code"] == "unauthenticated"
        assert len(messages) == 1  # nothing ran


async def test_right_token_over_http(guarded):
    await removal_succeeds(guarded, authorization="Bearer tok3n")


async def test_message_limit_over_http(guarded):
    channel = HttpChannel(guarded, headers={"authorization": "Bearer tok3n"})
    big = segmentation_pb2.SegmentByTextRequest(
        image=common_pb2.Image(data=b"\0" * (2 * 2**20)), text="dog")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await orchestrator_pb2_grpc.EditServiceStub(channel).SegmentByText(big)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await channel.close()


async def preflight(url: str, origin: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as client:
        return await client.options("/mic2e.v1.EditService/RemoveObjects", headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,authorization"})


async def test_cors_only_for_the_allowed_origins(stack, guarded):
    allowed = await preflight(guarded, "https://app.example")
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    other = await preflight(guarded, "https://evil.example")
    assert "access-control-allow-origin" not in other.headers
    # By default, same origin only: no origin is allowed.
    default = await preflight(stack.http_url(), "https://app.example")
    assert "access-control-allow-origin" not in default.headers


async def test_http_calls_are_counted_in_the_metrics(stack):
    registry = stack.orchestrator.metrics.registry

    def count(code: str) -> float:
        return registry.get_sample_value("mic2e_requests_total", {
            "server": "orchestrator", "rpc": "SegmentByText", "code": code}) or 0.0

    before = count("INVALID_ARGUMENT")
    async with httpx.AsyncClient(base_url=stack.http_url()) as client:
        await client.post("/mic2e.v1.EditService/SegmentByText",
                          json={"image": {"data": base64.b64encode(photo()).decode()},
                                "text": ""})
    assert count("INVALID_ARGUMENT") == before + 1


async def test_no_prompt_in_any_log_over_http(stack, caplog):
    prompt = "a very secret zebra prompt 93b1"
    caplog.set_level(logging.DEBUG)
    request = orchestrator_pb2.ReplaceObjectsRequest(
        image=common_pb2.Image(data=photo()), box=BOX, replacement=prompt)
    request.inpaint_options.steps = 1
    bad = orchestrator_pb2.ReplaceObjectsRequest(image=common_pb2.Image(data=photo()),
                                                 replacement=prompt)  # no target
    channel = HttpChannel(stack.http_url())
    try:
        events = await drain(orchestrator_pb2_grpc.EditServiceStub(channel)
                             .ReplaceObjects(request))
        assert events[-1].WhichOneof("event") == "result"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(orchestrator_pb2_grpc.EditServiceStub(channel).ReplaceObjects(bad))
        status = await rich_status(info.value)
        assert detail(status, error_details_pb2.BadRequest) is not None
    finally:
        await channel.close()
    assert caplog.records, "nothing was logged at all: the check would prove nothing"
    assert prompt not in caplog.text


async def test_unknown_path_is_404_and_no_page_leaks_files(stack):
    async with httpx.AsyncClient(base_url=stack.http_url()) as client:
        assert (await client.post("/mic2e.v1.EditService/Nope", json={})).status_code == 404
        assert (await client.get("/../../etc/passwd")).status_code == 404
        assert (await client.get("/%2e%2e/%2e%2e/etc/passwd")).status_code == 404


async def test_grpc_web_error_has_its_details_in_the_trailers(stack):
    channel = HttpChannel(stack.http_url(stack.segmentation), "grpc-web")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await segmentation_pb2_grpc.SegmentationServiceStub(channel).SegmentByText(
                segmentation_pb2.SegmentByTextRequest(image=common_pb2.Image(data=photo()),
                                                      text=""))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = detail(await rich_status(info.value), error_details_pb2.BadRequest)
        assert bad is not None and [v.field for v in bad.field_violations] == ["text"]
    finally:
        await channel.close()
