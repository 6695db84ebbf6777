"""Minimax Diffusion on real Fashion-MNIST: a small pixel DiT pretrained here, then Minimax-fine-tuned.

Command (rerun it to resume; every stage is checkpointed or cached under ``workdir``):
  taskset -c 1 .venv/bin/python -m experiments.minimax --config experiments/configs/minimax_fmnist.py

Stages: pretrain a DiT (patch 4, width 96, depth 4) on all 60,000 training images; fine-tune copies of it
with DiffFit (biases, gammas, class embedding; AdamW lr 1e-3) with the Minimax terms (lambda_pos 0.002,
lambda_neg 0.008, memory 64) and, as a control, with lambdas 0 (DiffFit alone); sample IPC 10 and 50
(DDPM, 50 steps, classifier-free guidance 4, as the authors' sampler); evaluate them, random real images
and DM (its ``experiments.distill`` runs' images, ``dm_dir``) with the library's CPU protocol (ConvNet
width 32, 300 epochs with DSA, 3 seeds) and an MLP; coverage of the test set in the features of a
ConvNet trained 2 epochs on the training set (``coverage_epochs`` 1 under the protocol's E + 1
schedule); the quality report (class agreement and an FID-style distance by a width-64 ConvNet
trained 9 epochs on every training image (``judge.epochs`` 8, likewise), refused below 90% test
accuracy; the nearest-real distance ratio), in the run file and `minimax_dit_fashion_mnist.json`;
image grids.

Expected (seed 0; evaluated 2026-11-26 under the current defaults): generated sets are far below random
real images and DM at this scale (ConvNet at IPC 10: vanilla 49.9, Minimax 54.2, DiffFit alone 54.2,
random real 76.8, DM 79.2; at IPC 50: 56.0, 57.4, 57.9, 82.4, 83.4). Run time on one shared CPU core:
pretraining 51 min (2000 steps), each fine-tuning ~6 min (600 steps), sampling 0.5-4.5 min per set,
evaluation 2-3 min per IPC-10 set and ~10 min per IPC-50 set (ConvNet); the coverage network ~7 min.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "fashion_mnist"
  c.seed = 0
  c.model_kind = "dit"  # or "unet" (jaxdistill.diffusion.get_model)
  c.model = ml_collections.ConfigDict(
      {"patch": 4, "width": 96, "depth": 4, "heads": 4, "mlp_ratio": 4.0, "label_dropout": 0.1})
  c.schedule = "linear"
  c.num_timesteps = 1000
  c.pretrain = ml_collections.ConfigDict(
      {"steps": 2000, "batch_size": 96, "lr": 1e-3, "warmup": 100, "end_lr": 1e-5, "clip": 1.0,
       "ema_decay": 0.998, "checkpoint_every": 200, "quality_every": 0})
  c.finetune = ml_collections.ConfigDict(
      {"steps": 600, "batch_size": 32, "lr": 1e-3, "ema_decay": 0.998, "lambda_pos": 0.002,
       "lambda_neg": 0.008, "memory_size": 64, "checkpoint_every": 200, "space": "model"})
  # finetune.space: where the Minimax terms compare images. "model": the diffusion model's own space
  # (here pixels; in the authors' code the Stable Diffusion VAE latents their DiT denoises);
  # "autoencoder": the latents of this autoencoder, trained once on the training images.
  c.autoencoder = ml_collections.ConfigDict(
      {"width": 32, "latent_channels": 4, "steps": 3000, "batch_size": 128, "lr": 1e-3})
  c.control = True  # also fine-tune with lambdas 0 (DiffFit alone)
  # Appended to the fine-tunings' directories (<workdir>/minimax<suffix>): runs that share a workdir
  # (its pretrained model) but fine-tune otherwise, e.g. at other lambdas, keep their own checkpoints.
  c.finetune_suffix = ""
  c.sample = ml_collections.ConfigDict(
      {"steps": 50, "eta": 1.0, "cfg_scale": 4.0, "clip": 1.0, "batch_size": 250})
  # Sampler sweep: each entry overrides fields of c.sample; the sample of each (sweep_ipc per class,
  # from the pretrained model) is scored against the held-out training images, and among the entries
  # whose class agreement is within sweep_agreement_slack of the best one's, the closest (FID-style)
  # is used for every set: a distilled set's images must show their label first (0.02 is about the
  # standard error of an agreement near 0.9 measured on 200 images; 1.0 chooses by FID-style alone).
  # Needs holdout > 0, as pretrain.quality_every (a report every that many pretraining steps).
  c.sweep = ()
  c.sweep_ipc = 20
  c.sweep_agreement_slack = 0.02
  c.holdout = 0  # training images kept out of the diffusion model's training (the choices' reference)
  c.ipcs = (10, 50)
  c.dm_dir = "runs/dm_fashion_mnist_ipc{ipc}"  # experiments.distill's workdir (synthetic.npz)
  c.eval_model = "convnet"
  c.eval_model_kwargs = ml_collections.ConfigDict({"width": 32, "depth": 3})
  c.eval_epochs = 300
  c.eval_augment = "dsa"
  c.num_seeds = 3
  c.other_model = "mlp"
  c.coverage_epochs = 1
  # The quality report's classifier (trained once, cached under workdir; refused below min_accuracy).
  c.judge = ml_collections.ConfigDict({"model": "convnet", "model_kwargs": {"width": 64, "depth": 3},
                                       "epochs": 8, "min_accuracy": 0.9})
  c.max_per_class = 0  # > 0: a class-balanced training subset (tests)
  c.workdir = "runs/minimax_fashion_mnist"
  # Checkpoints written before they carried checksums are refused unless adopted (rewritten) first.
  c.adopt_legacy_checkpoints = False
  c.results = "experiments/results/minimax_dit_fashion_mnist.md"
  c.grid_prefix = "minimax_fmnist"  # image grids: <results dir>/<grid_prefix>_<set>_ipc<ipc>.png
  return c
