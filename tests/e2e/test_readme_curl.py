"""The README's curl calls, run as written against `mic2e-server up` (its HTTP port).

Each `sh` block marked `<!-- README test: NAME -->` in README.md runs in bash, in a folder
holding `photo.jpg`, with only the port changed (the README says 8080; the test takes a
free one). Before them, `up` has reported each server as it became SERVING, said "ready",
and `mic2e remove` run at once has succeeded the first time. Then
`up` must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_up import free_block

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- README test: (\w+) -->\n```sh\n(.*?)```", re.S)


def readme_blocks() -> dict[str, str]:
    return dict(BLOCK.findall(README.read_text()))


def test_the_readme_has_the_calls():
    assert set(readme_blocks()) == {"segment", "remove"}
    for block in readme_blocks().values():
        assert "localhost:8080" in block and "curl" in block


def small_photo(folder: Path) -> Path:
    """A 96x64 photo to remove something from."""
    rng = np.random.default_rng(0)
    path = folder / "small.png"
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def up_stack(tiny_sam3, tiny_objectclear, tiny_flux):
    """`mic2e-server up` on free ports (the tiny checkpoints already written); checks what
    it says while starting and that a call right after "ready" succeeds; yields its HTTP
    port, stops it with SIGTERM and checks that it exits 0."""
    http_port, base = free_block(1), free_block()
    log = (tiny_sam3.parent / "up.log").open("w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mic2e_services.cli", "up", "--tiny-dir", str(tiny_sam3.parent),
         "--base-port", str(base), "--metrics-base-port", str(free_block()),
         "--http-port", str(http_port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        until = time.monotonic() + 300
        while not re.search(rb"^ready ", Path(log.name).read_bytes(), re.M):
            assert proc.poll() is None, Path(log.name).read_text(errors="replace")
            assert time.monotonic() < until, "`up` did not come up in 300 s"
            time.sleep(0.2)
        # At once, the first time: the orchestrator is SERVING only once it reaches every
        # model server, so no channel behind it is still connecting.
        # The README's next step, as a newcomer takes it: `mic2e remove` at once.
        removed = subprocess.run(
            [sys.executable, "-m", "mic2e.cli", "--server", f"127.0.0.1:{base}", "remove",
             str(small_photo(tiny_sam3.parent)), "--box", "20,10,60,40", "--steps", "1",
             "-o", str(tiny_sam3.parent / "removed.png")],
            capture_output=True, text=True, timeout=120)
        assert removed.returncode == 0, (removed.stdout, removed.stderr)
        assert Image.open(tiny_sam3.parent / "removed.png").size == (96, 64)
        printed = Path(log.name).read_text(errors="replace")
        assert f"http://127.0.0.1:{http_port}/" in printed, printed  # `up` prints its URL
        # Each server as it became SERVING, then "ready" with the addresses.
        serving = re.findall(r"^ *([\w-]+): SERVING on (\S+) \(", printed, re.M)
        assert sorted(serving) == sorted([
            ("orchestrator", f"127.0.0.1:{base}"), ("segmentation", f"127.0.0.1:{base + 1}"),
            ("object-clear", f"127.0.0.1:{base + 2}"), ("flux", f"127.0.0.1:{base + 3}")])
        ready = re.search(r"^ready .*$", printed, re.M).group(0)
        assert f"orchestrator 127.0.0.1:{base}" in ready and f"flux 127.0.0.1:{base + 3}" \
            in ready, ready
        assert printed.index(": SERVING on ") < printed.index(ready)
        yield http_port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        log.close()


def run_block(name: str, port: int, folder: Path) -> str:
    script = readme_blocks()[name].replace("localhost:8080", f"localhost:{port}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Where the README's commands run: a 320x240 `photo.jpg`."""
    path = tmp_path_factory.mktemp("readme")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), np.uint8)).save(path / "photo.jpg",
                                                                      quality=90)
    return path


def test_readme_segment_by_text_with_curl(up_stack, folder):
    out = run_block("segment", up_stack, folder)
    assert '"imageWidth": 320' in out and '"imageHeight": 240' in out, out


def test_readme_streamed_removal_with_curl(up_stack, folder):
    lines = [line.strip() for line in run_block("remove", up_stack, folder).splitlines()]
    # Every event, in order: the segmentation's progress and masks, one progress line per
    # denoising step, then the result.
    assert lines[0] == '"progress": {', lines
    assert '"segmentation": {' in lines
    steps = [line for line in lines if line.startswith('"step"')]
    assert steps[-4:] == [f'"step": {i},' for i in range(1, 5)], lines
    assert lines[-1] == '"result": {', lines
