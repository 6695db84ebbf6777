#!/usr/bin/env bash
# The main job: DM distillation of real Fashion-MNIST (IPC 10, CPU-sized), evaluated against random
# real images of the same IPC. Extra arguments go to the experiment, e.g. --config.ipc=1. Its results
# section goes to runs/ (experiments/results/ holds only the recorded runs), so running it leaves the
# checkout clean.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
exec "$PY" -m experiments.distill --config experiments/configs/dm_fmnist.py \
  --config.results=runs/main_results.md "$@"
