"""The DC repo's VGG11 (instance norm by default)."""
from __future__ import annotations

from typing import Sequence, Union

import flax.linen as nn
import jax

from jaxdistill.models.layers import (DEFAULT_CONV_IMPL, Conv, Dense, check_images, first_pad,
                                      flatten, make_norm, max_pool2)

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
  """VGG as in DatasetCondensation: [conv 3x3, norm, ReLU] per number in ``cfg``, 2x2 max-pool per "M",
  flatten, one Dense.

  The first conv pads by 3 for one-channel inputs (28x28 -> 32x32), the others by 1; a 32x32 input ends
  at 1x1 after the five pools, so VGG11 gives 512 features (``8 * width``).

  Attributes:
    num_classes: output logits ``K``.
    cfg: layer list (default VGG11).
    width: channels of the first conv; every entry of ``cfg`` is scaled by ``width / 64``
      (64 = the reference).
    norm: "instancenorm" (default, the reference's VGG11) or "batchnorm" (VGG11BN), or "none".
    conv_impl: ``Conv`` implementation.
  """
  num_classes: int
  cfg: Sequence[Union[int, str]] = VGG11_CFG
  width: int = 64
  norm: str = "instancenorm"
  conv_impl: str = DEFAULT_CONV_IMPL

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, return_features: bool = False):
    """Logits ``[N, K]`` of images ``[N, H, W, C]``; with ``return_features`` also ``[N, D]``."""
    x = check_images(x, "VGG")
    for i, c in enumerate(self.cfg):
      if c == "M":
        x = max_pool2(x)
        continue
      pad = first_pad(x) if i == 0 else 1
      x = Conv(c * self.width // 64, 3, padding=pad, impl=self.conv_impl)(x)
      x = nn.relu(make_norm(self.norm, train)(x))
    feats = flatten(x)
    logits = Dense(self.num_classes)(feats)
    return (logits, feats) if return_features else logits
