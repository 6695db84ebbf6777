"""DSA on CIFAR-10 at IPC 1, 10 or 50 with the paper's settings (`papers.gradient_matching`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/dsa_cifar10.py:10

Published: DSA's Table (Zhao & Bilen, ICML 2021, ConvNet); not quoted here. Hardware: one GPU or TPU
with 16 GB or more.
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.gradient_matching("dsa", "cifar10", ipc)
