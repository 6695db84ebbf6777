"""DATM on CIFAR-10 at IPC 1, 10 or 50 with its repository's per-IPC settings (`papers.DATM`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/datm_cifar10.py:10

Prerequisite step: the same experts as MTT, on ZCA-whitened images. Soft labels from the experts,
learned; start epochs growing as DATM's sequential generation. Published ConvNet accuracy, IPC 1 /
10 / 50: 46.9 ± 0.5 / 66.8 ± 0.2 / 76.1 ± 0.3 (the paper's Table 1 as quoted in later papers'
comparison tables). Hardware: one 80 GB GPU (DATM used 1-4 GPUs).
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.datm("cifar10", ipc)
