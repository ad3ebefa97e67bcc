"""Orchestrator overhead: the same removals through the orchestrator and as direct calls.

Issue 6 item 6. In one run, for each target kind (a mask the caller brings, a text the
segmentation server resolves) N removals go

* orchestrated: one `EditService.RemoveObjects` stream to the orchestrator, and
* direct: the calls the orchestrator itself would make, made by the client in sequence -
  `SegmentByText` on the segmentation server (text only), then `Clear` on the object-clear
  server - built from the same request with the orchestrator's own conversion functions,
  with the same bytes-then-reference image handling (each server gets an image's bytes
  once, its SHA-256 afterwards, the bytes again on IMAGE_NOT_FOUND).

Every measured removal uses a picture no server has seen (unless --same-image), so no
cache serves one path from the other's work; the two paths alternate so drift hits both.
Reported: medians, p95, and the overhead ratio orchestrated / direct - 1 (target <= 5%).

    uv run python -m benchmarks.overhead                       # tiny stack, CPU
    uv run python -m benchmarks.overhead --orchestrator-address H:50051 \\
        --segmentation-address H:50052 --object-clear-address H:50053 --record
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
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
from benchmarks._stack import (
    ORCHESTRATOR,
    add_stack_args,
    given_addresses,
    metadata,
    stack_label,
)

NAME = "overhead"
SERVERS = ("segmentation", "object-clear")
#: ObjectClear settings of the tiny CPU stack (the servers' own 20 steps at 512 px take
#: ~10 s per removal on two CPU cores; the ratio, not the picture, is measured here).
TINY_STEPS, TINY_SHORT_SIDE = 4, 256


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead",
                                description=__doc__.split("\n\n")[0])
    add_stack_args(p, models=SERVERS)
    p.add_argument("--requests", type=int, default=10,
                   help="measured removals per target and path (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first (default 2)")
    p.add_argument("--targets", default="mask,text", help="mask, text or both (default)")
    p.add_argument("--image-size", default="512x384", help="WIDTHxHEIGHT of the pictures")
    p.add_argument("--text", default="dog", help="text target")
    p.add_argument("--max-instances", type=int, default=3, help="text target: instances")
    p.add_argument("--min-score", type=float, default=0.0,
                   help="text target threshold (random weights score ~0.25: keep it low)")
    p.add_argument("--steps", type=int, help="ObjectClear steps (default: the server's own, "
                   f"20; tiny stack: {TINY_STEPS})")
    p.add_argument("--short-side", type=int, help="ObjectClear short side (default: the "
                   f"server's own; tiny stack: {TINY_SHORT_SIDE})")
    p.add_argument("--same-image", action="store_true",
                   help="reuse one picture: measures the by-reference path (and SAM3's "
                   "feature cache) instead of fresh uploads")
    p.add_argument("--target-ratio", type=float, default=0.05,
                   help="overhead goal, orchestrated / direct - 1 (default 0.05)")
    add_output_args(p)
    return p


class Paths:
    """The two ways of doing one removal, over long-lived channels."""

    def __init__(self, endpoints: Any, args: argparse.Namespace) -> None:
        from mic2e.channel import aio_channel
        from mic2e.v1 import object_clear_pb2_grpc, orchestrator_pb2_grpc, segmentation_pb2_grpc

        self.args = args
        self.md = metadata(args.token)
        self.channels = [aio_channel(endpoints.address(n)) for n in (ORCHESTRATOR, *SERVERS)]
        orch, seg, oc = self.channels
        self.edit = orchestrator_pb2_grpc.EditServiceStub(orch)
        self.seg = segmentation_pb2_grpc.SegmentationServiceStub(seg)
        self.clear = object_clear_pb2_grpc.ObjectClearServiceStub(oc)
        from mic2e.image_refs import ImageReferences

        # The clients' and the orchestrator's own image policy, one per server.
        self.refs = {name: ImageReferences() for name in (ORCHESTRATOR, *SERVERS)}
        width, height = parse_size(args.image_size)
        from mic2e import codecs
        from mic2e.v1 import common_pb2

        self.mask = common_pb2.Mask(width=width, height=height,
                                    png=codecs.encode_mask_png(box_mask(width, height)))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def request(self, target: str, image):
        """The caller's RemoveObjectsRequest for `target` with `image`."""
        from mic2e.v1 import object_clear_pb2, orchestrator_pb2

        options = object_clear_pb2.ClearOptions(seed=0)
        if self.args.steps:
            options.steps = self.args.steps
        if self.args.short_side:
            options.short_side = self.args.short_side
        req = orchestrator_pb2.RemoveObjectsRequest(image=image, clear_options=options)
        if target == "text":
            req.text.text = self.args.text
            req.text.max_instances = self.args.max_instances
            req.text.min_score = self.args.min_score
        else:
            req.masks.masks.append(self.mask)
        return req

    async def orchestrated(self, target: str, data: bytes) -> dict[str, Any]:
        from mic2e import codecs

        sha = codecs.sha256_hex(data)
        result = await self._stream_with_refs(
            ORCHESTRATOR, sha, data,
            lambda img: self.edit.RemoveObjects(self.request(target, img), metadata=self.md),
            "RemoveObjects")
        return {t.stage: t.duration.ToNanoseconds() / 1e9 for t in result.timings}

    async def _unary_with_refs(self, server: str, sha: str, data: bytes, call):
        """`call(image)` with the image by reference, again with its bytes if it was lost."""
        return await self.refs[server].unary(data, call, digest=sha)

    async def _stream_with_refs(self, server: str, sha: str, data: bytes, call, what: str):
        """The final result of the stream `call(image)`, with the same image handling."""
        result = None
        async for msg in self.refs[server].stream(data, call, digest=sha):
            if msg.WhichOneof("event") == "result":
                result = msg.result
        if result is None or not (result.image.data or result.patch.image.data):
            raise RuntimeError(f"{what} ended without a result image")
        return result

    async def direct(self, target: str, data: bytes) -> dict[str, Any]:
        """What the orchestrator does, done by the client: same requests, same image handling."""
        from mic2e import codecs
        from mic2e_services.orchestrator import convert as msgs

        sha = codecs.sha256_hex(data)
        caller = self.request(target, None)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if target == "text":
            seg = await self._unary_with_refs(
                "segmentation", sha, data,
                lambda img: self.seg.SegmentByText(msgs.text_request(caller, img),
                                                   metadata=self.md))
            if not seg.instances:
                raise RuntimeError("NO_INSTANCES: segmentation found nothing")
            masks = [inst.mask for inst in seg.instances]
            timings["segmentation"] = time.perf_counter() - t0
        else:
            masks = list(caller.masks.masks)
        t1 = time.perf_counter()
        result = await self._stream_with_refs(
            "object-clear", sha, data,
            lambda img: self.clear.Clear(msgs.clear_request(caller, img, masks),
                                         metadata=self.md),
            "Clear")
        # The whole picture from the patch, as the orchestrator builds it for this caller.
        await asyncio.to_thread(msgs.edit_fields, result, data, patch=False,
                                fmt=caller.clear_options.output_format,
                                max_pixels=codecs.DEFAULT_MAX_PIXELS)
        timings["object_clear"] = time.perf_counter() - t1
        return timings


async def _timed(fn, *args) -> tuple[float | None, dict[str, Any] | str]:
    t0 = time.perf_counter()
    try:
        detail = await fn(*args)
    except Exception as exc:  # noqa: BLE001 - a failure is a result here
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return time.perf_counter() - t0, detail


async def measure(endpoints: Any, args: argparse.Namespace) -> dict[str, Any]:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in ("mask", "text"):
            raise SystemExit(f"unknown target {t!r}: use mask and/or text")
    width, height = parse_size(args.image_size)
    paths = Paths(endpoints, args)
    # Pictures are made up front: encoding is not part of either path.
    seeds = iter(range(10**6))
    total = (args.warmup + args.requests) * len(targets) * 2
    pics = [picture(0 if args.same_image else next(seeds), width, height)
            for _ in range(total)]
    pic = iter(pics)
    samples: dict[str, dict[str, list[float]]] = {t: {"orchestrated": [], "direct": [],
                                                      "paired_diff": []} for t in targets}
    stages: dict[str, dict[str, list[float]]] = {t: {} for t in targets}
    failures: dict[str, dict[str, list[str]]] = {t: {"orchestrated": [], "direct": []}
                                                 for t in targets}
    try:
        for i in range(args.warmup + args.requests):
            measured = i >= args.warmup
            for target in targets:
                order = ["orchestrated", "direct"] if i % 2 == 0 else ["direct", "orchestrated"]
                got: dict[str, float] = {}
                for path in order:
                    fn = paths.orchestrated if path == "orchestrated" else paths.direct
                    elapsed, detail = await _timed(fn, target, next(pic))
                    if not measured:
                        if elapsed is None:
                            raise RuntimeError(f"warm-up {path} {target} removal failed: {detail}")
                        continue
                    if elapsed is None:
                        failures[target][path].append(str(detail))
                        continue
                    samples[target][path].append(elapsed)
                    got[path] = elapsed
                    for stage, seconds in detail.items():
                        stages[target].setdefault(f"{path}.{stage}", []).append(seconds)
                if len(got) == 2:
                    samples[target]["paired_diff"].append(got["orchestrated"] - got["direct"])
    finally:
        await paths.close()

    per_target: dict[str, Any] = {}
    for target in targets:
        s = samples[target]
        orch = statistics.median(s["orchestrated"]) if s["orchestrated"] else None
        direct = statistics.median(s["direct"]) if s["direct"] else None
        per_target[target] = {
            "orchestrated_s": summary(s["orchestrated"]),
            "direct_s": summary(s["direct"]),
            "overhead_ratio": (orch / direct - 1.0) if orch and direct else None,
            "overhead_ms": (orch - direct) * 1000 if orch and direct else None,
            "paired_overhead_ms_median": (statistics.median(s["paired_diff"]) * 1000
                                          if s["paired_diff"] else None),
            "stage_medians_s": {k: statistics.median(v) for k, v in sorted(stages[target].items())},
            "failures": {k: len(v) for k, v in failures[target].items()},
            "failure_examples": {k: v[:3] for k, v in failures[target].items() if v},
            "samples_s": {k: s[k] for k in ("orchestrated", "direct")},
        }
    ratios = [v["overhead_ratio"] for v in per_target.values() if v["overhead_ratio"] is not None]
    worst = max(ratios) if ratios else None
    return {
        "targets": per_target,
        "overhead_ratio": worst,
        "target_ratio": args.target_ratio,
        "meets_target": worst is not None and worst <= args.target_ratio,
        "failures": sum(sum(v["failures"].values()) for v in per_target.values()),
        "images_sent": {name: {"bytes": r.sent_bytes, "refs": r.sent_refs}
                        for name, r in paths.refs.items()},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks._stack import stack_for

    addresses = given_addresses(args, (ORCHESTRATOR, *SERVERS))
    if addresses:
        missing = [n for n in (ORCHESTRATOR, *SERVERS) if n not in addresses]
        if missing:
            raise SystemExit(f"a running stack needs every address; missing: {missing}")
    elif not args.full:
        args.steps = args.steps or TINY_STEPS
        args.short_side = args.short_side or TINY_SHORT_SIDE
    async with stack_for(args, models=SERVERS, orchestrator=True) as endpoints:
        return {"stack": stack_label(endpoints), **await measure(endpoints, args)}


def report(result: dict[str, Any]) -> str:
    rows = []
    for target, r in result["targets"].items():
        for path in ("orchestrated", "direct"):
            s = r[f"{path}_s"]
            rows.append([target, path, s.get("n", 0), fmt_s(s.get("median")),
                         fmt_s(s.get("p95")), r["failures"][path]])
        ratio = r["overhead_ratio"]
        rows.append([target, "overhead", "", f"{r['overhead_ms']:+.1f} ms"
                     if r["overhead_ms"] is not None else "-",
                     f"{ratio * 100:+.1f} %" if ratio is not None else "-", ""])
    text = table(["target", "path", "n", "median", "p95", "failed"], rows)
    worst = result["overhead_ratio"]
    verdict = "meets" if result["meets_target"] else "MISSES"
    text += (f"overhead ratio (worst target): "
             f"{'-' if worst is None else f'{worst * 100:+.2f} %'} - {verdict} the "
             f"{result['target_ratio'] * 100:.0f} % target\n")
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return stack_main(NAME, argv, build_parser, run, report,
                      extra_config=lambda a: {"steps": a.steps, "short_side": a.short_side})


if __name__ == "__main__":
    main()
