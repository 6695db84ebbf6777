"""Small containers shared across jaxdistill.

Conventions: images are NHWC float32 (``[N, H, W, C]``), labels are int32 class ids ``[N]`` (hard) or
float32 ``[N, K]`` (soft / learnable), keys are typed ``jax.random.key``.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import numpy as np


class SyntheticSet(NamedTuple):
  """The distilled (or selected) set: a plain pytree of arrays, never a module.

  Attributes:
    images: ``[N, H, W, C]`` float32 training images (in the dataset's normalized space).
    labels: ``[N]`` int32 hard labels, or ``[N, K]`` float32 soft labels (logits or targets).
    log_lr: optional learnable log step size (scalar, or ``[S]`` for one per unrolled step).
  """
  images: jax.Array
  labels: jax.Array
  log_lr: Optional[jax.Array] = None

  @property
  def num_images(self) -> int:
    return int(self.images.shape[0])

  def hard_labels(self) -> jax.Array:
    """``[N]`` int32 class ids (argmax of soft labels)."""
    if self.labels.ndim == 2:
      return self.labels.argmax(-1).astype(np.int32)
    return self.labels


class Leaf(NamedTuple):
  """A leaf of ``SyntheticSet`` that a distillation may learn."""
  name: str  # the SyntheticSet field
  flag: Optional[str]  # the ``distill.Distiller`` field that declares it learned (None: always learned)
  per_row: bool  # one entry per synthetic image: a partial update's frozen rows keep theirs
  ndim: Optional[int]  # the rank a learned value must have (None: any)
  what: str  # what a learned value must be, for error messages


# The learnable leaves, declared once: the optimizer, the row mask of partial updates, the health
# checks and a run's identity all read them from here.
LEARNABLE_LEAVES = (
    Leaf("images", None, True, 4, "float [N, H, W, C] images"),
    Leaf("labels", "learn_labels", True, 2, "soft labels: a float [N, K] array"),
    Leaf("log_lr", "learn_lr", False, None, "a float log step size (SyntheticSet.log_lr set)"),
)
ROW_LEAVES = tuple(leaf.name for leaf in LEARNABLE_LEAVES if leaf.per_row)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A labelled image-classification dataset held in host memory.

  Attributes:
    name: dataset name, e.g. ``"fashion_mnist"``.
    x_train: ``[N, H, W, C]`` float32, normalized with ``mean``/``std`` (per channel).
    y_train: ``[N]`` int32.
    x_test: ``[M, H, W, C]`` float32, normalized the same way.
    y_test: ``[M]`` int32.
    num_classes: number of classes K.
    class_names: K names.
    mean, std: per-channel statistics used to normalize (of the [0, 1]-scaled training images).
    zca: a ``jaxdistill.data.Whitening`` (mean, inverse transform, mode) when
      ``jaxdistill.data.whiten_dataset`` whitened the images (then ``mean`` / ``std`` alone no longer
      map them to pixels: ``jaxdistill.data.denormalize`` does), else None.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: tuple
  mean: tuple
  std: tuple
  zca: Optional[tuple] = None

  @property
  def image_shape(self) -> tuple:
    return tuple(self.x_train.shape[1:])

  def __repr__(self) -> str:  # arrays would flood the terminal
    return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"num_classes={self.num_classes})")


class EvalResult(NamedTuple):
  """Test accuracy of networks trained from scratch on a (synthetic) set, one entry per seed."""
  mean: float
  std: float
  accuracies: np.ndarray  # [num_seeds]
  group_accuracies: Optional[dict] = None  # name -> [num_seeds], e.g. easy/hard halves

  def __str__(self) -> str:
    return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}%"
