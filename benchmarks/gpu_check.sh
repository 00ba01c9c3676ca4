#!/usr/bin/env bash
# One prepared GPU check (issue 10): training tokens/s + MFU (prefix-tuning, fine-tuning, with/without gradient
# checkpointing; GPT-2-Medium- and SmolLM2-135M-shaped random models), beam-5 decode MRs/s, and greedy
# CPU-fp32 vs GPU-fp32 equality on 20 E2E dev MRs. Budget: <= 8 min on one GPU (each part is bounded).
#   benchmarks/gpu_check.sh               # on a GPU machine
#   benchmarks/gpu_check.sh --cpu-smoke   # tiny shapes on the CPU: proves the script runs (seconds)
# Needs the E2E data (PREFIX_TUNING_DATA or the cache) and GPT-2's tokenizer (beside the data or the hub).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
