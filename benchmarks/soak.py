"""Soak: steady mixed load for a long time; resident memory of each server, start to end.

Issue 7 item 7. `--concurrency` clients each loop over four calls on fresh pictures -
segment (SegmentByText through the orchestrator), clear (Clear on the object-clear
server), generate (Generate through the orchestrator), remove (RemoveObjects through the
orchestrator) - for `--seconds`, after `--warmup-cycles` unmeasured rounds. Resident
memory (VmRSS from /proc/<pid>/status) of every server is sampled after the warm-up, every
`--sample-interval` seconds, and at the end; failures are counted per call.

By default the tiny stack runs as four child processes (the commands `mic2e-server up`
runs), so each server's memory is its own. Fresh pictures fill every bounded cache
(decoded images, SAM3 vision features, orchestrator references) during the run, so
growth in the first part of a run is expected; `growth_second_half_pct` (end vs the middle
sample) is the figure that exposes a leak.

    uv run python -m benchmarks.soak --seconds 600                      # tiny, CPU
    uv run python -m benchmarks.soak --orchestrator-address H:50051 \\
        --object-clear-address H:50053 --pids segmentation=PID,... --seconds 3600
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks._common import (
    add_output_args,
    box_mask,
    fmt_s,
    parse_size,
    picture,
    rss_bytes,
    stack_main,
    summary,
    table,
)
from benchmarks._stack import (
    MODEL_SERVERS,
    ORCHESTRATOR,
    add_stack_args,
    given_addresses,
    metadata,
    stack_for,
    stack_label,
)

NAME = "soak"
OPS = ("segment", "clear", "generate", "remove")
CLIENT = "soak-client"
IN_PROCESS = "stack (in-process)"
GPU = "gpu allocated (in-process)"


def _cuda_in_use() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def _gpu_allocated() -> int:
    import torch

    return int(torch.cuda.memory_allocated())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak",
                                description=__doc__.split("\n\n")[0])
    add_stack_args(p, subprocess_default=True)
    p.add_argument("--pids", default="",
                   help="running stack: NAME=PID,... of servers on this machine to sample")
    p.add_argument("--seconds", type=float, default=60.0, help="measured time (default 60)")
    p.add_argument("--concurrency", type=int, default=2, help="parallel clients (default 2)")
    p.add_argument("--warmup-cycles", type=int, default=2,
                   help="unmeasured rounds of the four calls first (default 2)")
    p.add_argument("--sample-interval", type=float, default=10.0,
                   help="seconds between memory samples (default 10)")
    p.add_argument("--image-size", default="320x240", help="WIDTHxHEIGHT of the pictures")
    p.add_argument("--steps", type=int, help="clear/remove steps (default: the server's own; "
                   "tiny stack 4)")
    p.add_argument("--short-side", type=int, help="clear/remove short side (default: the "
                   "server's own; tiny stack 256)")
    p.add_argument("--generate-size", type=int, help="generate width = height (default 512; "
                   "tiny stack 256)")
    p.add_argument("--text", default="dog", help="text target of segment and remove")
    add_output_args(p)
    return p


class Calls:
    def __init__(self, endpoints: Any, args: argparse.Namespace) -> None:
        from mic2e import codecs
        from mic2e.channel import aio_channel
        from mic2e.v1 import (
            common_pb2,
            object_clear_pb2,
            object_clear_pb2_grpc,
            orchestrator_pb2_grpc,
        )

        self.args = args
        self.md = metadata(args.token)
        self.orch_channel = aio_channel(endpoints.address(ORCHESTRATOR))
        self.oc_channel = aio_channel(endpoints.address("object-clear"))
        self.edit = orchestrator_pb2_grpc.EditServiceStub(self.orch_channel)
        self.clear_stub = object_clear_pb2_grpc.ObjectClearServiceStub(self.oc_channel)
        self.width, self.height = parse_size(args.image_size)
        self.mask = common_pb2.Mask(width=self.width, height=self.height,
                                    png=codecs.encode_mask_png(box_mask(self.width, self.height)))
        self.options = object_clear_pb2.ClearOptions()
        if args.steps:
            self.options.steps = args.steps
        if args.short_side:
            self.options.short_side = args.short_side
        self.seeds = itertools.count(1000)

    async def close(self) -> None:
        await self.orch_channel.close()
        await self.oc_channel.close()

    async def run(self, op: str) -> None:
        from mic2e.v1 import (
            common_pb2,
            flux_pb2,
            object_clear_pb2,
            orchestrator_pb2,
            segmentation_pb2,
        )

        seed = next(self.seeds)
        a = self.args
        if op == "generate":
            req = flux_pb2.GenerateRequest(prompt="a red bicycle on a street at sunset",
                                           width=a.generate_size, height=a.generate_size,
                                           steps=4, seed=seed)
            await self._final(self.edit.Generate(req, metadata=self.md))
            return
        # A fresh picture every call: caches fill up to their bounds, as in service.
        image = common_pb2.Image(data=await asyncio.to_thread(
            picture, seed, self.width, self.height))
        if op == "segment":
            await self.edit.SegmentByText(segmentation_pb2.SegmentByTextRequest(
                image=image, text=a.text, score_threshold=0.0, max_instances=3,
                mask_format=common_pb2.MASK_FORMAT_RLE), metadata=self.md)
        elif op == "clear":
            options = object_clear_pb2.ClearOptions()
            options.CopyFrom(self.options)
            options.seed = seed
            await self._final(self.clear_stub.Clear(object_clear_pb2.ClearRequest(
                image=image, masks=[self.mask], label="object", options=options),
                metadata=self.md))
        elif op == "remove":
            req = orchestrator_pb2.RemoveObjectsRequest(image=image, clear_options=self.options)
            req.text.text = a.text
            req.text.min_score = 0.0
            req.text.max_instances = 2
            await self._final(self.edit.RemoveObjects(req, metadata=self.md))
        else:
            raise ValueError(op)

    @staticmethod
    async def _final(call) -> None:
        result = None
        async for msg in call:
            if msg.WhichOneof("event") == "result":
                result = msg
        if result is None:
            raise RuntimeError("stream ended without a result")


def sample(pids: dict[str, int], gpu: bool = False) -> dict[str, int | None]:
    out = {name: rss_bytes(pid) for name, pid in pids.items()}
    if gpu:
        out[GPU] = _gpu_allocated()
    return out


async def measure(endpoints: Any, args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    pids = dict(endpoints.pids)
    in_process = endpoints.mode.startswith("in-process")
    if in_process:
        pids = {IN_PROCESS: os.getpid()}
    else:
        pids[CLIENT] = os.getpid()
    gpu = in_process and _cuda_in_use()
    calls = Calls(endpoints, args)
    counts: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    errors: dict[str, list[str]] = {}
    latencies: dict[str, list[float]] = {op: [] for op in OPS}
    try:
        for _ in range(args.warmup_cycles):
            for op in OPS:
                await calls.run(op)

        start = time.monotonic()
        samples = [{"t_s": 0.0, "rss": sample(pids, gpu)}]
        stop_at = start + args.seconds

        async def client(k: int) -> None:
            ops = itertools.cycle(OPS[k % len(OPS):] + OPS[:k % len(OPS)])
            while time.monotonic() < stop_at:
                op = next(ops)
                t0 = time.perf_counter()
                try:
                    await calls.run(op)
                    latencies[op].append(time.perf_counter() - t0)
                except (grpc.aio.AioRpcError, RuntimeError) as exc:
                    failures[op] += 1
                    text = (f"{exc.code().name}: {exc.details()}"
                            if isinstance(exc, grpc.aio.AioRpcError) else str(exc))
                    errors.setdefault(op, []).append(text[:200])
                counts[op] += 1

        async def sampler() -> None:
            while True:
                await asyncio.sleep(args.sample_interval)
                samples.append({"t_s": time.monotonic() - start, "rss": sample(pids, gpu)})

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(client(k) for k in range(args.concurrency)))
        sampling.cancel()
        elapsed = time.monotonic() - start
        samples.append({"t_s": elapsed, "rss": sample(pids, gpu)})
    finally:
        await calls.close()

    alive = {name: rss is not None for name, rss in samples[-1]["rss"].items() if name != GPU}
    middle = min(samples, key=lambda s: abs(s["t_s"] - elapsed / 2))
    memory = {}
    for name in samples[0]["rss"]:
        first, last, mid = samples[0]["rss"][name], samples[-1]["rss"][name], middle["rss"][name]
        series = [s["rss"][name] for s in samples if s["rss"][name] is not None]
        memory[name] = {
            "rss_start_mib": first / 2**20 if first else None,
            "rss_end_mib": last / 2**20 if last else None,
            "rss_max_mib": max(series) / 2**20 if series else None,
            "growth_pct": (last / first - 1) * 100 if first and last else None,
            "growth_second_half_pct": (last / mid - 1) * 100 if mid and last else None,
        }
    total = sum(counts.values())
    return {
        "elapsed_s": elapsed,
        "requests": {"total": total, **{op: counts[op] for op in OPS}},
        "failures": {"total": sum(failures.values()), **{op: failures[op] for op in OPS}},
        "failure_examples": {op: v[:3] for op, v in errors.items()},
        "latency_s": {op: summary(v) for op, v in latencies.items()},
        "memory": memory,
        "servers_alive": alive,
        "samples": [{"t_s": s["t_s"], "rss_mib": {k: (v / 2**20 if v else None)
                                                  for k, v in s["rss"].items()}}
                    for s in samples],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    running = bool(given_addresses(args, (ORCHESTRATOR, *MODEL_SERVERS))) or args.full
    if not running:
        args.steps = args.steps or 4
        args.short_side = args.short_side or 256
    args.generate_size = args.generate_size or (512 if running else 256)
    async with stack_for(args, models=MODEL_SERVERS, orchestrator=True) as endpoints:
        if running and args.pids:
            endpoints.pids = {k: int(v) for k, v in
                              (item.split("=", 1) for item in args.pids.split(",") if item)}
        return {"stack": stack_label(endpoints), **await measure(endpoints, args)}


def report(r: dict[str, Any]) -> str:
    rows = []
    for name, m in r["memory"].items():
        def mib(v):
            return "-" if v is None else f"{v:.1f} MiB"

        def pct(v):
            return "-" if v is None else f"{v:+.1f} %"

        rows.append([name, mib(m["rss_start_mib"]), mib(m["rss_end_mib"]), pct(m["growth_pct"]),
                     pct(m["growth_second_half_pct"])])
    text = table(["process", "RSS start", "RSS end", "growth", "2nd half"], rows)
    q, f = r["requests"], r["failures"]
    text += table(["call", "requests", "failures", "median"],
                  [[op, q[op], f[op], fmt_s(r["latency_s"][op].get("median"))] for op in OPS]
                  + [["total", q["total"], f["total"], ""]])
    text += f"soak: {r['elapsed_s']:.0f} s, {q['total']} requests, {f['total']} failures\n"
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return stack_main(NAME, argv, build_parser, run, report)


if __name__ == "__main__":
    main()
