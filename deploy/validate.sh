#!/usr/bin/env bash
# Offline validation of deploy/ (Kubernetes manifests, compose files, Dockerfile); see
# validate.py for what is checked. Needs the tools of setup-validate.sh (run it once, with
# PyPI reachable); uses no network itself.
#   deploy/validate.sh [--out DIR] | --manifests FILE... | --compose FILE...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="$here/.tools/venv/bin/python"
if [ ! -x "$py" ] || [ ! -x "$here/.tools/bin/docker-compose" ]; then
  echo "deploy/validate.sh: validators missing; run deploy/setup-validate.sh first" >&2
  exit 2
fi
exec "$py" "$here/validate.py" "$@"
