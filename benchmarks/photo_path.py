"""The path around the model: CPU and bytes of an edit of a phone photo, outside the model.

RemoveObjects, ReplaceObjects and SegmentByText through the stack (tiny models, each
server its own process) on detailed JPEG photos of 0.3, 1, 12 and 24 MP with a
rectangular mask of 4 % of the area, off-centre. Per request:

* the CPU each process spends (client: this process, `time.process_time`; each server:
  its process CPU clock, `clock_gettime` on the pid's CPU-time clock, before and after
  the call and a short settle), less the model's own CPU in the server that ran it -
  what is left is decode, hashing, resizing, fusion and compositing, encoding and
  transfer. The servers run with OMP_NUM_THREADS=1, so torch computes on the worker's
  thread alone: the model's CPU is at most that thread's (the busiest thread's) and at
  most the model stage's wall time (`stages[-1].timings`), less the stage's own
  "prepare" and "composite" (`model_cpu_s`);
* the bytes on each hop, counted on the wire by a byte-counting TCP proxy (its own
  process) in front of every server: client <-> orchestrator <-> model server, request
  and response direction apart.

Removal paths: `new` (strategy resize, the client asks for a patch and applies it to its
input), `crop` (strategy crop, a patch), `today` (strategy reference, the whole picture,
image_patches=False), and with `--old-code REV` the code of commit REV itself (its own
orchestrator and object-clear processes, from `git archive`), which is today's path
measured rather than derived. `today` is run on today's servers, which encode PNG at zlib
level 1: the old encoder (Pillow's default, level 6) is accounted for in the same run by
encoding the returned whole picture at level 6 and at level 1 here and adding the CPU
difference; its bytes are that level-6 PNG on each of the two result hops. The floor is
one JPEG decode of the input plus one PNG level-1 encode of the edited region (the
repainted box of the new path's result), measured here right after each removal on
the new path (under the same load as it), median.

    uv run python -m benchmarks.photo_path                       # tiny stack, 4 sizes
    uv run python -m benchmarks.photo_path --old-code e2e69b4 --record
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import math
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO,
    add_output_args,
    fmt_x,
    quiet_env,
    ratio,
    stack_main,
    table,
)
from benchmarks._stack import ORCHESTRATOR, add_stack_args, given_addresses

NAME = "photo_path"
MODEL_SERVERS = ("segmentation", "object-clear", "flux")
#: The photo sizes, by megapixels: 4:3 like a phone's.
SIZES = {"0.3": (640, 480), "1": (1152, 864), "12": (4032, 3024), "24": (5664, 4248)}
#: The mask: 20 % x 20 % of the picture (4 % of the area), right of and above the centre.
MASK_BOX = (0.55, 0.22, 0.75, 0.42)
REMOVE_PATHS = ("new", "crop", "today")
#: More removal paths on request: the new path with the fusion on (tiny random weights
#: attend everywhere, so its repainted region is the whole picture).
EXTRA_PATHS = ("new+fusion",)
STRATEGIES = {"new": "resize", "new+fusion": "resize", "crop": "crop", "today": "reference"}
#: Tiny-model settings: the model's work is then the same at every photo size (ObjectClear
#: at a 256 px short side), so what changes with the size is the path around it.
TINY_STEPS, TINY_SHORT_SIDE, TINY_FLUX_STEPS = 2, 256, 2
#: Timings around the model in a server's provenance; the rest is the model's stage.
AROUND = ("queue", "decode", "hash", "prepare", "composite", "encode", "total")
#: Parts of the model stage that are not the model (the stage contains them).
INSIDE_STAGE = ("prepare", "composite")
#: The old encoder (Pillow's default zlib level) and today's.
OLD_PNG_LEVEL, PNG_LEVEL = 6, 1


# -- the photos -----------------------------------------------------------------------------
def photo(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A detailed photo-like JPEG: fine detail everywhere, as a phone's (a bicubic-upscaled
    random colour field, fine sine textures and seeded sensor-like noise), quality 90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(cells).resize((width, height),
                                                      Image.Resampling.BICUBIC), np.float32)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    texture = (14 * np.sin(x / 3.1 + 2 * np.sin(y / 23)) * np.sin(y / 4.3)
               + 9 * np.sin((x + 0.5 * y) / 7.7) + 6 * np.cos((x - y) / 2.3))
    pixels += texture[..., None]
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 5
    np.clip(pixels, 0, 255, out=pixels)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def fresh(jpeg: bytes, n: int) -> bytes:
    """The same picture as new bytes (a JPEG comment after SOI): no server can serve it
    from a cache of an earlier request's image, and its decode costs the same."""
    assert jpeg[:2] == b"\xff\xd8"
    text = f"mic2e-bench photo_path request {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def photo_mask(width: int, height: int, box: Sequence[float] = MASK_BOX):
    """A bool (height, width) mask of the relative `box` (x0, y0, x1, y1)."""
    import numpy as np

    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    mask[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = True
    return mask


def size_of(key: str) -> tuple[int, int]:
    if key in SIZES:
        return SIZES[key]
    w, _, h = key.lower().partition("x")
    return int(w), int(h or w)


# -- CPU clocks -------------------------------------------------------------------------------
def process_cpu_s(pid: int) -> float | None:
    """A process's CPU time (all its threads, dead ones included), from its CPU-time clock
    (nanosecond resolution); /proc/<pid>/stat ticks where that clock cannot be read."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, SCHED)
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of `pid` (/proc/<pid>/task/*/schedstat)."""
    out: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                    out[int(tid)] = int(f.read().split()[0]) / 1e9
    return out


# -- bytes on the wire: a counting TCP proxy in its own process ------------------------------
def _proxy_main(routes: list[tuple[int, int]], counters: Any, ready: Any) -> None:
    """Forward 127.0.0.1:listen -> 127.0.0.1:target for each route, counting the bytes of
    each direction (counters[2i]: towards the server, counters[2i+1]: back)."""
    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: int
                   ) -> None:
        try:
            while data := await reader.read(1 << 20):
                counters[slot] += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def main() -> None:
        servers = []
        for i, (listen, target) in enumerate(routes):
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             i: int = i, target: int = target) -> None:
                try:
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
                except OSError:
                    writer.close()
                    return
                await asyncio.gather(pump(reader, up_writer, 2 * i),
                                     pump(up_reader, writer, 2 * i + 1))
            servers.append(await asyncio.start_server(handle, "127.0.0.1", listen))
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


class WireCounter:
    """Byte-counting proxies, one per hop, in a child process (its CPU counts nowhere)."""

    def __init__(self, hops: dict[str, int]) -> None:
        """`hops`: hop name ("orchestrator->object-clear") -> the server's port."""
        import multiprocessing

        from benchmarks._stack import free_port

        ctx = multiprocessing.get_context("spawn")
        self.names = list(hops)
        self.ports = {name: free_port() for name in self.names}
        self._counters = ctx.RawArray("q", 2 * len(self.names))
        ready = ctx.Event()
        self._proc = ctx.Process(target=_proxy_main, daemon=True, args=(
            [(self.ports[n], hops[n]) for n in self.names], self._counters, ready))
        self._proc.start()
        if not ready.wait(60):
            raise RuntimeError("the byte-counting proxy did not start")

    def address(self, hop: str) -> str:
        return f"127.0.0.1:{self.ports[hop]}"

    def read(self) -> dict[str, tuple[int, int]]:
        """hop -> (bytes towards the server, bytes back), since the start."""
        return {n: (self._counters[2 * i], self._counters[2 * i + 1])
                for i, n in enumerate(self.names)}

    def close(self) -> None:
        self._proc.kill()
        self._proc.join(10)


# -- the stack ----------------------------------------------------------------------------------
@dataclass
class Stack:
    """Where the calls go, which processes to watch, and the proxies counting bytes."""

    label: str
    client_address: str
    old_address: str | None = None
    pids: dict[str, int] = field(default_factory=dict)
    wire: WireCounter | None = None
    #: hop names of the current stack and of the old one ("old " + name).
    hops: tuple[str, ...] = ()


def _old_tree(rev: str, into: Path) -> str:
    """Commit `rev`'s client and server source, unpacked into `into`; its full hash."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "client/src",
                              "services/src"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


@contextlib.contextmanager
def local_stack(args: argparse.Namespace) -> Iterator[Stack]:
    """The tiny stack as child processes (the one launcher, `mic2e_services.stack`), each
    server behind a byte-counting proxy; with --old-code, that commit's orchestrator and
    object-clear server too."""
    import shutil

    from mic2e_services import stack

    from benchmarks._stack import free_port, tiny_checkpoints

    work = Path(tempfile.mkdtemp(prefix="mic2e-bench-photo-"))
    env = {**quiet_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = set(ops) - set(OP_SERVERS)
    if unknown:
        raise SystemExit(f"unknown op(s) {sorted(unknown)}; choose from {tuple(OP_SERVERS)}")
    needed = [m for m in MODEL_SERVERS if m in {OP_SERVERS[o] for o in ops}]
    with tiny_checkpoints(args.tiny_dir, needed) as root, contextlib.ExitStack() as es:
        from mic2e_dev.tiny import TINY_FOLDERS

        es.callback(shutil.rmtree, work, ignore_errors=True)
        ports = {name: free_port() for name in (*MODEL_SERVERS, ORCHESTRATOR)}
        hop_ports = {f"client->{ORCHESTRATOR}": ports[ORCHESTRATOR],
                     **{f"{ORCHESTRATOR}->{m}": ports[m] for m in needed}}
        old_ports: dict[str, int] = {}
        if args.old_code:
            old_ports = {name: free_port() for name in ("object-clear", ORCHESTRATOR)}
            hop_ports.update({f"old client->{ORCHESTRATOR}": old_ports[ORCHESTRATOR],
                              f"old {ORCHESTRATOR}->object-clear": old_ports["object-clear"]})
        wire = WireCounter(hop_ports)
        es.callback(wire.close)
        extra = ["--grace-period-s", "5"]
        commands = {m: stack.command(m, ports[m], model=str(root / TINY_FOLDERS[m]),
                                     device="cpu", extra=extra) for m in needed}
        # (A server no op needs is not started: its address leads nowhere.)
        downstream = {m: wire.address(f"{ORCHESTRATOR}->{m}") if m in needed
                      else f"127.0.0.1:{ports[m]}" for m in MODEL_SERVERS}
        commands[ORCHESTRATOR] = stack.command(ORCHESTRATOR, ports[ORCHESTRATOR], extra=extra,
                                               addresses=downstream)
        addresses = {n: f"127.0.0.1:{ports[n]}" for n in commands}
        logs = {n: work / f"{n}.log" for n in commands}
        # Ready once the orchestrator reaches the model servers (through the proxies), not
        # merely once it listens: the first measured calls must not meet a reconnect.
        procs = es.enter_context(stack.processes(
            commands, addresses, env=env, logs=logs, ready_timeout_s=900,
            ready_services={ORCHESTRATOR: stack.orchestrator_ready(needed)}))
        pids = {n: p.pid for n, p in procs.items()}
        label = (f"tiny checkpoints on CPU, one process per server ({', '.join(needed)}, "
                 "orchestrator; OMP_NUM_THREADS=1), byte-counting proxies on every hop")
        old_address = None
        if args.old_code:
            (work / "old").mkdir()
            commit = _old_tree(args.old_code, work / "old")
            old_env = {**env, "PYTHONPATH": os.pathsep.join(
                [str(work / "old" / "client" / "src"), str(work / "old" / "services" / "src")])}
            old_commands = {
                "object-clear": stack.command("object-clear", old_ports["object-clear"],
                                              model=str(root / TINY_FOLDERS["object-clear"]),
                                              device="cpu", extra=extra),
                ORCHESTRATOR: stack.command(
                    ORCHESTRATOR, old_ports[ORCHESTRATOR], extra=extra,
                    addresses={**downstream,
                               "object-clear": wire.address(f"old {ORCHESTRATOR}->object-clear")})}
            old_procs = es.enter_context(stack.processes(
                old_commands, {n: f"127.0.0.1:{p}" for n, p in old_ports.items()}, env=old_env,
                logs={n: work / f"old-{n}.log" for n in old_commands}, ready_timeout_s=900))
            pids.update({f"old {n}": p.pid for n, p in old_procs.items()})
            old_address = wire.address(f"old client->{ORCHESTRATOR}")
            label += f"; old code: commit {commit[:12]} (orchestrator, object-clear)"
        yield Stack(label, wire.address(f"client->{ORCHESTRATOR}"), old_address, pids, wire,
                    tuple(hop_ports))


# -- one measured request ----------------------------------------------------------------------
def _box(value: Any) -> list[int] | None:
    """A repainted box (a tuple or a message-like object) as [x0, y0, x1, y1]."""
    if value is None:
        return None
    if hasattr(value, "x0"):
        return [int(value.x0), int(value.y0), int(value.x1), int(value.y1)]
    return [int(v) for v in value]


def model_stage(timings: dict[str, float]) -> str | None:
    """The name of the server's model stage: the timing that is not around the model."""
    return next((k for k in timings if k not in AROUND), None)


def model_cpu_s(timings: dict[str, float], busiest_thread_s: float | None
                ) -> tuple[float | None, list[str], list[str]]:
    """The model's own CPU seconds in one request, the stage's parts taken out of it, and
    the parts that could not be (they cover the stage: the model must be inside them).

    With OMP_NUM_THREADS=1 the model runs on the worker's thread alone, so its CPU is at
    most that thread's (the busiest thread's) and at most the stage's wall time; the
    parts of the stage around the model ("prepare", "composite") are taken out at their
    wall time (an upper bound of their CPU, so the CPU outside the model is never
    understated)."""
    stage = model_stage(timings)
    if stage is None or busiest_thread_s is None:
        return None, [], []
    stage_s = timings[stage]
    parts = [k for k in INSIDE_STAGE if k in timings]
    split = [k for k in parts if timings[k] < 0.9 * stage_s]
    unsplit = [k for k in parts if k not in split]
    cpu = min(busiest_thread_s, stage_s) - sum(timings[k] for k in split)
    return max(0.0, cpu), split, unsplit


class Meter:
    """Before / after snapshots of every watched process's CPU and of the wire."""

    def __init__(self, stack: Stack, settle_s: float) -> None:
        self.stack = stack
        self.settle_s = settle_s

    def snapshot(self) -> dict[str, Any]:
        pids = self.stack.pids
        return {"cpu": {n: process_cpu_s(p) for n, p in pids.items()},
                "threads": {n: thread_cpu_s(p) for n, p in pids.items()},
                "wire": self.stack.wire.read() if self.stack.wire else {}}

    async def measure(self, call, processes: Sequence[str], hops: Sequence[str]
                      ) -> dict[str, Any]:
        """Run `call()` (a coroutine function returning (result, facts)); the CPU of this
        process and of each of `processes`, and the bytes on each of `hops`."""
        before = self.snapshot()
        cpu0, t0 = time.process_time(), time.perf_counter()
        facts = await call()
        wall, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await asyncio.sleep(self.settle_s)  # servers' tail work (e.g. memory given back)
        after = self.snapshot()
        cpu = {"client": client_cpu}
        busiest = {}
        for name in processes:
            a, b = before["cpu"].get(name), after["cpu"].get(name)
            cpu[name] = None if a is None or b is None else b - a
            threads = [t1 - before["threads"][name].get(tid, 0.0)
                       for tid, t1 in after["threads"].get(name, {}).items()]
            busiest[name] = max(threads) if threads else None
        wire = {}
        for hop in hops:
            if hop in after["wire"]:
                (up0, down0), (up1, down1) = before["wire"][hop], after["wire"][hop]
                wire[hop] = {"request": up1 - up0, "response": down1 - down0}
        return {"wall_s": wall, "cpu_s": cpu, "busiest_thread_cpu_s": busiest, "wire": wire,
                **facts}


# -- the calls -----------------------------------------------------------------------------------
def _result_facts(event: Any) -> dict[str, Any]:
    """What a RemoveResult / ReplaceResult says about its payload and the model's time."""
    patch = getattr(event, "patch", None)
    data = getattr(event, "data", None)
    stage_timings = dict(event.stages[-1].timings) if event.stages else {}
    return {"payload": "patch" if patch is not None else "image",
            "payload_bytes": len(patch.data) if patch is not None else len(data or b""),
            "patch_xy": [patch.x, patch.y] if patch is not None else None,
            "repainted_box": _box(getattr(event, "repainted_box", None)),
            "server_timings_s": stage_timings, "orchestrator_timings_s": dict(event.timings)}


class Calls:
    """The measured calls, through the mic2e Python client."""

    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        from mic2e import AsyncClient

        kw = {"token": args.token} if args.token else {}
        self.patches = AsyncClient(stack.client_address, image_patches=True, **kw)
        self.whole = AsyncClient(stack.client_address, image_patches=False, **kw)
        self.old = (AsyncClient(stack.old_address, image_patches=False, **kw)
                    if stack.old_address else None)
        self.args = args
        self.last_images: dict[str, Any] = {}  # path -> the last whole picture received
        self.last_patches: dict[str, bytes] = {}  # path -> the last patch's bytes

    async def close(self) -> None:
        for c in (self.patches, self.whole, self.old):
            if c is not None:
                await c.close()

    async def remove(self, path: str, data: bytes, mask: Any) -> dict[str, Any]:
        client = {"today": self.whole, "old": self.old}.get(path, self.patches)
        options = {"steps": self.args.steps, "short_side": self.args.short_side, "seed": 0,
                   "fusion": self.args.fusion or path == "new+fusion"}
        if path != "old":  # (the old code knows no strategy; it ignores unknown fields)
            options["strategy"] = STRATEGIES[path]
        result = None
        async for event in client.remove_objects(data, masks=[mask], **options):
            result = event
        facts = _result_facts(result)
        self.last_images[path] = result.image  # the whole picture (a patch applied)
        if getattr(result, "patch", None) is not None:
            self.last_patches[path] = result.patch.data
        return facts

    async def replace(self, path: str, data: bytes, mask: Any) -> dict[str, Any]:
        client = self.patches if path == "new" else self.whole
        result = None
        async for event in client.replace_objects(data, "a red ball", masks=[mask],
                                                  steps=self.args.flux_steps, seed=0):
            result = event
        return _result_facts(result)

    async def segment(self, path: str, data: bytes, mask: Any) -> dict[str, Any]:
        seg = await self.whole.segment_by_text(data, self.args.text, score_threshold=0.0,
                                               max_instances=self.args.max_instances)
        return {"payload": "masks", "payload_bytes": None, "instances": len(seg.instances),
                "server_timings_s": dict(seg.provenance.timings)}


#: The model server each op needs.
OP_SERVERS = {"remove": "object-clear", "replace": "flux", "segment": "segmentation"}


def _ops(args: argparse.Namespace, old: bool) -> dict[str, dict[str, Any]]:
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - set(STRATEGIES)
    if unknown:
        raise SystemExit(f"unknown removal path(s) {sorted(unknown)}; choose from "
                         f"{tuple(STRATEGIES)} (--old-code adds 'old')")
    return {
        "remove": {"paths": [*paths, *(["old"] if old else [])], "server": "object-clear"},
        "replace": {"paths": ["new", "whole"], "server": "flux"},
        "segment": {"paths": ["text"], "server": "segmentation"},
    }


def _processes(stack: Stack, path: str) -> list[str]:
    if path == "old":
        return [f"old {ORCHESTRATOR}", "old object-clear"]
    return [n for n in (ORCHESTRATOR, *MODEL_SERVERS) if n in stack.pids]


def _hops(stack: Stack, path: str) -> list[str]:
    if path == "old":
        return [h for h in stack.hops if h.startswith("old ")]
    return [h for h in stack.hops if not h.startswith("old ")]


# -- the measurement -----------------------------------------------------------------------------
def _cpu_s(fn, repeats: int) -> float:
    """Median CPU seconds of `fn()` in this process."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def png(img: Any, level: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def _median(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else None


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _summarise(samples: list[dict[str, Any]], server: str, model_override_s: float | None
               ) -> dict[str, Any]:
    """Medians over a path's requests: CPU per process (outside the model: less the
    model's time in `server`), bytes per hop, the server's timings."""
    outside_rows: list[dict[str, float | None]] = []
    unsplit: set[str] = set()
    for s in samples:
        busiest = s["busiest_thread_cpu_s"]
        thread_s = busiest.get(server, busiest.get(f"old {server}"))
        s["model_cpu_s"], _, parts = model_cpu_s(s.get("server_timings_s", {}), thread_s)
        unsplit.update(parts)
        model_s = model_override_s if model_override_s is not None else s["model_cpu_s"]
        if model_override_s is not None and thread_s is not None:
            # Another request's figure: this request's model ran on one thread, so its
            # model CPU is at most that thread's CPU here (on a noisy machine the other
            # request's can be larger, and the difference would go below zero).
            model_s = min(model_s, thread_s)
        row: dict[str, float | None] = {}
        for name, cpu in s["cpu_s"].items():
            runs_model = name == server or name == f"old {server}"
            row[name] = (None if cpu is None else
                         cpu - (model_s or 0.0) if runs_model else cpu)
        row["total"] = (None if any(v is None for v in row.values())
                        else sum(v for v in row.values() if v is not None))
        outside_rows.append(row)
        s["cpu_outside_model_s"] = row
    names = list(outside_rows[0]) if outside_rows else []
    hops = list(samples[0]["wire"]) if samples else []
    out: dict[str, Any] = {
        "n": len(samples),
        "cpu_outside_model_ms": {n: _ms(_median([r[n] for r in outside_rows])) for n in names},
        "cpu_ms": {n: _ms(_median([s["cpu_s"][n] for s in samples])) for n in names
                   if n != "total"},
        "model_cpu_ms": _ms(model_override_s if model_override_s is not None
                            else _median([s.get("model_cpu_s") for s in samples])),
        "model_cpu_source": (
            "the new path's model CPU at this size: the same model work (the whole image at "
            "the working size, the same steps), at most each request's busiest thread CPU "
            "on the server; this path's stage also holds the resizing of the whole "
            "picture, which its timings do not separate"
            if model_override_s is not None else
            "min(busiest thread CPU, model stage wall) less the stage's prepare / composite"),
        "model_stage_parts_not_separable": sorted(unsplit),
        "wall_ms": _ms(_median([s["wall_s"] for s in samples])),
        "wire_bytes": {h: {d: _median([s["wire"][h][d] for s in samples])
                           for d in ("request", "response")} for h in hops},
        "payload": samples[0].get("payload") if samples else None,
        "payload_bytes": _median([s.get("payload_bytes") for s in samples]),
    }
    # The result's bytes on the wire: the response direction of the two hops it travels
    # (model server -> orchestrator -> client); the request direction carries the photo.
    prefix = "old " if any(h.startswith("old ") for h in hops) else ""
    result_hops = [h for h in (f"{prefix}client->{ORCHESTRATOR}",
                               f"{prefix}{ORCHESTRATOR}->{server}") if h in hops]
    out["result_hops"] = result_hops
    out["result_wire_bytes"] = _median([sum(s["wire"][h]["response"] for h in result_hops)
                                        for s in samples]) if result_hops else None
    timings: dict[str, list[float]] = {}
    for s in samples:
        for k, v in s.get("server_timings_s", {}).items():
            timings.setdefault(k, []).append(v)
    out["server_timings_ms"] = {k: _ms(_median(v)) for k, v in timings.items()}
    orch: dict[str, list[float]] = {}
    for s in samples:
        for k, v in (s.get("orchestrator_timings_s") or {}).items():
            orch.setdefault(k, []).append(v)
    out["orchestrator_timings_ms"] = {k: _ms(_median(v)) for k, v in orch.items()}
    stage = model_stage(samples[0].get("server_timings_s", {})) if samples else None
    checks = []
    for s in samples:
        busy = s["busiest_thread_cpu_s"].get(server) or s["busiest_thread_cpu_s"].get(
            f"old {server}")
        stage_s = s.get("server_timings_s", {}).get(stage) if stage else None
        checks.append(ratio(busy, stage_s))
    out["busiest_thread_cpu_over_stage_wall"] = _median(checks)
    out["repainted_box"] = samples[-1].get("repainted_box") if samples else None
    out["samples"] = samples
    return out


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    from mic2e import codecs

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    ops_wanted = [o.strip() for o in args.ops.split(",") if o.strip()]
    ops = {k: v for k, v in _ops(args, stack.old_address is not None).items()
           if k in ops_wanted}
    meter = Meter(stack, args.settle_s)
    calls = Calls(stack, args)
    counter = iter(range(10**9))
    results: dict[str, Any] = {}
    failures: list[str] = []
    try:
        for key in sizes:
            width, height = size_of(key)
            jpeg = photo(width, height, seed=1, quality=args.quality)
            mask = photo_mask(width, height, args.mask_box)
            entry: dict[str, Any] = {
                "width": width, "height": height, "megapixels": width * height / 1e6,
                "jpeg_bytes": len(jpeg), "mask_fraction": float(mask.mean())}
            floors: list[tuple[float, float]] = []  # (decode, encode) after each removal
            for op, spec in ops.items():
                samples: dict[str, list[dict[str, Any]]] = {p: [] for p in spec["paths"]}
                fn = getattr(calls, op)
                for i in range(args.warmup + args.requests):
                    order = spec["paths"][i % len(spec["paths"]):] + \
                        spec["paths"][:i % len(spec["paths"])]
                    for path in order:
                        data = fresh(jpeg, next(counter))
                        try:
                            got = await meter.measure(
                                functools.partial(fn, path, data, mask),
                                _processes(stack, path), _hops(stack, path))
                        except Exception as exc:  # noqa: BLE001 - a failure is a result
                            text = f"{key} {op} {path}: {type(exc).__name__}: {exc}"
                            failures.append(text.splitlines()[0][:300])
                            if i < args.warmup:
                                raise RuntimeError(f"warm-up failed: {text}") from exc
                            continue
                        if i >= args.warmup:
                            samples[path].append(got)
                            if op == "remove" and path == "new":
                                floors.append(_floor_sample(data, got, calls, codecs))
                entry[op] = {}
                # The new path first: today's and the old code's model work is the same
                # (the whole image at the working size, the same steps), and their
                # stages also hold the resizing of the whole picture, which their
                # timings do not separate (it is not the model).
                override = None
                for path in sorted(spec["paths"], key=lambda p: p != "new"):
                    same_work = op == "remove" and path in ("today", "old")
                    entry[op][path] = _summarise(samples[path], spec["server"],
                                                 override if same_work else None)
                    if op == "remove" and path == "new":
                        ms = entry[op][path]["model_cpu_ms"]
                        override = None if ms is None else ms / 1000
                entry[op] = {p: entry[op][p] for p in spec["paths"]}
            if "remove" in entry:
                entry.update(_floor_and_today(entry, floors, calls, args))
                entry["client_parts_ms"] = _client_parts(jpeg, mask, calls, args, codecs)
            results[key] = entry
    finally:
        await calls.close()
    return {"sizes": results, "failures": failures,
            "goals": goals(results, args.goal_size)}


def _floor_sample(data: bytes, got: dict[str, Any], calls: Calls, codecs: Any
                  ) -> tuple[float, float]:
    """The floor's two parts, CPU seconds in this process, measured right after the
    removal of `data` (so under the same load as it): one decode of the photo sent, one
    PNG level-1 encode of its result's repainted box."""
    box = got.get("repainted_box")
    image = calls.last_images.get("new")
    decode_s = _cpu_s(lambda: codecs.decode_image(data), 1)
    region = image.crop(tuple(box)) if image is not None and box else None
    encode_s = _cpu_s(lambda: png(region, PNG_LEVEL), 1) if region is not None else math.nan
    return decode_s, encode_s


def _floor_and_today(entry: dict[str, Any], floors: list[tuple[float, float]],
                     calls: Calls, args: argparse.Namespace) -> dict[str, Any]:
    """The floor (medians of its samples, one after each removal on the new path) and
    the old encoder's cost, measured here on this size's results; the ratios of each
    removal path against them."""
    remove = entry["remove"]
    out: dict[str, Any] = {}
    floor = None
    new_image = calls.last_images.get("new")
    box = remove.get("new", {}).get("repainted_box")
    if floors and not any(math.isnan(e) for _, e in floors) and new_image is not None:
        decode_s = statistics.median(d for d, _ in floors)
        encode_s = statistics.median(e for _, e in floors)
        floor = statistics.median(d + e for d, e in floors)
        region = new_image.crop(tuple(box))
        out["floor"] = {"decode_ms": _ms(decode_s), "encode_region_ms": _ms(encode_s),
                        "total_ms": _ms(floor), "n": len(floors), "region_box": box,
                        "region_pixels": region.width * region.height,
                        "region_png_bytes": len(png(region, PNG_LEVEL))}
    today_cpu = today_bytes = None
    whole = calls.last_images.get("today")
    if whole is not None and "today" in remove:
        enc6 = _cpu_s(lambda: png(whole, OLD_PNG_LEVEL), args.floor_repeats)
        enc1 = _cpu_s(lambda: png(whole, PNG_LEVEL), args.floor_repeats)
        bytes6, bytes1 = len(png(whole, OLD_PNG_LEVEL)), len(png(whole, PNG_LEVEL))
        out["old_encoder"] = {"png6_ms": _ms(enc6), "png1_ms": _ms(enc1),
                              "png6_bytes": bytes6, "png1_bytes": bytes1}
        today = remove["today"]
        measured = today["cpu_outside_model_ms"].get("total")
        if measured is not None:
            today_cpu = measured + _ms(enc6 - enc1)
        # The result's bytes on the wire today: the level-6 picture on both hops, plus
        # what else the responses carry (masks, provenance, progress) as on the new path.
        new = remove.get("new")
        extra = None
        if new and new["result_wire_bytes"] is not None and new["payload_bytes"] is not None:
            extra = new["result_wire_bytes"] - 2 * new["payload_bytes"]
        today_bytes = 2 * bytes6 + (extra or 0)
        today["derived"] = {
            "cpu_outside_model_ms": today_cpu, "result_wire_bytes": today_bytes,
            "how": "CPU: this path's measured CPU outside the model (every process) plus "
                   "(level-6 - level-1) PNG encode of the returned whole picture, measured "
                   "here; bytes: the level-6 PNG on both result hops (object-clear -> "
                   "orchestrator -> client) plus the non-image bytes of the new path's "
                   "responses"}
    old = remove.get("old")
    for path, r in remove.items():
        cpu = r["cpu_outside_model_ms"].get("total")
        byt = r["result_wire_bytes"]
        r["ratio_to_floor"] = ratio(cpu, _ms(floor))
        if path != "today":
            r["cpu_ratio_to_today"] = ratio(cpu, today_cpu)
            r["bytes_ratio_to_today"] = ratio(byt, today_bytes)
            if old is not None and path != "old":
                r["cpu_ratio_to_old_code"] = ratio(cpu, old["cpu_outside_model_ms"].get("total"))
                r["bytes_ratio_to_old_code"] = ratio(byt, old["result_wire_bytes"])
    return out


def _client_parts(jpeg: bytes, mask: Any, calls: Calls, args: argparse.Namespace,
                  codecs: Any) -> dict[str, float | None]:
    """CPU of the pieces of work a client does around a removal, each alone, here: what
    the client's measured CPU is made of (and, for the mask and the photo, what the
    servers repeat)."""
    from PIL import Image

    n = args.floor_repeats
    mask_png = codecs.encode_mask_png(mask)
    out = {"sha256_photo": _cpu_s(lambda: codecs.sha256_hex(jpeg), n),
           "jpeg_decode_photo": _cpu_s(lambda: codecs.decode_image(jpeg), n),
           "mask_png_encode_full_size": _cpu_s(lambda: codecs.encode_mask_png(mask), n),
           "mask_png_decode_full_size": _cpu_s(lambda: codecs.decode_mask_png(mask_png), n)}
    patch = calls.last_patches.get("new")
    if patch is not None:
        def decode_patch() -> None:
            with Image.open(io.BytesIO(patch)) as img:
                img.load()
        out["patch_png_decode"] = _cpu_s(decode_patch, n)
    result = {f"{k}_ms": _ms(v) for k, v in out.items()}
    result["mask_png_bytes"] = len(mask_png)
    return result


def goals(results: dict[str, Any], size: str) -> dict[str, Any]:
    """The issue's figures at `size`: CPU outside the model per removal <= 3x the floor
    and <= 1/4 of today's path; result bytes on the wire <= 1/4 of today's."""
    entry = results.get(size)
    if not entry or "remove" not in entry or "new" not in entry["remove"]:
        return {"size": size, "evaluated": False}
    new = entry["remove"]["new"]
    checks = {
        "cpu_vs_floor": {"ratio": new.get("ratio_to_floor"), "limit": 3.0},
        "cpu_vs_today": {"ratio": new.get("cpu_ratio_to_today"), "limit": 0.25},
        "bytes_vs_today": {"ratio": new.get("bytes_ratio_to_today"), "limit": 0.25},
    }
    if "old" in entry["remove"]:
        checks["cpu_vs_old_code"] = {"ratio": new.get("cpu_ratio_to_old_code"), "limit": 0.25}
        checks["bytes_vs_old_code"] = {"ratio": new.get("bytes_ratio_to_old_code"),
                                       "limit": 0.25}
    for c in checks.values():
        c["met"] = c["ratio"] is not None and c["ratio"] <= c["limit"]
    return {"size": size, "path": "new", "evaluated": True, "checks": checks,
            "met": all(c["met"] for c in checks.values())}


# -- the program -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.photo_path",
                                description=__doc__.split("\n\n")[0])
    add_stack_args(p, models=MODEL_SERVERS, subprocess_default=True)
    p.add_argument("--sizes", default=",".join(SIZES),
                   help=f"photo sizes: megapixel keys {tuple(SIZES)} or WxH (default all)")
    p.add_argument("--ops", default="remove,replace,segment",
                   help="remove, replace, segment (default all three)")
    p.add_argument("--paths", default=",".join(REMOVE_PATHS),
                   help=f"removal paths (default {','.join(REMOVE_PATHS)})")
    p.add_argument("--old-code", metavar="REV",
                   help="also measure commit REV's own orchestrator and object-clear server "
                   "(today's code, from git archive) as the removal path 'old'")
    p.add_argument("--requests", type=int, default=3,
                   help="measured requests per size, op and path (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    p.add_argument("--steps", type=int, default=TINY_STEPS, help="ObjectClear steps")
    p.add_argument("--short-side", type=int, default=TINY_SHORT_SIDE,
                   help="ObjectClear working short side")
    p.add_argument("--flux-steps", type=int, default=TINY_FLUX_STEPS, help="FLUX steps")
    p.add_argument("--text", default="object", help="SegmentByText's text")
    p.add_argument("--max-instances", type=int, default=1, help="SegmentByText's limit")
    p.add_argument("--fusion", action="store_true",
                   help="removals with ObjectClear's attention-guided fusion on (default "
                   "off: tiny random weights attend everywhere, so the fused region - and "
                   "every patch - would be the whole picture, which says nothing about a "
                   "real model; the path 'new+fusion' shows it)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the photos")
    p.add_argument("--mask-box", type=lambda t: tuple(float(v) for v in t.split(",")),
                   default=MASK_BOX, help="relative x0,y0,x1,y1 of the mask")
    p.add_argument("--settle-s", type=float, default=0.3,
                   help="wait after each result before reading the servers' CPU (their "
                   "tail work)")
    p.add_argument("--floor-repeats", type=int, default=3,
                   help="repeats of the floor's and the old encoder's timings (median)")
    p.add_argument("--goal-size", default="12", help="size the goals are judged at")
    add_output_args(p)
    return p


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.full:
        raise SystemExit("photo_path measures CPU around the model per process: --full (an "
                         "in-process GPU stack) cannot split it; start the servers on the GPU "
                         "and pass their addresses instead")
    if given_addresses(args, (ORCHESTRATOR, *MODEL_SERVERS)):
        if not args.orchestrator_address:
            raise SystemExit("a running stack needs --orchestrator-address")
        stack = Stack("external (running servers): client CPU and payloads only",
                      args.orchestrator_address)
        return {"stack": stack.label, "method": METHOD, **await measure(stack, args)}
    if not args.subprocess:
        raise SystemExit("photo_path needs one process per server (per-process CPU): "
                         "leave out --in-process")
    with local_stack(args) as stack:
        return {"stack": stack.label, "method": METHOD, **await measure(stack, args)}


METHOD = {
    "cpu": "per request: this process's CPU (time.process_time) over the call; each "
           "server's process CPU clock (all threads) from before the call to "
           "settle_s after its result",
    "model_subtracted": "servers run with OMP_NUM_THREADS=1 (torch on the worker's thread "
                        "alone); the model's CPU = min(the busiest thread's CPU, the model "
                        "stage's wall time from the provenance timings) less the stage's "
                        "'prepare' and 'composite' (their wall time: an upper bound of their "
                        "CPU), subtracted from the server that ran it; a part covering 90 % "
                        "or more of the stage holds the model and is not taken out (named in "
                        "model_stage_parts_not_separable); the today and old removals, whose "
                        "stage also resizes the whole picture back, take the new path's "
                        "model CPU at the same size (the same model work), at most the "
                        "request's own busiest thread CPU on that server",
    "bytes": "counted on the wire (HTTP/2 frames included) by a TCP proxy in front of each "
             "server, per direction; result_wire_bytes = the response bytes of the hops the "
             "result travels (model server -> orchestrator -> client)",
    "floor": "one JPEG decode of the input (mic2e.codecs.decode_image) plus one PNG zlib "
             "level-1 encode of the new path's repainted box, CPU in this process, measured "
             "right after each removal on the new path (the same load), median",
    "today": "strategy reference, the whole picture, on today's servers (PNG level 1), plus "
             "the old encoder (level 6) accounted for: see remove.today.derived",
    "photos": "detailed procedural JPEG, quality 90; every request's bytes are new (a JPEG "
              "comment), so nothing is served from an image cache",
}


def report(result: dict[str, Any]) -> str:
    rows = []
    for key, entry in result["sizes"].items():
        floor = (entry.get("floor") or {}).get("total_ms")
        for op in ("remove", "replace", "segment"):
            for path, r in (entry.get(op) or {}).items():
                cpu = r["cpu_outside_model_ms"]
                server = {"remove": "object-clear", "replace": "flux",
                          "segment": "segmentation"}[op]
                if path == "old":
                    server_ms, orch_ms = cpu.get("old object-clear"), cpu.get(
                        f"old {ORCHESTRATOR}")
                else:
                    server_ms, orch_ms = cpu.get(server), cpu.get(ORCHESTRATOR)
                total = cpu.get("total")
                wire = r.get("result_wire_bytes")
                derived = r.get("derived") or {}
                rows.append([
                    f"{key} MP", f"{op} {path}", _f(cpu.get("client")), _f(orch_ms),
                    f"{_f(server_ms)} ({server})", _f(total),
                    _f(floor) if op == "remove" else "",
                    fmt_x(r.get("ratio_to_floor")) if op == "remove" else "",
                    fmt_x(r.get("cpu_ratio_to_today")) if op == "remove" else "",
                    _b(wire), fmt_x(r.get("bytes_ratio_to_today")) if op == "remove" else ""])
                if derived:
                    rows.append([f"{key} MP", "remove today+png6", "", "", "",
                                 _f(derived["cpu_outside_model_ms"]), _f(floor),
                                 fmt_x(ratio(derived["cpu_outside_model_ms"], floor)), "1.00",
                                 _b(derived["result_wire_bytes"]), "1.00"])
    text = table(["size", "path", "client ms", "orch ms", "server ms", "total ms",
                  "floor ms", "x floor", "x today", "result bytes", "x today"], rows)
    g = result.get("goals") or {}
    if g.get("evaluated"):
        parts = [f"{name} {fmt_x(c['ratio'])} <= {c['limit']:g}: "
                 f"{'met' if c['met'] else 'NOT met'}" for name, c in g["checks"].items()]
        text += f"goals at {g['size']} MP (path new): " + "; ".join(parts) + "\n"
    if result.get("failures"):
        text += f"failures: {len(result['failures'])}, e.g. {result['failures'][0]}\n"
    return text


def _f(ms: Any) -> str:
    return "-" if ms is None else f"{ms:.1f}"


def _b(n: Any) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`stack_main`, filed as `<date>-cpu-photo_path-tiny.json` (the profile in the name,
    as models and memory file theirs; `external` for a running stack)."""
    return stack_main(NAME, argv, build_parser, run, report, record_as=lambda result: (
        f"{NAME}-{'external' if result['stack'].startswith('external') else 'tiny'}"))


if __name__ == "__main__":
    main()
