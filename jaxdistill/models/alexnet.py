"""The DC repo's AlexNet for 32x32 (and 28x28 grey) images."""
from __future__ import annotations

import flax.linen as nn
import jax

from jaxdistill.models.layers import (DEFAULT_CONV_IMPL, Conv, Dense, check_images, first_pad,
                                      flatten, max_pool2)


class AlexNet(nn.Module):
  """AlexNet as in DatasetCondensation's ``networks.py``.

  conv 5x5 128 (pad 4 for one-channel inputs, so 28x28 -> 32x32, else 2), ReLU, max-pool 2;
  conv 5x5 192 pad 2, ReLU, max-pool 2; conv 3x3 256, ReLU; conv 3x3 192, ReLU; conv 3x3 192, ReLU,
  max-pool 2; flatten (``192 * 4 * 4`` = 3072 features) and one Dense. No normalization.

  Attributes:
    num_classes: output logits ``K``.
    conv_impl: ``Conv`` implementation.
  """
  num_classes: int
  conv_impl: str = DEFAULT_CONV_IMPL

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, return_features: bool = False):
    """Logits ``[N, K]`` of images ``[N, H, W, C]``; with ``return_features`` also ``[N, D]``.
    ``train`` is accepted for the uniform interface and unused."""
    del train
    x = check_images(x, "AlexNet")
    conv = lambda f, k, p: Conv(f, k, padding=p, impl=self.conv_impl)
    x = max_pool2(nn.relu(conv(128, 5, first_pad(x, 5))(x)))
    x = max_pool2(nn.relu(conv(192, 5, 2)(x)))
    x = nn.relu(conv(256, 3, 1)(x))
    x = nn.relu(conv(192, 3, 1)(x))
    x = max_pool2(nn.relu(conv(192, 3, 1)(x)))
    feats = flatten(x)
    logits = Dense(self.num_classes)(feats)
    return (logits, feats) if return_features else logits
