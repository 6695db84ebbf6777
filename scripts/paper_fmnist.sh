#!/usr/bin/env bash
# The papers' Fashion-MNIST table at the papers' budgets (experiments/paper_fmnist.py), resumable: run
# it again to continue. Default: the rows that fit the CPU. On an accelerator: ACCELERATOR=1 runs the
# IPC 1 and IPC 10 rows of DC, DSA and DM at the papers' budgets (sized for about 10 minutes of one H100)
# into runs/paper_accelerator and experiments/results/paper_fmnist_accelerator.*. Extra arguments go to
# the experiment and win over these, e.g. --config.rows=dc:1,dsa:1 or --config.tiny=True (test size).
# Without matplotlib (the "plot" extra) the table is written without its plot.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
args=()
if [[ "${ACCELERATOR:-0}" == "1" ]]; then
  args+=(--config.rows=accelerator --config.workdir=runs/paper_accelerator
         --config.results=experiments/results/paper_fmnist_accelerator)
fi
"$PY" -c "import matplotlib" 2>/dev/null || args+=(--config.plot=False)
exec "$PY" -m experiments.paper_fmnist --config experiments/configs/paper_fmnist_table.py \
  "${args[@]}" "$@"
