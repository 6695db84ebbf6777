"""SelMatch on a Fashion-MNIST subset at one ratio (5%: IPC 5), through the one CLI, CPU-sized.

Command:
  .venv/bin/python -m experiments.distill --config experiments/configs/selmatch_fmnist.py

The subset, experts and MTT settings of ``mtt_fmnist.py``. Difficulty of each training image: mean over
the experts of first-learned epoch + forgetting events / (E + 1). Initialization: the window of IPC
images per class starting beta = 0.6 of the class size from the hardest image (``selmatch.unit``
"percent"; the best window of an earlier 1,000-image window search at this ratio), the easier alpha = 0.6 of each class distilled and
the rest frozen; evaluation with combined augmentation (DSA on distilled rows, crop+flip on frozen ones)
and coverage of the subset in expert 0's feature space. The ratio sweep with the window search is
``experiments.selmatch`` (``selmatch_sweep_fmnist.py``). Run time on the 2-core CPU: ~10 minutes.
"""
import ml_collections

from experiments.configs.common import base, trajectory


def get_config():
  c = base("selmatch", ipc=5)
  c.max_per_class = 100
  c.steps = 40
  c.checkpoint_every = 20
  trajectory(c, syn_steps=10, expert_epochs=2, max_start_epoch=5, lr_img=100.0, lr_lr=1e-5)
  c.experts.update({"num": 3, "epochs": 10, "batch_size": 64})
  c.selmatch = ml_collections.ConfigDict({"alpha": 0.6, "beta": 0.6, "unit": "percent"})
  c.combined_augment = True
  c.evals = ("protocol", "coverage")
  c.coverage_sample = 0
  c.results = "experiments/results/trajectory_fashion_mnist.md"
  return c
