"""A small class-conditional UNet in the DDPM / ADM design (Ho et al. 2020; Dhariwal & Nichol 2021).

Images ``[N, H, W, C]`` go through a 3x3 input convolution, then ``len(mults)`` resolution levels down
(``blocks`` residual blocks each, a stride-2 convolution between levels), a middle (residual block,
self-attention, residual block) and the same levels up (``blocks + 1`` residual blocks each, fed the
down path's activations by concatenation, nearest-neighbour upsampling and a 3x3 convolution between
levels). Self-attention follows the residual blocks of the levels listed in ``attn_levels``.

Every residual block is conditioned on ``timestep embedding + class embedding`` through ADM's
scale-shift normalization (``GroupNorm(h) * (1 + scale) + shift``); its last convolution, the
attention output projection and the output convolution start at zero, so a fresh model predicts
``eps = 0``. The class table has one extra row, the null class (id ``num_classes``), for
classifier-free guidance; ``label_dropout`` replaces labels with it during training. The interface is
the DiT's (``model.apply(v, x, t, y, train=..., rngs=...) -> eps``), so training, DiffFit fine-tuning
(biases, the ``norm`` layers' scales and biases and the class embedding ``y_embed``) and sampling take either.

28x28 images with ``mults=(1, 2, 2)`` run at 28, 14 and 7 pixels.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.diffusion.model import timestep_embedding
from jaxdistill.models.layers import DEFAULT_CONV_IMPL, Conv


def _conv(features: int, name: str, impl: str, kernel: int = 3, stride: int = 1,
          zero: bool = False) -> Conv:
  """A ``kernel`` x ``kernel`` convolution with "same" padding (halving the side at ``stride`` 2)."""
  init = nn.initializers.zeros if zero else nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
  return Conv(features, kernel, stride, padding=kernel // 2, impl=impl, kernel_init=init,
              bias_init=nn.initializers.zeros, name=name)


class ResBlock(nn.Module):
  """GroupNorm, SiLU, conv; scale-shift by the conditioning; GroupNorm, SiLU, dropout, conv (zero at
  initialization); a 1x1 convolution on the skip path when the width changes."""
  features: int
  groups: int
  dropout: float = 0.0
  conv_impl: str = DEFAULT_CONV_IMPL

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    h = _conv(self.features, "conv1", self.conv_impl)(nn.silu(nn.GroupNorm(self.groups, name="norm1")(x)))
    scale, shift = jnp.split(nn.Dense(2 * self.features, name="emb")(nn.silu(emb)), 2, axis=-1)
    h = nn.GroupNorm(self.groups, name="norm2")(h) * (1 + scale[:, None, None]) + shift[:, None, None]
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = _conv(self.features, "conv2", self.conv_impl, zero=True)(h)
    if x.shape[-1] != self.features:
      x = _conv(self.features, "skip", self.conv_impl, kernel=1)(x)
    return x + h


class Attention(nn.Module):
  """Multi-head self-attention over the pixels of a feature map (pre-norm, zero-initialized output)."""
  heads: int
  groups: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, ch = x.shape
    t = nn.GroupNorm(self.groups, name="norm")(x).reshape(n, h * w, ch)
    t = nn.MultiHeadDotProductAttention(self.heads, out_kernel_init=nn.initializers.zeros,
                                        name="attn")(t, t)
    return x + t.reshape(n, h, w, ch)


class UNet(nn.Module):
  """Class-conditional UNet predicting the noise of ``x_t``.

  Attributes:
    num_classes: K real classes; the null class is id K.
    width: channels of the first level (``width * mults[i]`` at level ``i``).
    mults: channel multipliers, one per resolution level (the side must divide by
      ``2 ** (len(mults) - 1)``).
    blocks: residual blocks per level on the way down (``blocks + 1`` on the way up).
    attn_levels: levels (0 = full resolution) with self-attention after their residual blocks; the
      middle always has one.
    heads: attention heads.
    groups: GroupNorm groups (must divide every level's width).
    dropout: inside the residual blocks, when ``train``.
    label_dropout: probability of replacing a label by the null class when ``train``.
    conv_impl: the convolutions' implementation (``jaxdistill.models.layers.Conv``: "auto" is
      "patches" on CPU, "lax" on accelerators).
  """
  num_classes: int
  width: int = 64
  mults: Sequence[int] = (1, 2, 2)
  blocks: int = 2
  attn_levels: Sequence[int] = (2,)
  heads: int = 4
  groups: int = 8
  dropout: float = 0.0
  label_dropout: float = 0.1
  conv_impl: str = DEFAULT_CONV_IMPL

  @nn.nowrap
  def check_image_shape(self, shape: Sequence[int]) -> None:
    """Raises ValueError unless ``shape`` ``(H, W, C)`` halves ``len(mults) - 1`` times exactly."""
    f = 2 ** (len(self.mults) - 1)
    if len(shape) != 3 or shape[0] % f or shape[1] % f:
      raise ValueError(f"image_shape {tuple(shape)} does not fit the UNet: its {len(self.mults)} "
                       f"levels need H and W divisible by {f}.")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
    """Noise prediction ``[N, H, W, C]`` for ``x`` ``[N, H, W, C]``, timesteps ``t`` ``[N]`` and labels
    ``y`` ``[N]`` int (``num_classes`` = unconditional). With ``train``, labels are dropped with
    probability ``label_dropout`` and the blocks' dropout acts (``"dropout"`` RNG stream)."""
    self.check_image_shape(x.shape[1:])
    bad = [m for m in self.mults if (self.width * m) % self.groups]
    if bad:
      raise ValueError(f"groups={self.groups} must divide every level's width "
                       f"{[self.width * m for m in self.mults]}.")
    emb_dim = 4 * self.width
    emb = nn.Dense(emb_dim, name="t_embed_in")(timestep_embedding(t, self.width))
    emb = nn.Dense(emb_dim, name="t_embed_out")(nn.silu(emb))
    y = y.astype(jnp.int32)
    if train and self.label_dropout > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.label_dropout, y.shape)
      y = jnp.where(drop, jnp.int32(self.num_classes), y)
    emb = emb + nn.Embed(self.num_classes + 1, emb_dim, embedding_init=nn.initializers.normal(0.02),
                         name="y_embed")(y)
    block = lambda f, name: ResBlock(f, self.groups, self.dropout, self.conv_impl, name=name)
    attn = lambda name: Attention(self.heads, self.groups, name=name)

    h = _conv(self.width, "conv_in", self.conv_impl)(x)
    skips = [h]
    for i, m in enumerate(self.mults):
      for j in range(self.blocks):
        h = block(self.width * m, f"down{i}_{j}")(h, emb, train)
        if i in self.attn_levels:
          h = attn(f"down{i}_{j}_attn")(h)
        skips.append(h)
      if i < len(self.mults) - 1:
        h = _conv(h.shape[-1], f"down{i}_pool", self.conv_impl, stride=2)(h)
        skips.append(h)
    h = block(h.shape[-1], "mid0")(h, emb, train)
    h = attn("mid_attn")(h)
    h = block(h.shape[-1], "mid1")(h, emb, train)
    for i in reversed(range(len(self.mults))):
      for j in range(self.blocks + 1):
        h = block(self.width * self.mults[i], f"up{i}_{j}")(
            jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
        if i in self.attn_levels:
          h = attn(f"up{i}_{j}_attn")(h)
      if i > 0:
        n, hh, ww, ch = h.shape
        h = jax.image.resize(h, (n, 2 * hh, 2 * ww, ch), "nearest")
        h = _conv(ch, f"up{i}_upsample", self.conv_impl)(h)
    h = nn.silu(nn.GroupNorm(self.groups, name="norm_out")(h))
    return _conv(x.shape[-1], "conv_out", self.conv_impl, zero=True)(h)
