#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite (slow tests deselected; add `-m slow` for those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export PREFIX_TUNING_DATA="${PREFIX_TUNING_DATA:-$(cd .. && pwd)/shared/data}"
exec python -m pytest "$@"
