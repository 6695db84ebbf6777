"""SelMatch on Tiny-ImageNet at IPC 50 or 100 (10/20%) with the published (alpha, beta)
(`papers.SELMATCH`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/selmatch_tiny.py:50 --config.data_dir=/path/to/tiny-imagenet-200.zip

Tiny-ImageNet is not in TFDS: prepare the npz described in `papers.py`. Prerequisite step: MTT's
experts and their difficulty scores. Published: SelMatch's Table 1; not quoted here. Hardware: one
80 GB GPU.
"""
from experiments.configs import papers


def get_config(ipc="50"):
  return papers.selmatch("tiny", ipc)
