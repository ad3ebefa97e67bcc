"""A newcomer's first hour with the `mic2e` CLI against the live tiny stack: the wrong
server for a command, nothing found, a refused field, health of every service, the
pictures it writes, and Ctrl-C during a removal. Each mistake is one line on stderr with
its documented exit code, never a traceback.

The CLI runs in this process (`cli.main` on a thread, the stack on the event loop) but
for Ctrl-C, which needs a process of its own to interrupt."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

import numpy as np
import pytest
from mic2e import codecs
from mic2e_services.runtime.worker import WorkerCallback
from PIL import Image

from tests.unit.test_cli import one_line, run

pytestmark = pytest.mark.asyncio(loop_scope="package")

W, H = 96, 64
MODEL_SERVICES = ["mic2e.v1.SegmentationService", "mic2e.v1.ObjectClearService",
                  "mic2e.v1.FluxService"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("newcomer")
    rng = np.random.default_rng(11)
    photo = rng.integers(0, 255, (H, W, 3), np.uint8)
    Image.fromarray(photo).save(folder / "photo.png")
    mask = np.zeros((H, W), bool)
    mask[10:40, 20:60] = True
    (folder / "mask.png").write_bytes(codecs.encode_mask_png(mask))
    return {"photo": str(folder / "photo.png"), "pixels": photo,
            "mask": str(folder / "mask.png"), "mask_array": mask}


async def mic2e(capsys, *argv: str) -> tuple[int, str, str]:
    """`mic2e argv` in this process, off the event loop the stack runs on."""
    return await asyncio.to_thread(run, list(argv), capsys)


async def test_the_wrong_server_for_a_command_is_named_with_the_command_that_fits(
        stack, files, tmp_path, capsys):
    segmentation = stack.model_address(stack.segmentation)
    code, _, err = await mic2e(capsys, "--server", segmentation, "remove", files["photo"],
                               "--text", "dog", "-o", str(tmp_path / "out.png"))
    assert code == 1
    assert one_line(err) == (
        f"mic2e: {segmentation} is a segmentation server (mic2e.v1.SegmentationService), "
        f"which cannot do `mic2e remove`: pass the orchestrator's address with --server "
        f"(default localhost:50051), or use `mic2e segment` here")
    flux = stack.model_address(stack.flux)
    code, _, err = await mic2e(capsys, "--server", flux, "segment", files["photo"], "--box",
                               "1,1,30,30", "-o", str(tmp_path / "masks"))
    assert code == 1
    assert f"{flux} is a flux server" in one_line(err) and "`mic2e generate`" in err


@pytest.mark.parametrize("command", ["segment", "remove", "replace"])
async def test_nothing_found_is_exit_3_and_points_to_min_score(stack, files, tmp_path, capsys,
                                                               command):
    extra = {"segment": ["-o", str(tmp_path / "masks")],
             "remove": ["-o", str(tmp_path / "out.png")],
             "replace": ["--prompt", "a cat", "-o", str(tmp_path / "out.png")]}[command]
    # No instance of the tiny model scores 1 (its scores are near 0.25-0.5).
    code, _, err = await mic2e(capsys, "--server", stack.address, command, files["photo"],
                               "--text", "dog", "--min-score", "1", *extra)
    assert code == 3
    assert one_line(err) == ("mic2e: no instance of 'dog' found: try a --min-score below 1, "
                             "or another word")
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "masks").exists()


async def test_a_refused_field_is_named_by_its_flag(stack, files, tmp_path, capsys):
    code, _, err = await mic2e(capsys, "--server", stack.address, "remove", files["photo"],
                               "--point", "500,5", "-o", str(tmp_path / "out.png"))
    assert code == 1
    assert one_line(err).startswith("mic2e: --point 500,5: (500.0, 5.0) is outside the 96x64 "
                                    "image (INVALID_ARGUMENT, field prompt.points[0]")


async def test_health_lists_every_service_behind_the_orchestrator(stack, capsys):
    code, out, err = await mic2e(capsys, "--server", stack.address, "health")
    assert err == ""
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.strip().splitlines()}
    assert list(lines) == ["(server)", "mic2e.v1.EditService", *MODEL_SERVICES]
    assert lines["mic2e.v1.EditService"] == "SERVING"
    for service in MODEL_SERVICES:
        # Until the orchestrator reports its model servers, it answers NOT_FOUND for them.
        assert lines[service] in ("SERVING", "NOT_SERVING",
                                  "unknown (this orchestrator does not report it)")
    assert code == (0 if all(status == "SERVING" for status in lines.values()) else 1)
    # A model server lists itself only.
    code, out, _ = await mic2e(capsys, "--server", stack.model_address(stack.flux), "health")
    assert code == 0
    assert out.split() == ["(server)", "SERVING", "mic2e.v1.FluxService", "SERVING"]


async def test_segment_writes_an_overlay_beside_the_masks(stack, files, tmp_path, capsys):
    folder = tmp_path / "masks"
    folder.mkdir()
    (folder / "mask_099.png").write_bytes(b"an earlier run's")
    code, out, err = await mic2e(capsys, "--server", stack.address, "segment", files["photo"],
                                 "--text", "dog", "--min-score", "0", "-o", str(folder))
    assert code == 0, err
    masks = sorted(folder.glob("mask_*.png"))
    assert masks and folder / "mask_099.png" not in masks
    assert f"see them over the photo in {folder / 'overlay.jpg'}" in out
    with Image.open(folder / "overlay.jpg") as overlay:
        assert overlay.format == "JPEG" and overlay.size == (W, H)
        assert not np.array_equal(np.asarray(overlay), files["pixels"])


async def test_remove_keeps_its_mask_and_a_before_after(stack, files, tmp_path, capsys):
    out_file, mask_file, pair = tmp_path / "out.png", tmp_path / "used.png", tmp_path / "ba.png"
    out_file.write_bytes(b"yesterday's")  # -o overwrites, as users expect
    code, out, err = await mic2e(capsys, "--server", stack.address, "remove", files["photo"],
                                 "--mask", files["mask"], "--steps", "1", "--seed", "0", "-o",
                                 str(out_file), "--mask-out", str(mask_file), "--compare",
                                 str(pair))
    assert code == 0, err
    # The slow part after the last step is said, on stderr, as it happens.
    assert err.splitlines() == ["finishing the picture ...", f"writing {out_file} ...",
                                f"writing {pair} ..."]
    assert f"wrote the mask to {mask_file}" in out and f"wrote {pair} (before | after)" in out
    with Image.open(out_file) as result:
        assert result.size == (W, H)
        after = np.asarray(result.convert("RGB"))
    assert np.array_equal(codecs.decode_mask_png(mask_file.read_bytes()), files["mask_array"])
    with Image.open(pair) as both:
        pixels = np.asarray(both.convert("RGB"))
    assert pixels.shape[0] == H and pixels.shape[1] > 2 * W
    assert np.array_equal(pixels[:, :W], files["pixels"])  # before
    assert np.array_equal(pixels[:, -W:], after)  # after


#: `python -m mic2e.cli`, with SIGINT as a terminal leaves it: a test run started in the
#: background (`cmd &` in a script, nohup) ignores SIGINT, and an ignored or blocked
#: signal stays so in every child, so the CLI would never see the Ctrl-C.
AS_A_TERMINAL_STARTS_IT = (
    "import runpy, signal; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('mic2e.cli', run_name='__main__', alter_sys=True)")


class _HoldFirstStep(WorkerCallback):
    """Holds the device thread in the first denoising step until released, so a signal
    lands while the removal surely runs; records the job when it ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stepped, self.release = threading.Event(), threading.Event()
        self.steps = 0
        self.ended: asyncio.Future = loop.create_future()

    def on_step(self, worker, seconds: float) -> None:
        self.steps += 1
        self.stepped.set()
        self.release.wait(120)

    def on_job_end(self, worker, job) -> None:
        if not self.ended.done():
            self.ended.set_result(job)


async def test_ctrl_c_during_a_removal_is_one_line_exit_130_and_stops_the_server(
        stack, files, tmp_path):
    worker = stack.object_clear.worker
    hold = _HoldFirstStep(asyncio.get_running_loop())
    worker.add_callback(hold)
    try:
        proc = await asyncio.create_subprocess_exec(
            # faulthandler: should it not exit, SIGABRT shows where it waits.
            sys.executable, "-X", "faulthandler", "-c", AS_A_TERMINAL_STARTS_IT, "--server",
            stack.address, "remove", files["photo"], "--mask", files["mask"], "--steps", "100",
            "-o",
            str(tmp_path / "out.png"), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "100"})
        assert await asyncio.to_thread(hold.stepped.wait, 120), "the removal never started"
        proc.send_signal(signal.SIGINT)
        exited = asyncio.ensure_future(proc.communicate())
        # The step stays held while the CLI exits; should a loaded machine make the exit
        # wait on the server, the step is let go after a while rather than never.
        await asyncio.wait({exited}, timeout=20)
        hold.release.set()
        done, _ = await asyncio.wait({exited}, timeout=60)
        if not done:
            alive = proc.returncode is None
            try:
                proc.send_signal(signal.SIGABRT)
            except ProcessLookupError:
                pass
            out, err = await asyncio.wait_for(exited, 30)
            raise AssertionError(f"no exit 80 s after SIGINT (alive: {alive}): "
                                 f"{err.decode()[-6000:]}")
        out, err = exited.result()
    finally:
        hold.release.set()
    try:
        job = await asyncio.wait_for(hold.ended, 120)
    finally:
        worker.callbacks.remove(hold)
    assert proc.returncode == 130
    assert one_line(err.decode()) == "mic2e: cancelled"
    assert "Traceback" not in out.decode()
    assert not (tmp_path / "out.png").exists()
    assert job.cancelled() and hold.steps < 100  # the server stopped the work, too
