"""The objective interface every distillation method implements (the shape of an optax transform).

An ``Objective`` is a NamedTuple of pure functions:

- ``init(key, syn) -> state``: the objective's own arrays (``()`` for stateless methods; DC's network
  being trained on the synthetic set; FRePo's pool of networks).
- ``loss(syn, batch, key, state, axis_name=None) -> (scalar, aux)``: the matching loss of the synthetic
  set ``syn`` (a ``SyntheticSet`` of training images, frozen rows already under ``stop_gradient``)
  against ``batch`` (whatever ``sample_batch`` gives: real images, expert segments, ...). ``aux`` is a
  dict of scalar metrics. Under data parallelism the loop calls it per device with ``axis_name`` set and
  the local shard of ``batch``; it must then return the same (mean-reduced) scalar on every device:
  reduce real-batch statistics or the final loss with ``pmean(x, axis_name)`` (which is the identity
  when ``axis_name`` is None), never the gradient.
- ``prepare(state, batch, axis_name=None) -> state`` (optional): refreshes the state from the step's
  real batch before the loss, inside the data-parallel region (DC's BatchNorm running statistics);
  the refreshed state is what ``loss`` sees and what ``update`` advances. Default: the identity.
- ``update(state, syn, key) -> state``: advances the state after the synthetic set was updated
  (identity for stateless methods).

``batch_axis`` is the batch arrays' data-parallel axis: the loop splits every array of the batch along that
axis over the devices. ``reads`` names the synthetic set's leaves the loss depends on (the loop refuses
to learn a leaf the objective never reads: it would silently never move).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax


def no_prepare(state, batch, axis_name: Optional[str] = None):
  return state


class Objective(NamedTuple):
  init: Callable[..., Any]
  loss: Callable[..., tuple]
  update: Callable[..., Any]
  batch_axis: int = 0
  name: str = "objective"
  prepare: Callable[..., Any] = no_prepare
  reads: tuple = ("images", "labels", "log_lr")


def no_state(key: jax.Array, syn) -> tuple:
  return ()


def keep_state(state, syn, key: jax.Array):
  return state


def pmean(x, axis_name: Optional[str]):
  """``lax.pmean`` over ``axis_name``, or the identity outside data parallelism."""
  return x if axis_name is None else jax.lax.pmean(x, axis_name)
