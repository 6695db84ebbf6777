"""Training a network on a set of images, one shuffled epoch at a time: the routine shared by the
evaluation protocol (``jaxdistill.evaluate``) and expert training (``jaxdistill.experts``).

An epoch visits the ``N`` rows in a random order in ``ceil(N / batch_size)`` batches; the last partial
batch is kept (padded with repeated rows whose weight is 0), as a PyTorch ``DataLoader`` without
``drop_last``. Models are any that ``jaxdistill.models.adapt`` accepts (state such as BatchNorm
running statistics is every variable collection besides ``params``).

Micro-batches: a batch's gradient may be computed in pieces of ``microbatch`` rows and summed (a
``lax.scan``), which is the same gradient up to float rounding for every network whose rows do not
interact (all but BatchNorm ones, which always run whole batches). On CPU this is faster (the pieces'
activations stay in cache) and needs a fraction of the memory; ``"auto"`` uses 32-row pieces on CPU and
whole batches on accelerators.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import augment as augment_lib
from jaxdistill.models.adapter import adapt
from jaxdistill.models.nets import state_of


def resolve_augment(aug, dataset_name: Optional[str] = None) -> Callable:
  """An augmentation ``(key, x) -> x`` from a name (``"dsa"`` per image, ``"crop_flip"``, ``"none"``)
  or a function."""
  if callable(aug):
    return aug
  return augment_lib.get_augment(aug, dataset_name=dataset_name, siamese=False)


CPU_MICROBATCH = 32
# Dropout keys are fold_in(batch key, DROPOUT_FOLD): the batch's augmentation key is left as it was.
DROPOUT_FOLD = 0x64726F70


def resolve_microbatch(microbatch) -> int:
  """The piece size ``microbatch`` runs: ``"auto"`` is 32 rows on XLA's CPU backend and 0 (whole batches)
  on accelerators; an int >= 0 is taken as is (0: whole batches)."""
  if microbatch == "auto":
    return CPU_MICROBATCH if jax.default_backend() == "cpu" else 0
  if isinstance(microbatch, bool) or not isinstance(microbatch, (int, np.integer)) or microbatch < 0:
    raise ValueError(f"microbatch must be 'auto' or an int >= 0 (0: whole batches); got {microbatch!r}.")
  return int(microbatch)


def piece_size(batch: int, microbatch) -> int:
  """Rows per piece for a batch of ``batch`` rows: the largest divisor of ``batch`` that is at most the
  resolved ``microbatch`` (``batch`` itself for whole batches)."""
  mb = resolve_microbatch(microbatch)
  if mb == 0 or mb >= batch:
    return batch
  return max(d for d in range(1, mb + 1) if batch % d == 0)


def value_and_grad_in_pieces(piece_loss: Callable, params, data, rows: int):
  """``(L, dL/dparams)`` of ``L = sum over pieces of piece_loss(params, piece)``, where the pieces are
  consecutive ``rows``-row slices (axis 0) of every array in ``data``, one ``lax.scan`` over them.

  ``piece_loss`` must be a sum over its rows (divided by a constant), so that the pieces add up to the
  whole batch's loss; ``rows`` must divide the batch (``piece_size`` picks such a size).
  """
  n = jax.tree.leaves(data)[0].shape[0]
  if rows == n:
    return jax.value_and_grad(piece_loss)(params, data)
  if n % rows:
    raise ValueError(f"rows={rows} does not divide the batch of {n} rows.")

  def body(acc, piece):
    return jax.tree.map(jnp.add, acc, jax.value_and_grad(piece_loss)(params, piece)), None

  split = jax.tree.map(lambda a: a.reshape(n // rows, rows, *a.shape[1:]), data)
  zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  return jax.lax.scan(body, zero, split)[0]


def forward(model, variables, x: jax.Array, train: bool, key: Optional[jax.Array] = None):
  """``(logits, state or None)``: with ``train`` BatchNorm uses and updates batch statistics and
  ``key`` seeds dropout. ``model``: anything ``jaxdistill.models.adapt`` accepts."""
  logits, new = adapt(model).apply(variables, x, train=train, key=key)
  return logits, (state_of(new) or None)


def weighted_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, kind: str) -> jax.Array:
  """Weighted mean loss. ``targets``: ``[B]`` int or ``[B, K]`` float; ``weights``: ``[B]`` 0/1.
  ``kind``: ``"ce"`` (cross-entropy; soft targets as distributions) or ``"mse"`` (half squared error to
  the label rows, one-hot for int targets)."""
  return jnp.sum(per_row_loss(logits, targets, kind) * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def per_row_loss(logits: jax.Array, targets: jax.Array, kind: str) -> jax.Array:
  """``[B]`` loss of each row (see ``weighted_loss``)."""
  if kind == "ce":
    if targets.ndim == 1:
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return optax.softmax_cross_entropy(logits, targets)
  if kind == "mse":
    if targets.ndim == 1:
      targets = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    return 0.5 * jnp.sum(jnp.square(logits - targets), axis=-1)
  raise ValueError(f"Unknown loss {kind!r}; known: 'ce', 'mse'.")


def loss_and_grads(model, params, stats, x: jax.Array, y: jax.Array, weights: jax.Array, kind: str,
                   microbatch=0, key: Optional[jax.Array] = None):
  """``(loss, new state, grads)`` of one training batch (``weighted_loss``), in pieces of
  ``microbatch`` rows for networks without state (see the module docstring). ``stats``: the
  network's state collections (None without); ``key``: dropout (each piece its own)."""
  rows = piece_size(x.shape[0], microbatch) if stats is None else x.shape[0]
  if rows == x.shape[0]:
    def loss_fn(p):
      v = {"params": p} if stats is None else {"params": p, **stats}
      logits, new_stats = forward(model, v, x, train=True, key=key)
      return weighted_loss(logits, y, weights, kind), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, new_stats, grads

  total = jnp.maximum(jnp.sum(weights), 1.0)
  keys = jax.random.split(key, x.shape[0]) if key is not None else None

  def piece_loss(p, xywk):
    xp, yp, wp, kp = xywk
    logits, _ = forward(model, {"params": p}, xp, train=True, key=None if kp is None else kp[0])
    return jnp.sum(per_row_loss(logits, yp, kind) * wp) / total

  loss, grads = value_and_grad_in_pieces(piece_loss, params, (x, y, weights, keys), rows)
  return loss, None, grads


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple:
  """``(rows [S, B] int, weights [S, B] float32)`` of one shuffled epoch, ``B = min(batch_size, n)``."""
  bs = min(batch_size, n)
  steps = -(-n // bs)
  perm = jax.random.permutation(key, n)
  rows = jnp.concatenate([perm, perm[:steps * bs - n]]).reshape(steps, bs)
  weights = (jnp.arange(steps * bs) < n).astype(jnp.float32).reshape(steps, bs)
  return rows, weights


def scan_epoch(step: Callable, carry, key: jax.Array, n: int, batch_size: int,
               exact_last: bool = False):
  """Runs ``step(carry, (rows [B], weights [B], key)) -> (carry, out)`` over one shuffled epoch of
  ``n`` rows; returns ``(carry, outs)``. The key splits into the order's key and one per batch.

  The last partial batch is padded with weight-0 rows (one shape for the whole scan), exact for losses
  summed over rows. ``exact_last`` (BatchNorm networks, whose batch statistics the padding rows would
  enter) runs it at its real size instead, after the scan over the full batches: the same rows, order
  and keys, as a PyTorch ``DataLoader`` without ``drop_last``."""
  order_key, aug_key = jax.random.split(key)
  rows, weights = epoch_batches(order_key, n, batch_size)
  keys = jax.random.split(aug_key, rows.shape[0])
  last = n - (rows.shape[0] - 1) * rows.shape[1]
  if not exact_last or last == rows.shape[1]:
    return jax.lax.scan(step, carry, (rows, weights, keys))
  carry, outs = jax.lax.scan(step, carry, (rows[:-1], weights[:-1], keys[:-1]))
  carry, out = step(carry, (rows[-1, :last], weights[-1, :last], keys[-1]))
  return carry, jax.tree.map(lambda a, b: jnp.concatenate([a, jnp.asarray(b, a.dtype)[None]]),
                             outs, out)


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
