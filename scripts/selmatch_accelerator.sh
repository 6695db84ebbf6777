#!/usr/bin/env bash
# The SelMatch protocol study at the ratios 5, 10, 20 and 30% on an accelerator
# (experiments/configs/selmatch_protocol_fmnist_accel.py), resumable: run it again to continue. Results:
# experiments/results/selmatch_protocol_fashion_mnist_accelerator.{md,json,png}. Extra arguments go to
# the experiment and win over the config's, e.g. --config.ratios="(0.3,)" --config.alphas="((0.1, 0.6),)".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
args=()
"$PY" -c "import matplotlib" 2>/dev/null || args+=(--config.plot=False)
exec "$PY" -m experiments.selmatch \
  --config experiments/configs/selmatch_protocol_fmnist_accel.py "${args[@]}" "$@"
