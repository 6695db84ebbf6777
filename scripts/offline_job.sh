#!/usr/bin/env bash
# Runs one command of this checkout on a machine without network access whose Python already holds JAX
# (for its accelerator), flax, optax, orbax-checkpoint and chex, from what scripts/pack_offline.sh put
# in .offline/, and packs what the command wrote into OUTDIR, so that it can be brought back:
#
#   bash scripts/offline_job.sh OUTDIR SECONDS COMMAND ...
#   e.g. bash scripts/offline_job.sh /tmp/out 540 bash scripts/selmatch_accelerator.sh
#
# 1. installs .offline/wheels into a private folder on PYTHONPATH (with the checkout), and sets
#    JAXDISTILL_PYTHON (default python3), which the scripts use instead of making .venv;
# 2. installs .offline/fashion-mnist where jaxdistill looks for Fashion-MNIST, if it is not there (as
#    root), and unpacks .offline/resume.tar.gz (a runs.tar.gz of an earlier job) into the checkout;
# 3. runs COMMAND for at most SECONDS (then SIGINT, and SIGKILL 30 s later): the experiments keep the
#    checkpoints and caches they wrote under runs/, so the next job resumes from them;
# 4. writes into OUTDIR: log.txt (everything printed), results.tar.gz (the files under
#    experiments/results/ and benchmarks/results/ that the command wrote or changed) and runs.tar.gz
#    (runs/, cut into 15 MiB parts runs.tar.gz.part-aa, -ab, ... where larger). Unpack results.tar.gz in
#    the checkout; pass runs.tar.gz to scripts/pack_offline.sh --resume to continue there.
# RUNS_EXCLUDE (space-separated tar patterns, e.g. '*/experts') leaves large, cheaply rebuilt parts of
# runs/ out of runs.tar.gz (expert trajectories are retrained with the same key when missing); a
# warning names runs/ largest folders when the archive passes 45 MiB.
# Exits with the command's status (124 when SECONDS ran out).
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 3 ]]; then
  echo "usage: bash scripts/offline_job.sh OUTDIR SECONDS COMMAND ..." >&2; exit 2
fi
out=$1 limit=$2
shift 2
[[ "$limit" =~ ^[0-9]+$ ]] || { echo "offline_job: SECONDS must be a whole number, got '$limit'" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec > >(tee "$out/log.txt") 2>&1
marker=$(mktemp)
export PYTHONUNBUFFERED=1
export JAXDISTILL_PYTHON=${JAXDISTILL_PYTHON:-python3}

if compgen -G ".offline/wheels/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$JAXDISTILL_PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps \
    --no-compile --target "$site" .offline/wheels/*.whl || { echo "offline_job: the wheels did not install" >&2; exit 1; }
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
fmnist=/usr/share/datasets/fashion-mnist
if [[ ! -f $fmnist/train-images-idx3-ubyte.gz && -d .offline/fashion-mnist ]]; then
  mkdir -p "$fmnist" && cp .offline/fashion-mnist/* "$fmnist/" \
    || { echo "offline_job: could not install Fashion-MNIST into $fmnist (run as root)" >&2; exit 1; }
fi
if [[ -f .offline/resume.tar.gz ]]; then
  tar xzf .offline/resume.tar.gz || { echo "offline_job: .offline/resume.tar.gz did not unpack" >&2; exit 1; }
  echo "offline_job: resumed from .offline/resume.tar.gz ($(du -sh runs | cut -f1) under runs/)"
fi
"$JAXDISTILL_PYTHON" -c "
import jax, flax, optax, orbax.checkpoint as ocp, chex, ml_collections
print('offline_job: jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'orbax-checkpoint', ocp.__version__, 'chex', chex.__version__, '|', jax.devices())" \
  || { echo "offline_job: $JAXDISTILL_PYTHON lacks a dependency (pack its wheel with scripts/pack_offline.sh)" >&2; exit 1; }

echo "offline_job: $(date -u '+%F %T') UTC: $* (at most $limit s)"
start=$SECONDS
timeout --signal=INT --kill-after=30 "$limit" "$@"
rc=$?
echo "offline_job: $(date -u '+%F %T') UTC: exit status $rc after $((SECONDS - start)) s"

changed=$(find experiments/results benchmarks/results -type f -newer "$marker" 2>/dev/null)
if [[ -n "$changed" ]]; then
  tar czf "$out/results.tar.gz" $changed && echo "offline_job: results.tar.gz:" $changed
fi
if [[ -d runs ]]; then
  excludes=()
  for p in ${RUNS_EXCLUDE:-}; do excludes+=(--exclude="$p"); done
  tar czf "$out/runs.tar.gz" "${excludes[@]}" runs
  if [[ $(stat -c %s "$out/runs.tar.gz") -gt $((45 * 1024 * 1024)) ]]; then
    echo "offline_job: warning: runs.tar.gz is $(du -h "$out/runs.tar.gz" | cut -f1); the largest" \
         "folders under runs/ (leave rebuildable ones out with RUNS_EXCLUDE):"
    du -sh runs/*/* 2>/dev/null | sort -rh | head -5
  fi
  if [[ $(stat -c %s "$out/runs.tar.gz") -gt $((15 * 1024 * 1024)) ]]; then
    split -b 15M "$out/runs.tar.gz" "$out/runs.tar.gz.part-" && rm "$out/runs.tar.gz"
  fi
  echo "offline_job: runs/ packed: $(ls "$out" | grep runs.tar.gz | tr '\n' ' ')"
fi
rm -f "$marker"
exit $rc
