"""The original DD (unrolled SGD with learned step sizes) on real Fashion-MNIST, IPC 10.

Command:
  .venv/bin/python -m experiments.distill --config experiments/configs/dd_fmnist.py [--config.ipc=1 --config.dd_unroll_steps=1 --config.dd_epochs=10]

Images start from standard normal noise (DD's ``torch.randn``; ``--config.init=real`` for random
real images). From a fresh ConvNet (width 32, PyTorch's default initialization; DD: LeNet on MNIST with
Xavier-normal weights and zero biases) each iteration: 10 unrolled SGD steps, step s on the s-th image
of every class, 1 epoch (DD: 10 steps x 3 epochs), one learnable step size per step (init 0.02, DD),
then cross-entropy on a real batch of 640 (DD: 1024); images and log step sizes by one Adam (lr 0.01,
betas 0.5 / 0.999, as DD's single optimizer over both). 150 iterations (DD: 400 epochs of its real
batches, ~23,000). Evaluated with the standard protocol (one step size for every
network, the set's learned ones unused) and with DD's own training (``dd_own``: the unrolled steps
with the learned per-step sizes, as DD evaluates). Run time on the 2-core CPU: ~8 minutes.
"""
from experiments.configs.common import base


def get_config():
  c = base("dd", ipc=10)
  c.steps = 150
  c.optimizer = "adam"
  c.optimizer_kwargs = {"learning_rate": 0.01, "b1": 0.5}
  c.lr_optimizer_kwargs = {"learning_rate": 0.01, "b1": 0.5}
  c.dd_unroll_steps = 10
  c.dd_epochs = 1
  c.dd_lr_init = 0.02
  c.init = "noise"
  # DD learns its step sizes through a softplus (about their log at these sizes: its lr 0.01 on the
  # raw parameter is about 0.01 on the log), so this optimizer updates log step sizes, not the step
  # sizes themselves as MTT does.
  c.step_size_space = "log"
  c.evals = ("protocol", "dd_own")
  return c
