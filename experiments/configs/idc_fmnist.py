"""IDC (multi-formation, factor 2) with gradient matching on real Fashion-MNIST, IPC 10 stored images.

Command:
  .venv/bin/python -m experiments.distill --config experiments/configs/idc_fmnist.py [--config.ipc=1]

Each stored 28x28 image holds 2x2 sub-images of 14x14, decoded by bilinear upsampling into 4 training
images (so IPC 10 stored = 40 training images per class; IPC counts stored images). Initialized by
packing 4 random real images per stored image (IDC). Objective: DC gradient matching
(``idc_objective="dc"``, no DSA, to keep it CPU-sized; IDC's own matching, the method's default, is in
``paper_fmnist.py:idc,<ipc>``) with the reference (outer, inner) schedule for the stored IPC, 64 real images
per class, images SGD lr 0.1 momentum 0.5, 60 outer steps. Compared with random real images at the
same stored IPC. Run time on the 2-core CPU: ~10 minutes.
"""
from experiments.configs.common import base


def get_config():
  c = base("idc", ipc=10)
  c.steps = 60
  c.optimizer_kwargs.learning_rate = 0.1
  c.idc_factor = 2
  c.idc_objective = "dc"
  return c
