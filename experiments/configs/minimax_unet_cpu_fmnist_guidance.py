"""An ablation of ``minimax_unet_cpu_fmnist.py``: its vanilla and Minimax sets sampled at another guidance.

Command (the guidance after the file name):
  .venv/bin/python -m experiments.minimax --config experiments/configs/minimax_unet_cpu_fmnist_guidance.py:2

The same run (workdir, pretrained and fine-tuned models, random real and DM rows, all read back from
the main run's files) with the sampler fixed instead of chosen by the sweep: DDIM, eta 0, 50 steps,
at the given guidance scale, and no DiffFit control. The main run's sweep chose guidance 4 by its
rule on held-out images (the lowest FID-style distance among the samplers within 0.02 of the best
class agreement); this config measures, on the test set, what a lower guidance (more varied, less
class-typical images) gives instead. Its figures are an ablation read after the choice, never a
way to make it: picking the guidance by these test accuracies would tune on the test set.
"""
from experiments.configs import minimax_unet_cpu_fmnist


def get_config(arg: str = "2"):
  g = float(arg)
  if not g > 0:
    raise ValueError(f"The guidance scale must be > 0 (1: no guidance); got {arg!r}.")
  c = minimax_unet_cpu_fmnist.variant(f"guidance{arg.replace('.', '_')}")
  c.sweep = ()  # the sampler below, as given
  c.sample.update({"eta": 0.0, "steps": 50, "cfg_scale": g})
  c.control = False
  return c
