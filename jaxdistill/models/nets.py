"""The functions the objectives and kernels call, built from any model through ``adapter.adapt``."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax

from jaxdistill.models.adapter import Net, adapt


class NetFns(NamedTuple):
  """``init(key, x) -> variables``; ``apply(variables, x) -> logits``; ``embed(variables, x) -> [B, D]``.

  Objectives use networks in training mode (as the references do): BatchNorm normalizes with the
  batch's statistics. ``train_apply(variables, x) -> (logits, variables)`` also returns the variables
  with updated running statistics, and ``apply_eval(variables, x) -> logits`` normalizes with the running
  statistics (DC's matching with BatchNorm networks). Both default to ``apply`` for networks without
  running statistics. Each function takes an optional ``key=`` (dropout, in training mode).
  """
  init: Callable
  apply: Callable
  embed: Callable
  train_apply: Optional[Callable] = None
  apply_eval: Optional[Callable] = None


def net_fns(net: Net) -> NetFns:
  """``NetFns`` of an adapted network (training-mode calls discard state updates in ``apply``)."""

  def apply(variables, x, key=None):
    return net.apply(variables, x, train=True, key=key)[0]

  def embed(variables, x, key=None):
    return net.apply(variables, x, train=True, key=key, features=True)[0][1]

  def train_apply(variables, x, key=None):
    return net.apply(variables, x, train=True, key=key)

  def apply_eval(variables, x, key=None):
    return net.apply(variables, x, train=False)[0]

  return NetFns(net.init, apply, embed, train_apply, apply_eval)


def flax_net(model, **adapt_kwargs) -> NetFns:
  """``NetFns`` of a Flax module (any call signature; see ``adapter.adapt``)."""
  return net_fns(adapt(model, **adapt_kwargs))


def as_net(net) -> NetFns:
  """``NetFns`` of any model ``adapter.adapt`` accepts (a ``NetFns`` is returned as is)."""
  return net if isinstance(net, NetFns) else net_fns(adapt(net))


def has_state(variables) -> bool:
  """True when ``variables`` hold state besides ``params`` (BatchNorm statistics: ``batch_stats`` for
  linen, ``state`` for NNX / Equinox); such networks train on whole batches."""
  return any(k != "params" and jax.tree.leaves(v) for k, v in variables.items())


def state_of(variables) -> dict:
  """The non-``params`` collections of ``variables`` (empty for stateless networks)."""
  return {k: v for k, v in variables.items() if k != "params"}
