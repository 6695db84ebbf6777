"""Sampling driven by explicit PRNG keys: class-balanced index sets, and the real-batch samplers of the
distillation loop (``Sampler``: a pure ``fn(key, arrays[, step]) -> batch`` with its arrays)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.checks import (check_finite_images, check_images_labels, check_label_range,
                               check_positive_int)


def class_indices(labels, num_classes: int) -> list:
  """``num_classes`` int arrays: the positions of each class in ``labels`` (ascending)."""
  labels = np.asarray(labels)
  check_label_range(labels, num_classes)
  return [np.flatnonzero(labels == c) for c in range(num_classes)]


def sample_balanced(key: jax.Array, labels, num_classes: int, per_class) -> np.ndarray:
  """Indices of ``per_class`` distinct random images per class, class-major: ``per_class`` an int
  (``[num_classes * per_class]`` indices) or one count per class (0 allowed: none of that class).

  Raises:
    ValueError: if an int count is below 1, a per-class count below 0 (or all 0), or a count larger
    than its class.
  """
  floor = 1 if np.ndim(per_class) == 0 else 0
  counts = np.broadcast_to(np.asarray(per_class), (num_classes,))
  if counts.min() < floor or counts.sum() < 1:
    raise ValueError(f"per_class must be >= {floor} (and not all 0); got {per_class}.")
  per = class_indices(labels, num_classes)
  for c, idx in enumerate(per):
    if idx.size < counts[c]:
      raise ValueError(f"per_class={counts[c]} is larger than class {c}, which has {idx.size} images.")
  keys = jax.random.split(key, num_classes)
  return np.concatenate([idx[np.asarray(jax.random.choice(k, idx.size, (int(m),), replace=False))]
                         if m else idx[:0] for k, idx, m in zip(keys, per, counts)])


def subset_per_class(key: jax.Array, images, labels, num_classes: int, per_class: int) -> tuple:
  """``(images, labels)`` restricted to ``per_class`` random images per class (class-major order).

  Raises:
    ValueError: as :func:`sample_balanced`, or if ``images`` hold NaN or inf (the rows named).
  """
  images = np.asarray(images)
  check_finite_images(images, "Real images")
  idx = sample_balanced(key, labels, num_classes, per_class)
  return images[idx], np.asarray(labels)[idx]


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
                           per_class: int, train_batches: tuple = (0, 0)) -> Sampler:
  """Batches ``{"images": [K, per_class, H, W, C]}``: per class, ``per_class`` distinct random images
  (the DC/DM reference's ``get_images``). Classes smaller than ``per_class`` raise.

  With ``train_batches=(S, B)`` the batch also holds ``"train_images"`` ``[S, B, H, W, C]`` and
  ``"train_labels"`` ``[S, B]``: S batches of B distinct images drawn from the whole training set (the
  first S x B of a shuffled pass, as IDC's real loader for its network updates)."""
  check_positive_int("per_class", per_class)
  steps, size = train_batches
  if steps or size:
    check_positive_int("train_batches[0]", steps)
    check_positive_int("train_batches[1]", size)
    if steps * size > len(labels):
      raise ValueError(f"train_batches={tuple(train_batches)} needs {steps * size} distinct images; the "
                       f"training set has {len(labels)}.")
  images, labels = check_images_labels(images, labels, "real", hard=True)
  check_label_range(labels, num_classes, "real")
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
    if steps:
      key, train_key = jax.random.split(key)
    # A random permutation within each class: sort by (label, uniform noise).
    noise = jax.random.uniform(key, a["labels"].shape)
    perm = jnp.lexsort((noise, a["labels"]))
    pos = a["starts"][:, None] + jnp.arange(per_class)[None, :]
    batch = {"images": a["images"][perm[pos]]}
    if steps:
      idx = jax.random.permutation(train_key, a["labels"].shape[0])[:steps * size]
      batch["train_images"] = a["images"][idx].reshape(steps, size, *a["images"].shape[1:])
      batch["train_labels"] = a["labels"][idx].reshape(steps, size)
    return batch

  return Sampler(fn, arrays)


def random_sampler(images: np.ndarray, labels: np.ndarray, batch_size: int,
                   num_classes: Optional[int] = None) -> Sampler:
  """Batches ``{"images": [B, H, W, C], "labels": [B]}`` drawn uniformly without replacement. With
  ``num_classes`` (the objective's), labels outside ``[0, num_classes)`` are refused: KIP, FRePo and
  DD would otherwise encode them as all-zero targets or a NaN loss."""
  check_positive_int("batch_size", batch_size)
  images, labels = check_images_labels(images, labels, "real", hard=True)
  if num_classes is not None:
    check_label_range(labels, num_classes, "real")
  if batch_size > len(labels):
    raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(labels)}).")
  arrays = {"images": jnp.asarray(images, jnp.float32), "labels": jnp.asarray(labels, jnp.int32)}

  def fn(key, a):
    idx = jax.random.choice(key, a["labels"].shape[0], (batch_size,), replace=False)
    return {"images": a["images"][idx], "labels": a["labels"][idx]}

  return Sampler(fn, arrays)
