"""DM on Tiny-ImageNet (64x64, ConvNet depth 4) at IPC 1, 10 or 50 with the paper's settings
(`papers.dm`).

Command (on one accelerator; IPC after the colon):
  python -m experiments.distill --config experiments/configs/dm_tiny.py:10 --config.data_dir=/path/to/tiny-imagenet-200.zip

Tiny-ImageNet is not in TFDS: prepare the npz described in `papers.py`. Published: DM's Table 1
(ConvNet); not quoted here. Hardware: one GPU or TPU with 16 GB or more.
"""
from experiments.configs import papers


def get_config(ipc="10"):
  return papers.dm("tiny", ipc)
