"""DATM on Tiny-ImageNet at IPC 1, 10 or 50 with its repository's per-IPC settings (`papers.DATM`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/datm_tiny.py:10 --config.data_dir=/path/to/tiny-imagenet-200.zip

Tiny-ImageNet is not in TFDS: prepare the npz described in `papers.py`. Prerequisite step: the same
experts as
MTT, on ZCA-whitened images. Soft labels from the experts, learned; start epochs growing as DATM's
sequential generation. Published: DATM's Table 1 (ConvNet); not quoted here. Hardware: one 80 GB GPU
(DATM used 1-4 GPUs).
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.datm("tiny", ipc)
