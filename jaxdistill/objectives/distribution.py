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

from jaxdistill.objectives.base import Objective, keep_state, no_state, pmean
from jaxdistill.objectives.nets import as_net, class_major, identity_augment


def distribution_matching(net, num_classes: int, augment: Optional[Callable] = None) -> Objective:
  """The DM objective.

  Args:
    net: a Flax module (``jaxdistill.models``-style) or ``NetFns`` (``init``/``apply``/``embed``).
    num_classes: K; the synthetic rows must be class-major with equal counts.
    augment: ``(key, x) -> x`` applied siamese-style (one key per class for real and synthetic);
      e.g. ``jaxdistill.augment.get_augment("dsa", siamese=True)``. None: no augmentation.

  The batch is ``{"images": [K, P, H, W, C]}`` (``distill.class_balanced_sampler``), split over devices
  along P.
  """
  fns = as_net(net)
  aug = augment or identity_augment

  def loss(syn, batch, key, state, axis_name=None):
    net_key, aug_key = jax.random.split(key)
    real = batch["images"]
    variables = fns.init(net_key, real[0])
    syn_c = class_major(syn.images, num_classes)
    keys = jax.random.split(aug_key, num_classes)

    def class_means(k, xr, xs):
      fr = fns.embed(variables, aug(k, xr)).mean(0)
      fs = fns.embed(variables, aug(k, xs)).mean(0)
      return jax.lax.stop_gradient(fr), fs

    real_means, syn_means = jax.vmap(class_means)(keys, real, syn_c)
    real_means = pmean(real_means, axis_name)  # equal shards: the global per-class mean
    value = jnp.sum(jnp.square(real_means - syn_means))
    return value, {}

  return Objective(no_state, loss, keep_state, batch_axis=1, name="dm")
