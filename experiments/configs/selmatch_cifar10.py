"""SelMatch on CIFAR-10 at IPC 250, 500 or 1000 (5/10/20%) with the published (alpha, beta)
(`papers.SELMATCH`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/selmatch_cifar10.py:500

Prerequisite step: MTT's experts; difficulty = first-learned epoch + forgetting / (E + 1) from their
training. Published: SelMatch's Table 1; not quoted here. Hardware: one 80 GB GPU.
"""
from experiments.configs import papers


def get_config(ipc="500"):
  return papers.selmatch("cifar10", ipc)
