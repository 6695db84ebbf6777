"""The DC repo's MLP: flatten, Dense 128, ReLU, Dense 128, ReLU, Dense K."""
from __future__ import annotations

import flax.linen as nn
import jax

from jaxdistill.models.layers import Dense, check_images, flatten


class MLP(nn.Module):
  """Three-layer perceptron as ``MLP`` in DatasetCondensation (width 128).

  Attributes:
    num_classes: output logits ``K``.
    width: hidden units of both hidden layers.
  """
  num_classes: int
  width: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, return_features: bool = False):
    """Logits ``[N, K]`` of images ``[N, H, W, C]``; with ``return_features`` also the second hidden
    layer ``[N, width]``. ``train`` is accepted for the uniform interface and unused."""
    del train
    x = flatten(check_images(x, "MLP"))
    x = nn.relu(Dense(self.width)(x))
    feats = nn.relu(Dense(self.width)(x))
    logits = Dense(self.num_classes)(feats)
    return (logits, feats) if return_features else logits
