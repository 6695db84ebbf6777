"""Trajectory matching: MTT (Cazenavette et al., CVPR 2022) and DATM (Guo et al., ICLR 2024).

A segment of an expert trajectory, the parameters ``theta*_t`` after epoch ``t`` and ``theta*_{t+M}``
after ``M = expert_epochs`` more, is the real "batch". Starting from ``theta*_t``, a student takes
``syn_steps`` SGD steps on minibatches of the synthetic set (step size ``exp(syn.log_lr)``, learnable),
and the loss is how far it lands from the expert, relative to how far the expert moved:

    ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

(the reference divides both by the parameter count, which cancels). The gradient flows through the
whole unrolled training into the images, the (soft) labels and the step size.

Implementation: parameters are one flat vector (``ravel_pytree``) carried through a ``lax.scan`` over
the student's steps; each step draws ``batch_syn`` rows from a fresh random permutation of the
synthetic set (a new permutation every ``N / batch_syn`` steps, as the reference's ``randperm`` chunks),
augments them with its own key (the reference's ``DiffAugment`` with ``seed=-1``: one op per call,
per-image parameters, i.e. ``get_augment("dsa", siamese=False)``), and takes one SGD step of the
cross-entropy on hard labels or on soft labels (``[N, K]`` float logits; targets ``softmax(labels)``,
DATM). With ``remat=True`` (default) each step is wrapped in ``jax.checkpoint``: the backward pass
recomputes a step's activations instead of storing them for all steps, so memory is nearly flat in
``syn_steps`` (at width 128 and 20 steps, several times less than storing every step) at about the same
speed. Use the models' default ``conv_impl="auto"`` ("patches" on CPU): ``lax.conv`` gradients inside ``scan`` are
an order of magnitude slower on XLA's CPU backend.

Which segment: ``trajectory_sampler`` (a ``distill.Sampler``) draws an expert uniformly and a start
epoch ``t`` uniformly in ``[min_start_epoch, upper)``; ``upper`` is ``max_start_epoch`` (MTT) or grows
linearly with the distillation step from ``initial_max_start_epoch`` to ``max_start_epoch`` over
``expansion_steps`` steps (DATM's "sequential generation": easy, early segments first). The sampler
receives the loop's step (``Sampler.uses_step``), so the schedule is a pure function of the state and a
resumed run draws the same segments. The objective itself never sees epochs: it matches whatever
``{"start", "target"}`` the batch holds.

Data parallelism: the batch is ``{"start": [D, P], "target": [D, P], ...}`` with ``D = segments`` per
step (default 1), split over devices along axis 0 (so ``D`` must be a multiple of the device count).
Each device matches its own segments (segment ``g`` of the step uses ``fold_in(key, g)``, so the result
does not depend on the number of devices) and the mean loss is ``pmean``-ed.
"""
from __future__ import annotations

import inspect

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxdistill import training
from jaxdistill.checks import check_positive_int
from jaxdistill.data.sampling import Sampler
from jaxdistill.objectives.base import Objective, keep_state, pmean
from jaxdistill.models.nets import as_net
from jaxdistill.objectives.common import cross_entropy, identity_augment, labels_checked_init
from jaxdistill.partial_updates import route_augment


def minibatch_indices(key: jax.Array, n: int, batch_syn: int, syn_steps: int) -> jax.Array:
  """Rows of the synthetic set used by each student step: ``[syn_steps, batch_syn]`` int32.

  Consecutive chunks of random permutations of ``range(n)``: every ``n // batch_syn`` steps a new
  permutation, so within one permutation every row is used once.
  """
  if n % batch_syn:
    raise ValueError(f"batch_syn={batch_syn} does not divide the {n} synthetic rows; choose a "
                     f"divisor of {n} (the default, None, uses all rows every step).")
  per = n // batch_syn
  num_perms = -(-syn_steps // per)
  perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, num_perms))
  return perms.reshape(num_perms * per, batch_syn)[:syn_steps].astype(jnp.int32)


def segment_key(key: jax.Array, index) -> tuple:
  """``(permutation_key, augmentation_key)`` of the step's segment number ``index``."""
  k = jax.random.fold_in(key, index)
  perm_key, aug_key = jax.random.split(k)
  return perm_key, aug_key


def _varying(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Marks ``x`` as varying over ``axis_name`` inside ``shard_map``.

  Works around JAX 0.10.2 typing the output of a sort with an ``iota`` operand (``random.permutation``,
  ``argsort``) as device-invariant even when the sort keys vary: the forward values are right, but the
  gradient through ``images[perm]`` then uses one device's permutation for all (checked by the
  two-device test in tests/test_trajectory.py).
  """
  if axis_name is None or axis_name in getattr(jax.typeof(x), "vma", frozenset()):
    return x
  return jax.lax.pcast(x, axis_name, to="varying")


def step_sizes(log_lr: Optional[jax.Array], num_steps: int, who: str = "trajectory_matching",
               steps_name: str = "syn_steps") -> jax.Array:
  """``[num_steps]`` student step sizes ``exp(log_lr)`` from a scalar or per-step ``[num_steps]``.

  ``who`` and ``steps_name`` name the caller and its step count in error messages.
  """
  if log_lr is None:
    raise ValueError(f"{who} needs learnable step sizes: a SyntheticSet with log_lr set, a scalar or "
                     f"[{steps_name}] = [{num_steps}] (the references initialize it to log(0.01) for "
                     f"MTT, the experts' learning rate, and log(0.02) for DD).")
  log_lr = jnp.asarray(log_lr)
  if log_lr.size == 1:
    return jnp.broadcast_to(jnp.exp(log_lr.reshape(())), (num_steps,))
  if log_lr.shape != (num_steps,):
    raise ValueError(f"log_lr must be a scalar or [{steps_name}] = [{num_steps}]; got shape "
                     f"{log_lr.shape}.")
  return jnp.exp(log_lr)


def flat_net(net, image_shape: Sequence[int]) -> tuple:
  """``(apply_flat, num_params)``: ``apply_flat(theta [P], x) -> logits`` in training mode.

  The parameter layout is that of ``ravel_pytree(variables["params"])``, the layout ``experts`` saves.
  Other collections (BatchNorm running statistics) are zeros and unused: training mode normalizes with
  the batch's statistics (the reference stores only ``parameters()`` too).
  """
  fns = as_net(net)
  shapes = jax.eval_shape(fns.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  template, unravel = ravel_pytree(zeros["params"])
  rest = {k: v for k, v in zeros.items() if k != "params"}

  def apply_flat(theta, x, key=None):
    return fns.apply({**rest, "params": unravel(theta)}, x, key=key)

  return apply_flat, int(template.shape[0])


def unroll(apply_flat: Callable, theta: jax.Array, images: jax.Array, labels: jax.Array,
           lrs: jax.Array, idx: jax.Array, aug_keys: jax.Array,
           augment: Any = identity_augment, remat: bool = True,
           groups: Optional[jax.Array] = None, scan_unroll: int = 1) -> jax.Array:
  """``len(lrs)`` SGD steps of the student on synthetic minibatches; returns the final ``[P]``.

  Args:
    apply_flat: ``(theta [P], x [B, H, W, C]) -> logits [B, K]``.
    theta: ``[P]`` starting parameters.
    images: ``[N, H, W, C]``; labels: ``[N]`` int or ``[N, K]`` float logits.
    lrs: ``[S]`` step sizes; idx: ``[S, B]`` rows per step; aug_keys: ``[S]`` keys.
    augment: ``(key, x) -> x``, or a tuple of them routed by ``groups`` (``partial_updates.route_augment``).
    remat: ``jax.checkpoint`` each step (memory nearly flat in ``S``).
    groups: ``[N]`` int row groups for a tuple ``augment``.
    scan_unroll: student steps per iteration of the ``lax.scan`` (``unroll=``); the same values.
  """
  check_positive_int("scan_unroll", scan_unroll)
  try:
    takes_key = "key" in inspect.signature(apply_flat).parameters
  except (TypeError, ValueError):
    takes_key = False

  def step(theta, inp):
    rows, k, lr = inp
    x = route_augment(augment, k, images[rows], None if groups is None else groups[rows])
    # A dropout key (networks with dropout; the augmentation's key unchanged) where apply_flat takes one.
    kw = {"key": jax.random.fold_in(k, training.DROPOUT_FOLD)} if takes_key else {}
    g = jax.grad(lambda th: cross_entropy(apply_flat(th, x, **kw), labels[rows]))(theta)
    return theta - lr * g, None

  if remat:
    # prevent_cse=False is safe only while the steps stay inside a loop: unrolled, XLA's CSE could merge
    # the recomputation with the forward pass and the remat would be lost.
    step = jax.checkpoint(step, prevent_cse=scan_unroll > 1)
  theta, _ = jax.lax.scan(step, theta, (idx, aug_keys, lrs), unroll=scan_unroll)
  return theta


def trajectory_matching(net, num_classes: int, syn_steps: int, batch_syn: Optional[int] = None,
                        augment: Optional[Any] = None, remat: bool = True,
                        groups: Optional[Any] = None, scan_unroll: int = 1) -> Objective:
  """The MTT / DATM objective.

  Args:
    net: any model ``jaxdistill.models.adapt`` accepts, or ``NetFns``; the experts' architecture.
    num_classes: K (checked against soft labels).
    syn_steps: student SGD steps per segment (reference: 20-80).
    batch_syn: synthetic rows per step; must divide N; None: all N rows (the reference's default).
    augment: ``(key, x) -> x`` per student step, e.g. ``get_augment("dsa", dataset_name=...,
      siamese=False)``; None: no augmentation.
    remat: checkpoint each student step (default on: memory ~flat in ``syn_steps``, same speed).
    groups: ``[N]`` int row groups when ``augment`` is a tuple, e.g. SelMatch's combined augmentation
      inside the unroll: ``augment=(dsa, crop_flip)``, ``groups=partial_updates.augment_groups(mask)`` (DSA on
      the distilled rows, crop+flip on the frozen ones; the reference uses DSA on every row here).
    scan_unroll: student steps per iteration of the unroll's ``lax.scan`` (``syn_steps``: no loop); the
      same values and gradients, another speed / compile-time trade-off.

  The synthetic set needs ``log_lr`` (scalar, or ``[syn_steps]`` per step); distill with
  ``Distiller(..., learn_lr=True)`` to learn it (reference: SGD lr_lr 1e-5-1e-7, momentum 0.5) and
  ``learn_labels=True`` for DATM's soft labels. The batch comes from ``trajectory_sampler``:
  ``{"start": [D, P], "target": [D, P]}`` (+ ``"start_epoch"``, ``"expert"`` ``[D]`` reported as
  metrics), split over devices along axis 0.

  The loss's aux: ``start_epoch`` (mean over the step's segments, when the batch has it) and
  ``expert_distance`` (``||theta*_t - theta*_{t+M}||^2``, mean).
  """
  if syn_steps < 1:
    raise ValueError(f"syn_steps must be >= 1; got {syn_steps}.")
  check_positive_int("scan_unroll", scan_unroll)
  if batch_syn is not None and batch_syn < 1:
    raise ValueError(f"batch_syn must be >= 1 (or None for all rows); got {batch_syn}.")
  aug = augment or identity_augment
  if isinstance(aug, (tuple, list)):
    aug = tuple(aug)
    if len(aug) > 1 and groups is None:
      raise ValueError(f"augment has {len(aug)} functions: pass groups=[N] row groups "
                       f"(e.g. partial_updates.augment_groups(mask)).")
  if groups is not None:
    groups = jnp.asarray(groups, jnp.int32)
    if groups.ndim != 1:
      raise ValueError(f"groups must be [N] int; got shape {groups.shape}.")
    num_augs = len(aug) if isinstance(aug, tuple) else 1
    if int(groups.min()) < 0 or int(groups.max()) >= num_augs:
      raise ValueError(f"groups must lie in [0, {num_augs}) for {num_augs} augmentation(s); got "
                       f"values in [{int(groups.min())}, {int(groups.max())}].")

  def loss(syn, batch, key, state, axis_name=None):
    images, labels = syn.images, syn.labels
    n = images.shape[0]
    if groups is not None and groups.shape[0] != n:
      raise ValueError(f"groups has {groups.shape[0]} rows but the synthetic set has {n}.")
    bs = n if batch_syn is None else batch_syn
    if bs > n:
      raise ValueError(f"batch_syn={bs} is larger than the synthetic set ({n} rows).")
    if labels.ndim == 2 and labels.shape[1] != num_classes:
      raise ValueError(f"Soft labels must be [N, {num_classes}]; got {labels.shape}.")
    if labels.ndim == 2 and not jnp.issubdtype(labels.dtype, jnp.floating):
      raise ValueError(f"Soft labels must be float logits; got {labels.dtype}.")
    if labels.ndim == 1 and not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"Hard labels must be int class ids; got {labels.dtype}.")
    lrs = step_sizes(syn.log_lr, syn_steps)
    apply_flat, num_params = flat_net(net, images.shape[1:])
    start, target = batch["start"], batch["target"]
    if start.ndim != 2 or start.shape != target.shape:
      raise ValueError(f"The batch's start/target must both be [segments, P]; got {start.shape} and "
                       f"{target.shape}.")
    if start.shape[1] != num_params:
      raise ValueError(f"The expert parameters have {start.shape[1]} entries but the network has "
                       f"{num_params}: the trajectories were trained with another architecture.")
    local = start.shape[0]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local

    def one(j, theta0, theta_target):
      perm_key, aug_key = segment_key(key, offset + j)
      idx = _varying(minibatch_indices(perm_key, n, bs, syn_steps), axis_name)
      theta = unroll(apply_flat, theta0, images, labels, lrs, idx,
                     jax.random.split(aug_key, syn_steps), aug, remat, groups, scan_unroll)
      dist = jnp.sum(jnp.square(theta0 - theta_target))
      return jnp.sum(jnp.square(theta - theta_target)) / dist, dist

    if local == 1:
      losses, dists = jax.tree.map(lambda a: a[None], one(0, start[0], target[0]))
    else:
      losses, dists = jax.lax.map(lambda a: one(*a), (jnp.arange(local), start, target))
    aux = {"expert_distance": pmean(jnp.mean(dists), axis_name)}
    if "start_epoch" in batch:
      aux["start_epoch"] = pmean(jnp.mean(batch["start_epoch"].astype(jnp.float32)), axis_name)
    return pmean(jnp.mean(losses), axis_name), aux

  return Objective(labels_checked_init(num_classes), loss, keep_state, batch_axis=0, name="mtt")


def start_epoch_upper(step, max_start_epoch: int, initial_max_start_epoch: Optional[int] = None,
                      expansion_steps: Optional[int] = None):
  """The exclusive upper bound of the start epoch at distillation ``step`` (int32, jittable).

  MTT: ``max_start_epoch``. DATM: ``min(max_start_epoch, initial + (max_start_epoch - initial) * step //
  expansion_steps)``, i.e. linear growth from ``initial_max_start_epoch`` to ``max_start_epoch`` over
  ``expansion_steps`` steps (DATM's ``current_max_start_epoch`` / ``expansion_end_epoch``).
  """
  if initial_max_start_epoch is None:
    return jnp.asarray(max_start_epoch, jnp.int32)
  step = jnp.asarray(step, jnp.int32)
  grown = initial_max_start_epoch + (max_start_epoch - initial_max_start_epoch) * step // expansion_steps
  return jnp.minimum(grown, max_start_epoch).astype(jnp.int32)


def trajectory_sampler(trajectories, expert_epochs: int, max_start_epoch: int,
                       min_start_epoch: int = 0, segments: int = 1,
                       initial_max_start_epoch: Optional[int] = None,
                       expansion_steps: Optional[int] = None):
  """A ``distill.Sampler`` of expert segments from ``experts.Trajectories``.

  Each step draws ``segments`` (expert, start epoch) pairs: the expert uniformly, the start epoch ``t``
  uniformly in ``[min_start_epoch, start_epoch_upper(step))`` (the reference's
  ``randint(0, max_start_epoch)``), and returns ``{"start": params[e, t], "target": params[e, t + M],
  "start_epoch": t, "expert": e}`` with leading axis ``segments``.

  Args:
    trajectories: ``jaxdistill.experts.Trajectories`` (``params`` ``[X, E + 1, P]``).
    expert_epochs: M (reference 2-3).
    max_start_epoch: start epochs stay below it (reference 2-40).
    min_start_epoch: the smallest start epoch.
    segments: segments per step (D); a multiple of the device count under data parallelism.
    initial_max_start_epoch, expansion_steps: DATM's growing bound (both or neither).

  Only epochs ``0..max_start_epoch - 1 + expert_epochs`` are put on the device.

  Raises:
    ValueError: too few epochs for ``max_start_epoch`` and ``expert_epochs``; inconsistent bounds.
  """
  trajectories.check_epochs(max_start_epoch, expert_epochs)
  if not 0 <= min_start_epoch < max_start_epoch:
    raise ValueError(f"Need 0 <= min_start_epoch < max_start_epoch; got {min_start_epoch} and "
                     f"{max_start_epoch}.")
  if segments < 1:
    raise ValueError(f"segments must be >= 1; got {segments}.")
  if (initial_max_start_epoch is None) != (expansion_steps is None):
    raise ValueError("Give both initial_max_start_epoch and expansion_steps (DATM) or neither (MTT).")
  if initial_max_start_epoch is not None:
    if not min_start_epoch < initial_max_start_epoch <= max_start_epoch:
      raise ValueError(f"Need min_start_epoch < initial_max_start_epoch <= max_start_epoch; got "
                       f"{min_start_epoch}, {initial_max_start_epoch}, {max_start_epoch}.")
    if expansion_steps < 1:
      raise ValueError(f"expansion_steps must be >= 1; got {expansion_steps}.")
  params = np.asarray(trajectories.params)[:, :max_start_epoch + expert_epochs]
  arrays = {"params": jnp.asarray(params, jnp.float32)}
  num_experts = params.shape[0]

  def fn(key, a, step=0):
    ke, kt = jax.random.split(key)
    expert = jax.random.randint(ke, (segments,), 0, num_experts, dtype=jnp.int32)
    upper = start_epoch_upper(step, max_start_epoch, initial_max_start_epoch, expansion_steps)
    t = jax.random.randint(kt, (segments,), min_start_epoch, upper, dtype=jnp.int32)
    return {"start": a["params"][expert, t], "target": a["params"][expert, t + expert_epochs],
            "start_epoch": t, "expert": expert}

  return Sampler(fn, arrays, uses_step=initial_max_start_epoch is not None)


def soft_labels_from_experts(apply_fn: Callable, params: Any, images, labels=None,
                             batch_size: int = 1000) -> jax.Array:
  """DATM's soft-label initialization: expert logits on the synthetic images, ``[N, K]`` float32.

  Args:
    apply_fn: ``apply_fn(params, x [B, H, W, C]) -> logits [B, K]``, e.g.
      ``lambda p, x: model.apply({"params": p}, x, train=False)``.
    params: one network's parameters, or a list of them (DATM: every expert at one epoch, e.g.
      ``[traj.params_at(i, 20) for i in range(traj.num_experts)]``).
    images: ``[N, H, W, C]`` (DATM initializes them with correctly classified real images).
    labels: optional ``[N]`` int classes: each row averages the logits of only the networks that
      classify it correctly (DATM); rows no network gets right average all networks.
    batch_size: rows per forward pass.

  Returns:
    ``[N, K]`` float32 logits, to use as ``SyntheticSet.labels`` (learnable with ``learn_labels``).
  """
  nets = list(params) if isinstance(params, (list, tuple)) else [params]
  if not nets:
    raise ValueError("soft_labels_from_experts needs at least one network.")
  images = jnp.asarray(images, jnp.float32)
  fwd = jax.jit(apply_fn)
  dummy = jnp.zeros((images.shape[0],), jnp.int32)
  logits = np.stack([training.batched_apply(lambda x, _, p=p: fwd(p, x), images, dummy, batch_size) for p in nets])
  logits = logits.astype(np.float32)  # [M, N, K]
  if labels is None:
    return jnp.asarray(logits.mean(0))
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],):
    raise ValueError(f"labels must be [N={images.shape[0]}]; got {labels.shape}.")
  right = (logits.argmax(-1) == labels[None]).astype(np.float32)  # [M, N]
  count = right.sum(0)
  mean_right = (logits * right[..., None]).sum(0) / np.maximum(count, 1.0)[:, None]
  return jnp.asarray(np.where(count[:, None] > 0, mean_right, logits.mean(0)))
