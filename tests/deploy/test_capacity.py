"""deploy/capacity.py: Erlang C against textbook values, and replicas that meet the target."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.deploy import DEPLOY, deploy_script

SCRIPT = DEPLOY / "capacity.py"
capacity = deploy_script("capacity")


def test_erlang_textbook_values():
    # M/M/1: the probability of waiting is the utilisation.
    assert capacity.erlang_c(1, 0.7) == pytest.approx(0.7)
    # M/M/2 at 1 Erlang: C = (1/2 * 2) / (1 + 1 + 1) = 1/3.
    assert capacity.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # Erlang B table: 5 lines offered 3 Erlangs block 11.01 %; Erlang C from it: 23.62 %.
    assert capacity.erlang_b(5, 3.0) == pytest.approx(0.1101, abs=1e-4)
    assert capacity.erlang_c(5, 3.0) == pytest.approx(0.2362, abs=1e-4)
    # The closed form, term by term, agrees with the recursion.
    c, a = 7, 5.2
    top = a**c / math.factorial(c) * c / (c - a)
    closed = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    assert capacity.erlang_c(c, a) == pytest.approx(closed)
    # Overload: everybody waits, for ever.
    assert capacity.erlang_c(3, 3.0) == 1.0
    assert capacity.wait_quantile(3, 10.0, 0.3) == math.inf


def test_mm1_wait_formulas():
    lam, s = 0.5, 1.0  # rho 0.5, mu 1
    assert capacity.mean_wait(1, lam, s) == pytest.approx(0.5 / (1.0 - 0.5))
    # P(Wq > t) = rho exp(-(mu - lam) t): the 95th percentile is ln(0.5/0.05)/0.5.
    assert capacity.wait_quantile(1, lam, s) == pytest.approx(math.log(10) / 0.5)
    # Waiting is rarer than 5 %: the 95th percentile wait is zero.
    assert capacity.wait_quantile(1, 0.04, 1.0) == 0.0


def test_replicas_are_minimal_and_meet_the_target():
    for lam, s, budget in [(8, 0.12, 0.5), (1.5, 2.4, 5.0), (40, 1.1, 1.0), (0.1, 3.0, 0.0)]:
        c = capacity.replicas_for(lam, s, budget)
        assert lam * s < c, "stable"
        assert capacity.wait_quantile(c, lam, s) <= budget
        if c > max(1, math.floor(lam * s) + 1):
            assert capacity.wait_quantile(c - 1, lam, s) > budget, "one fewer would do"


def test_replicas_grow_with_load_and_shrink_with_a_looser_target():
    rates = [0.1 * k for k in range(1, 200)]
    counts = [capacity.replicas_for(lam, 1.1, 2.0) for lam in rates]
    assert counts == sorted(counts)
    assert counts[-1] > counts[0]
    loose = [capacity.replicas_for(lam, 1.1, 20.0) for lam in rates]
    assert all(a <= b for a, b in zip(loose, counts, strict=True))
    assert sum(loose) < sum(counts)


def test_batching_counts_throughput_and_batch_latency():
    entry = {"service_s": 2.4, "batch": {"size": 4, "service_s": 6.0}}
    p = capacity.plan("object-clear", entry, rate_per_s=1.5, target_p95_s=10.0)
    assert p.service_s == pytest.approx(1.5)
    assert p.latency_s == 6.0
    assert p.p95_latency_s <= 10.0
    unbatched = capacity.plan("object-clear", {"service_s": 2.4}, 1.5, 10.0)
    assert unbatched.replicas > p.replicas


def test_a_target_below_the_service_time_is_an_error():
    with pytest.raises(ValueError, match="below the service time"):
        capacity.plan("flux", {"service_s": 1.1}, rate_per_s=1.0, target_p95_s=0.5)


def test_command_line(tmp_path):
    times = tmp_path / "times.json"
    times.write_text(json.dumps({"segmentation": {"service_s": 0.12},
                                 "flux": {"service_s": 1.1, "rate_per_s": 2}}))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(times), "--rate", "segmentation=8", "--p95", "10",
         "--p95", "segmentation=1", "--json"], capture_output=True, text=True, check=True)
    plans = {p["model"]: p for p in json.loads(proc.stdout)}
    assert plans["segmentation"]["replicas"] == 2
    assert plans["segmentation"]["target_p95_s"] == 1.0
    assert plans["flux"]["rate_per_s"] == 2.0
    assert plans["flux"]["p95_latency_s"] <= 10.0
    table = subprocess.run([sys.executable, str(SCRIPT), str(times), "--rate", "1",
                            "--p95", "10"], capture_output=True, text=True, check=True).stdout
    assert "segmentation" in table and "total" in table
    bad = subprocess.run([sys.executable, str(SCRIPT), str(times), "--rate", "nope=1",
                          "--p95", "10"], capture_output=True, text=True)
    assert bad.returncode != 0 and "nope" in bad.stderr
