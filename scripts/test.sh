#!/usr/bin/env bash
# The test command: installs everything (scripts/setup.sh; see scripts/python.sh), then runs the suite
# on 2 processes (tests marked with one xdist_group share a worker, and so its module fixtures). By
# default the fast set (the tests not marked slow); `bash scripts/test.sh -m slow` runs the slow set,
# `-m ""` everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
exec "$PY" -m pytest -n 2 --dist loadgroup --durations=15 "$@"
