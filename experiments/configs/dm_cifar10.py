"""DM on CIFAR-10 at IPC 1, 10 or 50 with the paper's settings (`papers.dm`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/dm_cifar10.py:10

Published: DM's Table 1 (Zhao & Bilen, WACV 2023, ConvNet); not quoted here. Hardware: one GPU or
TPU with 16 GB or more.
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.dm("cifar10", ipc)
