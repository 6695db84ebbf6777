"""Minimax Diffusion on real Fashion-MNIST with a UNet generator, sized for one accelerator.

Command (rerun it to resume; every stage is checkpointed or cached under ``workdir``):
  bash scripts/minimax_accelerator.sh   (= .venv/bin/python -m experiments.minimax --config this file)

What differs from ``minimax_fmnist.py`` (the small DiT trained about 3 epochs on one CPU core):

- the generator is a class-conditional UNet in the DDPM / ADM design (``jaxdistill.diffusion.UNet``:
  width 64 at 28 px, 128 at 14 and 7 px, two residual blocks per level, attention at 7 px, dropout
  0.1), about 7M parameters;
- 5,000 training images are held out of its training; every choice of the run is judged against them
  by the quality report (class agreement and the FID-style distance of the judge's features), never
  against test images;
- pretraining: 20,000 steps of batch 128 (about 46 epochs of the 55,000 images), AdamW lr 2e-4 (DDPM's)
  with 500 warmup steps and cosine decay, EMA 0.9995, a quality report every 5,000 steps;
- sampler chosen by the sweep below (DDIM eta 0 with 50 steps and DDPM with 250 steps, guidance 1-4),
  on 20 images per class from the pretrained model;
- Minimax and DiffFit-alone fine-tunings as in ``minimax_fmnist.py`` (DiffFit subset: the UNet's biases,
  GroupNorm parameters and class embedding), with the Minimax terms on the 7x7x4 latents of an
  autoencoder trained on the training images (``finetune.space="autoencoder"``): the authors compute
  them on the Stable Diffusion VAE latents their DiT works in, not on pixels.

On a 2-core CPU one pretraining step of this UNet takes seconds (``python -m benchmarks.profile
--units unet``), so the schedule is for an accelerator; ``--config.model.width=32`` and fewer
``--config.pretrain.steps`` shrink it.
"""
import ml_collections

from experiments.configs import minimax_fmnist


def get_config():
  c = minimax_fmnist.get_config()
  c.model_kind = "unet"
  c.model = ml_collections.ConfigDict(
      {"width": 64, "mults": (1, 2, 2), "blocks": 2, "attn_levels": (2,), "heads": 4, "groups": 8,
       "dropout": 0.1, "label_dropout": 0.1})
  c.pretrain = ml_collections.ConfigDict(
      {"steps": 20000, "batch_size": 128, "lr": 2e-4, "warmup": 500, "end_lr": 1e-6, "clip": 1.0,
       "ema_decay": 0.9995, "checkpoint_every": 1000, "quality_every": 5000})
  c.finetune.space = "autoencoder"
  c.holdout = 5000
  c.sweep = tuple({"steps": steps, "eta": eta, "cfg_scale": g}
                  for steps, eta in ((50, 0.0), (250, 1.0)) for g in (1.0, 2.0, 3.0, 4.0))
  c.sweep_ipc = 20
  c.workdir = "runs/minimax_unet_fashion_mnist"
  c.results = "experiments/results/minimax_unet_fashion_mnist.md"
  c.grid_prefix = "minimax_unet_fmnist"
  return c
