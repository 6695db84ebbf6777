"""A small class-conditional Diffusion Transformer (DiT, Peebles & Xie 2023) on pixel patches.

Images ``[N, H, W, C]`` are cut into ``patch x patch`` patches (28x28 with patch 4: 49 tokens), embedded
linearly with fixed 2-D sin-cos positions, and run through ``depth`` transformer blocks conditioned by
adaLN-Zero on ``timestep embedding + class embedding``. The class table has one extra row, the null class
(id ``num_classes``), used for classifier-free guidance; ``label_dropout`` replaces labels with it during
training. The output is the predicted noise ``[N, H, W, C]``.

As DiffFit (Xie et al., 2023) the first half of the blocks carry learnable scale factors ``gamma`` (ones
at initialization, so they do not change the function until trained).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def sincos_2d(dim: int, grid: int) -> np.ndarray:
  """Fixed 2-D sine-cosine position embeddings ``[grid * grid, dim]`` (``dim`` divisible by 4)."""
  if dim % 4:
    raise ValueError(f"The DiT width must be divisible by 4 for 2-D positions; got {dim}.")
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
  ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                       indexing="ij")

  def one(pos):
    out = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([one(xs), one(ys)], axis=1).astype(np.float32)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embeddings ``[N, dim]`` of (possibly fractional) timesteps ``t`` ``[N]``."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None]) + shift[:, None]


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, name=name)


class DiTBlock(nn.Module):
  """Pre-norm attention + MLP, each modulated (shift, scale) and gated by the conditioning."""
  width: int
  heads: int
  mlp_ratio: float = 4.0
  use_gamma: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    mods = nn.Dense(6 * self.width, kernel_init=nn.initializers.zeros, name="adaLN")(nn.silu(c))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mods, 6, axis=-1)
    g1 = self.param("gamma1", nn.initializers.ones, (self.width,)) if self.use_gamma else 1.0
    g2 = self.param("gamma2", nn.initializers.ones, (self.width,)) if self.use_gamma else 1.0
    dense = lambda n, name: nn.Dense(n, kernel_init=nn.initializers.xavier_uniform(), name=name)
    h = modulate(_layer_norm("norm1")(x), shift_a, scale_a)
    h = nn.MultiHeadDotProductAttention(self.heads, kernel_init=nn.initializers.xavier_uniform(),
                                        name="attn")(h, h)
    x = x + g1 * gate_a[:, None] * h
    h = modulate(_layer_norm("norm2")(x), shift_m, scale_m)
    h = dense(int(self.width * self.mlp_ratio), "mlp_in")(h)
    h = dense(self.width, "mlp_out")(nn.gelu(h, approximate=True))
    return x + g2 * gate_m[:, None] * h


class DiT(nn.Module):
  """Class-conditional DiT predicting the noise of ``x_t``.

  Attributes:
    num_classes: K real classes; the null class is id K.
    patch: patch side (must divide the image side).
    width, depth, heads: transformer size.
    mlp_ratio: hidden width of each MLP over ``width``.
    label_dropout: probability of replacing a label by the null class when ``train=True``.
    gamma_blocks: how many of the first blocks carry DiffFit's ``gamma`` scales (default: half).
  """
  num_classes: int
  patch: int = 4
  width: int = 128
  depth: int = 4
  heads: int = 4
  mlp_ratio: float = 4.0
  label_dropout: float = 0.1
  gamma_blocks: int = -1

  @nn.nowrap
  def check_image_shape(self, shape) -> None:
    """Raises ValueError unless ``shape`` ``(H, W, C)`` is square and cut exactly into patches."""
    if len(shape) != 3 or shape[0] != shape[1] or shape[0] % self.patch:
      raise ValueError(f"image_shape {tuple(shape)} does not fit the DiT: it needs square images whose "
                       f"side the patch size {self.patch} divides.")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
    """Noise prediction ``[N, H, W, C]`` for ``x`` ``[N, H, W, C]``, timesteps ``t`` ``[N]`` and
    labels ``y`` ``[N]`` int (``num_classes`` = unconditional). With ``train`` labels are dropped with
    probability ``label_dropout``, drawing from the ``"dropout"`` RNG stream."""
    n, hh, ww, ch = x.shape
    p = self.patch
    if hh % p or ww % p:
      raise ValueError(f"Patch size {p} must divide the image size {hh}x{ww}.")
    gh, gw = hh // p, ww // p
    tokens = x.reshape(n, gh, p, gw, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, p * p * ch)
    h = nn.Dense(self.width, kernel_init=nn.initializers.xavier_uniform(), name="x_embed")(tokens)
    if gh != gw:
      raise ValueError(f"DiT expects square images; got {hh}x{ww}.")
    h = h + jnp.asarray(sincos_2d(self.width, gh))[None]
    temb = nn.Dense(self.width, kernel_init=nn.initializers.normal(0.02), name="t_embed_in")(
        timestep_embedding(t, 256))
    temb = nn.Dense(self.width, kernel_init=nn.initializers.normal(0.02), name="t_embed_out")(
        nn.silu(temb))
    y = y.astype(jnp.int32)
    if train and self.label_dropout > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.label_dropout, y.shape)
      y = jnp.where(drop, jnp.int32(self.num_classes), y)
    yemb = nn.Embed(self.num_classes + 1, self.width, embedding_init=nn.initializers.normal(0.02),
                    name="y_embed")(y)
    c = temb + yemb
    n_gamma = self.depth // 2 if self.gamma_blocks < 0 else self.gamma_blocks
    for i in range(self.depth):
      h = DiTBlock(self.width, self.heads, self.mlp_ratio, use_gamma=i < n_gamma, name=f"block{i}")(h, c)
    shift, scale = jnp.split(nn.Dense(2 * self.width, kernel_init=nn.initializers.zeros,
                                      name="final_adaLN")(nn.silu(c)), 2, axis=-1)
    h = modulate(_layer_norm("norm_final")(h), shift, scale)
    h = nn.Dense(p * p * ch, kernel_init=nn.initializers.zeros, name="final")(h)
    return h.reshape(n, gh, gw, p, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(n, hh, ww, ch)
