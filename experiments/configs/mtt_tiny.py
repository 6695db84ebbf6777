"""MTT on Tiny-ImageNet at IPC 1, 10 or 50 with the published per-IPC settings (`papers.MTT`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/mtt_tiny.py:10 --config.data_dir=/path/to/tiny-imagenet-200.zip

Tiny-ImageNet is not in TFDS: prepare the npz described in `papers.py`. Prerequisite step: 100
experts x 50 epochs (MTT's buffer.py), trained into runs/experts/ on the first run and reused.
Published: MTT's Table 1 (ConvNet); not quoted here. Hardware: one 80 GB GPU (H100 / A100; the
experts' segments and the unrolled student stay on the device; lower --config.experts.num to save
memory).
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.mtt("tiny", ipc)
