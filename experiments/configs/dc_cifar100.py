"""DC on CIFAR-100 at IPC 1, 10 or 50 with the paper's settings (`papers.gradient_matching`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/dc_cifar100.py:10

Published ConvNet accuracy, IPC 1 / 10: 12.8 ± 0.3 / 25.2 ± 0.3 (the paper's Table 1 as quoted in
later papers' comparison tables). Hardware: one GPU or TPU with 16 GB or more.
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.gradient_matching("dc", "cifar100", ipc)
