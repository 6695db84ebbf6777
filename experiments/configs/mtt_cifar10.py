"""MTT on CIFAR-10 at IPC 1, 10 or 50 with the published per-IPC settings (`papers.MTT`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/mtt_cifar10.py:10

Prerequisite step: 100 experts x 50 epochs (MTT's buffer.py), trained into runs/experts/ on the
first run and reused. Published ConvNet accuracy, IPC 1 / 10 / 50: 46.3 ± 0.8 / 65.3 ± 0.7 / 71.6 ±
0.2 (the paper's Table 1 as quoted in later papers' comparison tables). Hardware: one 80 GB GPU
(H100 / A100; the experts' segments and the unrolled student stay on the device; lower
--config.experts.num to save memory).
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.mtt("cifar10", ipc)
