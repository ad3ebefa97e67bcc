#!/usr/bin/env python3
"""The autoscaling chain of one model server, simulated second by second: traffic,
replicas that take minutes to start, admission control, Prometheus' rate over scraped
counters, and the HorizontalPodAutoscaler's algorithm with the behaviour in deploy/k8s.

Two signals can drive it:

``demand`` (what the manifests use)
    D = sum over replicas of rate(mic2e_demand_gpu_seconds_total[1m]): the device time
    of everything offered per second - admitted, and refused (queue full, deadline too
    short) - i.e. how many GPUs the traffic keeps busy. The HPA target is the external
    metric floor(D) + 1 with an average value of 1 per replica: the busy GPUs plus one
    spare, which is what `capacity.py` (M/M/c) answers when the latency budget is a few
    service times. It is an absolute count: replicas still starting are already in it,
    so a burst asks for what it needs and no more; refused work is in it, so short
    deadlines cannot hide demand.
``backlog`` (what the manifests used before, for comparison)
    mic2e_queued_gpu_seconds averaged per pod against a per-replica target. The backlog
    keeps growing while new replicas load, so the HPA keeps adding replicas up to its
    maximum; refused work never enters it.

    python deploy/scaling.py deploy/service-times.h200.json --model flux \\
        --burst 2400 --over 300 [--signal backlog] [--startup 180]

prints the timeline (every 30 s) and a summary as JSON with --json. Pure standard library.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: How often the HPA controller evaluates, Prometheus scrapes, and the rate() window.
HPA_SYNC_S = 15
SCRAPE_S = 15
RATE_WINDOW_S = 60
#: The HPA's tolerance: no change while desired/current is within 10 %.
TOLERANCE = 0.1


@dataclass
class Behavior:
    """An HPA's `behavior`, as deploy/k8s sets it (the test holds the manifests to it)."""

    up_pods: int = 4            # scaleUp: add at most max(up_pods, up_percent) per period
    up_percent: int = 100
    up_period_s: int = 60
    down_window_s: int = 300    # scaleDown stabilisation window
    down_percent: int = 100     # remove at most this share per period ...
    down_pods: int | None = None  # ... or, when set, this many pods
    down_period_s: int = 60


#: The behaviour the manifests had with the backlog signal (for comparison).
OLD_BEHAVIOR = Behavior(up_pods=2, up_percent=0, down_window_s=600, down_pods=1,
                        down_period_s=300)


@dataclass
class Config:
    service_s: float            # device time of one request
    startup_s: float = 180.0    # pod start to SERVING (image, weights from cache, warm-up)
    min_replicas: int = 1
    max_replicas: int = 16
    signal: str = "demand"      # or "backlog"
    backlog_target_s: float = 4.0   # the backlog signal's per-replica target
    deadline_s: float | None = None  # callers' deadline (None: none)
    max_queue: int = 64
    behavior: Behavior = field(default_factory=Behavior)
    # The demand signal's replica count from the busy GPUs (the adapter rule / KEDA
    # query); a parameter so a test can show its bounds would catch another formula.
    replicas_for: Callable[[float], int] = field(default=lambda busy: math.floor(busy) + 1)


@dataclass
class Replica:
    ready_at: float
    work: collections.deque = field(default_factory=collections.deque)  # remaining seconds
    draining: bool = False

    def backlog(self) -> float:
        return sum(self.work)


@dataclass
class Result:
    times: list[float]
    desired: list[int]
    ready: list[int]
    admitted: int
    refused: int
    peak_desired: int
    back_to_min_s: float | None  # seconds after the traffic ended until desired == min


def simulate(cfg: Config, rate_at, duration_s: float, seed: int = 0,
             traffic_end_s: float | None = None) -> Result:
    """Run `duration_s` seconds; `rate_at(t)` is the arrival rate (requests/s) at t."""
    rng = random.Random(seed)
    replicas = [Replica(ready_at=0.0) for _ in range(cfg.min_replicas)]
    demand_total = 0.0
    scraped: collections.deque = collections.deque()  # (t, demand_total, backlog_sum)
    recommendations: collections.deque = collections.deque()  # (t, desired) for scale-down
    scale_events: collections.deque = collections.deque()  # (t, +/- count)
    desired_current = cfg.min_replicas
    out = Result([], [], [], 0, 0, cfg.min_replicas, None)
    next_rr = 0
    t = 0.0
    dt = 0.1
    while t < duration_s:
        # 1. Arrivals (Poisson), round-robin over ready replicas (the orchestrator's channel).
        arrivals = _poisson(rng, rate_at(t) * dt)
        ready = [r for r in replicas if r.ready_at <= t and not r.draining]
        for _ in range(arrivals):
            if not ready:
                # No server sees it (the orchestrator's call fails), so no counter has it.
                out.refused += 1
                continue
            demand_total += cfg.service_s
            replica = ready[next_rr % len(ready)]
            next_rr += 1
            refused = len(replica.work) >= cfg.max_queue or (
                cfg.deadline_s is not None
                and replica.backlog() + cfg.service_s > cfg.deadline_s)
            if refused:
                out.refused += 1
            else:
                replica.work.append(cfg.service_s)
                out.admitted += 1
        # 2. Each replica works on its queue (one request at a time).
        for replica in replicas:
            if replica.ready_at > t:
                continue
            left = dt
            while left > 0 and replica.work:
                done = min(left, replica.work[0])
                replica.work[0] -= done
                left -= done
                if replica.work[0] <= 1e-9:
                    replica.work.popleft()
        replicas = [r for r in replicas if not (r.draining and not r.work)]
        # 3. Prometheus scrapes.
        if _every(t, dt, SCRAPE_S):
            backlog = sum(r.backlog() for r in replicas if r.ready_at <= t)
            scraped.append((t, demand_total, backlog))
            while scraped and scraped[0][0] < t - 10 * RATE_WINDOW_S:
                scraped.popleft()
        # 4. The HPA.
        if _every(t, dt, HPA_SYNC_S) and scraped:
            live = [r for r in replicas if not r.draining]
            current = len(live)
            desired = _desired(cfg, scraped, t, current)
            desired_current = _apply_behavior(cfg, desired, current, t, recommendations,
                                              scale_events)
            if desired_current > current:
                replicas += [Replica(ready_at=t + cfg.startup_s)
                             for _ in range(desired_current - current)]
            elif desired_current < current:
                # Not-ready replicas go first, then the youngest (as a ReplicaSet does).
                order = sorted(live, key=lambda r: (r.ready_at <= t, -r.ready_at))
                for replica in order[:current - desired_current]:
                    replica.draining = True
                    if replica.ready_at > t:
                        replica.work.clear()
                replicas = [r for r in replicas if not (r.draining and not r.work)]
            out.peak_desired = max(out.peak_desired, desired_current)
            if (traffic_end_s is not None and t >= traffic_end_s and out.back_to_min_s is None
                    and desired_current == cfg.min_replicas):
                out.back_to_min_s = t - traffic_end_s
        if _every(t, dt, 30):
            out.times.append(round(t))
            out.desired.append(desired_current)
            out.ready.append(sum(1 for r in replicas if r.ready_at <= t and not r.draining))
        t = round(t + dt, 6)
    return out


def _desired(cfg: Config, scraped, t: float, current: int) -> int:
    """The HPA's raw recommendation from the last scraped samples."""
    _, demand_now, backlog_now = scraped[-1]
    if cfg.signal == "demand":
        past = [s for s in scraped if s[0] <= t - RATE_WINDOW_S]
        then_t, then_d, _ = past[-1] if past else scraped[0]
        seconds = max(scraped[-1][0] - then_t, SCRAPE_S)
        busy = (demand_now - then_d) / seconds
        value = cfg.replicas_for(busy)  # the external metric; target average value 1
        ratio = value / max(current, 1)
    else:
        window = [s[2] for s in scraped if s[0] > t - RATE_WINDOW_S]
        value = sum(window) / len(window)
        ratio = value / max(current, 1) / cfg.backlog_target_s
    if abs(ratio - 1) <= TOLERANCE:
        return current
    return math.ceil(ratio * max(current, 1))


def _apply_behavior(cfg: Config, desired: int, current: int, t: float, recommendations,
                    scale_events) -> int:
    """The HPA's behavior: stabilisation and rate policies (as the controller computes
    them), then min/max."""
    b = cfg.behavior
    desired = min(max(desired, cfg.min_replicas), cfg.max_replicas)
    recommendations.append((t, desired))
    while recommendations and recommendations[0][0] <= t - b.down_window_s:
        recommendations.popleft()
    if desired < current:
        # Down: never below the highest recommendation of the window, nor faster than
        # the policy allows from where the period started.
        desired = min(current, max(d for _, d in recommendations))
        removed = -sum(n for s, n in scale_events if s > t - b.down_period_s and n < 0)
        period_start = current + removed
        lowest = (period_start - b.down_pods if b.down_pods is not None
                  else math.ceil(period_start * (1 - b.down_percent / 100)))
        desired = max(desired, lowest)
    elif desired > current:
        added = sum(n for s, n in scale_events if s > t - b.up_period_s and n > 0)
        period_start = current - added
        limit = max(period_start + b.up_pods,
                    math.ceil(period_start * (1 + b.up_percent / 100)))
        desired = min(desired, max(limit, current))
    if desired != current:
        scale_events.append((t, desired - current))
    while scale_events and scale_events[0][0] <= t - max(b.up_period_s, b.down_period_s):
        scale_events.popleft()
    return desired


def _every(t: float, dt: float, period: float) -> bool:
    return math.floor((t + dt) / period) > math.floor(t / period)


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: the means here are small (rate x 0.1 s).
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def burst(rate_per_s: float, start_s: float, duration_s: float):
    """Traffic: `rate_per_s` from `start_s` for `duration_s`, nothing else."""
    return lambda t: rate_per_s if start_s <= t < start_s + duration_s else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scaling.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("times", type=Path, help="service times per model (capacity.py's)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--burst", type=int, required=True, help="requests in the burst")
    parser.add_argument("--over", type=float, default=300, help="the burst's length, s")
    parser.add_argument("--signal", choices=["demand", "backlog"], default="demand")
    parser.add_argument("--startup", type=float, default=180, help="pod start to SERVING, s")
    parser.add_argument("--max-replicas", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    entry = json.loads(args.times.read_text())[args.model]
    service = float(entry["service_s"])
    cfg = Config(service_s=service, startup_s=args.startup, signal=args.signal,
                 max_replicas=args.max_replicas,
                 behavior=Behavior() if args.signal == "demand" else OLD_BEHAVIOR)
    start = 60.0
    result = simulate(cfg, burst(args.burst / args.over, start, args.over),
                      duration_s=start + args.over + 1200, traffic_end_s=start + args.over)
    if args.json:
        print(json.dumps(vars(result)))
        return 0
    print(f"{'t (s)':>6} {'desired':>7} {'ready':>5}")
    for t, d, r in zip(result.times, result.desired, result.ready, strict=True):
        print(f"{t:>6} {d:>7} {r:>5}")
    print(f"peak desired {result.peak_desired}; admitted {result.admitted}, refused "
          f"{result.refused}; back to min {result.back_to_min_s} s after the burst")
    return 0


if __name__ == "__main__":
    sys.exit(main())
