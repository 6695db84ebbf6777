"""Plain training augmentations: torchvision-style random crop + horizontal flip, CutMix, the identity.

``crop_flip`` is ``RandomCrop(size, padding=pad)`` followed by ``RandomHorizontalFlip()``, with per-image
random parameters; SelMatch uses it (pad 4) on the frozen real rows at evaluation time. ``cutmix`` is
the CutMix of IDC's evaluation (images and label weights of a batch).
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


def cutmix(key: Array, x: Array, y: Array, weights: Array, p: float = 0.5, beta: float = 1.0) -> tuple:
  """CutMix of one batch (IDC's ``train_epoch``): with probability ``p``, one box of the batch's images
  is replaced by the same box of the images of a random permutation of the batch, and each row's target
  becomes ``r * y + (1 - r) * y[perm]``, ``r`` the share of the image outside the box.

  The box: ``lam ~ Beta(beta, beta)``; sides ``int(H * sqrt(1 - lam))`` and ``int(W * sqrt(1 - lam))``
  around a uniform centre, clipped to the image (one box per batch). Rows of weight 0 (the padding of a
  last partial batch) are neither mixed into nor taken from.

  Args:
    key: typed PRNG key.
    x: ``[B, H, W, C]`` images.
    y: ``[B, K]`` float targets (one-hot rows for hard labels).
    weights: ``[B]`` row weights (0: padding).
    p, beta: mixing probability and the Beta distribution's parameter.

  Returns:
    ``(x, y)`` mixed (unchanged when the batch is not mixed).
  """
  if x.ndim != 4 or y.ndim != 2 or y.shape[0] != x.shape[0]:
    raise ValueError(f"cutmix expects x [B, H, W, C] and y [B, K]; got {tuple(x.shape)} and "
                     f"{tuple(y.shape)}.")
  b, h, w = x.shape[:3]
  k_do, k_lam, k_perm, k_cy, k_cx = jax.random.split(key, 5)
  lam = jax.random.beta(k_lam, beta, beta)
  valid = weights > 0
  # A permutation among the valid rows (padding rows map to padding rows).
  order = jnp.argsort(jnp.where(valid, jax.random.uniform(k_perm, (b,)), 2.0))
  slots = jnp.argsort(~valid, stable=True)
  perm = jnp.zeros((b,), jnp.int32).at[slots].set(order.astype(jnp.int32))
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
  cy, cx = jax.random.randint(k_cy, (), 0, h), jax.random.randint(k_cx, (), 0, w)
  y1, y2 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x1, x2 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
  keep = 1.0 - ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (h * w)
  do = jax.random.uniform(k_do) < p
  box = box & do
  mixed_x = jnp.where(box[None, :, :, None], x[perm], x)
  r = jnp.where(do, keep, 1.0).astype(y.dtype)
  return mixed_x, r * y + (1.0 - r) * y[perm]
