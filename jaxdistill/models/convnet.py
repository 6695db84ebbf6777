"""The field's ConvNet (DC / DSA / DM / MTT / SelMatch) and FRePo's variant."""
from __future__ import annotations

import flax.linen as nn
import jax

from jaxdistill.models.layers import (DEFAULT_CONV_IMPL, NORMS, POOLINGS, Conv, Dense, check_images,
                                      first_pad, flatten, make_norm, pool)


class ConvNet(nn.Module):
  """``depth`` blocks of [conv 3x3 ``width``, norm, ReLU, 2x2 pool], flatten, one Dense.

  As ``ConvNet`` in DatasetCondensation / mtt-distillation: the first conv pads by 3 for one-channel
  inputs (28x28 -> 32x32), the others by 1, so Fashion-MNIST and CIFAR both end with
  ``width * 4 * 4`` = 2048 features at width 128, depth 3.

  Attributes:
    num_classes: output logits ``K``.
    width: channels of every conv.
    depth: number of blocks.
    norm: "instancenorm" (default), "batchnorm", "layernorm", "groupnorm" or "none".
    pooling: "avgpooling" (default), "maxpooling" or "none".
    conv_impl: ``Conv`` implementation ("auto", "patches", "shift", "lax"; see ``layers.Conv``).
  """
  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instancenorm"
  pooling: str = "avgpooling"
  conv_impl: str = DEFAULT_CONV_IMPL

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, return_features: bool = False):
    """Logits ``[N, K]`` of images ``[N, H, W, C]``; with ``return_features`` also the flattened
    last block ``[N, D]``."""
    if self.norm not in NORMS:
      raise ValueError(f"Unknown norm {self.norm!r}; choose one of {NORMS}.")
    if self.pooling not in POOLINGS:
      raise ValueError(f"Unknown pooling {self.pooling!r}; choose one of {POOLINGS}.")
    x = check_images(x, "ConvNet")
    for d in range(self.depth):
      pad = first_pad(x) if d == 0 else 1
      x = Conv(self.width, 3, padding=pad, impl=self.conv_impl)(x)
      x = make_norm(self.norm, train)(x)
      x = nn.relu(x)
      x = pool(self.pooling, x)
    feats = flatten(x)
    logits = Dense(self.num_classes)(feats)
    return (logits, feats) if return_features else logits


# FRePo's ConvNet is a Flax module with Flax's default initialization: LeCun normal weights, zero biases.
FLAX_KERNEL = nn.initializers.lecun_normal()


class ConvNetFRePo(nn.Module):
  """FRePo's ConvNet (``Conv`` in the FRePo code base): widths double per block, norm before conv,
  Flax's default initialization (LeCun normal weights, zero biases) as FRePo's code has it.

  Block ``i`` (0-based) is [norm (skipped for ``i == 0``), conv 3x3 with ``width * 2**i`` channels and
  bias, ReLU, 2x2 average pool]; then flatten and one Dense. The first conv pads by 3 for one-channel
  inputs (28x28 -> 32x32), the others by 1. So a 32x32 input ends with ``4 * 4 * width * 4`` features
  (8192 at width 128). FRePo's default normalization is none ("identity"); "batchnorm" here uses the
  usual running-average momentum (FRePo's code passes flax momentum 0.1, i.e. running stats follow the
  last batch almost entirely).

  Attributes:
    num_classes: output logits ``K``.
    width: channels of the first conv.
    depth: number of blocks.
    norm: "none" (default), "instancenorm", "batchnorm", "layernorm" or "groupnorm".
    pooling: "avgpooling" (default), "maxpooling" or "none".
    conv_impl: ``Conv`` implementation.
  """
  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "none"
  pooling: str = "avgpooling"
  conv_impl: str = DEFAULT_CONV_IMPL

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, return_features: bool = False):
    """Logits ``[N, K]`` of images ``[N, H, W, C]``; with ``return_features`` also ``[N, D]``."""
    if self.norm not in NORMS:
      raise ValueError(f"Unknown norm {self.norm!r}; choose one of {NORMS}.")
    if self.pooling not in POOLINGS:
      raise ValueError(f"Unknown pooling {self.pooling!r}; choose one of {POOLINGS}.")
    x = check_images(x, "ConvNetFRePo")
    for d in range(self.depth):
      if d > 0:
        x = make_norm(self.norm, train)(x)
      pad = first_pad(x) if d == 0 else 1
      x = Conv(self.width * 2 ** d, 3, padding=pad, impl=self.conv_impl, kernel_init=FLAX_KERNEL,
               bias_init=nn.initializers.zeros)(x)
      x = nn.relu(x)
      x = pool(self.pooling, x)
    feats = flatten(x)
    logits = Dense(self.num_classes, kernel_init=FLAX_KERNEL, bias_init=nn.initializers.zeros)(feats)
    return (logits, feats) if return_features else logits
