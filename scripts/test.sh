#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite (slow tests deselected; add `-m slow` for those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export PREFIX_TUNING_DATA="${PREFIX_TUNING_DATA:-$(cd .. && pwd)/shared/data}"
# one code style: lint and format checks first (seconds), then the tests
python -m ruff check src tests benchmarks scripts
python -m ruff format --check src tests benchmarks scripts
exec python -m pytest "$@"
