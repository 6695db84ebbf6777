"""DATM (MTT with a growing start-epoch range and learnable soft labels) on a Fashion-MNIST subset,
IPC 5, CPU-sized.

Command:
  .venv/bin/python -m experiments.distill --config experiments/configs/datm_fmnist.py

The subset, experts and MTT settings of ``mtt_fmnist.py``, plus DATM's pieces: start epochs drawn below
a bound growing from 3 to 5 over the first 20 iterations (DATM: ``current_max_start_epoch`` to
``max_start_epoch`` over ``expansion_end_epoch``), initialization with real images the expert
classifies correctly, soft labels = the experts' logits at their last epoch, 10 (DATM's
``Label_Model_Timestamp = -1``; averaged over the experts that classify the image correctly),
learned with SGD lr 2 momentum 0.9 (DATM's ``lr_y``, ``Momentum_y``); a step whose loss exceeds 1
updates nothing (DATM's ``threshold``).
Run time on the 2-core CPU: ~10 minutes (less with the experts already trained).
"""
import ml_collections

from experiments.configs.common import base, trajectory


def get_config():
  c = base("datm", ipc=5)
  c.max_per_class = 100
  c.steps = 40
  c.checkpoint_every = 20
  trajectory(c, syn_steps=10, expert_epochs=2, max_start_epoch=5, lr_img=100.0, lr_lr=1e-5,
             initial_max_start_epoch=3, expansion_steps=20)
  c.experts.update({"num": 3, "epochs": 10, "batch_size": 64})
  c.label_optimizer_kwargs = ml_collections.ConfigDict({"learning_rate": 2.0, "momentum": 0.9})
  # label_epoch: the experts' last (DATM: timestamp -1); threshold: a step whose loss exceeds it
  # changes nothing (DATM's configs: 1).
  c.datm = ml_collections.ConfigDict({"label_epoch": 10, "threshold": 1.0})
  c.results = "experiments/results/trajectory_fashion_mnist.md"
  return c
