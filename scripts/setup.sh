#!/usr/bin/env bash
# Shared set-up of the README's two commands: everything a fresh machine with only Python
# needs. Idempotent and quick on a machine that has run it before (uv and npm caches).
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$HOME/.local/bin:$PATH"
export HF_HUB_OFFLINE=1  # nothing downloads weights here; tiny checkpoints are built

if ! command -v uv >/dev/null 2>&1; then
  echo "==> installing uv (from PyPI)"
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
fi

echo "==> syncing the Python environment (uv.lock)"
uv sync --locked --all-packages --quiet

if [ "${MIC2E_SETUP_NODE:-0}" = 1 ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "==> installing Node.js (Debian packages)"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "==> installing Node tooling (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "==> writing tiny checkpoints to .tiny/"
uv run --locked --no-sync mic2e-server make-tiny .tiny >/dev/null
