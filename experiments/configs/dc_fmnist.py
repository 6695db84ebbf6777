"""DC (gradient matching) on real Fashion-MNIST, IPC 10 (override with --config.ipc=1).

Command:
  .venv/bin/python -m experiments.distill --config experiments/configs/dc_fmnist.py

CPU-sized: ConvNet width 32, 64 real images per class, 100 outer steps (10 reference iterations of
(outer 10, inner 50) at IPC 10; the reference runs 1000 iterations), images SGD lr 0.1 momentum 0.5
(reference). The images start from random real images (``init="real"``, as the recorded rows ran;
DC's ``main.py`` starts from noise: ``--config.init=noise``). Evaluation 300 epochs with DSA, 3 seeds.
Run time on the 2-core CPU: ~10 minutes.
"""
from experiments.configs.common import base


def get_config():
  c = base("dc", ipc=10)
  c.steps = 100
  c.optimizer_kwargs.learning_rate = 0.1
  c.init = "real"  # DC's code: "noise"; the recorded rows started from real images
  return c
