"""The SelMatch protocol study on the full Fashion-MNIST training set at 1, 5 and 10%, for an accelerator.

Command (resumable stage by stage):
  .venv/bin/python -m experiments.selmatch --config experiments/configs/selmatch_protocol_fmnist_full.py

``selmatch_protocol_fmnist.py`` on 5,500 images per class (55,000, the 100% of the ratios) with 500
per class held out to choose the window; ratios 1, 5 and 10% (IPC 55, 275, 550), SelMatch's CIFAR-10
alphas for 5 and 10% and 0.8 at 1%; batch_syn 550 (a divisor of every ratio's rows); ResNet-18 BN
evaluation as SelMatch's. Not yet run or timed.

Estimated work on one H100, from the ratio sweep's measured MTT iterations there (0.02-0.06 s for 20
unrolled steps with the meta-gradient, i.e. roughly 0.5-1 ms per ConvNet training step) and 2-4 ms per
ResNet-18 BN step of batch 128 (an estimate, not measured here): SelMatch's rule trains
round(50 / ratio) + 1 epochs per network, about 21,500 steps of batch 128 at every ratio, so each
ratio's final evaluations (5 networks x about 6 sets) are about 650,000 ResNet-18 steps, 20-45
minutes; its window search (10 betas x 2 networks x 200 epochs) 20,000 / 88,000 / 172,000 steps at
1 / 5 / 10%; the 5 experts x 100 epochs on 55,000 images about 107,000 ConvNet steps, 1-2 minutes;
each MTT / SelMatch run (500 iterations, 40 unrolled steps of 550 images) a minute or two. In all
about 1.5-3 hours of one H100, so it does not fit one 10-minute job: run it as a chain of jobs that
resume one another (every stage checkpoints or caches under ``workdir``), one ratio at a time, e.g.
``bash scripts/offline_job.sh OUT 540 python3 -m experiments.selmatch --config <this file>
--config.ratios="(0.01,)" --config.alphas="((0.8,),)"`` and then 5% and 10%, carrying ``runs.tar.gz``
from one job to the next (``scripts/pack_offline.sh --resume``; the 5 experts' trajectories take
about 100 MB on disk at width 32, more than one transfer carries: ``RUNS_EXCLUDE='*/experts'`` leaves
them out, and each job retrains them with the same key, a minute or two). ``--config.eval_model=convnet
--config.eval_model_kwargs="{'conv_impl': 'lax', 'depth': 3, 'width': 32}"`` evaluates with the
ConvNet instead (about 4x fewer evaluation seconds; the ConvNet rule of the CPU study).
"""
import ml_collections

from experiments.configs import selmatch_protocol_fmnist


def get_config():
  c = selmatch_protocol_fmnist.get_config()
  c.per_class = 5500
  c.holdout_per_class = 500
  c.ratios = (0.01, 0.05, 0.10)
  c.alphas = ((0.8,), (0.6,), (0.2,))
  c.mtt.batch_syn = 550
  c.experts.batch_size = 256
  c.model_kwargs.conv_impl = "lax"  # the accelerator's native convolution
  c.eval_model = "resnet18bn"
  c.eval_model_kwargs = ml_collections.ConfigDict({})
  c.out = "experiments/results/selmatch_protocol_fashion_mnist_full.md"
  return c
