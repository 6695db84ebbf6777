"""Minimax Diffusion on real Fashion-MNIST with a UNet generator sized for a 2-core CPU.

Command (rerun it to resume; every stage is checkpointed or cached under ``workdir``, so the run can
be split over sessions):
  .venv/bin/python -m experiments.minimax --config experiments/configs/minimax_unet_cpu_fmnist.py

The design of ``minimax_unet_fmnist.py`` (the accelerator's run: a class-conditional DDPM / ADM UNet,
5,000 held-out training images as the reference of every choice, quality reports at pretraining
checkpoints, a sampler sweep judged on the held-out images, the Minimax terms on autoencoder latents),
scaled to what a CPU trains in a few hours:

- the UNet at width 32 (64 at 14 and 7 px) with one residual block per level, attention at 7 px,
  dropout 0.1 (about a quarter of the accelerator's network's cost per image);
- pretraining 10,000 steps of batch 64 (about 12 epochs of the 55,000 images), AdamW lr 2e-4 with 200
  warmup steps and cosine decay, EMA 0.999, a checkpoint every 500 steps and a quality report every
  2,500;
- the sampler sweep on DDIM (eta 0, 50 steps) and DDPM (100 steps) at guidance 1-4;
- cost on a 2-core x86 CPU: a pretraining step of this UNet (1.2M parameters, batch 64) takes about
  1.5 s, so pretraining is about 4 hours, two sessions of resuming;
- DM sets for the comparison: ``experiments.distill`` with ``dm_fmnist.py --config.ipc=10`` (and 50),
  workdir ``runs`` (``dm_dir``); rows without one are left out and say so.
"""
import ml_collections

from experiments.configs import minimax_unet_fmnist


def get_config():
  c = minimax_unet_fmnist.get_config()
  c.model.update({"width": 32, "blocks": 1})
  c.pretrain = ml_collections.ConfigDict(
      {"steps": 10000, "batch_size": 64, "lr": 2e-4, "warmup": 200, "end_lr": 1e-6, "clip": 1.0,
       "ema_decay": 0.999, "checkpoint_every": 500, "quality_every": 2500})
  c.sweep = tuple({"steps": steps, "eta": eta, "cfg_scale": g}
                  for steps, eta in ((50, 0.0), (100, 1.0)) for g in (1.0, 2.0, 3.0, 4.0))
  c.dm_dir = "runs/dm_fashion_mnist_ipc{ipc}"
  c.workdir = "runs/minimax_unet_cpu_fashion_mnist"
  c.results = "experiments/results/minimax_fashion_mnist.md"
  c.grid_prefix = "minimax_unet_cpu_fmnist"
  return c


def variant(tag: str):
  """This run's config for an ablation named ``tag``: the same workdir (its models and evaluations
  are read back), its own results file and grids, so no run overwrites another's record."""
  c = get_config()
  c.results = f"experiments/results/minimax_fashion_mnist_{tag}.md"
  c.grid_prefix = f"minimax_unet_cpu_fmnist_{tag}"
  return c
