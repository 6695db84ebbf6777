"""Defaults shared by the distillation configs (CPU-sized; see each config's docstring)."""
import ml_collections


def base(method: str, ipc: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = method
  c.dataset = "fashion_mnist"
  c.ipc = ipc
  c.seed = 0
  c.model = "convnet"
  # conv_impl: "patches" (fast second-order scans: DC, MTT, DD) or "lax" (1.5x faster for DM on CPU;
  # benchmarks/results/distill_step.md).
  c.model_kwargs = ml_collections.ConfigDict({"width": 32, "depth": 3, "conv_impl": "patches"})
  c.steps = 200
  c.batch_real = 64  # real images per class per step (reference: 256)
  c.optimizer = "sgd"
  c.optimizer_kwargs = ml_collections.ConfigDict({"learning_rate": 1.0, "momentum": 0.5})
  c.outer_loop = 0  # 0: the reference's (outer, inner) for the IPC (DC/DSA)
  c.inner_loop = 0
  c.eval_model = "convnet"
  c.eval_model_kwargs = ml_collections.ConfigDict({"width": 32, "depth": 3})
  c.eval_epochs = 300
  c.eval_augment = "dsa"
  c.num_seeds = 3
  c.checkpoint_every = 50
  c.image_every = 0
  c.workdir = "runs"
  c.results = "experiments/results/distill_fashion_mnist.md"
  return c
