"""The Gaussian diffusion process (Ho et al., 2020; Song et al., 2021) as pure functions.

A ``Schedule`` holds the ``T`` betas and their products; ``q_sample`` noises clean images, ``loss`` is
the epsilon-prediction objective, and ``sample`` runs DDPM (ancestral, ``eta=1``) or DDIM (``eta=0``)
over an evenly spaced subsequence of the ``T`` steps, with optional classifier-free guidance.
Arrays: images ``[N, H, W, C]`` float32, timesteps ``[N]`` int32 in ``[0, T)``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

# ``eps_fn(x_t [N, H, W, C], t [N] int32, y [N] int32) -> eps [N, H, W, C]``
EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Schedule(NamedTuple):
  """Noise schedule arrays, each ``[T]`` float32."""
  betas: jax.Array
  alphas_cumprod: jax.Array  # abar_t = prod_{s <= t} (1 - beta_s)

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])


def make_schedule(num_steps: int = 1000, kind: str = "linear") -> Schedule:
  """``"linear"`` (DDPM / DiT: beta from 1e-4 to 0.02, rescaled to ``num_steps``) or ``"cosine"``
  (Nichol & Dhariwal, 2021; betas clipped at 0.999)."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1; got {num_steps}.")
  if kind == "linear":
    scale = 1000.0 / num_steps
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
  elif kind == "cosine":
    f = lambda t: np.cos((t / num_steps + 0.008) / 1.008 * np.pi / 2) ** 2
    t = np.arange(num_steps + 1, dtype=np.float64)
    betas = np.minimum(1 - f(t[1:]) / f(t[:-1]), 0.999)
  else:
    raise ValueError(f"Unknown schedule {kind!r}; known: 'linear', 'cosine'.")
  return Schedule(jnp.asarray(betas, jnp.float32),
                  jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``: clean ``x0`` noised to steps ``t`` ``[N]``."""
  abar = _bcast(s.alphas_cumprod[t], x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def predict_x0(s: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """The clean image implied by a noise prediction: ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
  abar = _bcast(s.alphas_cumprod[t], x_t)
  return (x_t - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)


def loss(s: Schedule, eps_fn: EpsFn, x0: jax.Array, y: jax.Array, key: jax.Array) -> tuple:
  """The epsilon-prediction objective on a batch.

  Draws ``t`` uniformly in ``[0, T)`` and ``noise ~ N(0, I)`` from ``key``.

  Returns:
    ``(loss, x0_pred)``: the mean squared error between predicted and true noise (a scalar), and the
    clean images implied by the prediction ``[N, H, W, C]`` (the "pseudo embeddings" of Minimax
    Diffusion), differentiable.
  """
  t_key, n_key = jax.random.split(key)
  t = jax.random.randint(t_key, (x0.shape[0],), 0, s.num_steps, dtype=jnp.int32)
  noise = jax.random.normal(n_key, x0.shape, x0.dtype)
  x_t = q_sample(s, x0, t, noise)
  eps = eps_fn(x_t, t, y)
  return jnp.mean(jnp.square(eps - noise)), predict_x0(s, x_t, t, eps)


def spaced_timesteps(num_steps: int, sample_steps: int) -> np.ndarray:
  """``sample_steps`` timesteps evenly spaced in ``[0, num_steps)``, descending (first is ``T - 1``)."""
  if not 1 <= sample_steps <= num_steps:
    raise ValueError(f"sample_steps must lie in [1, {num_steps}]; got {sample_steps}.")
  return np.round(np.linspace(num_steps - 1, 0, sample_steps)).astype(np.int32)


def ddim_step(x_t: jax.Array, eps: jax.Array, abar_t: jax.Array, abar_prev: jax.Array,
              noise: jax.Array, eta: float, clip: Optional[float] = None) -> jax.Array:
  """One generalized DDIM update from ``x_t`` to ``x_prev`` (scalar ``abar``s).

  ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise`` with ``x0`` the
  prediction and ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``.
  ``eta=0`` is DDIM (deterministic); ``eta=1`` is DDPM's ancestral step with the posterior variance.
  With ``clip``, ``x0`` is clipped to ``[-clip, clip]`` (and ``eps`` recomputed from it).
  """
  x0 = (x_t - jnp.sqrt(1.0 - abar_t) * eps) / jnp.sqrt(abar_t)
  if clip is not None:
    x0 = jnp.clip(x0, -clip, clip)
    eps = (x_t - jnp.sqrt(abar_t) * x0) / jnp.sqrt(1.0 - abar_t)
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * jnp.sqrt(1.0 - abar_t / abar_prev)
  return (jnp.sqrt(abar_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0)) * eps
          + sigma * noise)


def guided(eps_fn: EpsFn, cfg_scale: float, null_class: int) -> EpsFn:
  """Classifier-free guidance: ``eps_u + cfg_scale (eps_c - eps_u)``, both halves in one batch."""
  if cfg_scale == 1.0:
    return eps_fn

  def fn(x, t, y):
    both = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                  jnp.concatenate([y, jnp.full_like(y, null_class)]))
    cond, uncond = jnp.split(both, 2)
    return uncond + cfg_scale * (cond - uncond)

  return fn


def sample(s: Schedule, eps_fn: EpsFn, key: jax.Array, y: jax.Array, shape: tuple,
           sample_steps: int = 50, eta: float = 1.0, cfg_scale: float = 1.0,
           null_class: Optional[int] = None, clip: Optional[float] = 1.0) -> jax.Array:
  """Generates ``len(y)`` images of ``shape`` ``(H, W, C)`` for labels ``y`` ``[N]`` (pure, jittable
  with ``shape``, ``sample_steps``, ``eta``, ``cfg_scale``, ``null_class`` and ``clip`` static).

  Starts from ``N(0, I)`` and runs ``sample_steps`` updates (``ddim_step``) over ``spaced_timesteps``
  in one ``lax.scan``; ``eta=1``: DDPM, ``eta=0``: DDIM. ``cfg_scale != 1`` needs ``null_class``.

  Returns:
    ``[N, H, W, C]`` samples in the model's space.
  """
  if cfg_scale != 1.0:
    if null_class is None:
      raise ValueError("Classifier-free guidance (cfg_scale != 1) needs null_class.")
    eps_fn = guided(eps_fn, cfg_scale, null_class)
  ts = spaced_timesteps(s.num_steps, sample_steps)
  abar = s.alphas_cumprod[jnp.asarray(ts)]
  abar_prev = jnp.concatenate([abar[1:], jnp.ones((1,), abar.dtype)])
  init_key, loop_key = jax.random.split(key)
  x = jax.random.normal(init_key, (y.shape[0], *shape), jnp.float32)

  def body(x, inp):
    t, a, a_prev, i = inp
    eps = eps_fn(x, jnp.full(y.shape, t, jnp.int32), y)
    noise = jax.random.normal(jax.random.fold_in(loop_key, i), x.shape, x.dtype)
    return ddim_step(x, eps, a, a_prev, noise, eta, clip), None

  x, _ = jax.lax.scan(body, x, (jnp.asarray(ts), abar, abar_prev,
                                jnp.arange(sample_steps, dtype=jnp.int32)))
  return x
