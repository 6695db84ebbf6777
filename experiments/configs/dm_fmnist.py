"""DM (distribution matching) on real Fashion-MNIST, IPC 10 (override with --config.ipc=1).

Command (the README's main job):
  .venv/bin/python -m experiments.distill --config experiments/configs/dm_fmnist.py

CPU-sized: ConvNet width 32, 64 real images per class per step (reference 256), 200 steps (reference
20,000), evaluation 300 epochs with DSA (reference 1000), 3 seeds. Images: SGD lr 1, momentum 0.5
(reference). Expected: the distilled set beats random real images of the same IPC by a few points.
Run time on the 2-core CPU: a few minutes.
"""
from experiments.configs.common import base


def get_config():
  return base("dm", ipc=10)
