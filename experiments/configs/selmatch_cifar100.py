"""SelMatch on CIFAR-100 at IPC 25, 50 or 100 (5/10/20%) with the published (alpha, beta)
(`papers.SELMATCH`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/selmatch_cifar100.py:50

Prerequisite step: MTT's experts and their difficulty scores. Published: SelMatch's Table 1; not
quoted here. Hardware: one 80 GB GPU.
"""
from experiments.configs import papers


def get_config(ipc="50"):
  return papers.selmatch("cifar100", ipc)
