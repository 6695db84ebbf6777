"""SelMatch vs random / best window / MTT on a Fashion-MNIST training subset, CPU-sized.

Command:
  .venv/bin/python -m experiments.selmatch --config experiments/configs/selmatch_sweep_fmnist.py

Subset: 100 images per class (1,000), ratios 5% and 10% (IPC 5 and 10). Experts: 3 ConvNets (width 32)
x 10 epochs, batch 64 (the reference's 256 would give 4 SGD steps per epoch on 1,000 images: a first
try with 256 left the experts at 64% test accuracy). MTT: syn_steps 10, expert_epochs 2,
max_start_epoch 5, lr_img 100, lr_lr 1e-5, step size init 0.01, 40 iterations (the references:
thousands; this CPU: ~5 s per iteration). SelMatch alpha by ratio from the paper's CIFAR-10
choices at the same ratios (5%: 0.6, 10%: 0.2). Window search: 200 epochs, 2 seeds, beta in the paper's
unit (the window starts int(beta * class size) places from the hardest image). A first run in the
reference code's unit (start int(beta * IPC)) put every window inside the hardest 9% of each class at
these IPCs and they trained to 35-45% against 64% for random images at IPC 5, so the search could not
show the paper's finding; the reference's own beta ranges also stop exactly where percent-unit
windows would overflow the class; final evaluation
300 epochs, 3 seeds (papers: 1000 epochs, 5 seeds, ResNet18-BN for SelMatch). Run time on the 2-core
CPU: about an hour.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "fashion_mnist"
  c.seed = 0
  c.per_class = 100
  c.ratios = (0.05, 0.10)
  c.alphas = (0.6, 0.2)
  c.model = "convnet"
  c.model_kwargs = ml_collections.ConfigDict({"width": 32, "depth": 3})
  c.experts = ml_collections.ConfigDict({"num": 3, "epochs": 10, "lr": 0.01, "batch_size": 64})
  c.mtt = ml_collections.ConfigDict({"syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 5,
                                     "batch_syn": 0, "lr_img": 100.0, "lr_lr": 1e-5,
                                     "lr_teacher": 0.01, "steps": 40})
  c.search = ml_collections.ConfigDict({"betas": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                                        "eval_epochs": 200, "num_seeds": 2, "unit": "percent"})
  # Also distill SelMatch with combined augmentation inside the unroll (DSA on distilled rows,
  # crop+flip on frozen ones; the reference uses DSA on every row) and report it beside.
  c.compare_distill_augment = False
  c.eval_model = "convnet"
  c.eval_model_kwargs = ml_collections.ConfigDict({"width": 32, "depth": 3})
  c.eval_epochs = 300
  c.num_seeds = 3
  c.workdir = "runs"
  c.out = "experiments/results/selmatch_fashion_mnist.md"
  return c
