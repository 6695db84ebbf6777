"""Training the diffusion model: pretraining and Minimax / DiffFit fine-tuning, one jitted step each.

``make_step`` returns ``step(state, arrays) -> (state, metrics)``: it draws a batch of real images
(uniformly, with replacement) and the diffusion noise from ``fold_in(state.key, state.step)``, takes the
gradient of the epsilon loss (plus, for fine-tuning, Minimax's two terms over the memories in the state),
applies one optax update and an EMA of the parameters. ``run`` adds orbax checkpoints with exact
resume, a progress bar and metrics. The trainable subset is an optax mask (``trainable_tx``): DiffFit
trains biases, norm parameters, the ``gamma`` scales and the class embedding only.
"""
from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jaxdistill.checkpoint import Checkpointer
from jaxdistill.diffusion import gaussian, minimax

DIFFFIT = ("bias", "norm", "gamma", "y_embed")  # the authors' name keywords for DiffFit


class TrainState(NamedTuple):
  """Everything a run needs to resume exactly; arrays only."""
  step: jax.Array  # int32 scalar
  params: Any
  ema: Any  # exponential moving average of params (what is sampled from)
  opt_state: Any
  memory: Optional[minimax.Memory]  # Minimax fine-tuning only
  key: jax.Array  # typed PRNG key


class MinimaxConfig(NamedTuple):
  """Minimax criteria weights and memory size (the paper's defaults), and the space they are computed
  in: ``embed`` maps clean images ``[B, H, W, C]`` (the model's space) to the items the memories hold
  (e.g. ``autoencoder.encoder_fn``); None compares the images themselves."""
  lambda_pos: float = 0.002
  lambda_neg: float = 0.008
  memory_size: int = 64
  embed: Optional[Callable] = None


def path_name(path) -> str:
  """``"block0/attn/query/bias"`` for a pytree key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def trainable_labels(params, keywords: Sequence[str] = DIFFFIT, exclude: Sequence[str] = ()):
  """A pytree of ``"train"`` / ``"freeze"``: a leaf trains if its path contains one of ``keywords``
  (and none of ``exclude``). ``keywords=("",)`` trains everything."""
  def label(path, _):
    name = path_name(path)
    ok = any(k in name for k in keywords) and not any(e in name for e in exclude)
    return "train" if ok else "freeze"
  return jax.tree_util.tree_map_with_path(label, params)


def trainable_tx(tx: optax.GradientTransformation, params, keywords: Sequence[str] = DIFFFIT,
                 exclude: Sequence[str] = ()) -> optax.GradientTransformation:
  """``tx`` on the leaves selected by ``trainable_labels``; the others get zero updates (and no
  optimizer state)."""
  labels = trainable_labels(params, keywords, exclude)
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def difffit_tx(params, learning_rate: float = 1e-3) -> optax.GradientTransformation:
  """DiffFit's optimizer: AdamW (lr 1e-3, no weight decay) on biases, norms, gammas and the class
  embedding; everything else frozen."""
  return trainable_tx(optax.adamw(learning_rate, weight_decay=0.0), params, DIFFFIT)


def init_state(key: jax.Array, params, tx: optax.GradientTransformation,
               memory: Optional[minimax.Memory] = None) -> TrainState:
  """A fresh state from ``params`` (copied: the step donates the state's buffers)."""
  params = jax.tree.map(jnp.array, params)
  return TrainState(jnp.zeros((), jnp.int32), params, jax.tree.map(jnp.array, params),
                    tx.init(params), memory, key)


def init_params(key: jax.Array, model, image_shape: Sequence[int]):
  """The model's initial parameters for images of ``image_shape`` ``(H, W, C)``."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  return model.init(key, x, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))["params"]


def eps_fn(model, params, train: bool = False, key: Optional[jax.Array] = None) -> Callable:
  """``(x_t, t, y) -> eps`` of ``model`` with ``params`` (label dropout drawn from ``key`` in train)."""
  rngs = {"dropout": key} if train else None
  return lambda x, t, y: model.apply({"params": params}, x, t, y, train=train, rngs=rngs)


def step_keys(state: TrainState) -> tuple:
  """``(batch, noise, dropout)`` keys of this step: ``fold_in(key, step)`` split once per consumer."""
  return tuple(jax.random.split(jax.random.fold_in(state.key, state.step), 3))


def _embedded(mm: MinimaxConfig, x: jax.Array) -> jax.Array:
  return x if mm.embed is None else mm.embed(x)


def make_step(model, schedule: gaussian.Schedule, tx: optax.GradientTransformation, batch_size: int,
              ema_decay: float = 0.999, mm: Optional[MinimaxConfig] = None) -> Callable:
  """``step(state, arrays) -> (state, metrics)``, jitted once with the state donated.

  Args:
    model: the ``DiT`` or ``UNet`` (any module with ``apply(v, x, t, y, train=..., rngs=...) -> eps``).
    schedule: the diffusion schedule.
    tx: the optimizer (e.g. ``difffit_tx`` for fine-tuning).
    batch_size: real images per step, drawn uniformly with replacement from
      ``arrays = {"images": [N, H, W, C] (model space), "labels": [N] int32}``.
    ema_decay: the EMA of the parameters kept in the state.
    mm: Minimax criteria (the state must carry a ``Memory``); None for plain diffusion training.

  Metrics: ``loss`` (total), ``diffusion``, and with ``mm`` ``pos`` and ``neg``.
  """
  def loss_fn(params, x0, y, noise_key, drop_key, memory):
    diff, x0_pred = gaussian.loss(schedule, eps_fn(model, params, True, drop_key), x0, y, noise_key)
    aux = {"diffusion": diff}
    total = diff
    if mm is not None:
      x0_pred = _embedded(mm, x0_pred)  # the pseudo embeddings
      pos, neg = minimax.terms(x0_pred, y, memory, mm.lambda_pos, mm.lambda_neg)
      total = total + pos + neg
      aux.update(pos=pos, neg=neg)
    return total, (aux, x0_pred)

  def step(state: TrainState, arrays):
    batch_key, noise_key, drop_key = step_keys(state)
    idx = jax.random.randint(batch_key, (batch_size,), 0, arrays["labels"].shape[0])
    x0, y = arrays["images"][idx], arrays["labels"][idx]
    (total, (aux, x0_pred)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, x0, y, noise_key, drop_key, state.memory)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema, 1.0 - ema_decay)
    memory = state.memory
    if mm is not None:
      memory = minimax.update(memory, _embedded(mm, x0), x0_pred, y)
    metrics = {"loss": total, **aux, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step + 1, params, ema, opt_state, memory, state.key), metrics

  return jax.jit(step, donate_argnums=0)


def run(state: TrainState, step_fn: Callable, arrays, num_steps: int, *,
        checkpoint_dir: Optional[str] = None, checkpoint_every: int = 500, keep: int = 2,
        config: Optional[dict] = None, logger=None, log_every: int = 50, progress: bool = True,
        desc: str = "train", adopt_legacy: bool = False) -> tuple:
  """Runs ``step_fn`` until ``num_steps`` steps are done, resuming from ``checkpoint_dir``.

  Args:
    state: the initial state (replaced by the latest checkpoint if ``checkpoint_dir`` holds one).
    step_fn: from ``make_step``.
    arrays: ``{"images", "labels"}`` passed to every step.
    num_steps: total steps, including those done before a resume.
    checkpoint_dir: orbax checkpoints every ``checkpoint_every`` steps and at the end; ``config`` is
      stored beside them and checked on resume.
    logger: ``write(step, metrics)`` every ``log_every`` steps (``jaxdistill.logs.MetricLogger``).
    adopt_legacy: first rewrite checkpoints written by earlier versions of the library (without
      checksums) in the current layout (``Checkpointer.adopt_legacy``); without it they are refused.

  Returns:
    ``(state, info)`` with ``info = {"steps_run", "seconds", "resumed_from"}``.

  Raises:
    FloatingPointError: the loss turned NaN/inf (the last checkpoint stays intact).
  """
  ckpt = None
  resumed = 0
  if checkpoint_dir is not None:
    ckpt = Checkpointer(checkpoint_dir, config, save_every=checkpoint_every, keep=keep)
    if adopt_legacy:
      ckpt.adopt_legacy(state)
    if ckpt.latest_step() is not None:
      state = ckpt.restore(state)
      resumed = int(state.step)
  arrays = jax.tree.map(jnp.asarray, arrays)
  start = int(state.step)
  bar = tqdm.tqdm(initial=start, total=num_steps, unit="step", disable=not progress,
                  dynamic_ncols=True, mininterval=2.0, desc=desc)
  t0 = time.time()
  try:
    while int(state.step) < num_steps:
      state, metrics = step_fn(state, arrays)
      step = int(state.step)
      if step % log_every == 0 or step == num_steps:
        metrics = {k: float(v) for k, v in metrics.items()}
        if not np.isfinite(metrics["loss"]):
          raise FloatingPointError(f"The loss is {metrics['loss']} at step {step}; stopped "
                                   f"(last checkpoint: {ckpt.latest_step() if ckpt else None}).")
        metrics["sec"] = time.time() - t0
        if logger is not None:
          logger.write(step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4g}")
      if ckpt is not None:
        ckpt.save(step, state, force=step == num_steps)
      bar.update(1)
  finally:
    bar.close()
    if ckpt is not None:
      ckpt.close()
  return state, {"steps_run": int(state.step) - start, "seconds": time.time() - t0,
                 "resumed_from": resumed}
