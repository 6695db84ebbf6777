"""DC on CIFAR-10 at IPC 1, 10 or 50 with the paper's settings (`papers.gradient_matching`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/dc_cifar10.py:10

Published ConvNet accuracy (DC, Zhao et al., ICLR 2021), IPC 1 / 10 / 50: 28.3 ± 0.5 / 44.9 ± 0.5 /
53.9 ± 0.5 (the paper's Table 1 as quoted in later papers' comparison tables). Hardware: one GPU or
TPU with 16 GB or more (the reference ran one GPU).
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.gradient_matching("dc", "cifar10", ipc)
