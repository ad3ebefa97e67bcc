"""The README's demo: the whole stack on tiny checkpoints, five real edits, then stop.

    ./scripts/demo [--out DIR] [--base-port N]

Starts `mic2e-server up` (tiny random checkpoints on CPU), draws a sample picture, then
through the orchestrator: a text removal, a click removal, a replacement ("the ball ->
a sunflower"), a segmentation and a generation. Writes every result to the output
folder, prints per-stage timings, and stops the stack. Tiny random weights draw noise:
the plumbing is real, the pictures are not.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mic2e import Client, codecs
from mic2e.types import Point, Progress, Segmented
from PIL import Image, ImageDraw

from mic2e_services.api import object_clear as oc


def sample_image() -> Image.Image:
    """A 640x480 scene: sky, grass, a red ball with its shadow, a blue box."""
    img = Image.new("RGB", (640, 480), (135, 190, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 300, 640, 480), fill=(80, 160, 70))
    draw.ellipse((230, 372, 370, 402), fill=(50, 100, 45))  # shadow
    draw.ellipse((240, 250, 360, 370), fill=(210, 40, 40))  # ball
    draw.rectangle((450, 220, 560, 330), fill=(40, 70, 200))  # box
    return img


def _timings(t: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items())


class _Steps:
    """Says how a streamed call is getting on, at most every 2 s: on CPU a removal's
    steps take tens of seconds, which must not look like a hang."""

    def __init__(self, name: str, doing: str) -> None:
        self.name, self.t0, self.said = name, time.monotonic(), time.monotonic()
        print(f"{name}: {doing} ...", flush=True)

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        if now - self.said >= 2:
            self.said = now
            print(f"{self.name}: {event.stage} step {event.step}/{event.total_steps} "
                  f"({now - self.t0:.0f} s)", flush=True)


def run_demo(out: Path, address: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    image_path = out / "input.png"
    sample_image().save(image_path)
    print(f"input: {image_path} (640x480)")
    with Client(address, timeout=600) as client:
        # 1. "remove the ball": segmentation + removal in one streamed call. Random
        #    weights score about 0.25, so the demo accepts any score and keeps the best 2.
        for name, kwargs in [
            ("remove_text", {"text": "ball", "min_score": 0.0, "max_instances": 2}),
            ("remove_click", {"points": [Point(300, 310)]}),
        ]:
            t0 = time.monotonic()
            steps = 0
            say = _Steps(name, "segmenting and removing")
            for event in client.remove_objects(image_path, seed=0, **kwargs):
                if isinstance(event, Progress):
                    steps += event.stage == oc.STAGE
                    say(event)
                elif isinstance(event, Segmented):
                    print(f"{name}: segmented {len(event.instances)} instance(s)")
                else:
                    (out / f"{name}.png").write_bytes(codecs.encode_image(event.image))
                    (out / f"{name}_mask.png").write_bytes(codecs.encode_mask_png(event.mask))
                    print(f"{name}: {steps} denoising steps streamed -> {out / name}.png "
                          f"({event.image.width}x{event.image.height}); "
                          f"{_timings(event.timings)}; client saw "
                          f"{(time.monotonic() - t0) * 1000:.0f} ms")
        # 2. "replace the ball with a sunflower": segmentation + FLUX inpainting, one call.
        t0 = time.monotonic()
        say = _Steps("replace_text", "segmenting and inpainting")
        for event in client.replace_objects(image_path, "a sunflower", text="ball",
                                            min_score=0.0, max_instances=1, seed=0):
            if isinstance(event, Progress):
                say(event)
            elif not isinstance(event, Segmented):
                (out / "replace_text.png").write_bytes(codecs.encode_image(event.image))
                print(f"replace_text: {event.stages[-1].steps} inpainting steps -> "
                      f"{out / 'replace_text.png'} ({event.image.width}x{event.image.height}, "
                      f"{int(event.mask.sum())} px repainted); {_timings(event.timings)}; "
                      f"client saw {(time.monotonic() - t0) * 1000:.0f} ms")
        # 3. segmentation alone, by text.
        seg = client.segment_by_text(image_path, "ball", score_threshold=0.0, max_instances=3)
        seg_dir = out / "segment_text"
        seg_dir.mkdir(exist_ok=True)
        for i, inst in enumerate(seg.instances):
            (seg_dir / f"mask_{i:03d}.png").write_bytes(codecs.encode_mask_png(inst.mask))
        print(f"segment_text: {len(seg.instances)} mask(s) in {seg_dir}; "
              f"{_timings(seg.provenance.timings)}")
        # 4. generation.
        say = _Steps("generate", "generating")
        for event in client.generate("a red bicycle", width=512, height=512, seed=0):
            if isinstance(event, Progress):
                say(event)
            else:
                (out / "generate.png").write_bytes(event.data)
                print(f"generate: {out / 'generate.png'} (512x512, {event.provenance.steps} "
                      f"steps); {_timings(event.provenance.timings)}")
    print(f"\ndone: results in {out}/")
    print("These are TINY RANDOM models: the pictures are noise. For real weights start the "
          "servers with e.g. `mic2e-server up --model-segmentation facebook/sam3 "
          "--device-segmentation cuda:0 ...` (see the README).")


def _echo(stack: subprocess.Popen, ready: threading.Event) -> None:
    """`up`'s lines, as they come, to this terminal; `ready` once it says so."""
    assert stack.stdout is not None
    for line in stack.stdout:
        print(line, end="", flush=True)
        if line.startswith("ready "):
            ready.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--base-port", type=int, default=50051)
    parser.add_argument("--tiny-dir", type=Path, default=Path(".tiny"))
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    stack = subprocess.Popen([sys.executable, "-m", "mic2e_services.cli", "up", "--tiny-dir",
                              str(args.tiny_dir), "--base-port", str(args.base_port),
                              # The stack stops when the demo ends: no page to point at.
                              "--http-port", "-1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
    ready = threading.Event()
    echo = threading.Thread(target=_echo, args=(stack, ready), daemon=True)
    echo.start()
    try:
        # The demo begins where a newcomer would: once `up` has said "ready" (it has
        # reported every server SERVING, and the orchestrator reaches all three).
        until = time.monotonic() + 600
        while not ready.wait(0.2):
            if stack.poll() is not None:
                echo.join(5)
                raise SystemExit(f"demo: `mic2e-server up` exited with code "
                                 f"{stack.returncode} before it was ready (its output is above)")
            if time.monotonic() > until:
                raise SystemExit("demo: `mic2e-server up` was not ready after 600 s")
        run_demo(args.out, f"127.0.0.1:{args.base_port}")
        return 0
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(60)
        except subprocess.TimeoutExpired:
            stack.kill()


if __name__ == "__main__":
    sys.exit(main())
