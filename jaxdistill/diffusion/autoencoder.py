"""A small convolutional autoencoder: the latent space Minimax Diffusion's criteria can be computed in.

Minimax Diffusion's authors fine-tune a latent DiT: images are encoded by Stable Diffusion's VAE
(``sd-vae-ft-ema``, latents scaled by 0.18215), the memories hold the real images' latents, and the
pseudo embeddings are the latents the DiT predicts. For a diffusion model on pixels, ``AutoEncoder``
plays the VAE's part: trained once on the training images (reconstruction error, no labels), its
encoder maps both the real images and the predicted clean images to latents (``8x`` fewer values at
28x28 with the defaults: 7x7x4, as Stable Diffusion's 4-channel latent at a quarter of the side), and
the criteria compare those. Unlike the authors' code, the gradient of the criteria reaches the
diffusion model through the (frozen) encoder.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdistill.models.layers import DEFAULT_CONV_IMPL, Conv


class AutoEncoder(nn.Module):
  """Encoder: 3x3 convolutions, two of stride 2 (28 -> 14 -> 7), to ``latent_channels``; decoder:
  the mirror image with nearest-neighbour upsampling to ``channels``. ``encode`` / ``decode`` are its
  two halves."""
  width: int = 32
  latent_channels: int = 4
  channels: int = 1
  conv_impl: str = DEFAULT_CONV_IMPL

  def setup(self):
    conv = lambda f, s=1, k=3: Conv(f, k, s, padding=k // 2, impl=self.conv_impl)
    w = self.width
    self.enc = [conv(w), conv(2 * w, 2), conv(2 * w, 2), conv(self.latent_channels, 1, 1)]
    self.dec = [conv(2 * w), conv(2 * w), conv(w), conv(w), conv(self.channels)]

  def encode(self, x: jax.Array) -> jax.Array:
    """``[N, H, W, C]`` -> latents ``[N, H/4, W/4, latent_channels]``."""
    if x.ndim != 4 or x.shape[1] % 4 or x.shape[2] % 4:
      raise ValueError(f"AutoEncoder.encode expects [N, H, W, C] with H and W divisible by 4; got "
                       f"{x.shape}.")
    h = x
    for layer in self.enc[:-1]:
      h = nn.silu(layer(h))
    return self.enc[-1](h)

  def decode(self, z: jax.Array) -> jax.Array:
    """Latents -> images ``[N, 4 h, 4 w, channels]``."""
    up = lambda h: jax.image.resize(h, (h.shape[0], 2 * h.shape[1], 2 * h.shape[2], h.shape[3]),
                                    "nearest")
    h = nn.silu(self.dec[0](z))
    h = nn.silu(self.dec[1](up(h)))
    h = nn.silu(self.dec[2](up(h)))
    h = nn.silu(self.dec[3](h))
    return self.dec[4](h)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] != self.channels:
      raise ValueError(f"AutoEncoder(channels={self.channels}) got images with {x.shape[-1]} channels.")
    return self.decode(self.encode(x))


def train_autoencoder(key: jax.Array, images: jax.Array, model: AutoEncoder, steps: int,
                      batch_size: int = 128, learning_rate: float = 1e-3) -> tuple:
  """Trains ``model`` to reconstruct ``images`` ``[N, H, W, C]`` (mean squared error, Adam, batches
  drawn uniformly with replacement from ``fold_in(key, step)``); ``(params, final batch loss)``."""
  if steps < 1 or batch_size < 1:
    raise ValueError(f"steps and batch_size must be >= 1; got {steps}, {batch_size}.")
  images = jnp.asarray(images, jnp.float32)
  init_key, key = jax.random.split(key)
  params = model.init(init_key, images[:1])["params"]
  tx = optax.adam(learning_rate)

  def loss_fn(p, x):
    return jnp.mean(jnp.square(model.apply({"params": p}, x) - x))

  @jax.jit
  def train(p, xs):  # the images are an argument: closed over, they would be compiled in as a constant
    def step(carry, i):
      p, opt = carry
      idx = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, xs.shape[0])
      loss, g = jax.value_and_grad(loss_fn)(p, xs[idx])
      upd, opt = tx.update(g, opt, p)
      return (optax.apply_updates(p, upd), opt), loss
    return jax.lax.scan(step, (p, tx.init(p)), jnp.arange(steps))

  with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
    (params, _), losses = train(params, images)
  return params, float(losses[-1])


def encoder_fn(model: AutoEncoder, params) -> Callable:
  """``x [N, H, W, C] -> latents`` of a trained ``model`` (differentiable, parameters fixed)."""
  return lambda x: model.apply({"params": params}, x, method=AutoEncoder.encode)
