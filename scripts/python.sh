# Sourced by the scripts in this folder (from the checkout's root): sets PY, the Python that runs
# jaxdistill. JAXDISTILL_PYTHON names one whose environment already holds the dependencies (on a
# machine without network access: scripts/offline_job.sh sets it); otherwise scripts/setup.sh makes
# .venv and PY is its Python.
if [[ -n "${JAXDISTILL_PYTHON:-}" ]]; then
  PY=$JAXDISTILL_PYTHON
else
  bash scripts/setup.sh
  PY=.venv/bin/python
fi
