"""One caller never costs another anything, and accepted work is never cut: the whole
tiny stack as four real server processes (`mic2e_services.stack.processes`), each with its
own log file, memory and /metrics.

Every server ages its connections out after 2 s (production: 300 s), so these calls run
across many connection closes; the libraries are left chatty (verbosity info), so a
caller's text that any of them would log shows up in the logs.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from mic2e import codecs
from mic2e.channel import channel_options
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    object_clear_pb2,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    segmentation_pb2,
)
from mic2e_services import stack as launcher
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.grpc_helpers import drain

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGE_S = 2.0
#: The segmentation server's budgets here (production defaults: 512 and 1024 MiB).
SEG_IMAGE_CACHE_MB, SEG_FEATURE_CACHE_MB = 256, 64
ORCHESTRATOR_IMAGE_CACHE_MB = 64
MB = 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Processes:
    procs: dict
    addresses: dict[str, str]
    metrics: dict[str, int]
    logs: dict[str, Path]

    def rss_mb(self, name: str) -> float:
        for line in Path(f"/proc/{self.procs[name].pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def cache_bytes(self, name: str, cache: str) -> float:
        url = f"http://127.0.0.1:{self.metrics[name]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "mic2e_cache_bytes" and sample.labels["cache"] == cache:
                    return sample.value
        raise AssertionError(f"{name} has no mic2e_cache_bytes{{cache={cache!r}}}")

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.addresses["orchestrator"],
                                         options=channel_options())


@pytest.fixture(scope="module")
def processes(tiny_sam3, tiny_objectclear, tiny_flux, tmp_path_factory):
    logs_dir = tmp_path_factory.mktemp("logs")
    models = {"segmentation": tiny_sam3, "object-clear": tiny_objectclear, "flux": tiny_flux}
    names = [*models, "orchestrator"]
    ports = {name: free_port() for name in names}
    metrics = {name: free_port() for name in names}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    common = ["--max-connection-age-s", str(AGE_S)]
    extra = {"segmentation": ["--image-cache-mb", str(SEG_IMAGE_CACHE_MB),
                              "--feature-cache-mb", str(SEG_FEATURE_CACHE_MB)],
             "orchestrator": ["--image-cache-mb", str(ORCHESTRATOR_IMAGE_CACHE_MB)]}
    commands = {name: launcher.command(name, ports[name], model=str(models.get(name)),
                                       metrics_port=metrics[name],
                                       addresses={n: addresses[n] for n in models},
                                       extra=[*common, *extra.get(name, [])])
                for name in names}
    logs = {name: logs_dir / f"{name}.log" for name in names}
    env = {"TRANSFORMERS_VERBOSITY": "info", "DIFFUSERS_VERBOSITY": "info",
           "MIC2E_LOG_LEVEL": "INFO"}
    # Ready once the orchestrator reaches every model server: its first calls must not
    # find a channel still connecting.
    with launcher.processes(commands, addresses, env=env, logs=logs, ready_timeout_s=240,
                            ready_services={"orchestrator": launcher.ORCHESTRATOR_READY}
                            ) as procs:
        yield Processes(procs, addresses, metrics, logs)


def one_colour_pngs(width: int, height: int, count: int) -> list[bytes]:
    """`count` distinct PNGs (a text chunk tells them apart) of one colour, width x height,
    a few hundred KB each: the pixel data is compressed once."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    row = b"\x00" + bytes((40, 120, 200)) * width
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                 0, 0, 0))
    tail = chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return [head + chunk(b"tEXt", b"tag\x00" + str(i).encode()) + tail for i in range(count)]


def picture(seed: int, w: int = 96, h: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    return codecs.encode_image(Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)))


def mask_target(w: int = 96, h: int = 64) -> orchestrator_pb2.MaskTarget:
    m = np.zeros((h, w), bool)
    m[10:40, 20:60] = True
    return orchestrator_pb2.MaskTarget(masks=[common_pb2.Mask(
        width=w, height=h, png=codecs.encode_mask_png(m))])


async def test_connection_ageing_never_cuts_an_accepted_call(processes):
    """Removals and segmentations run concurrently for many connection ages, on the
    caller's connection to the orchestrator and on its connections to the model servers:
    every one completes."""
    async with processes.channel() as channel:
        stub = orchestrator_pb2_grpc.EditServiceStub(channel)

        async def removal(i: int) -> str:
            events = await drain(stub.RemoveObjects(orchestrator_pb2.RemoveObjectsRequest(
                image=common_pb2.Image(data=picture(i)), masks=mask_target(),
                clear_options=object_clear_pb2.ClearOptions(steps=6, short_side=256, seed=i))))
            return events[-1].WhichOneof("event")

        async def segmentation(i: int) -> int:
            response = await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
                image=common_pb2.Image(data=picture(100 + i)), text="dog",
                score_threshold=0.0))
            return response.image_width

        until = time.monotonic() + 4 * AGE_S
        outcomes: list[object] = []

        async def caller(k: int) -> None:
            # Calls back to back for four connection ages: some start on connections
            # about to age out, some run while theirs closes.
            i = 0
            while time.monotonic() < until:
                call = removal if k % 2 else segmentation
                try:
                    outcomes.append(await call(100 * k + i))
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(exc)
                i += 1

        await asyncio.gather(*[caller(k) for k in range(8)])
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert failures == [], failures[:3]
    assert outcomes.count("result") >= 4 and outcomes.count(96) >= 4, outcomes


async def test_refused_uploads_leave_nothing_behind(processes):
    """40 distinct 30 MB uploads that no server accepts (1.2 GB; before the memory was
    handed back, 40 left the orchestrator 0.7 to 3 GB larger): the orchestrator's memory stays
    where it was, and no cache anywhere keeps any of them."""
    before = {n: processes.cache_bytes(n, "images") for n in ("orchestrator", "segmentation")}
    rss_before = processes.rss_mb("orchestrator")
    async with processes.channel() as channel:
        stub = orchestrator_pb2_grpc.EditServiceStub(channel)
        limit = asyncio.Semaphore(4)

        async def upload(i: int) -> grpc.StatusCode:
            junk = i.to_bytes(4, "big") + bytes(30 * MB - 4)  # no image, each one distinct
            async with limit:
                try:
                    await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
                        image=common_pb2.Image(data=junk), text="dog"))
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*[upload(i) for i in range(40)])
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    grown = processes.rss_mb("orchestrator") - rss_before
    assert grown <= 100, f"the orchestrator kept {grown:.0f} MB of refused uploads"
    after = {n: processes.cache_bytes(n, "images") for n in before}
    assert after == before


async def test_large_pictures_stay_within_the_segmentation_servers_budget(processes):
    """16 distinct 6000x6000 PNGs of ~120 KB each (108 MB each decoded, 1.7 GB in all,
    five times the caches' budget): the server's caches stay within their settings and
    so does its memory."""
    rss_before = processes.rss_mb("segmentation")
    async with processes.channel() as channel:
        stub = orchestrator_pb2_grpc.EditServiceStub(channel)
        limit = asyncio.Semaphore(2)
        pngs = one_colour_pngs(6000, 6000, 16)
        assert len({codecs.sha256_hex(p) for p in pngs}) == 16 and len(pngs[0]) < 300_000

        async def segment(data: bytes) -> None:
            async with limit:
                await stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
                    image=common_pb2.Image(data=data), text="dog"))

        await asyncio.gather(*[segment(data) for data in pngs])
    images = processes.cache_bytes("segmentation", "images")
    features = processes.cache_bytes("segmentation", "features")
    assert 0 < images <= SEG_IMAGE_CACHE_MB * MB
    assert 0 < features <= SEG_FEATURE_CACHE_MB * MB
    grown = processes.rss_mb("segmentation") - rss_before
    budget = SEG_IMAGE_CACHE_MB + SEG_FEATURE_CACHE_MB
    # The caches, plus what two requests in flight hold at the moment they finish.
    assert grown <= budget + 2 * 108, f"grew {grown:.0f} MB, budget {budget} MB"


async def test_what_a_caller_sends_never_reaches_a_log(processes):
    """A prompt far past CLIP's 77 tokens (to Generate and to ReplaceObjects), a label and
    a text target, each carrying a marker: no server's log holds a marker, whatever the
    libraries would say. Undecodable bytes leave one WARNING line, no traceback."""
    marker = secrets.token_hex(8)
    prompt = "a red bicycle leaning on a wall " * 60 + f"secret {marker}"  # < 2000 chars
    async with processes.channel() as channel:
        stub = orchestrator_pb2_grpc.EditServiceStub(channel)
        events = await drain(stub.Generate(flux_pb2.GenerateRequest(
            prompt=prompt, width=256, height=256, steps=1, seed=0)))
        assert events[-1].result.prompt_truncated  # T5 cut it too: the libraries noticed
        events = await drain(stub.RemoveObjects(orchestrator_pb2.RemoveObjectsRequest(
            image=common_pb2.Image(data=picture(7)), label=f"dog{marker}"[:100],
            text=orchestrator_pb2.TextTarget(text=f"the dog {marker}", min_score=0.0),
            clear_options=object_clear_pb2.ClearOptions(steps=1, short_side=256, seed=0))))
        assert events[-1].WhichOneof("event") == "result"
        events = await drain(stub.ReplaceObjects(orchestrator_pb2.ReplaceObjectsRequest(
            image=common_pb2.Image(data=picture(8)), replacement=prompt,
            box=common_pb2.Box(x0=20, y0=10, x1=60, y1=50),
            inpaint_options=flux_pb2.InpaintOptions(steps=1, seed=0))))
        assert events[-1].result.prompt_truncated  # inpainting reads the prompt too
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/mic2e.v1.EditService/SegmentByText")(
                b"\xff\xff" + marker.encode())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await asyncio.sleep(0.5)  # let the servers' log lines reach their files
    texts = {name: path.read_text(errors="replace") for name, path in processes.logs.items()}
    assert all(texts.values()), "a server wrote no log at all: nothing was checked"
    assert [name for name, text in texts.items() if marker in text] == []
    orchestrator = texts["orchestrator"]
    assert orchestrator.count("undecodable request bytes") == 1
    assert "Traceback" not in orchestrator
