"""MTT (trajectory matching) on a Fashion-MNIST training subset, IPC 5, CPU-sized.

Command:
  .venv/bin/python -m experiments.distill --config experiments/configs/mtt_fmnist.py [--config.ipc=10]

Subset: 100 images per class (1,000). Experts (the prerequisite step, trained once into
``runs/experts/fashion_mnist_convnet_100pc_lr0.01_b64`` and reused by the DATM and SelMatch configs):
3 ConvNets (width 32) x 10 epochs, SGD lr 0.01, batch 64. MTT: syn_steps 10, expert_epochs 2, max_start_epoch 5,
lr_img 100, lr_lr 1e-5, step size initialized to 0.01, 40 iterations (MTT: 5,000). Evaluation 300
epochs with DSA, 3 seeds, at the learned step size. Run time on the 2-core CPU: ~10 minutes (experts
included).
"""
from experiments.configs.common import base, trajectory


def get_config():
  c = base("mtt", ipc=5)
  c.max_per_class = 100
  c.steps = 40
  c.checkpoint_every = 20
  trajectory(c, syn_steps=10, expert_epochs=2, max_start_epoch=5, lr_img=100.0, lr_lr=1e-5)
  c.experts.update({"num": 3, "epochs": 10, "batch_size": 64})
  c.results = "experiments/results/trajectory_fashion_mnist.md"
  return c
