"""The Python clients and the `mic2e` CLI against the live tiny stack."""

from __future__ import annotations

import asyncio
import os
import sys

import numpy as np
import pytest
from mic2e import AsyncClient, Client, Point, codecs
from mic2e.errors import InvalidArgumentError, NotFoundError
from mic2e.types import InpaintResult, Progress, RemoveResult, ReplaceResult, Segmented
from PIL import Image

pytestmark = pytest.mark.asyncio(loop_scope="package")

W, H = 180, 120
FAST = {"steps": 2, "short_side": 256, "seed": 0}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8)).save(path)
    return str(path)


def addr(server) -> str:
    return f"127.0.0.1:{server.port}"


async def test_sync_client_remove_by_text(stack, image_file):
    def run():
        with Client(stack.address, timeout=120) as client:
            assert client.via_orchestrator()
            events = list(client.remove_objects(image_file, text="dog", min_score=0.0, **FAST))
            again = list(client.remove_objects(image_file, points=[Point(50, 50)], **FAST))
            return events, again

    events, again = await asyncio.to_thread(run)
    assert isinstance(events[0], Progress) and events[0].stage == "segmentation"
    assert sum(isinstance(e, Segmented) for e in events) == 1
    result = events[-1]
    assert isinstance(result, RemoveResult)
    assert result.image.size == (W, H) and result.mask.shape == (H, W)
    assert result.instances and all(i.mask.shape == (H, W) for i in result.instances)
    assert set(result.timings) >= {"segmentation", "object_clear", "total"}
    assert isinstance(again[-1], RemoveResult)


async def test_sync_client_sends_bytes_once(stack, image_file):
    orch = stack.orchestrator.servicer
    seg_images = stack.segmentation.servicer.images
    rng = np.random.default_rng(99)
    img = Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8))

    def run():
        with Client(stack.address) as client:
            client.segment_by_text(img, "cat")
            client.segment_by_text(img, "dog")

    refs = seg_images.received_refs
    cached_before = len(orch._images)
    await asyncio.to_thread(run)
    assert seg_images.received_refs == refs + 1  # the orchestrator forwarded a reference
    assert len(orch._images) >= cached_before  # and it held the client's bytes


async def test_async_client_all_operations(stack, image_file):
    async with AsyncClient(stack.address, timeout=120) as client:
        seg = await client.segment_by_text(image_file, "dog", score_threshold=0.0)
        assert seg.instances and seg.instances[0].mask.shape == (H, W)
        best = await client.segment_by_prompt(image_file, box=(10, 10, 100, 100),
                                              return_alternatives=False)
        assert best.best.mask.shape == (H, W)
        events = [e async for e in client.generate("a red bicycle", width=256, height=256,
                                                   steps=2, seed=3)]
        assert [type(e).__name__ for e in events] == ["Progress", "Progress", "GenerateResult"]
        assert events[-1].image.size == (256, 256)
        mask = np.zeros((H, W), bool)
        mask[20:60, 30:90] = True
        removal = [e async for e in client.remove_objects(image_file, masks=[mask], **FAST)]
        assert removal[-1].image.size == (W, H)


async def test_typed_errors_carry_the_field(stack, image_file):
    async with AsyncClient(stack.address) as client:
        with pytest.raises(InvalidArgumentError) as info:
            await client.segment_by_text(image_file, "")
        assert info.value.field == "text"
        with pytest.raises(InvalidArgumentError) as info:
            [e async for e in client.generate("bike", width=100)]
        assert info.value.field == "width"
        with pytest.raises(ValueError):
            [e async for e in client.remove_objects(image_file)]  # no target: refused locally


async def test_client_resends_bytes_when_server_lost_the_image(stack, image_file):
    async with AsyncClient(addr(stack.segmentation)) as client:
        assert not await client.via_orchestrator()
        await client.segment_by_text(image_file, "dog")
        stack.segmentation.servicer.images._cache._items.clear()  # as after a restart
        misses = stack.segmentation.servicer.images.ref_misses
        result = await client.segment_by_text(image_file, "dog", score_threshold=0.0)
        assert result.width == W
        assert stack.segmentation.servicer.images.ref_misses == misses + 1


async def test_direct_clear_on_object_clear_server(stack, image_file):
    mask = np.zeros((H, W), bool)
    mask[10:40, 10:40] = True
    async with AsyncClient(addr(stack.object_clear)) as client:
        events = [e async for e in client.clear(image_file, [mask], label="thing", **FAST)]
    assert [type(e).__name__ for e in events] == ["Progress", "Progress", "ClearResult"]
    assert events[-1].image.size == (W, H)
    async with AsyncClient(addr(stack.object_clear)) as client:
        with pytest.raises(NotFoundError):  # the orchestrator's RPCs are not here
            await client.health("mic2e.v1.EditService")


async def mic2e(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mic2e.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "100"})
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_segment_remove_generate_health(stack, image_file, tmp_path):
    code, out, err = await mic2e("--server", stack.address, "segment", image_file, "--text",
                                 "dog", "--min-score", "0", "-o", str(tmp_path / "masks"))
    assert code == 0, err
    masks = sorted((tmp_path / "masks").glob("mask_*.png"))
    assert masks and "score" in out and "box" in out
    assert codecs.decode_mask_png(masks[0].read_bytes()).shape == (H, W)

    code, out, err = await mic2e("--server", addr(stack.segmentation), "segment", image_file,
                                 "--point", "40,40", "--point", "5,5,0", "-o",
                                 str(tmp_path / "click"))
    assert code == 0, err
    code, out, err = await mic2e("--server", addr(stack.segmentation), "segment", image_file,
                                 "--box", "10,10,90,90", "-o", str(tmp_path / "box"))
    assert code == 0, err

    code, out, err = await mic2e("--server", addr(stack.object_clear), "remove", image_file,
                                 "--mask", str(masks[0]), "--steps", "2", "-o",
                                 str(tmp_path / "removed.png"))
    assert code == 0, err
    assert Image.open(tmp_path / "removed.png").size == (W, H)
    assert "object_clear" in out  # the progress bar's stage

    code, out, err = await mic2e("--server", stack.address, "remove", image_file, "--text",
                                 "dog", "--min-score", "0", "--steps", "2", "-o",
                                 str(tmp_path / "nodog.png"))
    assert code == 0, err
    assert "segmented" in out and "total" in out

    code, out, err = await mic2e("--server", addr(stack.flux), "generate", "a red bicycle",
                                 "--width", "256", "--height", "256", "--steps", "2", "-o",
                                 str(tmp_path / "gen.png"))
    assert code == 0, err
    assert Image.open(tmp_path / "gen.png").size == (256, 256)
    # Connection options after the command, too (the README says each command takes them).
    code, out, err = await mic2e("generate", "a red bicycle", "--width", "256", "--height",
                                 "256", "--steps", "1", "-o", str(tmp_path / "gen2.png"),
                                 "--server", addr(stack.flux))
    assert code == 0, err
    assert Image.open(tmp_path / "gen2.png").size == (256, 256)

    code, out, err = await mic2e("--server", stack.address, "health")
    # Exit 0 only once every model server behind it is SERVING too (test_cli_newcomer).
    assert code in (0, 1) and "mic2e.v1.EditService           SERVING" in out

    code, out, err = await mic2e("--server", stack.address, "generate", "", "-o",
                                 str(tmp_path / "x.png"))
    assert code == 1 and "INVALID_ARGUMENT" in err and "field prompt" in err


async def test_sync_client_replaces_fills_and_inpaints(stack, image_file):
    mask = np.zeros((H, W), bool)
    mask[30:70, 40:100] = True
    inpaint = {"steps": 2, "seed": 1}

    def run():
        with Client(stack.address, timeout=120) as client:
            replaced = list(client.replace_objects(image_file, "a cat", text="dog",
                                                   min_score=0.0, **inpaint))
            filled = list(client.fill(image_file, (10, 10, 60, 50), "a vase", **inpaint))
            painted = list(client.inpaint(image_file, [mask], "a cat", **inpaint))
            return replaced, filled, painted

    replaced, filled, painted = await asyncio.to_thread(run)
    assert isinstance(replaced[0], Progress) and replaced[0].stage == "segmentation"
    assert sum(isinstance(e, Segmented) for e in replaced) == 1
    result = replaced[-1]
    assert isinstance(result, ReplaceResult)
    assert result.image.size == (W, H) and result.mask.shape == (H, W)
    assert [s.server for s in result.stages] == ["segmentation", "flux"]
    assert set(result.timings) == {"segmentation", "inpainting", "total"}
    assert [type(e).__name__ for e in filled] == ["Progress", "Progress", "ReplaceResult"]
    assert filled[-1].mask[10:50, 10:60].all() and not filled[-1].instances
    assert [type(e).__name__ for e in painted] == ["Progress", "Progress", "InpaintResult"]
    assert (painted[-1].mask >= mask).all()


async def test_async_client_inpaints_on_the_flux_server_itself(stack, image_file):
    mask = np.zeros((H, W), bool)
    mask[5:25, 5:45] = True
    async with AsyncClient(addr(stack.flux), timeout=120) as client:
        assert not await client.via_orchestrator()
        events = [e async for e in client.inpaint(image_file, [mask], "a cat", steps=1,
                                                  seed=0, strength=0.9)]
        assert isinstance(events[-1], InpaintResult)
        assert events[-1].provenance.steps == 1 and events[-1].image.size == (W, H)
        with pytest.raises(InvalidArgumentError) as info:
            async for _ in client.inpaint(image_file, [mask], "a cat", strength=1.5):
                pass
        assert [f for f, _ in info.value.field_violations] == ["options.strength"]


async def test_cli_replace_and_fill(stack, image_file, tmp_path):
    code, out, err = await mic2e("--server", stack.address, "replace", image_file, "--text",
                                 "dog", "--min-score", "0", "--prompt", "a cat", "--steps",
                                 "2", "--seed", "1", "-o", str(tmp_path / "cat.png"))
    assert code == 0, err
    assert "segmented" in out and "inpainting" in out and "repainted" in out
    assert Image.open(tmp_path / "cat.png").size == (W, H)
    code, out, err = await mic2e("fill", image_file, "--box", "10,10,60,50", "--prompt",
                                 "a vase", "--steps", "1", "-o", str(tmp_path / "vase.png"),
                                 "--server", stack.address)
    assert code == 0, err
    assert Image.open(tmp_path / "vase.png").size == (W, H)
    code, out, err = await mic2e("--server", stack.address, "fill", image_file, "--box",
                                 "10,10,60,50", "--prompt", "a vase", "--strength", "0",
                                 "-o", str(tmp_path / "x.png"))
    assert code == 1 and "field inpaint_options.strength" in err
