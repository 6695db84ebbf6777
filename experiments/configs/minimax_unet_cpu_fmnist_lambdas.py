"""An ablation of ``minimax_unet_cpu_fmnist.py``: the Minimax fine-tuning with stronger terms.

Command (the factor on both lambdas after the file name):
  .venv/bin/python -m experiments.minimax --config experiments/configs/minimax_unet_cpu_fmnist_lambdas.py:10

The same run (workdir, pretrained model, autoencoder, sampler chosen by the same sweep on held-out
images, random real and DM rows, all read back from the main run's files) with the Minimax
fine-tuning at ``factor`` times the authors' lambda_pos 0.002 and lambda_neg 0.008, in its own
directory (``<workdir>/minimax_lambdas<factor>``), IPC 10 only, no DiffFit control (the main run's
is the same fine-tuning with lambdas 0). At the authors' lambdas the terms stayed nearly constant
during the 600 steps and the sampled images moved little from the pretrained model's; this config
asks whether terms that weigh more than the diffusion loss change the sets.
"""
from experiments.configs import minimax_unet_cpu_fmnist


def get_config(arg: str = "10"):
  k = float(arg)
  if not k > 0:
    raise ValueError(f"The lambdas' factor must be > 0; got {arg!r}.")
  tag = f"lambdas{arg.replace('.', '_')}"
  c = minimax_unet_cpu_fmnist.variant(tag)
  c.finetune.lambda_pos *= k
  c.finetune.lambda_neg *= k
  c.ipcs = (10,)
  c.control = False
  c.finetune_suffix = f"_{tag}"
  return c
