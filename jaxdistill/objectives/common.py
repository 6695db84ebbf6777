"""Helpers the objectives share: class-major layout, its check, cross-entropy with hard or soft labels."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill.checks import check_label_range


def class_major(images: jax.Array, num_classes: int) -> jax.Array:
  """``[N, ...]`` rows ordered class-major with equal counts -> ``[K, N // K, ...]``."""
  n = images.shape[0]
  if n % num_classes:
    raise ValueError(f"{n} synthetic rows do not split into {num_classes} equal classes.")
  return images.reshape(num_classes, n // num_classes, *images.shape[1:])


def labels_checked_init(num_classes: int):
  """``init(key, syn) -> ()`` of a stateless objective, refusing out-of-range synthetic labels."""
  def init(key, syn):
    del key
    check_label_range(syn.labels, num_classes, "synthetic")
    return ()
  return init


def check_per_class_batch(real, num_classes: int) -> None:
  """Raises unless the real batch ``[classes, per_class, ...]`` holds ``num_classes`` classes (a
  sampler of another dataset would otherwise fail deep inside the per-class loop)."""
  if real.ndim < 2 or real.shape[0] != num_classes:
    raise ValueError(f"The real batch holds {real.shape[0] if real.ndim else 0} classes (shape "
                     f"{real.shape}, [classes, per_class, H, W, C]) but the objective was built for "
                     f"num_classes={num_classes}.")


def check_class_major(labels, num_classes: int) -> None:
  """Raises unless hard ``labels`` are ``[0]*ipc + [1]*ipc + ...`` (what the per-class objectives
  and every jaxdistill initializer produce)."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    labels = labels.argmax(-1)
  n = labels.shape[0]
  if n % num_classes or not np.array_equal(labels, np.repeat(np.arange(num_classes), n // num_classes)):
    raise ValueError("Per-class objectives need the synthetic rows ordered class-major with the same "
                     f"number per class (labels 0,..,0,1,..,1,...,{num_classes - 1}); got labels "
                     f"{labels[:20].tolist()}{'...' if n > 20 else ''}.")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy: ``labels`` ``[B]`` int (hard) or ``[B, K]`` float logits (soft: targets are
  ``softmax(labels)``, as DATM's ``SoftCrossEntropy``)."""
  if labels.ndim == 1:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  return jnp.mean(optax.softmax_cross_entropy(logits, jax.nn.softmax(labels, axis=-1)))


def identity_augment(key, x):
  return x
