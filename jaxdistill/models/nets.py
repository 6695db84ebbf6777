"""Adapters from a Flax module (or plain functions) to the functions the objectives and kernels use."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional


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
