"""Argument checks shared by the modules where inputs enter, with messages that name the argument."""
from __future__ import annotations

import jax
import numpy as np


def check_images_labels(images, labels, what: str = "", hard: bool = False) -> tuple:
  """``(images, labels)`` as NumPy arrays after checking that ``images`` is ``[N, H, W, C]`` and that
  there is one label row per image (``hard``: integer class ids ``[N]``). ``what`` names the arrays in
  the message (e.g. "synthetic", "training")."""
  images, labels = np.asarray(images), np.asarray(labels)
  n = images.shape[0] if images.ndim else 0
  name = lambda s: (f"{what} {s}" if what else s).capitalize()
  if images.ndim != 4:
    raise ValueError(f"{name('images')} must be [N, H, W, C]; got shape {images.shape}.")
  if hard and (labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer)):
    raise ValueError(f"{name('labels')} must be int [N={n}] class ids; got {labels.dtype} "
                     f"{labels.shape}.")
  if labels.ndim == 0 or labels.shape[0] != n:
    raise ValueError(f"{n} {name('images').lower()} but {labels.shape[0] if labels.ndim else 0} "
                     f"labels.")
  check_finite_images(images, name("images"))
  return images, labels


def check_finite_images(images, what: str = "images") -> None:
  """Raises ``ValueError`` naming the rows of ``images`` ``[N, ...]`` that hold NaN or inf.

  One NaN pixel in a real image turns every loss, gradient or mean embedding it enters into NaN
  (or, under a ``where``, silently drops it), so the arrays are checked once where they enter, on the
  host, never per step. Integer images cannot hold either and pass unchecked.

  Args:
    images: ``[N, ...]`` array (NumPy or a concrete JAX array).
    what: names the array in the message (e.g. "Real images").

  Raises:
    ValueError: e.g. ``Real images: rows [12, 40] contain NaN or inf (2 of 100 images).``
  """
  x = np.asarray(images)
  if not np.issubdtype(x.dtype, np.inexact) or x.size == 0:
    return
  if np.isfinite(x.min()) and np.isfinite(x.max()):  # NaN propagates through min / max; no copy
    return
  bad = np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))
  shown = ", ".join(str(i) for i in bad[:10]) + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
  raise ValueError(f"{what}: rows [{shown}] contain NaN or inf ({len(bad)} of {x.shape[0]} images).")


def check_class_ids(labels, num_classes: int, what: str = "labels") -> np.ndarray:
  """``labels`` as a NumPy array after checking that they are integer class ids ``[N]`` in
  ``[0, num_classes)`` (one-hot rows or float labels would index or group the wrong images)."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{what} must be int [N] class ids; got {labels.dtype} {labels.shape}.")
  check_label_range(labels, num_classes, "" if what == "labels" else what.removesuffix(" labels"))
  return labels


def check_positive_int(name: str, value) -> None:
  """Raises ``ValueError`` unless ``value`` is an integer >= 1 (bools refused)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")


def check_label_range(labels, num_classes: int, what: str = "") -> None:
  """Raises unless hard (``[N]`` int) ``labels`` lie in ``[0, num_classes)``: a label out of range
  would become an all-zero one-hot row, a NaN loss or (negative) silently class ``num_classes - 1``.
  ``what`` names them in the message ("real", "synthetic"). Traced labels (an objective's ``init``
  under ``jax.eval_shape`` or ``jit``) are not checked."""
  try:
    labels = np.asarray(labels)
  except jax.errors.TracerArrayConversionError:
    return
  if labels.ndim == 1 and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    name = f"{what} labels" if what else "labels"
    raise ValueError(f"{name[0].upper() + name[1:]} must lie in [0, num_classes={num_classes}); got "
                     f"range [{labels.min()}, {labels.max()}].")
