#!/usr/bin/env bash
# Minimax Diffusion with the UNet generator (experiments/configs/minimax_unet_fmnist.py), resumable:
# run it again to continue. Sized for an accelerator. Extra arguments go to the experiment, e.g.
# --config.pretrain.steps=2000.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
exec "$PY" -m experiments.minimax --config experiments/configs/minimax_unet_fmnist.py "$@"
