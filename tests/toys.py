"""Tiny models and data shared by the tests (imported as ``toys``; pytest puts tests/ on sys.path)."""
import flax.linen as nn
import numpy as np


class TinyConv(nn.Module):
  """One 3x3 conv + ReLU, flattened features, one Dense: the jaxdistill model interface in miniature."""
  num_classes: int = 3
  width: int = 4

  @nn.compact
  def __call__(self, x, train=True, return_features=False):
    h = nn.relu(nn.Conv(self.width, (3, 3))(x))
    f = h.reshape(h.shape[0], -1)
    logits = nn.Dense(self.num_classes)(f)
    return (logits, f) if return_features else logits


def toy_data(seed=0, n_per=12, num_classes=3, hw=8):
  """``(x [K * n_per, hw, hw, 1] float32, y [K * n_per] int32)``: class c's images are N(c, 1) noise."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(num_classes), n_per).astype(np.int32)
  x = (rng.normal(size=(y.size, hw, hw, 1)) + y[:, None, None, None]).astype(np.float32)
  return x, y
