"""Class-indexed sampling driven by explicit PRNG keys."""
from __future__ import annotations

import jax
import numpy as np


def class_indices(labels, num_classes: int) -> list:
  """``num_classes`` int arrays: the positions of each class in ``labels`` (ascending)."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}); got range [{labels.min()}, "
                     f"{labels.max()}].")
  return [np.flatnonzero(labels == c) for c in range(num_classes)]


def sample_balanced(key: jax.Array, labels, num_classes: int, per_class: int) -> np.ndarray:
  """``[num_classes * per_class]`` indices, ``per_class`` distinct random ones per class, class-major.

  Raises:
    ValueError: if ``per_class`` is below 1 or larger than the smallest class.
  """
  if per_class < 1:
    raise ValueError(f"per_class must be >= 1; got {per_class}.")
  per = class_indices(labels, num_classes)
  for c, idx in enumerate(per):
    if idx.size < per_class:
      raise ValueError(f"per_class={per_class} is larger than class {c}, which has {idx.size} images.")
  keys = jax.random.split(key, num_classes)
  return np.concatenate([idx[np.asarray(jax.random.choice(k, idx.size, (per_class,), replace=False))]
                         for k, idx in zip(keys, per)])


def subset_per_class(key: jax.Array, images, labels, num_classes: int, per_class: int) -> tuple:
  """``(images, labels)`` restricted to ``per_class`` random images per class (class-major order)."""
  idx = sample_balanced(key, labels, num_classes, per_class)
  return np.asarray(images)[idx], np.asarray(labels)[idx]
