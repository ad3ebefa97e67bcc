"""`mic2e-server up` stops cleanly on SIGTERM at any moment: while it writes the tiny
models, and while its servers are still starting; it exits 0 and leaves no server
process and no half-written model folder behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mic2e_dev.tiny import TINY_FOLDERS


def free_block(count: int = 4) -> int:
    """A port P with P .. P+count-1 free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError("no block of free ports")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def up(tiny_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mic2e_services.cli", "up", "--tiny-dir", str(tiny_dir),
         "--base-port", str(free_block()), "--metrics-base-port", str(free_block())],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def wait_for(condition, timeout_s: float) -> bool:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_sigterm_while_writing_the_tiny_models(tmp_path: Path):
    tiny = tmp_path / "tiny"
    proc = up(tiny)
    try:
        assert wait_for(lambda: tiny.exists() and any(tiny.iterdir()), 60), "never started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    left = sorted(p.name for p in tiny.iterdir())
    assert not [name for name in left if "partial" in name], left
    for name in set(left) & set(TINY_FOLDERS.values()):  # whatever was finished is whole
        assert any((tiny / name / f).exists() for f in ("model_index.json", "config.json"))


def test_sigterm_while_the_servers_start(tiny_sam3, tiny_objectclear, tiny_flux):
    proc = up(tiny_sam3.parent)
    try:
        assert wait_for(lambda: len(children(proc.pid)) == 4, 60), "servers never started"
        servers = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert [pid for pid in servers if alive(pid)] == []
