"""ZCA whitening, fitted on the training set and regularized as in the KIP / FRePo / MTT references.

``W = U diag(1 / sqrt(s + eps * mean(s))) U^T`` with ``(s, U)`` the eigen-decomposition of the training
images' covariance (flattened, centred); ``eps = 0.1`` as the references (the eigenvalue floor is
relative to the mean eigenvalue, which keeps it scale-free).
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


def fit_zca(x_train, eps: float = 0.1) -> ZCA:
  """Fits ZCA on ``x_train`` ``[N, H, W, C]`` (float64 on the host for a stable eigh)."""
  x = np.asarray(x_train, np.float64).reshape(len(x_train), -1)
  if not np.isfinite(x).all():
    raise ValueError("x_train contains NaN or inf; cannot fit ZCA.")
  if eps <= 0:
    raise ValueError(f"eps must be > 0 (regularization); got {eps}.")
  mean = x.mean(0)
  xc = x - mean
  cov = xc.T @ xc / x.shape[0]
  s, u = np.linalg.eigh(cov)
  s = np.clip(s, 0.0, None) + eps * s.mean()
  w = (u * (1.0 / np.sqrt(s))) @ u.T
  w_inv = (u * np.sqrt(s)) @ u.T
  return ZCA(mean.astype(np.float32), w.astype(np.float32), w_inv.astype(np.float32))


def apply_zca(z: ZCA, x):
  """Whitens ``x`` ``[N, H, W, C]`` (works on numpy or jax arrays; keeps the shape)."""
  shape = x.shape
  flat = jnp.asarray(x, jnp.float32).reshape(shape[0], -1)
  return ((flat - z.mean) @ z.w).reshape(shape)


def invert_zca(z: ZCA, x):
  """Undoes :func:`apply_zca` (for viewing whitened synthetic images)."""
  shape = x.shape
  flat = jnp.asarray(x, jnp.float32).reshape(shape[0], -1)
  return (flat @ z.w_inv + z.mean).reshape(shape)


def whiten_dataset(data, eps: float = 0.1):
  """Returns ``(data with whitened train/test images, ZCA)``, fitted on the training images."""
  z = fit_zca(data.x_train, eps)
  f = lambda x: np.asarray(apply_zca(z, x))
  return dataclasses.replace(data, x_train=f(data.x_train), x_test=f(data.x_test)), z
