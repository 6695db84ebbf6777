"""DSA on CIFAR-100 at IPC 1, 10 or 50 with the paper's settings (`papers.gradient_matching`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/dsa_cifar100.py:10

Published: DSA's Table (ConvNet); not quoted here. Hardware: one GPU or TPU with 16 GB or more.
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.gradient_matching("dsa", "cifar100", ipc)
