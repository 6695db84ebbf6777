"""Adapters from a Flax module (or plain functions) to the functions objectives use."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax


class NetFns(NamedTuple):
  """``init(key, x) -> variables``; ``apply(variables, x) -> logits``; ``embed(variables, x) -> [B, D]``.

  Objectives use networks in training mode (as the references do): BatchNorm normalizes with the
  batch's statistics. ``train_apply(variables, x) -> (logits, variables)`` also returns the variables
  with updated running statistics, and ``apply_eval(variables, x) -> logits`` normalizes with the running
  statistics (DC's matching with BatchNorm networks). Both default to ``apply`` for networks without
  running statistics.
  """
  init: Callable
  apply: Callable
  embed: Callable
  train_apply: Optional[Callable] = None
  apply_eval: Optional[Callable] = None


def flax_net(model) -> NetFns:
  """``NetFns`` of a jaxdistill-style Flax module (``__call__(x, train, return_features)``)."""

  def init(key, x):
    return model.init(key, x[:1], train=False)

  def call(variables, x, **kw):
    if "batch_stats" in variables:
      return model.apply(variables, x, train=True, mutable=["batch_stats"], **kw)[0]
    return model.apply(variables, x, train=True, **kw)

  def train_apply(variables, x):
    if "batch_stats" in variables:
      logits, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
      return logits, {**variables, "batch_stats": upd["batch_stats"]}
    return model.apply(variables, x, train=True), variables

  def apply_eval(variables, x):
    return model.apply(variables, x, train=False)

  return NetFns(init, call, lambda v, x: call(v, x, return_features=True)[1], train_apply, apply_eval)


def as_net(net) -> NetFns:
  return net if isinstance(net, NetFns) else flax_net(net)


def class_major(images: jax.Array, num_classes: int) -> jax.Array:
  """``[N, ...]`` rows ordered class-major with equal counts -> ``[K, N // K, ...]``."""
  n = images.shape[0]
  if n % num_classes:
    raise ValueError(f"{n} synthetic rows do not split into {num_classes} equal classes.")
  return images.reshape(num_classes, n // num_classes, *images.shape[1:])


def check_class_major(labels, num_classes: int) -> None:
  """Raises unless hard ``labels`` are ``[0]*ipc + [1]*ipc + ...`` (what the per-class objectives
  and every jaxdistill initializer produce)."""
  import numpy as np
  labels = np.asarray(labels)
  if labels.ndim == 2:
    labels = labels.argmax(-1)
  n = labels.shape[0]
  if n % num_classes or not np.array_equal(labels, np.repeat(np.arange(num_classes), n // num_classes)):
    raise ValueError("Per-class objectives need the synthetic rows ordered class-major with the same "
                     f"number per class (labels 0,..,0,1,..,1,...,{num_classes - 1}); got labels "
                     f"{labels[:20].tolist()}{'...' if n > 20 else ''}.")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy: ``labels`` ``[B]`` int (hard) or ``[B, K]`` float logits (soft: targets are
  ``softmax(labels)``, as DATM's ``SoftCrossEntropy``)."""
  if labels.ndim == 1:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  return jnp.mean(optax.softmax_cross_entropy(logits, jax.nn.softmax(labels, axis=-1)))


def identity_augment(key, x):
  return x
