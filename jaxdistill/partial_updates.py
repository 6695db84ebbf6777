"""Partial updates (SelMatch): a per-row mask says which synthetic rows are distilled.

Frozen rows still enter the loss, so the distilled rows learn what the frozen rows lack, but through
``jax.lax.stop_gradient`` (``freeze_rows``); and ``masked_rows`` wraps the optimizer so that their
update is zeroed row-wise: they stay bit-identical whatever the optimizer does (momentum, weight decay,
Adam's epsilon). ``optax.masked`` takes only a static pytree mask, not rows of one array, hence these
small functions.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill.checks import check_label_range
from jaxdistill.types import ROW_LEAVES


def check_mask(mask, num_rows: int) -> Optional[jax.Array]:
  """Validates a row mask (``[N]`` bool, True = distilled) against ``num_rows``; None passes through."""
  if mask is None:
    return None
  mask = np.asarray(mask)
  if mask.shape != (num_rows,):
    raise ValueError(f"The partial-update mask must have one entry per synthetic row, shape "
                     f"({num_rows},); got shape {mask.shape}.")
  if mask.dtype != bool:
    raise ValueError(f"The partial-update mask must be boolean (True = distilled); got {mask.dtype}.")
  return jnp.asarray(mask)


def _rows(mask: jax.Array, x: jax.Array) -> jax.Array:
  return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def freeze_rows(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """``x`` ``[N, ...]`` with the rows where ``mask`` is False under ``stop_gradient``."""
  if mask is None:
    return x
  return jnp.where(_rows(mask, x), x, jax.lax.stop_gradient(x))


def mask_updates(updates: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Zeroes the update of frozen rows exactly."""
  if mask is None:
    return updates
  return jnp.where(_rows(mask, updates), updates, jnp.zeros_like(updates))


def masked_rows(inner: optax.GradientTransformation, mask: Optional[jax.Array],
                leaves: Sequence[str] = ROW_LEAVES) -> optax.GradientTransformation:
  """``inner`` with the updates of the frozen rows (``mask`` False) of the named top-level ``leaves``
  of a dict of parameters (default: the per-row learnable leaves, images and labels) set to exactly zero; other leaves pass unchanged. The state is ``inner``'s
  own (same tree), so checkpoints of ``inner`` restore into it. ``mask`` None returns ``inner``.

  Example: ``tx = masked_rows(optax.sgd(100.0, momentum=0.5), mask)`` over
  ``{"images": [N, H, W, C], "log_lr": []}``.
  """
  if mask is None:
    return inner

  def update(updates, state, params=None):
    updates, state = inner.update(updates, state, params)
    return {k: mask_updates(u, mask) if k in leaves else u for k, u in updates.items()}, state

  return optax.GradientTransformation(inner.init, update)


def selmatch_mask(labels, num_classes: int, alpha: float) -> np.ndarray:
  """SelMatch's partial-update mask for a class-major set ordered hardest first within each class.

  Per class with ``n`` rows, the last ``floor(alpha * n)`` rows (the easier images of the window) are
  distilled and the first ``n - floor(alpha * n)`` (the harder ones) stay frozen real images, as in the
  SelMatch reference (``cpc = int(ipc * alpha)`` distilled, ``spc = ipc - cpc`` selected; the selected
  part is the first ``spc`` of the hardest-first window, the distilled part the ``cpc`` after it). The
  count is the reference's ``int(alpha * n)`` exactly, float rounding included (``0.29 * 100`` ->
  28).
  ``jaxdistill.selection.window`` returns rows in this order.

  Args:
    labels: ``[N]`` int class ids, class-major (non-decreasing: all of class 0, then class 1, ...).
    num_classes: K.
    alpha: fraction of each class distilled, in ``[0, 1]``.

  Returns:
    ``[N]`` bool NumPy array, True = distilled, False = frozen.

  Raises:
    ValueError: alpha outside ``[0, 1]``, labels not 1-D ints in ``[0, K)``, or not class-major.
  """
  alpha = float(alpha)
  if not 0.0 <= alpha <= 1.0:  # also rejects NaN
    raise ValueError(f"alpha (the distilled fraction of each class) must lie in [0, 1]; got {alpha}.")
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be [N] integer class ids (use SyntheticSet.hard_labels() for soft "
                     f"labels); got shape {labels.shape}, dtype {labels.dtype}.")
  check_label_range(labels, num_classes)
  if labels.size > 1 and np.any(np.diff(labels) < 0):
    i = int(np.flatnonzero(np.diff(labels) < 0)[0])
    raise ValueError(f"labels must be class-major (all rows of class 0, then class 1, ...); row {i + 1} "
                     f"has class {labels[i + 1]} after class {labels[i]} at row {i}.")
  mask = np.zeros(labels.shape, bool)
  for c in range(num_classes):
    rows = np.flatnonzero(labels == c)
    num_distilled = int(alpha * rows.size)  # the reference's int(ipc * alpha), rounding included
    if num_distilled:
      mask[rows[rows.size - num_distilled:]] = True
  return mask


def combined_augment(distilled: str = "dsa") -> tuple:
  """SelMatch's combined augmentation as an ``EvalConfig.augment`` tuple, for ``augment_groups``'
  routes: distilled rows (route 0) DSA with one op and its parameters drawn for each image
  (``"dsa_image"``: SelMatch's ``CombinedTensorDataset`` calls ``DiffAugment`` image by image, where
  its DSA-only evaluation draws one op per batch), frozen real rows (route 1) random crop (pad 4) and
  horizontal flip. ``distilled``: another augmentation name for route 0 (``"dsa"`` gives
  ``"dsa_image"``)."""
  return ("dsa_image" if distilled == "dsa" else distilled, "crop_flip")


def augment_groups(mask) -> np.ndarray:
  """Row groups for SelMatch's combined augmentation at evaluation time.

  Use with ``EvalConfig(augment=combined_augment())`` and ``evaluate.accuracy(..., groups=...)``:
  group 0 (distilled rows) gets DSA, one op per image, group 1 (frozen real rows) random crop (pad 4)
  + horizontal flip.

  Args:
    mask: ``[N]`` bool, True = distilled.

  Returns:
    ``[N]`` int32 NumPy array: 0 where ``mask`` is True, 1 where it is False.
  """
  mask = np.asarray(mask)
  if mask.ndim != 1 or mask.dtype != bool:
    raise ValueError(f"mask must be [N] bool (True = distilled); got shape {mask.shape}, dtype {mask.dtype}.")
  return np.where(mask, 0, 1).astype(np.int32)


def route_augment(augs, key: jax.Array, x: jax.Array, groups: Optional[jax.Array]) -> jax.Array:
  """Applies ``augs[g]`` to the rows of ``x`` ``[B, H, W, C]`` whose group (``groups`` ``[B]`` int) is
  ``g``; one function (or a 1-tuple) applies to every row and needs no groups. Each function gets its
  own key from ``key``. This is SelMatch's combined augmentation, used in evaluation
  (``EvalConfig(augment=combined_augment())``) and, optionally, inside trajectory matching."""
  if not isinstance(augs, (tuple, list)):
    return augs(key, x)
  if len(augs) == 1:
    return augs[0](key, x)
  if groups is None:
    raise ValueError(f"{len(augs)} augmentations need `groups` (one group id per row).")
  keys = jax.random.split(key, len(augs))
  out = augs[0](keys[0], x)
  for g in range(1, len(augs)):
    sel = (groups == g)[:, None, None, None]
    out = jnp.where(sel, augs[g](keys[g], x), out)
  return out
