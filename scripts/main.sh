#!/usr/bin/env bash
# Set up (idempotent) and run the main job: the paper's comparison at small scale on real data and a real
# pretrained model (low-data E2E, prefix-tuning vs fine-tuning on SmolLM2-135M, CPU, <= 15 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -z "${PREFIX_TUNING_DATA:-}" ] && [ -f ../shared/data/e2e/e2e-dataset.zip ]; then
  export PREFIX_TUNING_DATA="$(cd .. && pwd)/shared/data"
fi
exec prefix-tuning reproduce demo "$@"
