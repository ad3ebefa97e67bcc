"""RemoveObjects and the pass-through calls on the live tiny stack (real gRPC, loopback)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import sys

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from mic2e import codecs
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    object_clear_pb2,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    segmentation_pb2,
)
from mic2e_services.runtime import worker as worker_mod
from PIL import Image

from tests.grpc_helpers import detail, drain, rich_status

pytestmark = pytest.mark.asyncio(loop_scope="package")

W, H = 200, 150
FAST = object_clear_pb2.ClearOptions(steps=3, short_side=256, seed=0)


def picture(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (H, W, 3), np.uint8)
    return codecs.encode_image(Image.fromarray(arr), "jpeg")


def mask(box=(50, 40, 120, 100)) -> common_pb2.Mask:
    m = np.zeros((H, W), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return common_pb2.Mask(width=W, height=H, png=codecs.encode_mask_png(m))


def stub(stack):
    return orchestrator_pb2_grpc.EditServiceStub(stack.channel)


TARGETS = {
    "text": {"text": orchestrator_pb2.TextTarget(text="dog", min_score=0.0, max_instances=3)},
    "click": {"prompt": orchestrator_pb2.PromptTarget(points=[common_pb2.Point(x=90, y=70)])},
    "box": {"prompt": orchestrator_pb2.PromptTarget(
        box=common_pb2.Box(x0=40, y0=30, x1=150, y1=120))},
    "masks": {"masks": orchestrator_pb2.MaskTarget(masks=[mask(), mask((5, 5, 20, 20))])},
}


@pytest.mark.parametrize("kind", list(TARGETS))
async def test_removal_streams_stages_in_order_and_one_result(stack, kind):
    req = orchestrator_pb2.RemoveObjectsRequest(
        image=common_pb2.Image(data=picture()), clear_options=FAST, **TARGETS[kind])
    events = await drain(stub(stack).RemoveObjects(req))
    kinds = [e.WhichOneof("event") for e in events]
    clear_progress = [e.progress for e in events
                      if kinds and e.WhichOneof("event") == "progress"
                      and e.progress.stage == "object_clear"]
    if kind == "masks":
        assert kinds == ["progress"] * 3 + ["result"]
    else:
        assert kinds == ["progress", "progress", "segmentation"] + ["progress"] * 3 + ["result"]
        assert [(e.progress.stage, e.progress.step) for e in events[:2]] == [
            ("segmentation", 0), ("segmentation", 1)]
        assert len(events[2].segmentation.instances) >= 1
    assert [p.step for p in clear_progress] == [1, 2, 3]
    result = events[-1].result
    assert Image.open(io.BytesIO(result.image.data)).size == (W, H)
    assert (result.mask.width, result.mask.height) == (W, H)
    stages = [p.server for p in result.stages]
    assert stages == (["object-clear"] if kind == "masks" else ["segmentation", "object-clear"])
    timing_names = [t.stage for t in result.timings]
    assert timing_names[-1] == "total" and "object_clear" in timing_names


async def test_mask_dilation_is_the_references_none_unless_asked(stack):
    def removed(**dilation) -> np.ndarray:
        req = orchestrator_pb2.RemoveObjectsRequest(
            image=common_pb2.Image(data=picture()), clear_options=FAST,
            masks=orchestrator_pb2.MaskTarget(masks=[mask((90, 70, 91, 71))]), **dilation)
        return req

    result = (await drain(stub(stack).RemoveObjects(removed())))[-1].result
    assert np.count_nonzero(codecs.decode_mask_png(result.mask.png)) == 1  # as sent
    result = (await drain(stub(stack).RemoveObjects(removed(mask_dilation=10))))[-1].result
    ys, xs = np.nonzero(codecs.decode_mask_png(result.mask.png))
    assert xs.max() - xs.min() == 20 and ys.max() - ys.min() == 20  # 1 px grown by 10 each way


async def test_second_call_sends_only_the_reference(stack):
    data = picture(seed=11)
    oc_images = stack.object_clear.servicer.images
    seg_images = stack.segmentation.servicer.images
    before = (oc_images.received_bytes, oc_images.received_refs,
              seg_images.received_bytes, seg_images.received_refs)
    for _ in range(2):
        req = orchestrator_pb2.RemoveObjectsRequest(
            image=common_pb2.Image(data=data), clear_options=FAST, **TARGETS["click"])
        await drain(stub(stack).RemoveObjects(req))
    after = (oc_images.received_bytes, oc_images.received_refs,
             seg_images.received_bytes, seg_images.received_refs)
    # Each model server got the bytes once; the second call sent only the SHA-256.
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]


async def test_caller_may_refer_to_an_image_by_sha(stack):
    data = picture(seed=12)
    await stub(stack).SegmentByText(segmentation_pb2.SegmentByTextRequest(
        image=common_pb2.Image(data=data), text="dog"))
    ref = common_pb2.Image(sha256=codecs.sha256_hex(data))
    req = orchestrator_pb2.RemoveObjectsRequest(image=ref, clear_options=FAST,
                                                **TARGETS["masks"])
    assert (await drain(stub(stack).RemoveObjects(req)))[-1].WhichOneof("event") == "result"
    call = stub(stack).RemoveObjects(orchestrator_pb2.RemoveObjectsRequest(
        image=common_pb2.Image(sha256="1" * 64), **TARGETS["masks"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(call)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_model_server_lost_the_image_bytes_are_resent(stack):
    data = picture(seed=13)
    req = orchestrator_pb2.RemoveObjectsRequest(image=common_pb2.Image(data=data),
                                                clear_options=FAST, **TARGETS["masks"])
    await drain(stub(stack).RemoveObjects(req))
    stack.object_clear.servicer.images._cache._items.clear()  # as after a restart
    misses = stack.object_clear.servicer.images.ref_misses
    events = await drain(stub(stack).RemoveObjects(req))
    assert events[-1].WhichOneof("event") == "result"
    assert stack.object_clear.servicer.images.ref_misses == misses + 1


async def test_cancel_reaches_the_object_clear_worker(stack, monkeypatch):
    progress: dict[int, int] = {}
    original = worker_mod.Job.progress

    def counting(self, stage, step, total):
        progress[id(self)] = progress.get(id(self), 0) + 1
        original(self, stage, step, total)

    monkeypatch.setattr(worker_mod.Job, "progress", counting)
    req = orchestrator_pb2.RemoveObjectsRequest(
        image=common_pb2.Image(data=picture(seed=3)),
        clear_options=object_clear_pb2.ClearOptions(steps=80, short_side=256),
        **TARGETS["masks"])
    call = stub(stack).RemoveObjects(req)
    async for event in call:
        if event.progress.stage == "object_clear" and event.progress.step == 2:
            call.cancel()
            break
    worker = stack.object_clear.worker
    for _ in range(100):
        if worker.stats().running == 0:
            break
        await asyncio.sleep(0.05)
    assert worker.stats().running == 0, "the object-clear worker is still busy"
    assert max(progress.values()) <= 4  # cancelled at 2: at most a step or two in flight


async def test_deadline_propagates_downstream(stack):
    req = orchestrator_pb2.RemoveObjectsRequest(
        image=common_pb2.Image(data=picture(seed=4)),
        clear_options=object_clear_pb2.ClearOptions(steps=100, short_side=256),
        **TARGETS["masks"])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(stub(stack).RemoveObjects(req, timeout=1.0))
    assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)
    worker = stack.object_clear.worker
    for _ in range(60):
        if worker.stats().running == 0:
            break
        await asyncio.sleep(0.05)
    assert worker.stats().running == 0


async def test_text_that_finds_nothing_is_not_found_after_the_segmentation_event(stack):
    req = orchestrator_pb2.RemoveObjectsRequest(
        image=common_pb2.Image(data=picture()), clear_options=FAST,
        text=orchestrator_pb2.TextTarget(text="unicorn", min_score=1.0))
    call = stub(stack).RemoveObjects(req)
    seen = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for e in call:
            seen.append(e.WhichOneof("event"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "segmentation" in seen
    assert detail(await rich_status(call), error_details_pb2.ErrorInfo).reason == "NO_INSTANCES"


@pytest.mark.parametrize(("req", "field"), [
    (orchestrator_pb2.RemoveObjectsRequest(image=common_pb2.Image(data=picture())), "target"),
    (orchestrator_pb2.RemoveObjectsRequest(**TARGETS["masks"]), "image"),
    (orchestrator_pb2.RemoveObjectsRequest(image=common_pb2.Image(data=picture()),
                                           mask_dilation=1000, **TARGETS["masks"]),
     "mask_dilation"),
    (orchestrator_pb2.RemoveObjectsRequest(image=common_pb2.Image(data=picture()),
                                           prompt=orchestrator_pb2.PromptTarget()), "prompt"),
    (orchestrator_pb2.RemoveObjectsRequest(image=common_pb2.Image(data=picture()),
                                           text=orchestrator_pb2.TextTarget(text="")),
     "text.text"),
    (orchestrator_pb2.RemoveObjectsRequest(
        image=common_pb2.Image(data=picture()), clear_options=object_clear_pb2.ClearOptions(
            steps=0), **TARGETS["masks"]), "clear_options.steps"),
])
async def test_bad_requests_name_the_field(stack, req, field):
    call = stub(stack).RemoveObjects(req)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = detail(await rich_status(call), error_details_pb2.BadRequest)
    assert field in [v.field for v in bad.field_violations]


async def test_pass_through_calls(stack):
    s = stub(stack)
    text = await s.SegmentByText(segmentation_pb2.SegmentByTextRequest(
        image=common_pb2.Image(data=picture()), text="dog", score_threshold=0.0))
    assert text.instances and text.provenance.server == "segmentation"
    prompt = await s.SegmentByPrompt(segmentation_pb2.SegmentByPromptRequest(
        image=common_pb2.Image(sha256=text.image_sha256),
        points=[common_pb2.Point(x=3, y=3)]))
    assert prompt.best.mask.width == W
    events = await drain(s.Generate(flux_pb2.GenerateRequest(
        prompt="a red bicycle", width=256, height=256, steps=2, seed=1)))
    assert [e.WhichOneof("event") for e in events] == ["progress", "progress", "result"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_object_clear_server_killed_mid_way(stack, tiny_objectclear):
    """A real process killed with SIGKILL mid-removal: UNAVAILABLE after the instances."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mic2e_services.cli", "object-clear", "--model",
        str(tiny_objectclear), "--host", "127.0.0.1", "--port", str(port),
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        from mic2e_services.stack import wait_serving

        await asyncio.to_thread(wait_serving, f"127.0.0.1:{port}", 120)
        from mic2e_services import stack as stack_launcher

        # The orchestrator alone, wired to the killable object-clear server.
        addresses = {"segmentation_address": stack.model_address(stack.segmentation),
                     "object_clear_address": f"127.0.0.1:{port}",
                     "flux_address": stack.model_address(stack.flux)}
        async with stack_launcher.in_process(
                {}, settings={"orchestrator": addresses}) as servers:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{servers['orchestrator'].port}")
            req = orchestrator_pb2.RemoveObjectsRequest(
                image=common_pb2.Image(data=picture()), **TARGETS["click"],
                clear_options=object_clear_pb2.ClearOptions(steps=100, short_side=256))
            # A generous deadline: admission control must not refuse it on a slow machine.
            call = orchestrator_pb2_grpc.EditServiceStub(channel).RemoveObjects(req, timeout=900)
            seen = []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for event in call:
                    seen.append(event.WhichOneof("event"))
                    if event.progress.stage == "object_clear" and event.progress.step == 2:
                        proc.send_signal(signal.SIGKILL)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (info.value.details(), seen)
            assert "segmentation" in seen and "result" not in seen
            err = detail(await rich_status(call), error_details_pb2.ErrorInfo)
            assert (err.reason, err.metadata["stage"]) == ("STAGE_FAILED", "object_clear")
            await channel.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_no_prompts_or_image_bytes_in_logs_at_info(stack, caplog):
    secret_text, secret_prompt = "zebracorn-7731", "a secret-prompt-4419 bicycle"
    data = picture(seed=21)
    with caplog.at_level("INFO"):
        req = orchestrator_pb2.RemoveObjectsRequest(
            image=common_pb2.Image(data=data), clear_options=FAST,
            text=orchestrator_pb2.TextTarget(text=secret_text, min_score=0.0))
        await drain(stub(stack).RemoveObjects(req))
        await drain(stub(stack).Generate(flux_pb2.GenerateRequest(
            prompt=secret_prompt, width=256, height=256, steps=1)))
        with pytest.raises(grpc.aio.AioRpcError):
            await drain(stub(stack).Generate(flux_pb2.GenerateRequest(
                prompt=secret_prompt, width=100)))
    logged = caplog.text
    assert secret_text not in logged and "secret-prompt-4419" not in logged
    assert repr(data[:16])[2:-1] not in logged
