"""Run the five benchmarks one after the other: tiny on CPU, or `--full` on a GPU.

    uv run python -m benchmarks.all                    # tiny stack, CPU (a few minutes)
    uv run python -m benchmarks.all --full --record    # CUDA: full-size random weights

Each program runs in its own process (so one's memory never weighs on the next), writes
its JSON into `--out-dir`, and with `--record` files it under benchmarks/results/. A short
summary of the headline figures ends the run. `--only` picks a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import REPO, quiet, quiet_env

PROGRAMS = ("models", "memory", "overhead", "load", "soak")


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    full = ["--full"] if args.full else []
    common = ["--record"] if args.record else []
    if args.tiny_dir and not args.full:
        common += ["--tiny-dir", str(args.tiny_dir)]
    profile = ["--profile", "full" if args.full else "tiny"]
    soak_mode = [] if args.full else ["--in-process"] if args.soak_in_process else []
    return {
        "models": [*profile, *common],
        "memory": [*profile, *common],
        "overhead": [*full, *common],
        "load": [*full, "--seconds", str(args.load_seconds), *common],
        "soak": [*full, *soak_mode, "--seconds", str(args.soak_seconds), *common],
    }


def headline(name: str, r: dict) -> str:
    if name == "models":
        parts = []
        for model, m in r.get("models", {}).items():
            speedups = [t.get("speedup") for t in m["paths"].values() if t.get("speedup")]
            parts.append(f"{model}: {len(m['paths'])} paths, speedup "
                         f"{min(speedups):.2f}-{max(speedups):.2f}" if speedups else model)
        return "; ".join(parts)
    if name == "memory":
        parts = [f"{g['model']} {g['card_gib']} GiB: " + ("met" if g["met"] else
                                                         f"missed ({g['gap']})")
                 for g in r.get("goals", [])]
        runs = sum(len(v) for v in r.get("runs", {}).values())
        fits = sum(bool(x.get("fits")) for v in r.get("runs", {}).values() for x in v)
        return f"{fits}/{runs} runs fit their cap" + ("; " + "; ".join(parts) if parts else "")
    if name == "overhead":
        ratio = r.get("overhead_ratio")
        return f"overhead ratio {ratio * 100:+.2f} % (target <= 5 %)" if ratio is not None else "-"
    if name == "load":
        q = r["requests"]
        p = r.get("p99_over_p50")
        return (f"accepted {q['accepted']} / refused {q['refused']} / failed {q['failed']}, "
                f"p99/p50 {p:.2f}" if p else f"accepted {q['accepted']}, refused {q['refused']}")
    if name == "soak":
        growth = {k: v["growth_pct"] for k, v in r["memory"].items()}
        return (f"{r['requests']['total']} requests, {r['failures']['total']} failures, RSS "
                "growth " + ", ".join(f"{k} {v:+.1f} %" for k, v in growth.items()
                                      if v is not None))
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    quiet()
    p = argparse.ArgumentParser(prog="python -m benchmarks.all", description=__doc__)
    p.add_argument("--full", action="store_true", help="CUDA: full-size random-weight models")
    p.add_argument("--record", action="store_true", help="file each result under results/")
    p.add_argument("--only", default=",".join(PROGRAMS), help="subset of " + ",".join(PROGRAMS))
    p.add_argument("--load-seconds", type=float, default=20.0)
    p.add_argument("--soak-seconds", type=float, help="default: 120 with --full, 60 tiny")
    p.add_argument("--soak-in-process", action="store_true",
                   help="tiny: soak inside one process instead of one process per server")
    p.add_argument("--tiny-dir", type=Path)
    p.add_argument("--out-dir", type=Path,
                   default=Path(tempfile.gettempdir()) / "mic2e-benchmarks",
                   help="where each program's JSON goes (default: <tmp>/mic2e-benchmarks)")
    args = p.parse_args(argv)
    args.soak_seconds = args.soak_seconds or (120.0 if args.full else 60.0)
    if args.full:
        import torch

        if not torch.cuda.is_available():
            from benchmarks._stack import no_cuda_message

            print(no_cuda_message("benchmarks.all --full"), file=sys.stderr)
            return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env_cmds = commands(args)
    summary, failed = [], []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        out = args.out_dir / f"{name}.json"
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *env_cmds[name], "--out", str(out)]
        print(f"==> {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd, cwd=REPO, env={**os.environ, **quiet_env()})
        took = time.monotonic() - t0
        if rc != 0 or not out.exists():
            failed.append(name)
            summary.append(f"{name:>8}: FAILED (exit {rc}) after {took:.0f} s")
            continue
        result = json.loads(out.read_text(encoding="utf-8"))
        summary.append(f"{name:>8}: {headline(name, result)}  [{took:.0f} s]")
    print("\n".join(["", "summary", *summary]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
