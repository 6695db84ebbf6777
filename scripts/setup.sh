#!/usr/bin/env bash
# Installs what jaxdistill needs on a fresh machine: the real Fashion-MNIST (Debian package, when run as
# root), a virtual environment in .venv, and the package with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get install -y dataset-fashion-mnist >/dev/null; }
  else
    echo "Fashion-MNIST is not installed: run 'sudo apt-get install -y dataset-fashion-mnist'" \
         "(or pass data_dir= to jaxdistill.data.load). Tests that need it will fail." >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch: jaxdistill.io's .pt sets, whose tests would otherwise be skipped (constraints.txt pins the
# version; give pip a CPU index, e.g. --extra-index-url https://download.pytorch.org/whl/cpu, where
# PyPI would bring the CUDA build).
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,torch]" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import jaxdistill" || { echo "jaxdistill failed to import" >&2; exit 1; }
