"""Distribution matching (DM; Zhao & Bilen, WACV 2023).

Each step draws a freshly initialized network and matches, class by class, the mean embedding of a real
batch and of the synthetic images of that class, both under the same (siamese) DSA transform:
``sum_c || mean f(A(x_real_c)) - mean f(A(x_syn_c)) ||^2``. Reference hyperparameters: SGD on images with
lr 1, momentum 0.5; 256 real images per class.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxdistill import training
from jaxdistill.augment import check_siamese, map_groups
from jaxdistill.objectives.base import Objective, keep_state, pmean
from jaxdistill.models.layers import prefer_conv
from jaxdistill.models.nets import as_net, has_state
from jaxdistill.objectives.common import (check_class_major, check_per_class_batch, class_major,
                                          identity_augment)


def distribution_matching(net, num_classes: int, augment: Optional[Callable] = None,
                          microbatch="auto", remat_syn: bool = False) -> Objective:
  """The DM objective.

  Args:
    net: any model ``jaxdistill.models.adapt`` accepts (it needs features), or ``NetFns``.
    num_classes: K; the synthetic rows must be class-major with equal counts.
    augment: ``(key, x) -> x`` applied siamese-style (one key per class for real and synthetic);
      e.g. ``jaxdistill.augment.get_augment("dsa", siamese=True)``. None: no augmentation.
    microbatch: real images embedded at once within a class (``training.resolve_microbatch``: "auto"
      is 32 on CPU, the whole class on accelerators; 0: the whole class); the same means up to float
      rounding. BatchNorm networks embed all real images in one batch regardless.
    remat_syn: embed the synthetic images class by class and recompute each class's activations in
      the backward pass (``jax.checkpoint``), so that one class's activations are in memory instead of
      all classes': the same means and gradient up to float rounding, for large synthetic sets. Off by
      default: at IPC 10 on a 2-core CPU it cut a width-128 DM step's peak memory from ~0.83 to
      ~0.6 GB and made it ~6-18% slower. Not for BatchNorm networks (their statistics cover the whole
      synthetic batch).

  The batch is ``{"images": [K, P, H, W, C]}`` (``distill.class_balanced_sampler``), split over devices
  along P. The synthetic images of all classes go through the network as one batch. So do the real ones
  when the network keeps running statistics (state besides ``params`` in its variables: BatchNorm, whose
  statistics then cover all classes, as the reference's; under data parallelism each device's shard,
  as PyTorch's DataParallel). Otherwise every image's embedding is its own, and the real images go
  class by class (``lax.map``), each class in pieces of ``microbatch`` images: the same means, with one
  piece's activations in memory instead of all.
  """
  # No gradient flows through a loop here: XLA's own convolution is faster and leaner than the
  # "patches" one that "auto" picks on CPU for unrolled training.
  fns = as_net(prefer_conv(net, "lax"))
  check_siamese(augment, "distribution_matching")
  aug = augment or identity_augment

  def init(key, syn):
    check_class_major(syn.labels, num_classes)
    return ()

  def syn_class_means(variables, syn_aug, ipc, drop_key):
    """``[K, D]`` mean embedding of each class's synthetic images."""
    if not remat_syn:
      return fns.embed(variables, syn_aug, key=drop_key).reshape(num_classes, ipc, -1).mean(1)
    if has_state(variables):
      raise ValueError("remat_syn embeds the synthetic images class by class; a BatchNorm network's "
                       "statistics would then cover one class instead of the whole synthetic batch. "
                       "Use remat_syn=False with BatchNorm networks.")
    return jax.lax.map(jax.checkpoint(lambda x: fns.embed(variables, x, key=drop_key).mean(0)),
                       syn_aug.reshape(num_classes, ipc, *syn_aug.shape[1:]))

  def loss(syn, batch, key, state, axis_name=None):
    net_key, aug_key = jax.random.split(key)
    real = batch["images"]
    check_per_class_batch(real, num_classes)
    num_real = real.shape[1]
    variables = fns.init(net_key, real[0])
    # Dropout keys (networks with dropout only), folded from the network's key: the others unchanged.
    real_drop, syn_drop = (jax.random.fold_in(net_key, training.DROPOUT_FOLD + i) for i in (0, 1))
    syn_c = class_major(syn.images, num_classes)
    ipc = syn_c.shape[1]
    keys = jax.random.split(aug_key, num_classes)
    # One (siamese) augmentation per class. Real images: all classes in one batch with BatchNorm (its
    # statistics cover all classes, as the reference's), else class by class, as the reference.
    real_aug = map_groups(aug, keys, real)
    syn_aug = map_groups(aug, keys, syn_c).reshape(num_classes * ipc, *syn_c.shape[2:])
    if has_state(variables):
      fr = fns.embed(variables, real_aug.reshape(num_classes * num_real, *real.shape[2:]),
                     key=real_drop)
      real_means = fr.reshape(num_classes, num_real, -1).mean(1)
    else:
      rows = training.piece_size(num_real, microbatch)
      pieces = real_aug.reshape(num_classes, num_real // rows, rows, *real.shape[2:])
      embed_sum = lambda x: fns.embed(variables, x, key=real_drop).sum(0)
      real_means = jax.lax.map(lambda xc: jax.lax.map(embed_sum, xc).sum(0) / num_real, pieces)
    real_means = jax.lax.stop_gradient(real_means)
    syn_means = syn_class_means(variables, syn_aug, ipc, syn_drop)
    real_means = pmean(real_means, axis_name)  # equal shards: the global per-class mean
    value = jnp.sum(jnp.square(real_means - syn_means))
    return value, {}

  return Objective(init, loss, keep_state, batch_axis=1, name="dm", reads=("images",))
