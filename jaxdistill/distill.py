"""THE distillation loop, shared by every method.

The loop never knows which method runs: it calls ``objective.loss(syn, batch, key, state, axis_name)``
(see ``jaxdistill.objectives.base``). One step:

1. per-step keys: ``fold_in(state.key, state.step)``, split once per consumer;
2. a real batch from ``sampler`` (jitted, computed globally, then split over the devices);
3. per device (``shard_map`` over the ``"data"`` mesh axis): decode the stored synthetic parameters into
   training images, put the frozen rows under ``stop_gradient``, and take the gradient of the objective's
   (device-averaged) loss with respect to the learnable leaves: images, optionally soft labels and the
   log step size;
4. one optax update (``multi_transform`` over those leaves), frozen rows' updates zeroed;
5. the objective's own state update (e.g. DC's network trained on the new synthetic set).

The step is jitted once, with the state donated. ``run`` adds orbax checkpoints (exact resume), a NaN
stop, SIGTERM/Ctrl-C safety, a progress bar, JSONL/TensorBoard metrics and PNG grids.
"""
from __future__ import annotations

import contextlib
import signal
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import parallel, partial
from jaxdistill.objectives.base import Objective
from jaxdistill.types import SyntheticSet

LEAVES = ("images", "labels", "log_lr")


class DistillState(NamedTuple):
  """Everything a run needs to resume exactly; arrays only."""
  step: jax.Array  # int32 scalar: steps done
  syn: SyntheticSet  # stored synthetic parameters
  opt_state: Any
  obj_state: Any
  key: jax.Array  # typed PRNG key of the run


class Sampler(NamedTuple):
  """A real-batch sampler: ``fn(key, arrays) -> batch``, with the dataset arrays passed in (not
  closed over, so they are not baked into the program as constants). With ``uses_step`` the loop calls
  ``fn(key, arrays, step)`` with the int32 step of the state (curricula such as DATM's growing range
  of expert start epochs)."""
  fn: Callable[..., Any]
  arrays: Any
  uses_step: bool = False


# ----------------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------------

def class_balanced_sampler(images: np.ndarray, labels: np.ndarray, num_classes: int,
                           per_class: int) -> Sampler:
  """Batches ``{"images": [K, per_class, H, W, C]}``: per class, ``per_class`` distinct random images
  (the DC/DM reference's ``get_images``). Classes smaller than ``per_class`` raise."""
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() < per_class:
    c = int(counts.argmin())
    raise ValueError(f"per_class={per_class} real images per batch, but class {c} has only "
                     f"{counts[c]} images.")
  order = np.argsort(labels, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  arrays = {"images": jnp.asarray(images[order], jnp.float32),
            "labels": jnp.asarray(labels[order], jnp.int32),
            "starts": jnp.asarray(starts, jnp.int32)}

  def fn(key, a):
    # A random permutation within each class: sort by (label, uniform noise).
    noise = jax.random.uniform(key, a["labels"].shape)
    perm = jnp.lexsort((noise, a["labels"]))
    pos = a["starts"][:, None] + jnp.arange(per_class)[None, :]
    return {"images": a["images"][perm[pos]]}

  return Sampler(fn, arrays)


def random_sampler(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Sampler:
  """Batches ``{"images": [B, H, W, C], "labels": [B]}`` drawn uniformly without replacement."""
  if batch_size > len(labels):
    raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(labels)}).")
  arrays = {"images": jnp.asarray(images, jnp.float32), "labels": jnp.asarray(labels, jnp.int32)}

  def fn(key, a):
    idx = jax.random.choice(key, a["labels"].shape[0], (batch_size,), replace=False)
    return {"images": a["images"][idx], "labels": a["labels"][idx]}

  return Sampler(fn, arrays)


# ----------------------------------------------------------------------------------------------------
# Optimizers
# ----------------------------------------------------------------------------------------------------

def make_optimizer(name: str, **kwargs) -> optax.GradientTransformation:
  """An optax optimizer by name (``"sgd"``, ``"adam"``, ...), e.g. ``make_optimizer("sgd",
  learning_rate=100.0, momentum=0.5)``."""
  fn = getattr(optax, name, None) if isinstance(name, str) and not name.startswith("_") else None
  if fn is None or not callable(fn):
    raise ValueError(f"Unknown optimizer {name!r}; use an optax optimizer name such as 'sgd', "
                     f"'adam', 'adamw', 'rmsprop', 'lamb'.")
  return fn(**kwargs)


def optimizer(images: optax.GradientTransformation, labels=None, log_lr=None):
  """One optax transformation over the learnable leaves ``{"images", "labels", "log_lr"}``."""
  txs = {"images": images}
  if labels is not None:
    txs["labels"] = labels
  if log_lr is not None:
    txs["log_lr"] = log_lr
  return optax.multi_transform(txs, lambda params: {k: k for k in params})


def learnable(syn: SyntheticSet, learn_labels: bool, learn_lr: bool) -> dict:
  """The leaves of ``syn`` that the optimizer updates."""
  out = {"images": syn.images}
  if learn_labels:
    if syn.labels.ndim != 2 or not jnp.issubdtype(syn.labels.dtype, jnp.floating):
      raise ValueError("learn_labels needs soft labels: a float [N, K] array; got "
                       f"{syn.labels.dtype} {syn.labels.shape}.")
    out["labels"] = syn.labels
  if learn_lr:
    if syn.log_lr is None:
      raise ValueError("learn_lr needs a SyntheticSet with log_lr set.")
    out["log_lr"] = syn.log_lr
  return out


def _with(syn: SyntheticSet, params: dict) -> SyntheticSet:
  return syn._replace(**params)


# ----------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------

class Distiller(NamedTuple):
  """The pieces of a run that do not change while it runs."""
  objective: Objective
  tx: optax.GradientTransformation
  sampler: Sampler
  mask: Optional[jax.Array] = None  # [N] bool, True = distilled
  decode: Optional[Callable[[SyntheticSet], SyntheticSet]] = None  # parameterization
  learn_labels: bool = False
  learn_lr: bool = False


def init_state(key: jax.Array, syn: SyntheticSet, d: Distiller, mesh=None) -> DistillState:
  """The initial state, replicated over ``mesh`` (default: all devices). ``key`` drives everything
  the run draws."""
  _check_syn(syn)
  partial.check_mask(None if d.mask is None else np.asarray(d.mask), syn.images.shape[0])
  obj_key, run_key = jax.random.split(key)
  # A copy (the step donates the state's buffers) with strong dtypes: a weakly typed leaf such as
  # log_lr=jnp.log(0.01) would otherwise change type after the first update and recompile the step.
  syn = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), syn)
  params = learnable(syn, d.learn_labels, d.learn_lr)
  state = DistillState(jnp.zeros((), jnp.int32), syn, d.tx.init(params),
                       d.objective.init(obj_key, _training_view(syn, d)), run_key)
  return place(state, mesh)


def place(state: DistillState, mesh=None) -> DistillState:
  """Replicates ``state`` over ``mesh``: the layout the step returns, so it compiles once."""
  mesh = parallel.data_mesh() if mesh is None else mesh
  return jax.device_put(state, parallel.replicated(mesh))


def _training_view(syn: SyntheticSet, d: Distiller) -> SyntheticSet:
  syn = syn._replace(images=partial.freeze_rows(syn.images, d.mask),
                     labels=partial.freeze_rows(syn.labels, d.mask)
                     if jnp.issubdtype(syn.labels.dtype, jnp.floating) else syn.labels)
  return d.decode(syn) if d.decode is not None else syn


def step_keys(state: DistillState) -> tuple:
  """``(batch, loss, update)`` keys of this step: ``fold_in(key, step)`` split once per consumer."""
  return tuple(jax.random.split(jax.random.fold_in(state.key, state.step), 3))


def make_step(d: Distiller, mesh=None) -> Callable:
  """``step(state, batch) -> (state, metrics)``, jitted once, state donated, data-parallel over
  ``mesh`` (default: every device)."""
  mesh = parallel.data_mesh() if mesh is None else mesh
  axis = parallel.DATA_AXIS

  def per_device(params, syn, batch, key, obj_state):
    def loss_fn(p):
      return d.objective.loss(_training_view(_with(syn, p), d), batch, key, obj_state,
                              axis_name=axis)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, aux, grads

  def step(state: DistillState, batch):
    _, loss_key, update_key = step_keys(state)
    params = learnable(state.syn, d.learn_labels, d.learn_lr)
    batch_specs = jax.tree.map(lambda x: parallel.batch_spec(x.ndim, d.objective.batch_axis), batch)
    sharded = jax.shard_map(per_device, mesh=mesh,
                            in_specs=(jax.P(), jax.P(), batch_specs, jax.P(), jax.P()),
                            out_specs=(jax.P(), jax.P(), jax.P()))
    loss, aux, grads = sharded(params, state.syn, batch, loss_key, state.obj_state)
    updates, opt_state = d.tx.update(grads, state.opt_state, params)
    updates = {k: (partial.mask_updates(u, d.mask) if k in ("images", "labels") else u)
               for k, u in updates.items()}
    syn = _with(state.syn, optax.apply_updates(params, updates))
    obj_state = d.objective.update(state.obj_state, _training_view(syn, d), update_key)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    if d.learn_lr:
      metrics["lr"] = jnp.exp(jnp.mean(syn.log_lr))
    return DistillState(state.step + 1, syn, opt_state, obj_state, state.key), metrics

  return jax.jit(step, donate_argnums=0)


def make_sample(d: Distiller, mesh=None) -> Callable:
  """``sample(state) -> batch``: the step's real batch, computed once and laid out split over the
  devices along the objective's batch axis."""
  mesh = parallel.data_mesh() if mesh is None else mesh
  extra = (jnp.zeros((), jnp.int32),) if d.sampler.uses_step else ()
  shape = jax.eval_shape(d.sampler.fn, jax.random.key(0), d.sampler.arrays, *extra)
  parallel.check_divisible(shape, d.objective.batch_axis, mesh)
  out = parallel.batch_sharding(mesh, shape, d.objective.batch_axis)
  fn = jax.jit(lambda key, arrays, *step: d.sampler.fn(key, arrays, *step), out_shardings=out)
  if d.sampler.uses_step:
    return lambda state: fn(step_keys(state)[0], d.sampler.arrays, state.step)
  return lambda state: fn(step_keys(state)[0], d.sampler.arrays)


def _check_syn(syn: SyntheticSet) -> None:
  if not isinstance(syn, SyntheticSet):
    raise TypeError(f"Expected a SyntheticSet; got {type(syn).__name__}.")
  if syn.images.ndim != 4:
    raise ValueError(f"Synthetic images must be [N, H, W, C]; got shape {syn.images.shape}.")
  if syn.labels.shape[0] != syn.images.shape[0]:
    raise ValueError(f"{syn.images.shape[0]} synthetic images but {syn.labels.shape[0]} labels.")
  if not bool(jnp.all(jnp.isfinite(syn.images))):
    raise ValueError("The initial synthetic images contain NaN or inf.")


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _sigterm_as_interrupt():
  """SIGTERM raises KeyboardInterrupt (between steps the last completed checkpoint stays intact)."""
  def handler(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
  try:
    old = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, old)


def run(key: jax.Array, syn: SyntheticSet, d: Distiller, num_steps: int, *,
        checkpoint_dir: Optional[str] = None, checkpoint_every: int = 100, keep: int = 3,
        config: Optional[dict] = None, logger=None, log_every: int = 10,
        on_images: Optional[Callable[[int, SyntheticSet], None]] = None, image_every: int = 0,
        progress: bool = True, mesh=None) -> tuple:
  """Runs ``num_steps`` distillation steps (resuming from ``checkpoint_dir`` if it holds a run).

  Args:
    key: the run's key (with the same key, a resumed run ends bit-identical to an uninterrupted one).
    syn: the initial synthetic set (ignored when resuming).
    d: objective, optimizer, sampler, mask, parameterization.
    num_steps: total steps (including those done before a resume).
    checkpoint_dir: orbax checkpoints here every ``checkpoint_every`` steps and at the end.
    config: the run's configuration, stored beside the checkpoints and checked on resume.
    logger: an object with ``write(step, metrics)`` (see ``jaxdistill.logs.MetricLogger``).
    on_images: called as ``on_images(step, decoded_syn)`` every ``image_every`` steps and at the end.

  Returns:
    ``(state, history)``: the final ``DistillState`` and a list of per-step metric dicts.

  Raises:
    FloatingPointError: the loss or the synthetic set turned NaN/inf (nothing of that step is saved).
  """
  from jaxdistill.checkpoint import Checkpointer  # orbax is heavy; import when used
  mesh = parallel.data_mesh() if mesh is None else mesh
  state = init_state(key, syn, d, mesh)
  ckpt = None
  if checkpoint_dir is not None:
    ckpt = Checkpointer(checkpoint_dir, config, save_every=checkpoint_every, keep=keep)
    if ckpt.latest_step() is not None:
      state = place(ckpt.restore(state), mesh)
  step_fn = make_step(d, mesh)
  sample = make_sample(d, mesh)
  history = []
  start = int(state.step)
  bar = _progress(start, num_steps, progress)
  t0 = time.time()
  try:
    with _sigterm_as_interrupt():
      while int(state.step) < num_steps:
        state, metrics = step_fn(state, sample(state))
        metrics = {k: float(v) for k, v in metrics.items()}
        step = int(state.step)
        if not np.isfinite(metrics["loss"]) or not bool(jnp.all(jnp.isfinite(state.syn.images))):
          last = ckpt.latest_step() if ckpt else None
          raise FloatingPointError(
              f"The loss is {metrics['loss']} at step {step} (or the synthetic images are not "
              f"finite); stopped. " + (f"The last good checkpoint (step {last}) in {ckpt.directory} "
                                       f"is intact." if last is not None else "No checkpoint."))
        metrics["step"] = step
        metrics["sec"] = time.time() - t0
        history.append(metrics)
        if logger is not None and (step % log_every == 0 or step == num_steps):
          logger.write(step, metrics)
        if on_images is not None and image_every and step % image_every == 0:
          on_images(step, _training_view(state.syn, d))
        if ckpt is not None:
          ckpt.save(step, state, force=step == num_steps)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4g}")
  finally:
    bar.close()
    if ckpt is not None:
      ckpt.close()
  if on_images is not None:
    on_images(int(state.step), _training_view(state.syn, d))
  return state, history


def _progress(start: int, total: int, enabled: bool):
  import tqdm
  return tqdm.tqdm(initial=start, total=total, disable=not enabled, unit="step", dynamic_ncols=True,
                   mininterval=1.0)


def decoded(state: DistillState, d: Distiller) -> SyntheticSet:
  """The training images of the current state (parameterization decoded), gradients stopped."""
  return jax.lax.stop_gradient(_training_view(state.syn, d))
