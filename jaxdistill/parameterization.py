"""Synthetic-set parameterizations: stored parameters -> training images (``Distiller(decode=...)``).

IDC multi-formation (Kim et al., ICML 2022, "Dataset Condensation via Efficient Synthetic-Data
Parameterization"; ``decode_zoom`` in the reference ``condense.py``): each stored image ``[H, W, C]`` holds
``f x f`` sub-images of size ``H/f x W/f``; decoding cuts them out and upsamples each back to ``H x W``
(bilinear, as the reference's ``nn.Upsample(size, mode="bilinear")``, i.e. half-pixel centers without
corner alignment, which ``jax.image.resize(..., "linear")`` matches for upsampling), so ``N`` stored
images give ``N * f^2`` training images, each with the label of its stored image (hard or soft labels
repeated). Same storage budget, ``f^2`` times the images. Reference: ``f = 2`` for CIFAR and
Fashion-MNIST at 32x32 / 28x28.

Order: the ``f^2`` images of stored row ``i`` are rows ``i * f^2 ... (i + 1) * f^2 - 1`` of the decoded
set, sub-image ``(a, b)`` (row a, column b) at offset ``a * f + b``. (The reference concatenates all
stored images' sub-image (0, 0), then all (0, 1), ...: the same set in another order; ours keeps
class-major synthetic sets class-major, as DC/DM's per-class objectives need.)

Partial updates: the distillation loop applies the row mask (``Distiller.mask``, one entry per *stored*
row) before decoding, so a frozen stored image freezes its ``f^2`` decoded images.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdistill.types import SyntheticSet

UPSAMPLE_METHODS = ("bilinear", "nearest")
DOWNSAMPLE_METHODS = ("nearest", "area", "bilinear")


def _check_factor(shape, factor: int, what: str) -> None:
  if int(factor) != factor or factor < 1:
    raise ValueError(f"factor must be an int >= 1; got {factor!r}.")
  if len(shape) != 4:
    raise ValueError(f"{what} must be [N, H, W, C]; got shape {tuple(shape)}.")
  h, w = shape[1], shape[2]
  if h % factor or w % factor:
    raise ValueError(f"factor={factor} does not divide the image size {h}x{w}; IDC's multi-formation "
                     f"needs H and W divisible by the factor (pad or resize the images first).")


def split_subimages(stored: jax.Array, factor: int) -> jax.Array:
  """``[N, H, W, C]`` -> ``[N * f^2, H/f, W/f, C]``: the ``f x f`` grid of each stored image, row-major."""
  _check_factor(stored.shape, factor, "Stored images")
  n, h, w, c = stored.shape
  s, t = h // factor, w // factor
  x = stored.reshape(n, factor, s, factor, t, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n * factor * factor, s, t, c)


def merge_subimages(small: jax.Array, factor: int) -> jax.Array:
  """Inverse of ``split_subimages``: ``[N * f^2, h, w, C]`` -> ``[N, h*f, w*f, C]``."""
  m, s, t, c = small.shape
  if m % (factor * factor):
    raise ValueError(f"{m} small images do not fill stored images of {factor}x{factor} = "
                     f"{factor * factor} each.")
  n = m // (factor * factor)
  x = small.reshape(n, factor, factor, s, t, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, factor * s, factor * t, c)


def idc_decode(factor: int = 2, method: str = "bilinear") -> Callable[[SyntheticSet], SyntheticSet]:
  """IDC's uniform multi-formation as a ``Distiller(decode=...)`` function.

  Args:
    factor: f; each stored image holds ``f x f`` sub-images (IDC: 2).
    method: upsampling, "bilinear" (IDC) or "nearest".

  Returns:
    ``decode(syn) -> syn``: images ``[N, H, W, C]`` -> ``[N * f^2, H, W, C]``; labels ``[N]`` or
    ``[N, K]`` -> repeated ``f^2`` times per row; ``log_lr`` unchanged. Differentiable (linear) in the
    stored images. Raises ``ValueError`` if ``f`` does not divide ``H`` and ``W``.
  """
  if method not in UPSAMPLE_METHODS:
    raise ValueError(f"Unknown upsampling method {method!r}; choose one of {UPSAMPLE_METHODS}.")
  _check_factor((1, factor, factor, 1), factor, "Stored images")  # validates factor itself
  jax_method = "linear" if method == "bilinear" else "nearest"

  def decode(syn: SyntheticSet) -> SyntheticSet:
    images = jnp.asarray(syn.images)
    if syn.labels.shape[0] != images.shape[0]:
      raise ValueError(f"{images.shape[0]} stored images but {syn.labels.shape[0]} labels.")
    if factor == 1:
      return syn
    small = split_subimages(images, factor)
    big = jax.image.resize(small, (small.shape[0],) + images.shape[1:], method=jax_method)
    labels = jnp.repeat(syn.labels, factor * factor, axis=0)
    return syn._replace(images=big.astype(images.dtype), labels=labels)

  return decode


def idc_init(images_real, factor: int = 2, method: str = "nearest") -> jax.Array:
  """IDC's initialization: packs ``f^2`` downsampled real images into each stored image.

  Args:
    images_real: ``[N * f^2, H, W, C]`` real images; stored image ``i`` takes rows
      ``i * f^2 ... (i + 1) * f^2 - 1`` (sub-image ``(a, b)`` from row ``i * f^2 + a * f + b``), so
      class-major real rows with ``f^2 * ipc`` per class give class-major stored rows with labels
      ``labels_real[::f^2]``.
    factor: f (IDC: 2).
    method: downsampling: "nearest" (IDC: ``F.interpolate``'s default, i.e. every f-th pixel), "area"
      (the mean of each ``f x f`` block) or "bilinear" (``jax.image.resize``, antialiased).

  Returns:
    ``[N, H, W, C]`` float32 stored images.

  Raises:
    ValueError: f does not divide H and W, or the row count is not a multiple of ``f^2``.
  """
  x = jnp.asarray(images_real, jnp.float32)
  _check_factor(x.shape, factor, "Real images")
  if method not in DOWNSAMPLE_METHODS:
    raise ValueError(f"Unknown downsampling method {method!r}; choose one of {DOWNSAMPLE_METHODS}.")
  m, h, w, c = x.shape
  if m % (factor * factor):
    raise ValueError(f"idc_init needs a multiple of f^2 = {factor * factor} real images; got {m}.")
  s, t = h // factor, w // factor
  if method == "nearest":
    small = x[:, ::factor, ::factor]
  elif method == "area":
    small = x.reshape(m, s, factor, t, factor, c).mean(axis=(2, 4))
  else:
    small = jax.image.resize(x, (m, s, t, c), method="linear")
  return merge_subimages(small, factor)
