#!/usr/bin/env bash
# Re-measures every Fashion-MNIST row of the README's methods table under the library's current
# defaults (PyTorch initialization, the reference evaluation schedule, flip in DSA), in a fresh workdir
# so no older checkpoint is resumed. Appends to experiments/results/distill_fashion_mnist.md, then
# rewrites experiments/results/baselines_fashion_mnist.md. Each command resumes if stopped: run the
# script again to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
W=--config.workdir=runs/rerun
for args in \
  "dm_fmnist.py" \
  "dm_fmnist.py --config.ipc=1 --config.steps=300" \
  "dc_fmnist.py --config.ipc=1 --config.steps=300" \
  "dsa_fmnist.py --config.ipc=1 --config.steps=300" \
  "dc_fmnist.py" \
  "dsa_fmnist.py" \
  "kip_fmnist.py --config.ipc=1" \
  "kip_fmnist.py" \
  "frepo_fmnist.py --config.ipc=1" \
  "frepo_fmnist.py" \
  "idc_fmnist.py --config.ipc=1" \
  "idc_fmnist.py" \
  "dd_fmnist.py --config.ipc=1 --config.dd_unroll_steps=1 --config.dd_epochs=10" \
  "dd_fmnist.py"; do
  set -- $args
  cfg=$1; shift
  marker="runs/rerun/done_$(echo "$cfg $*" | tr ' =/.' '____')"
  [ -f "$marker" ] && continue
  $PY -m experiments.distill --config "experiments/configs/$cfg" $W "$@"
  mkdir -p runs/rerun && touch "$marker"
done
[ -f runs/rerun/done_baselines ] || { $PY -m experiments.baselines \
  --config experiments/configs/baselines_fmnist.py && touch runs/rerun/done_baselines; }
