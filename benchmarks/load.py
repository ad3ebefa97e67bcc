"""Overload: open-loop Poisson arrivals at twice the measured capacity, each with a deadline.

Issue 7 item 3. A model server refuses work whose estimated wait outlasts the caller's
deadline (runtime/worker.py admission: RESOURCE_EXHAUSTED with RetryInfo) instead of
queueing it to fail later, so under overload the requests it accepts should still finish
in about their service time. This program

1. measures capacity: a closed loop at concurrency 1 -> service time S (median);
2. drives an open loop: Poisson arrivals at `--overload` x 1/S (default 2x) for
   `--seconds`, each request with a deadline of `--deadline-factor` x S (default 3x);
3. reports accepted / refused (RESOURCE_EXHAUSTED; with or without RetryInfo) / failed
   (anything else), latency p50/p95/p99 of the accepted requests, and whether every
   accepted request completed. Goal: accepted p99 <= 2 x p50.

Workload (`--workload`): FLUX `Generate` at a small size (default) or ObjectClear `Clear`.

    uv run python -m benchmarks.load                                   # tiny, CPU
    uv run python -m benchmarks.load --flux-address H:50054 --size 512 --record
    uv run python -m benchmarks.load --workload clear --object-clear-address H:50053
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._common import (
    add_output_args,
    box_mask,
    fmt_s,
    parse_size,
    picture,
    stack_main,
    summary,
    table,
)
from benchmarks._stack import add_stack_args, given_addresses, metadata, stack_for, stack_label

NAME = "load"
SERVER = {"generate": "flux", "clear": "object-clear"}
#: The worker's floor for RetryInfo (runtime/worker.py: max(backlog, 0.05)), plus rounding.
IDLE_RETRY_S = 0.0501


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load",
                                description=__doc__.split("\n\n")[0])
    add_stack_args(p, models=("flux", "object-clear"), orchestrator=False)
    p.add_argument("--workload", choices=sorted(SERVER), default="generate",
                   help="flux Generate (default) or object-clear Clear")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="length of the open-loop phase (default 20)")
    p.add_argument("--overload", type=float, default=2.0,
                   help="arrival rate as a multiple of the measured capacity (default 2)")
    p.add_argument("--deadline-factor", type=float, default=3.0,
                   help="each request's deadline, in service times (default 3)")
    p.add_argument("--capacity-requests", type=int, default=5,
                   help="closed-loop requests that measure the service time (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests first")
    p.add_argument("--size", type=int, help="generate: width = height (default 512; tiny "
                   "stack 256)")
    p.add_argument("--steps", type=int, help="steps (default: generate 4; clear the server's "
                   "own, tiny stack 4)")
    p.add_argument("--short-side", type=int, help="clear: working short side (default: the "
                   "server's own; tiny stack 256)")
    p.add_argument("--image-size", default="512x384", help="clear: WIDTHxHEIGHT of the picture")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival process")
    add_output_args(p)
    return p


@dataclass
class Outcome:
    arrival_s: float  # since the start of the open loop
    latency_s: float
    kind: str  # completed | refused | failed
    code: str = "OK"
    reason: str = ""
    retry_after_s: float | None = None


class Workload:
    def __init__(self, args: argparse.Namespace, address: str) -> None:
        from mic2e.channel import aio_channel
        from mic2e.v1 import flux_pb2_grpc, object_clear_pb2_grpc

        self.args = args
        self.md = metadata(args.token)
        self.channel = aio_channel(address)
        self.n = 0
        if args.workload == "generate":
            self.stub = flux_pb2_grpc.FluxServiceStub(self.channel)
        else:
            from mic2e import codecs
            from mic2e.v1 import common_pb2

            self.stub = object_clear_pb2_grpc.ObjectClearServiceStub(self.channel)
            width, height = parse_size(args.image_size)
            # Bytes in every request: the server decodes them once and keeps them by SHA-256.
            self.image = common_pb2.Image(data=picture(1, width, height))
            self.mask = common_pb2.Mask(width=width, height=height,
                                        png=codecs.encode_mask_png(box_mask(width, height)))

    def call(self, timeout: float | None):
        from mic2e.v1 import flux_pb2, object_clear_pb2

        self.n += 1
        a = self.args
        if a.workload == "generate":
            req = flux_pb2.GenerateRequest(prompt="a red bicycle on a street at sunset",
                                           width=a.size, height=a.size, steps=a.steps,
                                           seed=self.n)
            return self.stub.Generate(req, timeout=timeout, metadata=self.md)
        options = object_clear_pb2.ClearOptions(seed=self.n)
        if a.steps:
            options.steps = a.steps
        if a.short_side:
            options.short_side = a.short_side
        req = object_clear_pb2.ClearRequest(image=self.image, masks=[self.mask], label="object",
                                            options=options)
        return self.stub.Clear(req, timeout=timeout, metadata=self.md)

    async def one(self, timeout: float | None, t_origin: float) -> Outcome:
        """One request to its end: its latency and how it ended."""
        import grpc
        from mic2e.errors import ResourceExhaustedError, from_rpc_error

        start = time.perf_counter()
        got_message = False
        try:
            result = None
            async for msg in self.call(timeout):
                got_message = True
                if msg.WhichOneof("event") == "result":
                    result = msg.result
            if result is None:
                raise RuntimeError("stream ended without a result")
            return Outcome(start - t_origin, time.perf_counter() - start, "completed")
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc.code(), exc.details() or "", exc.trailing_metadata())
            kind = ("refused" if isinstance(err, ResourceExhaustedError) and not got_message
                    else "failed")
            return Outcome(start - t_origin, time.perf_counter() - start, kind,
                           exc.code().name, err.reason, err.retry_after_s)
        except Exception as exc:  # noqa: BLE001
            return Outcome(start - t_origin, time.perf_counter() - start, "failed",
                           type(exc).__name__, str(exc)[:200])

    async def close(self) -> None:
        await self.channel.close()


async def measure(address: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Workload(args, address)
    try:
        # 1. Warm-up, then capacity at concurrency 1 (closed loop).
        for _ in range(args.warmup):
            o = await work.one(None, time.perf_counter())
            if o.kind != "completed":
                raise RuntimeError(f"warm-up request failed: {o.code} {o.reason}")
        service = []
        for _ in range(args.capacity_requests):
            o = await work.one(None, time.perf_counter())
            if o.kind != "completed":
                raise RuntimeError(f"capacity request failed: {o.code} {o.reason}")
            service.append(o.latency_s)
        service_s = statistics.median(service)
        capacity = 1.0 / service_s
        rate = args.overload * capacity
        deadline = args.deadline_factor * service_s

        # 2. Open loop: Poisson arrivals, never waiting for earlier requests.
        rng = random.Random(args.seed)
        tasks: list[asyncio.Task[Outcome]] = []
        t0 = time.perf_counter()
        next_at = rng.expovariate(rate)
        while next_at < args.seconds:
            delay = t0 + next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(work.one(deadline, t0)))
            next_at += rng.expovariate(rate)
        outcomes = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - t0
    finally:
        await work.close()

    # 3. What happened to them.
    completed = [o for o in outcomes if o.kind == "completed"]
    refused = [o for o in outcomes if o.kind == "refused"]
    failed = [o for o in outcomes if o.kind == "failed"]
    lat = [o.latency_s for o in completed]
    p50 = statistics.median(lat) if lat else None
    p99 = summary(lat).get("p99") if lat else None
    ends = [o.arrival_s + o.latency_s for o in completed]
    return {
        "capacity": {"service_time_s": summary(service), "capacity_rps": capacity},
        "offered_rate_rps": rate,
        "deadline_s": deadline,
        "window_s": args.seconds,
        "wall_s": wall,
        "requests": {"offered": len(outcomes), "accepted": len(completed) + len(failed),
                     "completed": len(completed), "refused": len(refused),
                     "failed": len(failed)},
        "refused": {
            "with_retry_info": sum(1 for o in refused if o.retry_after_s is not None),
            "reasons": dict(Counter(o.reason or "-" for o in refused)),
            "retry_after_s": summary(o.retry_after_s for o in refused
                                     if o.retry_after_s is not None),
            "latency_s": summary(o.latency_s for o in refused),
            # The worker answers retry_after = max(queued work, 0.05 s): a deadline refusal
            # at the floor means the request ALONE was estimated to outlast its deadline,
            # i.e. the server's estimate_seconds is above the real service time.
            "with_no_backlog": sum(1 for o in refused if o.reason == "DEADLINE_TOO_SHORT"
                                   and o.retry_after_s is not None
                                   and o.retry_after_s <= IDLE_RETRY_S),
        },
        "failed": {"codes": dict(Counter(f"{o.code} {o.reason}".strip() for o in failed))},
        "latency_s": summary(lat),
        "p99_over_p50": (p99 / p50) if p50 else None,
        "meets_target": bool(p50 and p99 <= 2 * p50),
        "all_accepted_completed": not failed and bool(completed),
        "throughput_rps": (len(completed) / max(ends)) if ends else 0.0,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = SERVER[args.workload]
    running = bool(given_addresses(args, (server,))) or args.full  # real model times
    if args.size is None:
        args.size = 512 if running else 256
    if args.steps is None and (args.workload == "generate" or not running):
        args.steps = 4
    if args.short_side is None and not running:
        args.short_side = 256
    async with stack_for(args, models=(server,), orchestrator=False) as endpoints:
        measured = await measure(endpoints.address(server), args)
        return {"stack": stack_label(endpoints), **measured}


def report(r: dict[str, Any]) -> str:
    q = r["requests"]
    lat = r["latency_s"]
    rows = [
        ["service time (concurrency 1)", fmt_s(r["capacity"]["service_time_s"]["median"])],
        ["offered rate", f"{r['offered_rate_rps']:.2f} req/s for {r['window_s']:.0f} s "
                         f"(deadline {fmt_s(r['deadline_s'])})"],
        ["offered / accepted / completed", f"{q['offered']} / {q['accepted']} / {q['completed']}"],
        ["refused (with RetryInfo)", f"{q['refused']} ({r['refused']['with_retry_info']}) "
                                     f"{r['refused']['reasons']}"],
        ["failed", f"{q['failed']} {r['failed']['codes'] or ''}".strip()],
        ["accepted latency p50 / p95 / p99",
         " / ".join(fmt_s(lat.get(k)) for k in ("p50", "p95", "p99"))],
        ["p99 / p50", f"{r['p99_over_p50']:.2f}" if r["p99_over_p50"] else "-"],
        ["throughput", f"{r['throughput_rps']:.2f} req/s"],
    ]
    text = table(["load: " + r["config"]["workload"], "value"], rows)
    text += (f"accepted p99 <= 2 x p50: {'yes' if r['meets_target'] else 'NO'}; every accepted "
             f"request completed: {'yes' if r['all_accepted_completed'] else 'NO'}\n")
    idle = r["refused"]["with_no_backlog"]
    if idle:
        text += (f"note: {idle} refusal(s) came with no queued work: the server estimated the "
                 f"request alone to outlast its {fmt_s(r['deadline_s'])} deadline although it "
                 f"takes {fmt_s(r['capacity']['service_time_s']['median'])} - its "
                 f"estimate_seconds is too high\n")
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return stack_main(NAME, argv, build_parser, run, report)


if __name__ == "__main__":
    main()
