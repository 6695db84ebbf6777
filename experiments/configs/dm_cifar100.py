"""DM on CIFAR-100 at IPC 1, 10 or 50 with the paper's settings (`papers.dm`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/dm_cifar100.py:10

Published ConvNet accuracy, IPC 1 / 10 / 50: 11.4 ± 0.3 / 29.7 ± 0.3 / 43.6 ± 0.4 (the paper's Table
1 as quoted in later papers' comparison tables). Hardware: one GPU or TPU with 16 GB or more.
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.dm("cifar100", ipc)
