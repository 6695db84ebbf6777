"""Training a network on a set of images, one shuffled epoch at a time: the routine shared by the
evaluation protocol (``jaxdistill.evaluate``) and expert training (``jaxdistill.experts``).

An epoch visits the ``N`` rows in a random order in ``ceil(N / batch_size)`` batches; the last partial
batch is kept (padded with repeated rows whose weight is 0), as a PyTorch ``DataLoader`` without
``drop_last``. Models follow the jaxdistill interface (``apply(variables, x, train=...)``, BatchNorm
running statistics in ``batch_stats``).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import augment as augment_lib


def resolve_augment(aug, dataset_name: Optional[str] = None) -> Callable:
  """An augmentation ``(key, x) -> x`` from a name (``"dsa"`` per image, ``"crop_flip"``, ``"none"``)
  or a function."""
  if callable(aug):
    return aug
  return augment_lib.get_augment(aug, dataset_name=dataset_name, siamese=False)


def forward(model, variables, x: jax.Array, train: bool):
  """``(logits, batch_stats or None)``: with ``train`` BatchNorm uses and updates batch statistics."""
  if "batch_stats" in variables:
    if train:
      logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
      return logits, updates["batch_stats"]
    return model.apply(variables, x, train=False), variables["batch_stats"]
  return model.apply(variables, x, train=train), None


def weighted_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, kind: str) -> jax.Array:
  """Weighted mean loss. ``targets``: ``[B]`` int or ``[B, K]`` float; ``weights``: ``[B]`` 0/1.
  ``kind``: ``"ce"`` (cross-entropy; soft targets as distributions) or ``"mse"`` (half squared error to
  the label rows, one-hot for int targets)."""
  if kind == "ce":
    if targets.ndim == 1:
      per = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    else:
      per = optax.softmax_cross_entropy(logits, targets)
  elif kind == "mse":
    if targets.ndim == 1:
      targets = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    per = 0.5 * jnp.sum(jnp.square(logits - targets), axis=-1)
  else:
    raise ValueError(f"Unknown loss {kind!r}; known: 'ce', 'mse'.")
  return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def loss_and_grads(model, params, stats, x: jax.Array, y: jax.Array, weights: jax.Array, kind: str):
  """``(loss, new batch_stats, grads)`` of one training batch."""

  def loss_fn(p):
    v = {"params": p} if stats is None else {"params": p, "batch_stats": stats}
    logits, new_stats = forward(model, v, x, train=True)
    return weighted_loss(logits, y, weights, kind), new_stats

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, new_stats, grads


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple:
  """``(rows [S, B] int, weights [S, B] float32)`` of one shuffled epoch, ``B = min(batch_size, n)``."""
  bs = min(batch_size, n)
  steps = -(-n // bs)
  perm = jax.random.permutation(key, n)
  rows = jnp.concatenate([perm, perm[:steps * bs - n]]).reshape(steps, bs)
  weights = (jnp.arange(steps * bs) < n).astype(jnp.float32).reshape(steps, bs)
  return rows, weights


def scan_epoch(step: Callable, carry, key: jax.Array, n: int, batch_size: int):
  """Runs ``step(carry, (rows [B], weights [B], key)) -> (carry, out)`` over one shuffled epoch of
  ``n`` rows; returns ``(carry, outs)``. The key splits into the order's key and one per batch."""
  order_key, aug_key = jax.random.split(key)
  rows, weights = epoch_batches(order_key, n, batch_size)
  return jax.lax.scan(step, carry, (rows, weights, jax.random.split(aug_key, rows.shape[0])))


def batched_apply(fn: Callable, x: jax.Array, y: jax.Array, batch_size: int) -> np.ndarray:
  """``fn(x_b, y_b) -> [B, ...]`` over fixed-size batches (the last padded), concatenated to ``[N, ...]``."""
  n = x.shape[0]
  bs = max(1, min(batch_size, n))
  out = []
  for s in range(0, n, bs):
    xb, yb = x[s:s + bs], y[s:s + bs]
    m = xb.shape[0]
    if m < bs:  # keep one shape: one compilation
      xb = jnp.concatenate([xb, jnp.zeros((bs - m, *xb.shape[1:]), xb.dtype)])
      yb = jnp.concatenate([yb, jnp.zeros((bs - m, *yb.shape[1:]), yb.dtype)])
    out.append(np.asarray(fn(xb, yb))[:m])
  return np.concatenate(out)
