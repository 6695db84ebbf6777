"""Partial updates (SelMatch): a per-row mask says which synthetic rows are distilled.

Frozen rows still enter the loss, so the distilled rows learn what the frozen rows lack, but through
``jax.lax.stop_gradient``; and their optimizer update is zeroed row-wise, so they stay bit-identical
whatever the optimizer does (momentum, weight decay, Adam's epsilon). ``optax.masked`` takes only a
static pytree mask, not rows of one array, hence these two small functions.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


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
