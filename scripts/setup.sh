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

apt_install() {  # Debian packages the tests need; as root, or through sudo
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "==> installing $* (Debian packages)"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null
}

if [ "${MIC2E_SETUP_TEST_TOOLS:-0}" = 1 ]; then
  # Node.js for buf and the TypeScript client; a real Prometheus for the metrics test.
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  command -v prometheus >/dev/null 2>&1 || apt_install prometheus
  echo "==> installing Node tooling (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "==> writing tiny checkpoints to .tiny/"
uv run --locked --no-sync mic2e-server make-tiny .tiny >/dev/null
