#!/usr/bin/env bash
# Packs what a machine without network access needs to run jaxdistill's scripts into .offline/ (ignored
# by git; copy or carry it with the checkout): wheels of the Python packages that machine lacks, pinned
# by constraints.txt, the real Fashion-MNIST files, and optionally a run archive to resume from.
#
#   bash scripts/pack_offline.sh [--resume RUNS_ARCHIVE] [PACKAGE ...]
#
# PACKAGE: names from constraints.txt (default: ml_collections tensorboardX, what an image with JAX,
# flax, optax, orbax-checkpoint and chex but without this package's other dependencies lacks); each is
# fetched without its dependencies, so name every missing one. RUNS_ARCHIVE: runs.tar.gz as
# scripts/offline_job.sh wrote it (one file, or the first of its parts, runs.tar.gz.part-aa);
# offline_job.sh unpacks it into runs/ before its command. On the other machine:
#   bash scripts/offline_job.sh OUTDIR SECONDS COMMAND ...
set -euo pipefail
cd "$(dirname "$0")/.."
resume=""
if [[ "${1:-}" == "--resume" ]]; then
  [[ $# -ge 2 ]] || { echo "pack_offline: --resume needs the runs archive" >&2; exit 2; }
  resume=$2
  shift 2
fi
packages=("$@")
[[ ${#packages[@]} -gt 0 ]] || packages=(ml_collections tensorboardX)

rm -rf .offline/wheels .offline/resume.tar.gz
mkdir -p .offline/wheels .offline/fashion-mnist
PIP=python3
[[ -x .venv/bin/python ]] && PIP=.venv/bin/python
for p in "${packages[@]}"; do
  pin=$(grep -i -E "^${p//[-_]/[-_]}==" constraints.txt || true)
  [[ -n "$pin" ]] || { echo "pack_offline: $p is not pinned in constraints.txt" >&2; exit 1; }
  "$PIP" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d .offline/wheels "$pin"
done
for w in .offline/wheels/*.whl; do
  case "$w" in *-py3-none-any.whl|*-py2.py3-none-any.whl) ;;
    *) echo "pack_offline: $w is built for this machine's Python and platform only" >&2 ;; esac
done

src=/usr/share/datasets/fashion-mnist
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
         t10k-labels-idx1-ubyte.gz; do
  [[ -f "$src/$f" ]] || { echo "pack_offline: $src/$f is missing (apt-get install -y dataset-fashion-mnist)" >&2; exit 1; }
  cp "$src/$f" .offline/fashion-mnist/
done

if [[ -n "$resume" ]]; then
  case "$resume" in
    *.part-aa) cat "${resume%-aa}"-* > .offline/resume.tar.gz ;;
    *) cp "$resume" .offline/resume.tar.gz ;;
  esac
  tar tzf .offline/resume.tar.gz >/dev/null || { echo "pack_offline: $resume is not a readable tar.gz" >&2; exit 1; }
fi
du -sh .offline
