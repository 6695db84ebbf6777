"""Kernels for KIP and FRePo, written here because neural-tangents 0.6.5 no longer imports with current
JAX (it imports ``jax.core.Jaxpr``).

- ``fc_nngp`` / ``fc_ntk``: the analytic infinite-width NNGP and NTK of a fully-connected ReLU network
  with ``depth`` hidden layers in the NTK parameterization (as ``stax.Dense(W_std, b_std,
  parameterization="ntk")``: a layer computes ``W_std / sqrt(fan_in) * W x + b_std * b`` with ``W, b``
  standard normal), by the arc-cosine recursion (Cho & Saul 2009; Jacot et al. 2018; Lee et al. 2019).
  KIP's FC kernels are exactly these (KIP colab: ``W_std = sqrt(2)``, ``b_std = 0.1``).
- ``empirical_ntk``: the finite-width NTK ``J(x1) J(x2)^T`` of any ``apply_fn(params, x)``.
- ``krr_predict``: kernel ridge regression with KIP/FRePo's regularization
  ``K_ss + reg * trace(K_ss) / S * I``, solved by Cholesky.

Not done: the analytic NTK/NNGP of the field's ConvNet. Its 2x2 average pooling mixes spatial positions, so
the recursion needs the full ``[N, M, H, W, H, W]`` covariance (not just the per-position diagonal that
conv + ReLU + flatten would need): too expensive for this CPU. Use ``empirical_ntk`` of a finite ConvNet
(``empirical_ntk_kernel``) or FRePo's learned features instead.

All kernels take inputs of any trailing shape (images ``[N, H, W, C]`` are flattened) and return
float32 ``[N, M]``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve

from jaxdistill.models.nets import as_net

# cos(theta) is clipped to [-1 + eps, 1 - eps] inside the arc-cosine formulas: the gradient of arccos is
# infinite at +-1, which every diagonal entry k(x, x) hits (and KIP differentiates k(x_s, x_s)). Clipping
# gives those entries the exact zero gradient in cos (cos == 1 for every x) at a relative value error
# below 1e-5 for the NNGP and ~3e-4 for the ReLU-derivative term.
_COS_EPS = 1e-6


def _flat(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  return x.reshape(x.shape[0], -1)


def _check_fc_args(depth: int, w_std: float, b_std: float) -> None:
  if int(depth) != depth or depth < 0:
    raise ValueError(f"depth (number of hidden ReLU layers) must be an int >= 0; got {depth}.")
  if w_std <= 0 or b_std < 0:
    raise ValueError(f"Need w_std > 0 and b_std >= 0; got w_std={w_std}, b_std={b_std}.")


def _relu_moments(k12: jax.Array, k11: jax.Array, k22: jax.Array) -> tuple:
  """``E[relu(u) relu(v)]`` and ``E[relu'(u) relu'(v)]`` for ``(u, v)`` centered Gaussian with
  covariance ``[[k11, k12], [k12, k22]]``; ``k12`` ``[N, M]``, ``k11`` ``[N, 1]``, ``k22`` ``[1, M]``."""
  norms = jnp.sqrt(jnp.maximum(k11 * k22, 1e-30))
  cos = jnp.clip(k12 / norms, -1.0 + _COS_EPS, 1.0 - _COS_EPS)
  theta = jnp.arccos(cos)
  s = norms * (jnp.sin(theta) + (jnp.pi - theta) * cos) / (2 * jnp.pi)
  sdot = (jnp.pi - theta) / (2 * jnp.pi)
  return s, sdot


def _fc_kernels(x1: jax.Array, x2: Optional[jax.Array], depth: int, w_std: float, b_std: float):
  _check_fc_args(depth, w_std, b_std)
  x1 = _flat(x1)
  x2 = x1 if x2 is None else _flat(x2)
  if x1.shape[1] != x2.shape[1]:
    raise ValueError(f"x1 and x2 have different sizes per example: {x1.shape[1]} and {x2.shape[1]}.")
  w2, b2 = float(w_std) ** 2, float(b_std) ** 2
  d = x1.shape[1]
  k12 = w2 * (x1 @ x2.T) / d + b2
  k11 = w2 * jnp.sum(x1 * x1, -1, keepdims=True) / d + b2  # [N, 1]
  k22 = w2 * jnp.sum(x2 * x2, -1)[None, :] / d + b2  # [1, M]
  ntk = k12
  for _ in range(depth):
    s, sdot = _relu_moments(k12, k11, k22)
    k12 = w2 * s + b2
    ntk = k12 + w2 * sdot * ntk
    k11 = w2 * 0.5 * k11 + b2  # E[relu(u)^2] = k / 2
    k22 = w2 * 0.5 * k22 + b2
  return k12, ntk


def fc_nngp(x1: jax.Array, x2: Optional[jax.Array] = None, depth: int = 1,
            w_std: float = math.sqrt(2.0), b_std: float = 0.1) -> jax.Array:
  """Infinite-width NNGP kernel of a ReLU fully-connected network (NTK parameterization).

  The network is ``depth`` x [Dense(W_std, b_std), ReLU], then a Dense readout; this is the covariance
  of one of its outputs over random initializations, ``stax``'s ``kernel_fn(x1, x2, "nngp")``.

  Args:
    x1: ``[N, ...]`` inputs (flattened to ``[N, D]``).
    x2: ``[M, ...]`` inputs; None means ``x1``.
    depth: number of hidden ReLU layers L (0: the linear kernel ``w_std^2 <x1, x2> / D + b_std^2``).
    w_std, b_std: weight and bias standard deviations (KIP's defaults: sqrt(2), 0.1).

  Returns:
    ``[N, M]`` float32.
  """
  return _fc_kernels(x1, x2, depth, w_std, b_std)[0]


def fc_ntk(x1: jax.Array, x2: Optional[jax.Array] = None, depth: int = 1,
           w_std: float = math.sqrt(2.0), b_std: float = 0.1) -> jax.Array:
  """Infinite-width NTK of the same network as ``fc_nngp`` (``stax``'s ``kernel_fn(x1, x2, "ntk")``).

  Recursion (``l = 1..L``): ``K^{l+1} = w^2 E[relu relu'] + b^2``,
  ``Theta^{l+1} = K^{l+1} + w^2 E[relu' relu'] Theta^l``, from ``Theta^1 = K^1 = w^2 <x, x'> / D + b^2``.

  Args:
    x1: ``[N, ...]``; x2: ``[M, ...]`` or None (``x1``).
    depth, w_std, b_std: as ``fc_nngp``.

  Returns:
    ``[N, M]`` float32.
  """
  return _fc_kernels(x1, x2, depth, w_std, b_std)[1]


def fc_kernel_fn(kind: str = "ntk", depth: int = 1, w_std: float = math.sqrt(2.0),
                 b_std: float = 0.1) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``kernel_fn(x1, x2) -> [N, M]`` for ``kip``: the FC ``"ntk"`` or ``"nngp"`` with fixed
  hyperparameters."""
  if kind not in ("ntk", "nngp"):
    raise ValueError(f"Unknown kernel kind {kind!r}; choose 'ntk' or 'nngp'.")
  _check_fc_args(depth, w_std, b_std)
  fn = fc_ntk if kind == "ntk" else fc_nngp
  return lambda x1, x2: fn(x1, x2, depth, w_std, b_std)


# ----------------------------------------------------------------------------------------------------
# Empirical (finite-width) NTK
# ----------------------------------------------------------------------------------------------------

def _jacobian_rows(apply_fn: Callable, params: Any, x: jax.Array) -> jax.Array:
  """``J [N, K, P]``: the Jacobian of the outputs (``K = 1`` for ``[N]`` outputs) w.r.t. all
  parameters, flattened."""
  out_shape = jax.eval_shape(apply_fn, params, x).shape
  if len(out_shape) not in (1, 2) or out_shape[0] != x.shape[0]:
    raise ValueError(f"apply_fn must map N inputs to [N] or [N, K] outputs; got shape {out_shape} for "
                     f"{x.shape[0]} inputs.")
  jac = jax.jacrev(apply_fn)(params, x)  # leaves [N, (K,) *param_shape]
  lead = out_shape
  leaves = [j.reshape(*lead, -1) for j in jax.tree.leaves(jac)]
  j = jnp.concatenate(leaves, axis=-1)
  return j[:, None, :] if len(lead) == 1 else j


def empirical_ntk(apply_fn: Callable, params: Any, x1: jax.Array, x2: Optional[jax.Array] = None,
                  trace: str = "mean") -> jax.Array:
  """The finite-width NTK ``Theta(x1, x2) = sum_params df(x1)/dp df(x2)/dp`` of a network.

  For ``K`` outputs (logits) the per-logit kernels ``J_k(x1) J_k(x2)^T`` are reduced over ``k``:
  ``trace="mean"`` averages them (neural-tangents' default ``trace_axes=(-1,)``, which divides the trace
  by ``K``), ``trace="sum"`` adds them. The full Jacobians are built (``jax.jacrev``): memory
  ``(N + M) * K * P`` floats, so for small networks or batches.

  Args:
    apply_fn: ``(params, x) -> [N, K]`` (or ``[N]``) outputs; e.g. ``lambda p, x: model.apply({"params":
      p}, x)``.
    params: the parameter pytree to differentiate.
    x1: ``[N, ...]``; x2: ``[M, ...]`` or None (``x1``).
    trace: "mean" or "sum" over the output axis.

  Returns:
    ``[N, M]`` float32.
  """
  if trace not in ("mean", "sum"):
    raise ValueError(f"trace must be 'mean' or 'sum'; got {trace!r}.")
  j1 = _jacobian_rows(apply_fn, params, x1)
  j2 = j1 if x2 is None else _jacobian_rows(apply_fn, params, x2)
  if j1.shape[1] != j2.shape[1]:
    raise ValueError(f"apply_fn gives {j1.shape[1]} outputs for x1 but {j2.shape[1]} for x2.")
  ntk = jnp.einsum("nkp,mkp->nm", j1, j2)
  return ntk / j1.shape[1] if trace == "mean" else ntk


def empirical_ntk_kernel(net, trace: str = "mean") -> Callable:
  """A keyed kernel ``kernel_fn(x1, x2, key) -> [N, M]``: the empirical NTK (w.r.t. ``params``) of a
  freshly initialized ``net`` (any model ``jaxdistill.models.adapt`` accepts, or ``NetFns``),
  drawn from ``key``. For ``kip(..., keyed_kernel=True)``: a new random finite network each step.
  Memory as ``empirical_ntk``: small networks only."""
  fns = as_net(net)

  def kernel_fn(x1, x2, key):
    variables = fns.init(key, x1[:1])
    rest = {k: v for k, v in variables.items() if k != "params"}
    apply = lambda p, x: fns.apply({**rest, "params": p}, x)
    return empirical_ntk(apply, variables["params"], x1, x2, trace)

  return kernel_fn


# ----------------------------------------------------------------------------------------------------
# Kernel ridge regression
# ----------------------------------------------------------------------------------------------------

class KRRSolution(NamedTuple):
  """``alpha`` ``[S, K]`` with ``prediction = K_ts @ alpha``; ``ok`` (bool scalar): the solve is finite;
  ``used_fallback`` (bool scalar): Cholesky failed (matrix not numerically positive definite) and the
  LU solve was used."""
  alpha: jax.Array
  ok: jax.Array
  used_fallback: jax.Array


def regularize(k_ss: jax.Array, reg: float) -> jax.Array:
  """``K_ss + |reg| * trace(K_ss) / S * I`` (KIP's and FRePo's scale-free ridge)."""
  s = k_ss.shape[0]
  return k_ss + jnp.abs(reg) * jnp.trace(k_ss) / s * jnp.eye(s, dtype=k_ss.dtype)


def krr_fit(k_ss: jax.Array, y_s: jax.Array, reg: float = 1e-6) -> KRRSolution:
  """Solves ``(K_ss + reg * trace(K_ss) / S * I) alpha = y_s``; jittable and differentiable.

  Cholesky (``cho_factor`` / ``cho_solve``) first; where it fails (NaN: the regularized matrix is not
  numerically positive definite, e.g. an indefinite user kernel) an LU solve (``jnp.linalg.solve``)
  under ``lax.cond``. If that is not finite either (a singular matrix, e.g. all-zero kernel, or NaN
  inputs) ``alpha`` holds NaN/inf and ``ok`` is False: the loss becomes NaN and ``distill.run`` stops
  with a ``FloatingPointError``; ``krr_predict`` raises outside ``jit``.

  Args:
    k_ss: ``[S, S]`` symmetric kernel of the support (synthetic) set.
    y_s: ``[S, K]`` support targets.
    reg: relative ridge (KIP/FRePo: 1e-6).

  Returns:
    ``KRRSolution``.
  """
  k_ss = jnp.asarray(k_ss)
  y_s = jnp.asarray(y_s)
  if k_ss.ndim != 2 or k_ss.shape[0] != k_ss.shape[1]:
    raise ValueError(f"k_ss must be a square [S, S] matrix; got shape {k_ss.shape}.")
  if y_s.ndim != 2 or y_s.shape[0] != k_ss.shape[0]:
    raise ValueError(f"y_s must be [S, K] with S = {k_ss.shape[0]} (k_ss rows); got shape {y_s.shape}.")
  a = regularize(k_ss, reg)
  factor = cho_factor(a, lower=True)
  alpha_chol = cho_solve(factor, y_s)
  chol_ok = jnp.all(jnp.isfinite(alpha_chol))
  alpha = jax.lax.cond(chol_ok, lambda: alpha_chol, lambda: jnp.linalg.solve(a, y_s))
  ok = jnp.all(jnp.isfinite(alpha))
  return KRRSolution(alpha, ok, jnp.logical_not(chol_ok))


def _raise_if_failed(ok: jax.Array, k_ss: jax.Array, reg: float) -> None:
  """Raises outside tracing when the KRR solve failed; a no-op under ``jit``/``vmap``."""
  try:
    failed = not bool(ok)
  except jax.errors.ConcretizationTypeError:  # traced: the NaN reaches the loss
    return
  if failed:
    msg = ("Kernel ridge regression failed: (K_ss + reg * trace(K_ss) / S * I) is singular or too "
           f"ill-conditioned to solve (reg={reg}).")
    try:
      tr = float(jnp.trace(k_ss))
      finite = bool(jnp.all(jnp.isfinite(k_ss)))
      msg += f" trace(K_ss) = {tr:.3g}; K_ss {'is finite' if finite else 'contains NaN/inf'}."
    except jax.errors.ConcretizationTypeError:
      pass
    msg += (" Increase reg, or check the support set for NaN, all-zero or duplicated images (a zero "
            "kernel has no ridge, since the ridge scales with its trace).")
    raise np.linalg.LinAlgError(msg)


def krr_predict(k_ss: jax.Array, k_ts: jax.Array, y_s: jax.Array, reg: float = 1e-6) -> jax.Array:
  """Kernel ridge regression prediction ``K_ts (K_ss + reg * trace(K_ss) / S * I)^-1 y_s``.

  Args:
    k_ss: ``[S, S]`` kernel among the support (synthetic) points.
    k_ts: ``[T, S]`` kernel between target (real) and support points.
    y_s: ``[S, K]`` support labels.
    reg: relative ridge (KIP/FRePo default 1e-6).

  Returns:
    ``[T, K]`` predictions.

  Raises:
    numpy.linalg.LinAlgError: outside ``jit`` only, when the regularized system is singular (see
      ``krr_fit``); under ``jit`` the predictions are NaN instead (the distillation loop stops on a NaN
      loss). Use ``krr_fit`` for the ``ok`` flag.
  """
  k_ts = jnp.asarray(k_ts)
  if k_ts.ndim != 2 or k_ts.shape[1] != jnp.shape(k_ss)[0]:
    raise ValueError(f"k_ts must be [T, S] with S = {jnp.shape(k_ss)[0]}; got shape {k_ts.shape}.")
  sol = krr_fit(k_ss, y_s, reg)
  _raise_if_failed(sol.ok, k_ss, reg)
  return k_ts @ sol.alpha
