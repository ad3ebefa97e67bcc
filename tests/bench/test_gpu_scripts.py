"""The GPU-run scripts: what can be checked without a GPU or a network.

benchmarks/gpu-wheels.sh pins every wheel from uv.lock (so the GPU run uses what the
tests used) and benchmarks/gpu-run.sh dispatches stages; the stages themselves need CUDA.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_carried_wheel_is_pinned_by_the_lock():
    script = (ROOT / "benchmarks/gpu-wheels.sh").read_text(encoding="utf-8")
    listed = re.search(r"packages=\((.*?)\)", script, re.S).group(1).split()
    lock = {p["name"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    assert {"diffusers", "torchao", "transformers", "pydantic-settings"} <= set(listed)
    assert set(listed) <= lock, set(listed) - lock


def test_gpu_run_refuses_an_unknown_stage_naming_it(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "MIC2E_WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu-run.sh"), "warp-speed"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown stage 'warp-speed'" in done.stderr
    assert "torch" in done.stdout  # it reports the torch and GPU it found first
