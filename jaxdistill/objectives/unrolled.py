"""The original dataset distillation (DD; Wang, Zhu, Torralba & Efros, 2018).

Each loss evaluation draws a freshly initialized network (a new key every step: the reference's
``--train_nets_type unknown_init``), trains it on the synthetic set by unrolled SGD, and returns the
cross-entropy of the trained network on a real batch. The gradient flows through the whole unrolled
training into the images, the (optional soft) labels and the learnable step sizes.

Schedule (as the reference's ``get_steps``): the synthetic rows are split into ``unroll_steps`` batches,
one SGD step per batch, and that sequence is repeated ``epochs`` times, ``T = unroll_steps * epochs``
steps in all, each with its own step size ``exp(syn.log_lr[t])`` (``log_lr`` of shape ``[T]``, epoch-major
as the reference's ``raw_distill_lrs``; a scalar is shared by all steps). Batch ``s`` is the rows
``s, s + unroll_steps, s + 2 * unroll_steps, ...``: with class-major rows (``[0]*ipc + [1]*ipc + ...``)
and ``ipc`` a multiple of ``unroll_steps`` every step sees ``ipc / unroll_steps`` images of every class,
the reference's ``distilled_images_per_class_per_step``. ``per_step_batches=False`` uses all rows in every
step instead.

Reference defaults (``SsnL/dataset-distillation``): ``distill_steps`` 10, ``distill_epochs`` 3, one image
per class per step, initial step size ``distill_lr`` 0.02 (stored through a softplus there; here
``log_lr = log(0.02)``), Adam lr 0.01 with betas (0.5, 0.999) on images and step sizes.

Implementation: parameters are one flat vector (``jax.flatten_util.ravel_pytree``) carried through a
``lax.scan`` over the T steps, each step ``jax.checkpoint``-ed (``remat``): memory nearly flat in T.
Use the models' default ``conv_impl="auto"`` ("patches" on CPU) (``lax.conv`` gradients inside ``scan`` are
an order of magnitude slower on XLA's CPU backend).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxdistill.objectives.base import Objective, keep_state, pmean
from jaxdistill.models.nets import as_net
from jaxdistill.objectives.common import cross_entropy, identity_augment, labels_checked_init
from jaxdistill.objectives.trajectory import step_sizes, unroll


def step_rows(n: int, unroll_steps: int, per_step_batches: bool = True) -> jax.Array:
  """``[unroll_steps, B]`` int32 synthetic rows of each step (``B = n / unroll_steps``, or all rows)."""
  if not per_step_batches:
    return jnp.tile(jnp.arange(n, dtype=jnp.int32)[None], (unroll_steps, 1))
  if n % unroll_steps:
    raise ValueError(f"{n} synthetic rows do not split into unroll_steps={unroll_steps} equal batches; "
                     "use a multiple of unroll_steps rows or per_step_batches=False.")
  return jnp.arange(n, dtype=jnp.int32).reshape(n // unroll_steps, unroll_steps).T


def _check_labels(syn, num_classes: int) -> None:
  images, labels = syn.images, syn.labels
  if labels.ndim == 2 and (labels.shape[1] != num_classes
                           or not jnp.issubdtype(labels.dtype, jnp.floating)):
    raise ValueError(f"Soft labels must be float [N, {num_classes}]; got {labels.dtype} "
                     f"{labels.shape}.")
  if labels.ndim == 1 and not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"Hard labels must be [N] int class ids; got {labels.dtype}.")
  if labels.ndim not in (1, 2) or labels.shape[0] != images.shape[0]:
    raise ValueError(f"Labels must be [N] or [N, K] with N = {images.shape[0]}; got {labels.shape}.")


def _unroll(fns, syn, key, unroll_steps: int, epochs: int, per_step_batches: bool, aug,
            remat: bool):
  """DD's training: a fresh network from ``key``, ``unroll_steps * epochs`` SGD steps on the synthetic
  set with the learned step sizes. Returns ``(trained variables, rows of the last step)``."""
  images, labels = syn.images, syn.labels
  total = unroll_steps * epochs
  lrs = step_sizes(syn.log_lr, total, "dataset_distillation", "unroll_steps * epochs")
  rows = jnp.tile(step_rows(images.shape[0], unroll_steps, per_step_batches), (epochs, 1))
  net_key, aug_key = jax.random.split(key)
  variables = fns.init(net_key, images[:1])
  rest = {k: v for k, v in variables.items() if k != "params"}
  theta0, unravel = ravel_pytree(variables["params"])
  apply_flat = lambda th, x: fns.apply({**rest, "params": unravel(th)}, x)
  theta = unroll(apply_flat, theta0, images, labels, lrs, rows, jax.random.split(aug_key, total), aug,
                 remat)
  return {**rest, "params": unravel(theta)}, rows[-1]


def dd_train(net, syn, key: jax.Array, unroll_steps: int, epochs: int = 1,
             per_step_batches: bool = True, augment: Optional[Callable] = None,
             num_classes: Optional[int] = None):
  """DD's own training procedure, the one its images are distilled for: a fresh network (``key``)
  trained by the ``unroll_steps * epochs`` SGD steps with the learned step sizes ``exp(syn.log_lr)``.
  With the same ``key`` it is the network that ``dataset_distillation(...).loss`` scores on the real
  batch. Returns the trained Flax variables (evaluate with ``jaxdistill.evaluate.predict``)."""
  if unroll_steps < 1 or epochs < 1:
    raise ValueError(f"unroll_steps and epochs must be >= 1; got {unroll_steps} and {epochs}.")
  k = num_classes if num_classes is not None else (
      syn.labels.shape[1] if syn.labels.ndim == 2 else None)
  if k is not None:
    _check_labels(syn, k)
  variables, _ = _unroll(as_net(net), syn, key, unroll_steps, epochs, per_step_batches,
                         augment or identity_augment, remat=False)
  return variables


def dataset_distillation(net, num_classes: int, unroll_steps: int, epochs: int = 1,
                         per_step_batches: bool = True, augment: Optional[Callable] = None,
                         remat: bool = True) -> Objective:
  """The DD objective.

  Args:
    net: any model ``jaxdistill.models.adapt`` accepts, or ``NetFns``.
    num_classes: K (checked against soft labels).
    unroll_steps: distinct SGD steps (synthetic batches) per epoch (reference: 10).
    epochs: passes over those steps (reference: 3).
    per_step_batches: one synthetic batch per step (reference) or all rows every step.
    augment: ``(key, x) -> x`` applied to each step's batch with its own key; None: none.
    remat: ``jax.checkpoint`` every unrolled step.

  The synthetic set needs ``log_lr`` (``[unroll_steps * epochs]`` or scalar; distill with
  ``learn_lr=True``); labels ``[N]`` int or ``[N, K]`` float logits (``learn_labels=True``). The batch:
  ``{"images": [B, ...], "labels": [B]}`` (``distill.random_sampler``), split over devices along B (every
  device unrolls the same network; the final cross-entropy is ``pmean``-ed). Aux: ``syn_loss``, the
  cross-entropy of the trained network on the synthetic set (its last step's batch). ``dd_train``
  runs the same training on its own (DD's evaluation).
  """
  if unroll_steps < 1 or epochs < 1:
    raise ValueError(f"unroll_steps and epochs must be >= 1; got {unroll_steps} and {epochs}.")
  fns = as_net(net)
  aug = augment or identity_augment

  def loss(syn, batch, key, state, axis_name=None):
    _check_labels(syn, num_classes)
    if "images" not in batch or "labels" not in batch:
      raise ValueError(f"The batch must be {{'images', 'labels'}} (distill.random_sampler); got keys "
                       f"{sorted(batch)}.")
    if batch["labels"].ndim != 1:
      raise ValueError(f"The batch labels must be [B] int; got shape {batch['labels'].shape}.")
    variables, last = _unroll(fns, syn, key, unroll_steps, epochs, per_step_batches, aug, remat)
    value = pmean(cross_entropy(fns.apply(variables, batch["images"]), batch["labels"]), axis_name)
    frozen = jax.lax.stop_gradient(variables)
    syn_loss = cross_entropy(fns.apply(frozen, syn.images[last]), syn.labels[last])
    return value, {"syn_loss": jax.lax.stop_gradient(syn_loss)}

  return Objective(labels_checked_init(num_classes), loss, keep_state, batch_axis=0, name="dd")
