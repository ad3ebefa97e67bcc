#!/usr/bin/env bash
# Set-up of the TypeScript client (client-ts/): install its locked npm dependencies, check
# that its generated code matches protos/, compile it, and build the playground page
# (dist/playground/, served by the servers' HTTP port). Idempotent: `npm ci` is skipped
# while node_modules matches package-lock.json. Needs Node.js >= 20 and npm.
set -euo pipefail
cd "$(dirname "$0")/../client-ts"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup-ts: Node.js and npm are required (>= 20; ./scripts/test installs them)" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "setup-ts: Node.js >= 20 is required, found $(node --version)" >&2
  exit 1
fi

# npm ci wipes and reinstalls node_modules; a stamp of the package.json and lockfile it
# installed lets the next run skip it.
stamp=node_modules/.mic2e-lock.sha256
lock_sha="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_sha" ]; then
  echo "==> client-ts: npm dependencies up to date (package-lock.json)"
else
  echo "==> client-ts: installing npm dependencies (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sha" >"$stamp"
fi

echo "==> client-ts: generated code is fresh (npm run check-generated)"
npm run --silent check-generated

echo "==> client-ts: compiling (tsc)"
npm run --silent build

echo "==> client-ts: building the playground page (tsc, esbuild -> dist/playground)"
npm run --silent build:playground

# The package as users install it (client-ts/README.md, "Install"): `npm pack` into
# dist/mic2e-client-<version>.tgz, and dist/example-project/, a project that installed that
# tarball as the README says, where tests/e2e/test_typescript_examples.py runs the READMEs'
# examples (offline: it only copies this project). Both are redone only when what the
# tarball holds (dist/src, package.json, README.md) changed.
pack_sha="$( (find dist/src -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum package.json README.md) \
  | sha256sum | cut -d' ' -f1)"
project=dist/example-project
pack_stamp="$project/.mic2e-pack.sha256"
if [ -f "$pack_stamp" ] && [ "$(cat "$pack_stamp")" = "$pack_sha" ]; then
  echo "==> client-ts: packed client and example project up to date"
else
  echo "==> client-ts: packing the client (npm pack -> dist/) and installing it in $project"
  rm -f dist/mic2e-client-*.tgz
  tarball="$PWD/dist/$(npm pack --pack-destination dist --loglevel=error | tail -n 1)"
  rm -rf "$project"
  mkdir -p "$project"
  printf '{\n  "name": "mic2e-example-project",\n  "private": true,\n  "type": "module"\n}\n' \
    >"$project/package.json"
  # --prefer-offline: the npm cache that `npm ci` filled serves the dependencies.
  (cd "$project" && npm install --prefer-offline --no-audit --no-fund --loglevel=error "$tarball")
  echo "$pack_sha" >"$pack_stamp"
fi
