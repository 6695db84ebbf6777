#!/usr/bin/env bash
# The test command: installs everything (scripts/setup.sh), then runs the whole suite on 2 processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 --durations=15 "$@"
