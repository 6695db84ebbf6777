"""The SelMatch protocol study on the full Fashion-MNIST training set at 1, 5 and 10%, for an accelerator.

Command (resumable stage by stage):
  .venv/bin/python -m experiments.selmatch --config experiments/configs/selmatch_protocol_fmnist_full.py

``selmatch_protocol_fmnist.py`` on 5,500 images per class (55,000, the 100% of the ratios) with 500
per class held out to choose the window; ratios 1, 5 and 10% (IPC 55, 275, 550), SelMatch's CIFAR-10
alphas for 5 and 10% and 0.8 at 1%; batch_syn 550 (a divisor of every ratio's rows); ResNet-18 BN
evaluation as SelMatch's. Not yet run or timed. It does not fit 10 minutes of one H100: SelMatch's
rule trains round(50 / ratio) + 1 epochs per network (5001 at 1%), for 5 networks per set and 6 sets
per ratio, besides the window searches (10 betas x 2 networks at search.eval_epochs) and 5 experts x
50 epochs on 55,000 images; on one H100 budget hours, or lower search.eval_epochs and the ratios.
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
