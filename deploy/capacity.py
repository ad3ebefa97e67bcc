#!/usr/bin/env python3
"""Replicas per model server for a request mix and a p95 latency target (M/M/c, Erlang C).

Input: measured service times, as JSON (one entry per model server):

    {
      "segmentation": {"service_s": 0.12},
      "object-clear": {"service_s": 2.4, "batch": {"size": 4, "service_s": 6.0}},
      "flux":         {"service_s": 1.1}
    }

`service_s` is the GPU time of one request alone (the benchmark's median per-request
time on the target card); the optional `batch` is the time of a full batch of `size`
requests. Rates and targets come on the command line (or as "rate_per_s" / "p95_s" in an
entry):

    python deploy/capacity.py times.json --rate segmentation=8 --rate object-clear=1.5 \
        --rate flux=2 --p95 10 --p95 segmentation=1

Model, per server: Poisson arrivals at rate lam, c identical replicas each serving one
request (or one full batch) at a time, first come first served.

    S      service time of a request: `service_s`; with `batch`, the replica's throughput is
           size / batch.service_s, i.e. S_eff = batch.service_s / size per request, and the
           latency of a request includes the whole batch time.
    a      = lam * S_eff, the offered load in Erlangs; rho = a / c must stay below 1.
    B(c,a) Erlang B, by the stable recursion B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1)).
    C(c,a) Erlang C, the probability that a request waits:
           C = c B / (c - a (1 - B))
           (= [a^c/c! * c/(c-a)] / [sum_{k<c} a^k/k! + a^c/c! * c/(c-a)]).
    Wait   P(Wq > t) = C exp(-(c/S_eff - lam) t), so its p-quantile is
           Wq_p = ln(C / (1 - p)) / (c/S_eff - lam) when C > 1 - p, else 0.
    Target the p95 latency L is met when Wq_95 + S_lat <= L, S_lat being the time of the
           request itself (the batch time with batching): the wait budget is L - S_lat.
    Answer the smallest c >= max(1, floor(a) + 1) whose Wq_95 fits that budget.

Exponential service times overstate the spread of GPU work (nearly constant per shape):
for constant service the waits are about half (M/D/c), so the answer errs on the side of
one replica too many, which is the side to err on. Batches are assumed full (true under
the load that matters). The HPA then follows the real load around this (see README).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path


def erlang_b(c: int, a: float) -> float:
    """Blocking probability of M/M/c/c with offered load `a` Erlangs."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c (c servers, `a` Erlangs); 1 if a >= c."""
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    b = erlang_b(c, a)
    return c * b / (c - a * (1 - b))


def wait_quantile(c: int, lam: float, service_s: float, p: float = 0.95) -> float:
    """The p-quantile of the queueing delay in M/M/c (inf when overloaded)."""
    if lam <= 0:
        return 0.0
    a = lam * service_s
    if a >= c:
        return math.inf
    pw = erlang_c(c, a)
    if pw <= 1 - p:
        return 0.0
    drain = c / service_s - lam  # > 0 above, but rounding can make it 0 when a ~ c
    return math.log(pw / (1 - p)) / drain if drain > 0 else math.inf


def mean_wait(c: int, lam: float, service_s: float) -> float:
    """Mean queueing delay in M/M/c: C / (c mu - lam)."""
    a = lam * service_s
    if lam <= 0:
        return 0.0
    if a >= c:
        return math.inf
    return erlang_c(c, a) / (c / service_s - lam)


@dataclass
class Plan:
    model: str
    rate_per_s: float
    service_s: float       # per request, for capacity (S_eff)
    latency_s: float       # the request's own time, for latency (S_lat)
    target_p95_s: float
    replicas: int
    utilization: float
    p_wait: float
    p95_wait_s: float
    p95_latency_s: float


def replicas_for(lam: float, service_s: float, wait_budget_s: float, p: float = 0.95,
                 min_replicas: int = 1, max_replicas: int = 10_000) -> int:
    """Smallest replica count whose p-quantile wait is within the budget."""
    if wait_budget_s < 0:
        raise ValueError(f"target below the service time itself (budget {wait_budget_s:.3f} s)")
    c = max(min_replicas, 1, math.floor(lam * service_s) + 1 if lam > 0 else 1)
    while wait_quantile(c, lam, service_s, p) > wait_budget_s:
        c += 1
        if c > max_replicas:
            raise ValueError(f"more than {max_replicas} replicas needed")
    return c


def plan(model: str, entry: dict, rate_per_s: float, target_p95_s: float,
         min_replicas: int = 1) -> Plan:
    service = float(entry["service_s"])
    latency = service
    batch = entry.get("batch")
    if batch and int(batch.get("size", 1)) > 1:
        latency = float(batch["service_s"])
        service = latency / int(batch["size"])
    if service <= 0:
        raise ValueError(f"{model}: service_s must be > 0")
    c = replicas_for(rate_per_s, service, target_p95_s - latency, min_replicas=min_replicas)
    a = rate_per_s * service
    w95 = wait_quantile(c, rate_per_s, service)
    return Plan(model, rate_per_s, service, latency, target_p95_s, c, a / c,
                erlang_c(c, a), w95, w95 + latency)


def _pairs(values: list[str]) -> tuple[float | None, dict[str, float]]:
    """`--x 3 --x model=5` -> (3, {"model": 5})."""
    default, per_model = None, {}
    for value in values:
        if "=" in value:
            name, _, number = value.partition("=")
            per_model[name] = float(number)
        else:
            default = float(value)
    return default, per_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="capacity.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("times", type=Path, help="JSON with service times per model")
    parser.add_argument("--rate", action="append", default=[], metavar="[MODEL=]REQ_PER_S",
                        help="request rate, per model (repeat) or for all")
    parser.add_argument("--p95", action="append", default=[], metavar="[MODEL=]SECONDS",
                        help="p95 latency target, per model (repeat) or for all")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    times = json.loads(args.times.read_text())
    rate_all, rates = _pairs(args.rate)
    p95_all, p95s = _pairs(args.p95)
    unknown = (set(rates) | set(p95s)) - set(times)
    if unknown:
        parser.error(f"not in {args.times}: {', '.join(sorted(unknown))}")
    plans = []
    for model, entry in times.items():
        rate = rates.get(model, entry.get("rate_per_s", rate_all))
        target = p95s.get(model, entry.get("p95_s", p95_all))
        if rate is None or target is None:
            parser.error(f"{model}: give a rate and a p95 target (--rate, --p95)")
        try:
            plans.append(plan(model, entry, float(rate), float(target), args.min_replicas))
        except ValueError as exc:
            print(f"{model}: {exc}", file=sys.stderr)
            return 1

    if args.json:
        print(json.dumps([vars(p) for p in plans], indent=2))
        return 0
    head = (f"{'model':<14} {'req/s':>7} {'S (s)':>7} {'load':>6} {'replicas':>8} "
            f"{'util':>5} {'P(wait)':>7} {'p95 wait':>9} {'p95 lat':>8} {'target':>7}")
    print(head)
    print("-" * len(head))
    for p in plans:
        print(f"{p.model:<14} {p.rate_per_s:>7.2f} {p.service_s:>7.3f} "
              f"{p.rate_per_s * p.service_s:>6.2f} {p.replicas:>8d} {p.utilization:>5.0%} "
              f"{p.p_wait:>7.3f} {p.p95_wait_s:>8.2f}s {p.p95_latency_s:>7.2f}s "
              f"{p.target_p95_s:>6.2f}s")
    print(f"{'total':<14} {'':>7} {'':>7} {'':>6} {sum(p.replicas for p in plans):>8d}  GPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
