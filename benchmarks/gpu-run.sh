#!/usr/bin/env bash
# One stage of the GPU benchmarks (issue 8: speed and fidelity; issue 10: memory modes) on
# a CUDA machine whose python3 already has torch. Nothing is installed but the wheels in
# .whl/ (from benchmarks/gpu-wheels.sh; MIC2E_WHEELS names another folder), into
# /tmp/site; the repo runs from source.
#
#   benchmarks/gpu-run.sh STAGE [more options for the program]
#
# STAGE (rough times on one H100/H200, cold compile cache):
#   sam3 | objectclear | flux   benchmarks.models --profile full for that model: old
#                               setting / eager / compiled, fidelity, throughput (3-6 min)
#   restart MODEL               the same model again on the SAME compile cache, timing only:
#                               its first_call_s is a restart with a warm cache (1-2 min)
#   remove                      benchmarks.overhead --full --compile: "remove the dog" through
#                               the orchestrator, client-observed, vs direct calls (4-7 min)
#   memory-goals                benchmarks.memory: references + the runs behind each goal
#                               of issue 10, each under its card's cap (6-9 min)
#   memory MODEL                benchmarks.memory, every run of that model (3-9 min)
#   tiny                        both programs on the tiny CPU models: checks the set-up
#
# JSON lands in $OUT when set (the lent GPU machine's return folder), else in
# benchmarks/results/gpu-run/; copy what you keep into benchmarks/results/ (--record
# names it <date>-<gpu>-<program>-<profile>.json).
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-python3}
wheels=${MIC2E_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$wheels"/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/client/src:$PWD/services/src:$PWD"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-benchmarks/results/gpu-run}
mkdir -p "$out"
cache=${MIC2E_COMPILE_CACHE_DIR:-/tmp/mic2e-compile}

stage=${1:?usage: benchmarks/gpu-run.sh STAGE [options]; see the header}
shift
"$py" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
PY
case "$stage" in
  sam3|objectclear|flux)
    "$py" -m benchmarks.models --profile full --models "$stage" --compile-cache-dir "$cache" \
      --out "$out/models-$stage.json" "$@" ;;
  restart)
    model=${1:?restart needs a model: sam3, objectclear or flux}
    shift
    "$py" -m benchmarks.models --profile full --models "$model" --compile-cache-dir "$cache" \
      --repeats 1 --skip-throughput --skip-fidelity --out "$out/restart-$model.json" "$@" ;;
  remove)
    "$py" -m benchmarks.overhead --full --compile --compile-cache-dir "$cache" \
      --image-size 1024x768 --out "$out/remove.json" "$@" ;;
  memory-goals)
    "$py" -m benchmarks.memory --profile full \
      --runs sam3=resident,resident@4,int8@4 \
      --runs objectclear=resident,resident@8,int8@8 \
      --runs flux=resident,int8@24,int8+offload@16 \
      --out "$out/memory-goals.json" "$@" ;;
  memory)
    model=${1:?memory needs a model: sam3, objectclear or flux}
    shift
    "$py" -m benchmarks.memory --profile full --models "$model" \
      --out "$out/memory-$model.json" "$@" ;;
  tiny)
    "$py" -m benchmarks.models --models flux --repeats 1 --skip-throughput \
      --out "$out/models-tiny.json" "$@"
    "$py" -m benchmarks.memory --models flux --repeats 1 --out "$out/memory-tiny.json" ;;
  *)
    echo "unknown stage '$stage'; see the header of $0" >&2
    exit 2 ;;
esac
