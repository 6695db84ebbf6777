"""Plain training augmentations: torchvision-style random crop + horizontal flip, and the identity.

``crop_flip`` is ``RandomCrop(size, padding=pad)`` followed by ``RandomHorizontalFlip()``, with per-image
random parameters; SelMatch uses it (pad 4) on the frozen real rows at evaluation time.
"""
import jax
import jax.numpy as jnp

from jaxdistill.augment.dsa import flip_where, translate

Array = jax.Array


def crop_flip(key: Array, x: Array, pad: int = 4, flip: bool = True) -> Array:
  """Per-image random crop of the zero-padded image, then a random horizontal flip (p = 0.5).

  Each image is padded by ``pad`` zeros on every side and an ``H x W`` window is cut at a uniformly drawn
  offset in ``[0, 2 * pad]`` per axis (torchvision ``RandomCrop(padding=pad)``); then mirrored with
  probability 0.5 if ``flip``. Jittable (``pad`` and ``flip`` static) and differentiable w.r.t. ``x``.

  Args:
    key: typed PRNG key.
    x: ``[N, H, W, C]`` float images.
    pad: zero padding in pixels (``0``: no crop).
    flip: whether to apply the random horizontal flip.

  Returns:
    ``[N, H, W, C]`` augmented images, same dtype.

  Raises:
    ValueError: ``x`` not rank 4 or ``pad`` negative.
  """
  if x.ndim != 4:
    raise ValueError(f"crop_flip expects images of shape [N, H, W, C] (rank 4); got shape {tuple(x.shape)}.")
  if pad < 0:
    raise ValueError(f"crop_flip needs pad >= 0; got {pad}.")
  n = x.shape[0]
  ky, kx, kf = jax.random.split(key, 3)
  if pad > 0:
    # Window offset o in [0, 2 pad] of the padded image == translation by o - pad of the original.
    dy = jax.random.randint(ky, (n,), 0, 2 * pad + 1, dtype=jnp.int32) - pad
    dx = jax.random.randint(kx, (n,), 0, 2 * pad + 1, dtype=jnp.int32) - pad
    x = translate(x, dy, dx)
  if flip:
    x = flip_where(x, jax.random.bernoulli(kf, 0.5, (n,)))
  return x


def identity(key: Array, x: Array) -> Array:
  """No augmentation: returns ``x`` (``key`` is ignored; same signature as the other augmentations)."""
  del key
  return x
