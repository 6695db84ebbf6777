"""Selection baselines on real Fashion-MNIST at IPC 1 and 10, CPU-sized.

Command:
  .venv/bin/python -m experiments.baselines --config experiments/configs/baselines_fmnist.py

What it does: trains a width-64 ConvNet on the full training set for 3 epochs (``feature_epochs`` 2
under the protocol's E + 1 schedule; the sanity check: >= 85%
test accuracy; its features drive herding and k-center), then evaluates random, herding, k-center,
k-means (centroid images) and class-average images at IPC 1 and 10 by training fresh width-64 ConvNets
(instance norm, avg pool) with the DSA protocol for 300 epochs (the papers: 1000), 3 seeds each.
Expected: random IPC 10 in the 70s, herding above random, average/k-means strong at IPC 1.
Run time on the 2-core CPU: ~25 minutes.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "fashion_mnist"
  c.seed = 0
  c.model = "convnet"
  c.model_kwargs = ml_collections.ConfigDict({"width": 64, "depth": 3})
  c.methods = ("random", "herding", "k_center", "k_means", "k_means_nearest", "average")
  c.ipcs = (1, 10)
  c.num_seeds = 3
  c.eval_epochs = 300
  c.eval_augment = "dsa"
  c.feature_epochs = 2  # full-data training of the feature network (also the sanity check)
  c.out = "experiments/results/baselines_fashion_mnist.md"
  return c
