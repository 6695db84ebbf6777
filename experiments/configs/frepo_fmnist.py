"""FRePo (neural feature regression with a pool of online networks) on real Fashion-MNIST, IPC 10.

Command:
  .venv/bin/python -m experiments.distill --config experiments/configs/frepo_fmnist.py [--config.ipc=1]

FRePo's ConvNet (widths doubling per block, no norm; here width 16 -> 16/32/64), pool of 10 networks
each trained online with Adam 3e-4 and re-initialized after 100 updates (FRePo), ridge 1e-6. Images and
labels learned with Adam lr 0.003 (FRePo: LAMB 3e-4 with cosine decay over far more steps), real batch
640, 300 steps (FRePo: hundreds of thousands). Finite ConvNets (width 32) trained with MSE on the
learned labels. Run time on the 2-core CPU: ~5 minutes.
"""
from experiments.configs.common import base


def get_config():
  c = base("frepo", ipc=10)
  c.steps = 300
  c.optimizer = "adam"
  c.optimizer_kwargs = {"learning_rate": 0.003}
  c.frepo_pool = 10
  c.frepo_max_online = 100
  c.frepo_net_kwargs = {"width": 16}
  return c
