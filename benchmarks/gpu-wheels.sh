#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels a GPU machine without network needs to run
# benchmarks/gpu-run.sh, into .whl/ (git-ignored). Versions come from uv.lock, so the GPU
# run uses what the tests used.
#
# The GPU image is assumed to hold torch with Triton and a C compiler (Inductor needs
# both), numpy, pillow, safetensors >= 0.8, tokenizers 0.23, huggingface_hub >= 1.32 (a
# typical CUDA PyTorch image, as the lent H100/H200 one; never reinstall torch). It lacks
# diffusers and torchao, and its grpcio / protobuf may be older than the generated stubs
# accept (they check at import); transformers is carried so SAM3 runs the version the
# tests ran, with the newer regex it checks for at import; accelerate (model offload) and
# typing-extensions (pydantic-core) in case the image's are older.
#   PYTHON_VERSION=3.12 benchmarks/gpu-wheels.sh     # the target's Python (default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON_VERSION:-3.12}
# The model benchmarks (models, memory) need the first two lines; the in-process stack
# (overhead --full: servers, orchestrator) the rest too.
packages=(diffusers torchao transformers regex accelerate typing-extensions grpcio
          grpcio-health-checking protobuf googleapis-common-protos importlib-metadata
          pydantic pydantic-core pydantic-settings annotated-types typing-inspection
          python-dotenv grpcio-reflection grpcio-status opentelemetry-api opentelemetry-sdk
          opentelemetry-semantic-conventions)
pins=$(python3 - "${packages[@]}" <<'PY'
import sys, tomllib
lock = {p["name"]: p["version"] for p in tomllib.load(open("uv.lock", "rb"))["package"]}
missing = [name for name in sys.argv[1:] if name not in lock]
if missing:
    sys.exit(f"not in uv.lock: {missing}")
print(" ".join(f"{name}=={lock[name]}" for name in sys.argv[1:]))
PY
)
rm -rf .whl && mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp "${platforms[@]}" -d .whl $pins
ls -1 .whl
du -sh .whl
