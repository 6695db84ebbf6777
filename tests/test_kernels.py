"""Analytic FC kernels against Monte-Carlo estimates, the empirical NTK against J J^T, and KRR."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import kernels

W_STD, B_STD = math.sqrt(2.0), 0.1


# ----------------------------------------------------------------------------------------------------
# Monte-Carlo helpers: a wide FC ReLU network in the NTK parameterization, as plain functions.
# ----------------------------------------------------------------------------------------------------

def fc_init(key, dims):
  """Standard-normal weights ``[(W [a, b], bias [b])]`` for layer sizes ``dims``."""
  keys = jax.random.split(key, len(dims) - 1)
  return [(jax.random.normal(k, (a, b)), jax.random.normal(jax.random.fold_in(k, 1), (b,)))
          for k, a, b in zip(keys, dims[:-1], dims[1:])]


def fc_apply(params, x, w_std=W_STD, b_std=B_STD):
  """``[N, D] -> [N, out]``: Dense(w_std / sqrt(fan_in) W, b_std b) + ReLU, readout without ReLU."""
  h = x
  for i, (w, b) in enumerate(params):
    h = w_std / math.sqrt(w.shape[0]) * (h @ w) + b_std * b
    if i < len(params) - 1:
      h = jax.nn.relu(h)
  return h


def mc_nngp(params, x, w_std=W_STD, b_std=B_STD):
  """E over the readout layer of the output covariance, given the hidden layers of one draw."""
  h = x
  for w, b in params[:-1]:
    h = jax.nn.relu(w_std / math.sqrt(w.shape[0]) * (h @ w) + b_std * b)
  return w_std ** 2 * (h @ h.T) / h.shape[1] + b_std ** 2


def toy_inputs(n=4, d=5, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, d)), jnp.float32)


# ----------------------------------------------------------------------------------------------------
# Analytic kernels
# ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_depth_zero_is_the_linear_kernel_and_kernels_are_symmetric_psd():
  x = toy_inputs()
  lin = W_STD ** 2 * (x @ x.T) / x.shape[1] + B_STD ** 2
  np.testing.assert_allclose(kernels.fc_nngp(x, depth=0), lin, rtol=1e-5)
  np.testing.assert_allclose(kernels.fc_ntk(x, depth=0), lin, rtol=1e-5)
  for fn in (kernels.fc_nngp, kernels.fc_ntk):
    k = np.asarray(fn(x, depth=3), np.float64)
    np.testing.assert_allclose(k, k.T, rtol=1e-6)
    assert np.linalg.eigvalsh(k).min() > -1e-5
  # Images are flattened; x2 != x1 gives the off-diagonal block.
  imgs = x.reshape(4, 5, 1, 1)
  np.testing.assert_allclose(kernels.fc_ntk(imgs[:2], imgs[2:], depth=2),
                             kernels.fc_ntk(x, depth=2)[:2, 2:], rtol=1e-5)


def test_arccos_closed_form_depth_one():
  # Orthogonal unit-norm inputs, w=1, b=0: K^1 = <x,x'>/D, so NNGP = E[relu u relu v] with rho=0.
  d = 2
  x = jnp.asarray([[math.sqrt(d), 0.0], [0.0, math.sqrt(d)]], jnp.float32)  # |x|^2 / D = 1
  nngp = kernels.fc_nngp(x, depth=1, w_std=1.0, b_std=0.0)
  ntk = kernels.fc_ntk(x, depth=1, w_std=1.0, b_std=0.0)
  np.testing.assert_allclose(nngp[0, 1], 1 / (2 * math.pi), rtol=1e-5)  # sin(pi/2) / 2pi
  np.testing.assert_allclose(nngp[0, 0], 0.5, rtol=1e-4)
  # Theta^2 = K^2 + w^2 E[relu' relu'] Theta^1: off the diagonal Theta^1 = 0; on it 1/2 + 1/2 * 1.
  np.testing.assert_allclose(ntk[0, 1], 1 / (2 * math.pi), atol=1e-6)
  np.testing.assert_allclose(ntk[0, 0], 0.5 + 0.5 * 1.0, rtol=1e-3)


@pytest.mark.slow
def test_analytic_fc_kernels_match_monte_carlo_of_wide_networks():
  depth, width = 2, 2048
  x = toy_inputs()
  dims = [x.shape[1]] + [width] * depth + [1]
  nngp_draws = jax.jit(jax.vmap(lambda k: mc_nngp(fc_init(k, dims), x)))(
      jax.random.split(jax.random.key(0), 16))
  ntk_one = jax.jit(lambda k: kernels.empirical_ntk(fc_apply, fc_init(k, dims), x))
  ntk_draws = [ntk_one(k) for k in jax.random.split(jax.random.key(1), 8)]
  nngp, ntk = kernels.fc_nngp(x, depth=depth), kernels.fc_ntk(x, depth=depth)
  err_nngp = np.abs(np.mean(nngp_draws, 0) - nngp).max() / np.abs(nngp).max()
  err_ntk = np.abs(np.mean(ntk_draws, 0) - ntk).max() / np.abs(ntk).max()
  assert err_nngp < 0.03, err_nngp  # observed 0.5%
  assert err_ntk < 0.05, err_ntk  # observed 1.4-2.4% over seeds (the NTK fluctuates more)


def test_kernel_gradients_finite_on_the_diagonal():
  # KIP differentiates k(x_s, x_s): arccos at cos = 1 must not give NaN.
  x = toy_inputs()
  for fn in (kernels.fc_nngp, kernels.fc_ntk):
    g = jax.jit(jax.grad(lambda z: jnp.sum(fn(z, z, depth=3) ** 2)))(x)
    assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  # Duplicate rows (cos exactly 1 off the diagonal) too.
  dup = jnp.concatenate([x, x[:1]])
  g = jax.jit(jax.grad(lambda z: jnp.sum(kernels.fc_ntk(z, z, depth=2))))(dup)
  assert np.all(np.isfinite(g))


def test_fc_kernel_fn_and_bad_args():
  x = toy_inputs()
  np.testing.assert_allclose(kernels.fc_kernel_fn("nngp", 2)(x, x), kernels.fc_nngp(x, x, 2), rtol=1e-6)
  with pytest.raises(ValueError, match="'ntk' or 'nngp'"):
    kernels.fc_kernel_fn("rbf")
  with pytest.raises(ValueError, match="depth"):
    kernels.fc_ntk(x, depth=-1)
  with pytest.raises(ValueError, match="different sizes"):
    kernels.fc_ntk(x, x[:, :3])


# ----------------------------------------------------------------------------------------------------
# Empirical NTK
# ----------------------------------------------------------------------------------------------------

class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(3)(nn.tanh(nn.Dense(4)(x)))


def test_empirical_ntk_equals_jacobian_product_by_hand():
  x1, x2 = toy_inputs(3, 5, 1), toy_inputs(2, 5, 2)
  model = Tiny()
  params = model.init(jax.random.key(0), x1)["params"]
  apply = lambda p, x: model.apply({"params": p}, x)

  def jac(x):  # [N, K, P] by hand: flatten the parameters, jacobian of the flat function
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return jax.jacobian(lambda f: apply(unravel(f), x))(flat)

  j1, j2 = np.asarray(jax.jit(jac)(x1), np.float64), np.asarray(jax.jit(jac)(x2), np.float64)
  by_hand = np.einsum("nkp,mkp->nm", j1, j2)
  ntk = jax.jit(kernels.empirical_ntk, static_argnums=(0, 4))
  np.testing.assert_allclose(ntk(apply, params, x1, x2, "sum"), by_hand, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ntk(apply, params, x1, x2, "mean"), by_hand / 3, rtol=1e-5, atol=1e-6)
  # Scalar outputs and x2=None.
  scalar = lambda p, x: apply(p, x)[:, 0]
  np.testing.assert_allclose(ntk(scalar, params, x1, None, "mean"),
                             np.einsum("np,mp->nm", j1[:, 0], j1[:, 0]), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="'mean' or 'sum'"):
    kernels.empirical_ntk(apply, params, x1, trace="max")


def test_empirical_ntk_kernel_is_keyed():
  x = toy_inputs(3, 4).reshape(3, 2, 2, 1)

  class M(nn.Module):
    @nn.compact
    def __call__(self, x, train=True, return_features=False):
      f = nn.relu(nn.Dense(4)(x.reshape(x.shape[0], -1)))
      out = nn.Dense(2)(f)
      return (out, f) if return_features else out

  kfn = kernels.empirical_ntk_kernel(M())
  a, b = kfn(x, x, jax.random.key(0)), kfn(x, x, jax.random.key(1))
  assert a.shape == (3, 3) and not np.allclose(a, b)
  np.testing.assert_allclose(a, kfn(x, x, jax.random.key(0)))


# ----------------------------------------------------------------------------------------------------
# Kernel ridge regression
# ----------------------------------------------------------------------------------------------------

def test_krr_predict_equals_closed_form_solve():
  rng = np.random.default_rng(0)
  f_s, f_t = rng.normal(size=(6, 8)), rng.normal(size=(4, 8))
  k_ss, k_ts = f_s @ f_s.T, f_t @ f_s.T
  y_s = rng.normal(size=(6, 3))
  reg = 1e-2
  expected = k_ts @ np.linalg.solve(k_ss + reg * np.trace(k_ss) / 6 * np.eye(6), y_s)
  got = kernels.krr_predict(jnp.asarray(k_ss, jnp.float32), jnp.asarray(k_ts, jnp.float32),
                            jnp.asarray(y_s, jnp.float32), reg)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  sol = kernels.krr_fit(jnp.asarray(k_ss, jnp.float32), jnp.asarray(y_s, jnp.float32), reg)
  assert bool(sol.ok) and not bool(sol.used_fallback)


def test_krr_cholesky_fallback_for_indefinite_matrix():
  k = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3, -1: Cholesky fails, LU works
  y = np.array([[1.0], [0.0]])
  sol = kernels.krr_fit(jnp.asarray(k, jnp.float32), jnp.asarray(y, jnp.float32), 0.0)
  assert bool(sol.ok) and bool(sol.used_fallback)
  np.testing.assert_allclose(sol.alpha, np.linalg.solve(k, y), rtol=1e-5)


def test_singular_krr_raises_eagerly_and_gives_nan_under_jit():
  k_ss = jnp.zeros((3, 3), jnp.float32)  # zero kernel: the ridge (scaled by the trace) is zero too
  k_ts = jnp.ones((2, 3), jnp.float32)
  y = jnp.ones((3, 2), jnp.float32)
  with pytest.raises(np.linalg.LinAlgError, match=r"singular or too ill-conditioned.*trace\(K_ss\) = 0"):
    kernels.krr_predict(k_ss, k_ts, y)
  pred = jax.jit(kernels.krr_predict)(k_ss, k_ts, y)
  assert not np.all(np.isfinite(pred))
  assert not bool(jax.jit(kernels.krr_fit)(k_ss, y).ok)
  with pytest.raises(ValueError, match=r"y_s must be \[S, K\]"):
    kernels.krr_predict(jnp.eye(3), k_ts, jnp.ones((3,)))
  with pytest.raises(ValueError, match=r"k_ts must be \[T, S\]"):
    kernels.krr_predict(jnp.eye(3), jnp.ones((2, 4)), y)
