"""ZCA whitening, fitted on the training set, regularized as the references do.

``W = U diag(1 / sqrt(s + floor)) U^T`` with ``(s, U)`` the eigen-decomposition of the training images'
covariance (flattened, centred). Two regularizations (``mode``):

- ``"kornia"`` (MTT / DATM: ``kornia.enhance.ZCAWhitening(eps=0.1)`` on ``[0, 1]`` pixels, the data not
  normalized): the covariance divided by ``N - 1`` and an absolute floor ``eps``;
  ``whiten_dataset`` fits it on the images mapped back to ``[0, 1]`` pixels.
- ``"relative"`` (KIP / FRePo): the covariance divided by ``N`` and a floor ``eps * mean(s)``, relative
  to the mean eigenvalue (scale-free), on the images as given.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class ZCA(NamedTuple):
  """A fitted whitening: ``whiten(x) = (x - mean) @ w``; ``w_inv`` undoes it."""
  mean: np.ndarray   # [D]
  w: np.ndarray      # [D, D]
  w_inv: np.ndarray  # [D, D]


class Whitening(NamedTuple):
  """What a whitened dataset keeps to map its images back (``Dataset.zca``): the fitted mean, the
  inverse transform and the mode (``"kornia"``: whitened [0, 1] pixels; ``"relative"``: whitened
  normalized images)."""
  mean: np.ndarray   # [D]
  w_inv: np.ndarray  # [D, D]
  mode: str


ZCA_MODES = ("kornia", "relative")


def fit_zca(x_train, eps: float = 0.1, mode: str = "kornia") -> ZCA:
  """Fits ZCA on ``x_train`` ``[N, H, W, C]`` (float64 on the host for a stable eigh) with ``mode``'s
  regularization (see the module)."""
  if mode not in ZCA_MODES:
    raise ValueError(f"Unknown ZCA mode {mode!r}; known: {ZCA_MODES}.")
  x = np.asarray(x_train, np.float64).reshape(len(x_train), -1)
  if not np.isfinite(x).all():
    raise ValueError("x_train contains NaN or inf; cannot fit ZCA.")
  if eps <= 0:
    raise ValueError(f"eps must be > 0 (regularization); got {eps}.")
  mean = x.mean(0)
  xc = x - mean
  cov = xc.T @ xc / (x.shape[0] - 1 if mode == "kornia" else x.shape[0])
  s, u = np.linalg.eigh(cov)
  s = np.clip(s, 0.0, None) + (eps if mode == "kornia" else eps * s.mean())
  w = (u * (1.0 / np.sqrt(s))) @ u.T
  w_inv = (u * np.sqrt(s)) @ u.T
  return ZCA(mean.astype(np.float32), w.astype(np.float32), w_inv.astype(np.float32))


def apply_zca(z: ZCA, x):
  """Whitens ``x`` ``[N, H, W, C]`` (works on numpy or jax arrays; keeps the shape)."""
  shape = x.shape
  flat = jnp.asarray(x, jnp.float32).reshape(shape[0], -1)
  return ((flat - z.mean) @ z.w).reshape(shape)


def invert_zca(z, x):
  """Undoes :func:`apply_zca` (for viewing whitened synthetic images); ``z`` a ``ZCA`` or a
  ``Whitening``."""
  shape = x.shape
  flat = jnp.asarray(x, jnp.float32).reshape(shape[0], -1)
  return (flat @ z.w_inv + z.mean).reshape(shape)


def whiten_dataset(data, eps: float = 0.1, mode: str = "kornia"):
  """Returns ``(data with whitened train/test images, ZCA)``, fitted on the training images: with
  ``"kornia"`` (MTT / DATM) on them mapped back to ``[0, 1]`` pixels (``data.mean`` / ``data.std``), as
  the references whiten unnormalized images; with ``"relative"`` on the images as they are. The
  returned data records the whitening (``data.zca``) for ``jaxdistill.data.denormalize``; data
  whitened already is refused."""
  if getattr(data, "zca", None) is not None:
    raise ValueError(f"{data.name}: the images are whitened already (data.zca is set).")
  to_pixels = (lambda x: np.asarray(x, np.float32) * np.asarray(data.std, np.float32)
               + np.asarray(data.mean, np.float32)) if mode == "kornia" else np.asarray
  z = fit_zca(to_pixels(data.x_train), eps, mode)
  f = lambda x: np.asarray(apply_zca(z, to_pixels(x)))
  return dataclasses.replace(data, x_train=f(data.x_train), x_test=f(data.x_test),
                             zca=Whitening(z.mean, z.w_inv, mode)), z
