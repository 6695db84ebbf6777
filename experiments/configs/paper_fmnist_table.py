"""The papers' Fashion-MNIST table at the papers' budgets (rows of ``paper_fmnist.py``).

Command (resumable: run it again to continue; every finished evaluation, and every trained network of
an unfinished one, is cached):
  .venv/bin/python -m experiments.paper_fmnist --config experiments/configs/paper_fmnist_table.py

Rows (``--config.rows``, comma-separated) are ``"<method>:<ipc>"`` at the paper's budget or ``"<method>:<ipc>@<steps>"`` at a reduced one.
Each row's synthetic set is evaluated under the paper's protocol at ``curve_points`` evenly spaced
steps (with ``curve_networks`` networks) and at its last step (with the protocol's networks), against
random real images of the same IPC. Writes ``<results>.md``, ``<results>.json`` and ``<results>.png``.

``scripts/paper_fmnist.sh`` runs it; ``--config.rows`` chooses the rows (they are written into the rows
the ``--config.results`` files already record; the others are kept). The default rows are the
IPC 1 rows that fitted the 2-core CPU; on an accelerator pass ``--config.rows=accelerator``.
"""
import ml_collections

# What one H100 should run in about 10 minutes (the IPC 1 rows and the IPC 10 rows at the paper's
# budget); not yet measured on one.
ACCELERATOR_ROWS = "dc:1,dsa:1,dm:1,dc:10,dsa:10,dm:10"


def get_config():
  c = ml_collections.ConfigDict()
  c.rows = "dc:1,dsa:1"  # comma-separated
  c.curve_points = 4
  c.curve_networks = 5
  c.workdir = "runs/paper"
  c.results = "experiments/results/paper_fmnist"
  c.progress = True
  c.plot = True
  # Test-sized runs: small networks, a subset of the data, one-epoch evaluation (not a paper budget).
  c.tiny = False
  return c
