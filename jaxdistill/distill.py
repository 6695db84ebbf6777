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
5. the optional projection of the stored parameters (``Distiller.project``, e.g. IDC's clamp);
6. the objective's own state update (e.g. DC's network trained on the new synthetic set).

The step is jitted once, with the state donated. ``run`` adds orbax checkpoints (exact resume), a NaN
stop, SIGTERM/Ctrl-C safety, a progress bar, JSONL/TensorBoard metrics and PNG grids.
"""
from __future__ import annotations

import contextlib
import hashlib
import signal
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jaxdistill import checkpoint as ckpt_lib
from jaxdistill import parallel, partial_updates
from jaxdistill.checks import check_positive_int
# Samplers live with the data; re-exported here, where the loop uses them.
from jaxdistill.data.sampling import Sampler, class_balanced_sampler, random_sampler  # noqa: F401  (re-exported: jd.distill.class_balanced_sampler)
from jaxdistill.objectives.base import Objective
from jaxdistill.types import LEARNABLE_LEAVES, ROW_LEAVES, SyntheticSet

class DistillState(NamedTuple):
  """Everything a run needs to resume exactly; arrays only."""
  step: jax.Array  # int32 scalar: steps done
  syn: SyntheticSet  # stored synthetic parameters
  opt_state: Any
  obj_state: Any
  key: jax.Array  # typed PRNG key of the run


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


def class_sequential_sgd(learning_rate: float, momentum: float, row_classes,
                         num_classes: Optional[int] = None) -> optax.GradientTransformation:
  """SGD with momentum stepped once per class, class 0 first, within every update: IDC's
  ``condense.py`` calls ``optim_img.step()`` inside ``for c in range(nclass)`` (one PyTorch SGD over
  the whole set), so the momentum moves every row ``K`` times per iteration while each class's
  gradient enters once. Equivalent in closed form, per row of class ``p``, with ``m = momentum``:

      update = -lr * (m (1 - m^K) / (1 - m) * buf + (1 - m^(K - p)) / (1 - m) * g)
      buf'   = m^K * buf + m^(K - 1 - p) * g

  The one difference: IDC evaluates class ``p``'s gradient after the momentum moves of the classes
  before it; here every gradient comes from the iteration's start (the summed loss's). Leaves are
  ``[N, ...]`` with one class per row (``row_classes`` ``[N]``).
  """
  cls = np.asarray(row_classes)
  if cls.ndim != 1 or not np.issubdtype(cls.dtype, np.integer) or cls.size == 0:
    raise ValueError(f"row_classes must be [N] int class ids; got {cls.dtype} {cls.shape}.")
  k = int(num_classes if num_classes is not None else cls.max() + 1)
  if cls.min() < 0 or cls.max() >= k:
    raise ValueError(f"row_classes must lie in [0, {k}); got [{cls.min()}, {cls.max()}].")
  mu = float(momentum)
  if not 0.0 <= mu < 1.0:
    raise ValueError(f"momentum must lie in [0, 1); got {momentum}.")
  geo = lambda n: (1.0 - mu ** n) / (1.0 - mu)  # 1 + mu + ... + mu^(n - 1)
  grad_coef = np.asarray([geo(k - p) for p in cls], np.float32)
  carry_coef = np.asarray([mu ** (k - 1 - p) for p in cls], np.float32)
  buf_coef, decay = np.float32(mu * geo(k)), np.float32(mu ** k)

  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(grads, buf, params=None):
    del params

    def rows(coef, x):
      if x.shape[:1] != cls.shape:
        raise ValueError(f"class_sequential_sgd: a leaf of shape {x.shape} has no row per class id "
                         f"({cls.shape[0]} rows).")
      return jnp.asarray(coef).reshape((-1,) + (1,) * (x.ndim - 1))

    updates = jax.tree.map(lambda g, b: -learning_rate * (buf_coef * b + rows(grad_coef, g) * g),
                           grads, buf)
    new_buf = jax.tree.map(lambda g, b: decay * b + rows(carry_coef, g) * g, grads, buf)
    return updates, new_buf

  return optax.GradientTransformation(init, update)


def in_lr_space(tx: optax.GradientTransformation,
                min_lr: float = 1e-8) -> optax.GradientTransformation:
  """Runs ``tx`` on the step size ``lr = exp(log_lr)`` itself while the stored leaf is ``log_lr``.

  MTT and DATM update their step size directly (``syn_lr -= lr_lr * momentum_buffer``). Since
  ``d/dlog_lr = lr * d/dlr``, the same optimizer applied to ``log_lr`` would move ``lr`` about ``lr**2``
  times as far (``1e-4`` times at ``lr = 0.01``): the papers' ``lr_lr`` would leave the step size
  frozen. This transformation converts the gradient to ``d/dlr``, lets ``tx`` (whose state lives in
  step-size space, e.g. its momentum) produce ``lr'``, and returns the update that makes
  ``log_lr' = log(lr')``: exactly the original's update, with ``lr'`` kept ``>= min_lr`` so that it stays
  positive.

  Args:
    tx: the optimizer of the step size as the papers give it, e.g. ``optax.sgd(1e-5, momentum=0.5)``.
    min_lr: the smallest step size an update may reach.
  """
  if not min_lr > 0:
    raise ValueError(f"min_lr must be > 0 (the step size is stored as its log); got {min_lr}.")

  def init(params):
    return tx.init(params)

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("in_lr_space needs the current log step size: call update(grads, state, params).")
    lr = jax.tree.map(jnp.exp, params)
    g_lr = jax.tree.map(lambda g, r: g / r, grads, lr)
    u_lr, state = tx.update(g_lr, state, lr)
    new_lr = jax.tree.map(lambda r, u: jnp.maximum(r + u, jnp.asarray(min_lr, r.dtype)), lr, u_lr)
    return jax.tree.map(lambda n, p: jnp.log(n) - p, new_lr, params), state

  return optax.GradientTransformation(init, update)


STEP_SIZE_SPACES = ("lr", "log")


class LeafOptimizer(NamedTuple):
  """An optax transformation over the learnable leaves of a ``SyntheticSet`` that also declares them:
  ``leaves`` is the tuple of leaf names it updates (``"images"``, ``"labels"``, ``"log_lr"``), from which
  the loop derives what is learnable."""
  init: Callable
  update: Callable
  leaves: tuple


def optimizer(images: optax.GradientTransformation, labels=None, log_lr=None,
              step_size: str = "lr") -> LeafOptimizer:
  """One optax transformation over the learnable leaves ``{"images", "labels", "log_lr"}``.

  Passing ``labels`` / ``log_lr`` declares those leaves learnable (``Distiller`` derives
  ``learn_labels`` / ``learn_lr`` from it).

  Args:
    images: the images' optimizer (MTT: ``optax.sgd(lr_img, momentum=0.5)``).
    labels: soft labels' optimizer, or None (labels fixed).
    log_lr: the learnable step size's optimizer, or None (step size fixed).
    step_size: how ``log_lr``'s optimizer sees the step size. ``"lr"`` (default): it updates the step
      size itself (``in_lr_space``), as MTT/DATM's original does, so their ``lr_lr`` (1e-5 to 1e-7, SGD
      momentum 0.5) applies unchanged. ``"log"``: it updates ``log_lr`` directly (a smaller, scale-free
      move; close to DD's original, whose step sizes are a softplus of the learned parameters).
  """
  if step_size not in STEP_SIZE_SPACES:
    raise ValueError(f"Unknown step_size {step_size!r}; choose 'lr' (update the step size itself, "
                     f"as MTT) or 'log' (update its log).")
  given = {"images": images, "labels": labels,
           "log_lr": None if log_lr is None else in_lr_space(log_lr) if step_size == "lr" else log_lr}
  txs = {leaf.name: given[leaf.name] for leaf in LEARNABLE_LEAVES if given[leaf.name] is not None}
  tx = optax.multi_transform(txs, lambda params: {k: k for k in params})
  return LeafOptimizer(tx.init, tx.update, tuple(txs))


def learned_leaves(d: "Distiller") -> tuple:
  """The names of the leaves a ``Distiller`` learns (``LEARNABLE_LEAVES`` order): the images, and
  each optional leaf its optimizer declares (``optimizer()``). An explicit flag that contradicts the
  optimizer is refused (a leaf with an optimizer but marked fixed would silently never move; a
  learnable leaf without an optimizer would fail), and so is a leaf the objective never reads
  (``Objective.reads``: DM, DC and IDC read the images only, KIP and FRePo no step size)."""
  declared = getattr(d.tx, "leaves", None)
  out = []
  for leaf in LEARNABLE_LEAVES:
    if leaf.flag is None:
      out.append(leaf.name)
      continue
    flag = getattr(d, leaf.flag)
    if declared is None:
      has = bool(flag)
    else:
      has = leaf.name in declared
      if flag is not None and bool(flag) != has:
        if has:
          raise ValueError(f"The optimizer has a {leaf.name}= optimizer but {leaf.flag}=False: the "
                           f"{leaf.name} would never move. Drop {leaf.flag}=False (it is derived from "
                           f"the optimizer) or the {leaf.name}= optimizer.")
        raise ValueError(f"{leaf.flag}=True but the optimizer has no {leaf.name}= optimizer; pass "
                         f"distill.optimizer(..., {leaf.name}=...).")
    if has:
      reads = getattr(d.objective, "reads", None)
      if reads is not None and leaf.name not in reads:
        raise ValueError(f"The {leaf.name} have an optimizer, but the objective "
                         f"{getattr(d.objective, 'name', '')!r} never reads them (it reads "
                         f"{', '.join(reads)}): they would never move. Drop the {leaf.name}= "
                         f"optimizer.")
      out.append(leaf.name)
  return tuple(out)


def learnable(syn: SyntheticSet, leaves: tuple) -> dict:
  """``{name: value}`` of the leaves of ``syn`` named in ``leaves`` (``learned_leaves``), each checked
  to be what a learned leaf must be."""
  out = {}
  for leaf in LEARNABLE_LEAVES:
    if leaf.name not in leaves:
      continue
    x = getattr(syn, leaf.name)
    if x is None or not jnp.issubdtype(x.dtype, jnp.floating) or \
        (leaf.ndim is not None and x.ndim != leaf.ndim):
      got = "None" if x is None else f"{x.dtype} {tuple(x.shape)}"
      raise ValueError(f"Learning {leaf.name} ({leaf.flag or 'always'}) needs {leaf.what}; got {got}.")
    out[leaf.name] = x
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
  learn_labels: Optional[bool] = None  # None: derived from the optimizer (``optimizer(labels=...)``)
  learn_lr: Optional[bool] = None  # None: derived from the optimizer (``optimizer(log_lr=...)``)
  # project(syn, steps_done) -> syn: applied to the stored parameters after every update (e.g.
  # ``clamp_every``), on the distilled rows only (a mask's frozen rows stay bit-identical); None: none.
  project: Optional[Callable[[SyntheticSet, jax.Array], SyntheticSet]] = None
  # DATM's threshold: a step whose loss exceeds it (or is NaN) leaves the set and the optimizer state
  # as they were (DATM.py steps its optimizers only when grand_loss <= threshold); None: every step
  # updates. The step's ``skipped`` metric is 1 where it held. With several segments per step the
  # threshold applies to their mean loss (DATM: one segment per step).
  loss_threshold: Optional[float] = None


def clamp_every(lo, hi, every: int = 1) -> Callable[[SyntheticSet, jax.Array], SyntheticSet]:
  """A ``Distiller(project=...)`` that clips the stored images to ``[lo, hi]`` whenever the steps done
  are a multiple of ``every``; ``lo`` / ``hi`` are floats or one value per channel (the pixel range
  ``[0, 1]`` in normalized units is ``(0 - mean) / std, (1 - mean) / std``). IDC clamps its images to
  the pixel range before every outer iteration of ``inner_loop`` steps: ``every=inner_loop``."""
  check_positive_int("every", every)
  lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
  if lo.shape != hi.shape or lo.ndim > 1 or not np.all(lo < hi):
    raise ValueError(f"clamp_every needs lo < hi, floats or one per channel; got {lo} and {hi}.")

  def project(syn: SyntheticSet, steps: jax.Array) -> SyntheticSet:
    clipped = jnp.clip(syn.images, lo, hi)
    return syn._replace(images=jnp.where(steps % every == 0, clipped, syn.images))

  return project


def _project(d: Distiller, syn: SyntheticSet, steps: jax.Array) -> SyntheticSet:
  """``d.project`` applied to the distilled rows only: a masked run's frozen rows stay bit-identical."""
  out = d.project(syn, steps)
  if d.mask is None:
    return out
  mask = jnp.asarray(d.mask)
  keep = lambda new, old: jnp.where(mask.reshape(-1, *([1] * (new.ndim - 1))), new, old)
  return out._replace(**{n: keep(getattr(out, n), getattr(syn, n)) for n in ROW_LEAVES})


def init_state(key: jax.Array, syn: SyntheticSet, d: Distiller, mesh=None) -> DistillState:
  """The initial state, replicated over ``mesh`` (default: all devices). ``key`` drives everything
  the run draws."""
  _check_syn(syn)
  partial_updates.check_mask(None if d.mask is None else np.asarray(d.mask), syn.images.shape[0])
  obj_key, run_key = jax.random.split(key)
  # A copy (the step donates the state's buffers) with strong dtypes: a weakly typed leaf such as
  # log_lr=jnp.log(0.01) would otherwise change type after the first update and recompile the step.
  syn = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), syn)
  params = learnable(syn, learned_leaves(d))
  check_descent(d.tx, params)
  state = DistillState(jnp.zeros((), jnp.int32), syn, d.tx.init(params),
                       d.objective.init(obj_key, _training_view(syn, d)), run_key)
  return place(state, mesh)


def check_descent(tx, params: dict) -> None:
  """Refuses an optimizer whose first update of any leaf goes uphill (a negative learning rate): for
  a probe gradient of ones, a descent method's update has a negative sum."""
  probe = jax.tree.map(jnp.ones_like, params)
  with jax.numpy_dtype_promotion("standard"):  # some optax transforms mix int counts and floats
    updates, _ = tx.update(probe, tx.init(params), params)
  for name, u in updates.items():
    if float(jnp.sum(u)) > 0:
      raise ValueError(f"The optimizer of {name!r} moves uphill (its update for a positive gradient is "
                       f"positive): is its learning rate negative? Learning rates must be > 0.")


def place(state: DistillState, mesh=None) -> DistillState:
  """Replicates ``state`` over ``mesh``: the layout the step returns, so it compiles once."""
  mesh = parallel.data_mesh() if mesh is None else mesh
  return parallel.replicate(state, mesh)


def _training_view(syn: SyntheticSet, d: Distiller) -> SyntheticSet:
  syn = syn._replace(**{n: partial_updates.freeze_rows(getattr(syn, n), d.mask) for n in ROW_LEAVES
                        if jnp.issubdtype(getattr(syn, n).dtype, jnp.floating)})
  return d.decode(syn) if d.decode is not None else syn


def step_keys(state: DistillState) -> tuple:
  """``(batch, loss, update)`` keys of this step: ``fold_in(key, step)`` split once per consumer."""
  return tuple(jax.random.split(jax.random.fold_in(state.key, state.step), 3))


def make_step(d: Distiller, mesh=None) -> Callable:
  """``step(state, batch) -> (state, metrics)``, jitted once, state donated, data-parallel over
  ``mesh`` (default: every device)."""
  mesh = parallel.data_mesh() if mesh is None else mesh
  axis = parallel.DATA_AXIS
  leaves = learned_leaves(d)
  tx = partial_updates.masked_rows(d.tx, d.mask)  # frozen rows' updates are exactly zero

  def per_device(params, syn, batch, key, obj_state):
    obj_state = d.objective.prepare(obj_state, batch, axis)

    def loss_fn(p):
      return d.objective.loss(_training_view(_with(syn, p), d), batch, key, obj_state,
                              axis_name=axis)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, aux, grads, obj_state

  def step(state: DistillState, batch):
    _, loss_key, update_key = step_keys(state)
    params = learnable(state.syn, leaves)
    batch_specs = jax.tree.map(lambda x: parallel.batch_spec(x.ndim, d.objective.batch_axis), batch)
    sharded = jax.shard_map(per_device, mesh=mesh,
                            in_specs=(jax.P(), jax.P(), batch_specs, jax.P(), jax.P()),
                            out_specs=(jax.P(), jax.P(), jax.P(), jax.P()))
    loss, aux, grads, obj_state = sharded(params, state.syn, batch, loss_key, state.obj_state)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    syn = _with(state.syn, optax.apply_updates(params, updates))
    if d.project is not None:
      syn = _project(d, syn, state.step + 1)
    skipped = {}
    if d.loss_threshold is not None:
      hold = ~(loss <= d.loss_threshold)  # NaN too: DATM steps only when loss <= threshold
      keep_old = lambda new, old: jnp.where(hold, old, new)
      syn = jax.tree.map(keep_old, syn, state.syn)
      opt_state = jax.tree.map(keep_old, opt_state, state.opt_state)
      skipped = {"skipped": hold.astype(jnp.float32)}
    obj_state = d.objective.update(obj_state, _training_view(syn, d), update_key)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux, **skipped}
    if "log_lr" in leaves:
      metrics["lr"] = jnp.exp(jnp.mean(syn.log_lr))
    metrics.update(health(syn, loss, opt_state, obj_state))
    return DistillState(state.step + 1, syn, opt_state, obj_state, state.key), metrics

  return jax.jit(step, donate_argnums=0)


def health(syn: SyntheticSet, loss: jax.Array, *states) -> dict:
  """Metrics the run checks to stop a diverging or broken run, computed inside the jitted step:
  ``finite`` (1.0 when the loss, images, float labels, log step size and the float leaves of
  ``states`` (the optimizer's and the objective's state) are all finite: an overflowed Adam moment
  or a diverged inner network would otherwise be checkpointed as good) and ``max_abs_image`` (the
  largest image magnitude)."""
  leaves = [loss] + [x for x in (*syn, *jax.tree.leaves(states))
                     if x is not None and jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
  return {"finite": finite.astype(jnp.float32), "max_abs_image": jnp.max(jnp.abs(syn.images))}


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


class Guard(NamedTuple):
  """When ``run`` stops a run that is going wrong, besides NaN/inf anywhere in the loss, the images,
  float labels or the log step size (always checked).

  Attributes:
    image_bound: stop when an image value's magnitude exceeds it. None: ``100 * max(1, max |x0|)``
      for the initial images ``x0`` (images of a healthy run stay within a few times the data's range).
    loss_factor: stop when the loss exceeds ``loss_factor`` times the smallest loss seen so far in
      this process. None: off (some objectives' losses legitimately swing by orders of magnitude).
  """
  image_bound: Optional[float] = None
  loss_factor: Optional[float] = None


class DivergenceError(FloatingPointError):
  """A run stopped by ``run``'s checks (NaN/inf or a ``Guard`` bound); its message names the check, the
  step and the last checkpoint, which was written before the failing step and is left intact."""


def run(key: jax.Array, syn: SyntheticSet, d: Distiller, num_steps: int, *,
        checkpoint_dir: Optional[str] = None, checkpoint_every: int = 100, keep: int = 3,
        config: Optional[dict] = None, logger=None, log_every: int = 10,
        on_images: Optional[Callable[[int, SyntheticSet], None]] = None, image_every: int = 0,
        progress: bool = True, mesh=None, guard: Guard = Guard()) -> tuple:
  """Runs ``num_steps`` distillation steps (resuming from ``checkpoint_dir`` if it holds a run).

  The host reads the step's metrics only every ``log_every`` steps and before each checkpoint (the
  health checks run inside the jitted step), so the devices are not synchronized every step. Nothing is
  saved before the steps that led to it passed the checks.

  Args:
    key: the run's key (with the same key, a resumed run ends bit-identical to an uninterrupted one).
    syn: the initial synthetic set (ignored when resuming).
    d: objective, optimizer, sampler, mask, parameterization.
    num_steps: total steps (including those done before a resume); may grow between resumes.
    checkpoint_dir: orbax checkpoints here every ``checkpoint_every`` steps and at the end, each with a
      checksum of every array, verified on restore (a corrupt latest checkpoint falls back to the newest
      verified one, with a warning naming the step and the array).
    checkpoint_every, keep: save interval and how many checkpoints to keep (both >= 1).
    config: the run's configuration, stored beside the checkpoints and checked on resume. Independently
      of it, the run's identity (key, objective, synthetic-set shapes, mask, learnable leaves, the
      optimizer's first update from a fixed probe gradient, the real data) is stored and a resume
      with another identity is refused with the differences.
    logger: an object with ``write(step, metrics)`` (see ``jaxdistill.logs.MetricLogger``).
    on_images: called as ``on_images(step, decoded_syn)`` every ``image_every`` steps and at the end.
    guard: divergence bounds (``Guard``).

  Returns:
    ``(state, history)``: the final ``DistillState`` and a list of per-step metric dicts.

  Raises:
    DivergenceError: a check failed (NaN/inf, or a ``Guard`` bound); the last checkpoint is intact.
    ValueError: bad arguments, a checkpoint of another run, or ``num_steps`` below the steps done.
  """
  check_positive_int("num_steps", num_steps)
  check_positive_int("checkpoint_every", checkpoint_every)
  check_positive_int("keep", keep)
  check_positive_int("log_every", log_every)
  mesh = parallel.data_mesh() if mesh is None else mesh
  state = init_state(key, syn, d, mesh)
  image_bound = guard.image_bound
  if image_bound is None:
    image_bound = 100.0 * max(1.0, float(jnp.max(jnp.abs(state.syn.images))))
  ckpt = None
  if checkpoint_dir is not None:
    ckpt = ckpt_lib.Checkpointer(checkpoint_dir, config, save_every=checkpoint_every, keep=keep,
                                 identity=run_identity(key, state, d))
    try:  # any refusal below releases the directory's writer lock at once
      if ckpt.latest_step() is not None:
        state = place(ckpt.restore(state), mesh)
      if int(state.step) > num_steps:
        raise ValueError(f"The checkpoint in {ckpt.directory} is at step {int(state.step)}, past "
                         f"num_steps={num_steps}; pass num_steps >= {int(state.step)} (or another "
                         f"checkpoint_dir).")
    except BaseException:
      ckpt.close()
      raise
  start = int(state.step)
  step_fn = make_step(d, mesh)
  sample = make_sample(d, mesh)
  history, pending = [], []
  best = [np.inf]
  bar = _progress(start, num_steps, progress)
  t0 = time.time()

  def flush():
    """Reads the pending steps' metrics (one transfer), checks them, logs them."""
    rows = jax.device_get(pending)
    pending.clear()
    for step, m in rows:
      m = {k: float(v) for k, v in m.items()}
      problem = _problem(m, image_bound, guard.loss_factor, best[0])
      if problem:
        last = ckpt.latest_step() if ckpt else None
        raise DivergenceError(
            f"Stopped at step {step}: {problem}. " +
            (f"The last checkpoint, step {last} in {ckpt.directory} (written before step {step}, "
             f"after its own steps passed these checks, and verified by checksum on restore), is "
             f"intact. The learning rate is part of this run's identity: to go on with a smaller "
             f"one, restore that step's synthetic set (Checkpointer(...).restore) and start a new run "
             f"from it in another checkpoint_dir." if last is not None
             else "No checkpoint was written."))
      best[0] = min(best[0], m["loss"])
      m["step"] = step
      m["sec"] = time.time() - t0
      history.append(m)
      if logger is not None and (step % log_every == 0 or step == num_steps):
        logger.write(step, m)
    if rows:
      bar.set_postfix(loss=f"{history[-1]['loss']:.4g}")

  try:
    with _sigterm_as_interrupt():
      step = start
      while step < num_steps:
        state, metrics = step_fn(state, sample(state))
        step += 1
        pending.append((step, metrics))
        save_due = ckpt is not None and (step % checkpoint_every == 0 or step == num_steps)
        images_due = on_images is not None and image_every and step % image_every == 0
        if save_due or images_due or step % log_every == 0 or step == num_steps:
          flush()
        if images_due:
          on_images(step, _training_view(state.syn, d))
        if save_due:
          ckpt.save(step, state, force=True)
        bar.update(1)
  finally:
    bar.close()
    if ckpt is not None:
      ckpt.close()
  if on_images is not None:
    on_images(int(state.step), _training_view(state.syn, d))
  return state, history


def _problem(m: dict, image_bound: float, loss_factor: Optional[float], best: float) -> str:
  """Which check a step's metrics fail ("" when none)."""
  if m["finite"] < 1.0:
    return (f"the loss ({m['loss']}), the synthetic images, labels or step size, or the optimizer's "
            f"or objective's state are not finite (NaN or inf)")
  if m["max_abs_image"] > image_bound:
    return (f"an image value reached magnitude {m['max_abs_image']:.3g}, above the bound "
            f"{image_bound:.3g} (Guard.image_bound; the images are diverging)")
  if loss_factor is not None and np.isfinite(best) and m["loss"] > loss_factor * max(best, 0.0):
    return (f"the loss {m['loss']:.4g} exceeds {loss_factor:g} times its minimum so far {best:.4g} "
            f"(Guard.loss_factor)")
  return ""


def run_identity(key: jax.Array, state: DistillState, d: Distiller) -> dict:
  """What makes a run this run, JSON-able: resuming a checkpoint written with another identity is
  refused. The optimizer is identified by its first update of the initial learnable leaves for a fixed
  probe gradient (this tells learning rates, momentum and optimizer kind apart)."""
  params = learnable(state.syn, learned_leaves(d))
  probe = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
  with jax.numpy_dtype_promotion("standard"):
    updates, _ = d.tx.update(probe, d.tx.init(params), params)
  sig = lambda x: float(f"{float(x):.6g}")
  arrays = jax.tree.leaves(d.sampler.arrays)
  return {
      "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
      "objective": d.objective.name,
      "synthetic": {k: [list(np.shape(v)), str(np.asarray(v).dtype)]
                    for k, v in state.syn._asdict().items() if v is not None},
      "learnable": sorted(params),
      "mask": None if d.mask is None else _digest(np.asarray(d.mask)),
      "optimizer_probe": {k: [sig(jnp.mean(u)), sig(jnp.std(u))] for k, u in updates.items()},
      "data": [[list(np.shape(a)), _digest(np.asarray(a))] for a in arrays],
      "decode": d.decode is not None,
  }


def _digest(x: np.ndarray) -> str:
  return hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=8).hexdigest()


def _progress(start: int, total: int, enabled: bool):
  return tqdm.tqdm(initial=start, total=total, disable=not enabled, unit="step", dynamic_ncols=True,
                   mininterval=1.0)


def decoded(state: DistillState, d: Distiller) -> SyntheticSet:
  """The training images of the current state (parameterization decoded), gradients stopped."""
  return jax.lax.stop_gradient(_training_view(state.syn, d))
