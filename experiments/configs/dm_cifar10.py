"""DM on CIFAR-10 at IPC 1, 10 or 50 with the paper's settings (`papers.dm`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/dm_cifar10.py:10

Published ConvNet accuracy (Zhao & Bilen, WACV 2023), IPC 1 / 10 / 50: 26.0 ± 0.8 / 48.9 ± 0.6 /
63.0 ± 0.4 (the paper's Table 1 as quoted in later papers' comparison tables). Hardware: one GPU or
TPU with 16 GB or more.
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.dm("cifar10", ipc)
