"""From a trained diffusion model to a ``SyntheticSet`` in the dataset's normalized space.

The diffusion model works on images scaled to ``[-1, 1]``; ``to_model_space`` / ``to_data_space``
convert between that and the dataset's per-channel normalization ``(x01 - mean) / std``.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.diffusion import gaussian
from jaxdistill.diffusion.train import eps_fn
from jaxdistill.types import SyntheticSet


def to_model_space(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Normalized images ``[N, H, W, C]`` -> ``[-1, 1]``: ``2 (x std + mean) - 1``."""
  x01 = x * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)
  return 2.0 * x01 - 1.0


def to_data_space(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """``[-1, 1]`` images -> the dataset's normalization (inverse of ``to_model_space``)."""
  return ((x + 1.0) / 2.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def check_request(num_classes: int, ipc: int, image_shape: Sequence[int],
                  classes: Optional[Sequence[int]] = None) -> np.ndarray:
  """Validates a sampling request; returns the class ids ``[K']`` int32 to sample."""
  if not isinstance(ipc, (int, np.integer)) or ipc < 1:
    raise ValueError(f"ipc (images per class) must be an integer >= 1; got {ipc!r}.")
  shape = tuple(image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape must be (H, W, C); got {shape}.")
  classes = np.arange(num_classes) if classes is None else np.asarray(classes)
  if classes.ndim != 1 or classes.size == 0:
    raise ValueError(f"classes must be a non-empty list of class ids; got {classes.tolist()}.")
  bad = classes[(classes < 0) | (classes >= num_classes)]
  if bad.size:
    raise ValueError(f"Unknown class id(s) {bad.tolist()}: the model has classes 0..{num_classes - 1}.")
  return classes.astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9))
def _generate(model, params, schedule, key, y, shape, sample_steps, eta, cfg_scale, clip):
  return gaussian.sample(schedule, eps_fn(model, params), key, y, shape, sample_steps, eta, cfg_scale,
                         model.num_classes, clip)


def synthesize(key: jax.Array, model, params, schedule: gaussian.Schedule, ipc: int,
               image_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
               classes: Optional[Sequence[int]] = None, sample_steps: int = 50, eta: float = 1.0,
               cfg_scale: float = 1.0, batch_size: int = 500, clip: Optional[float] = 1.0
               ) -> SyntheticSet:
  """``ipc`` generated images per class as a ``SyntheticSet``.

  Args:
    key: the same key gives the same set.
    model, params: a trained ``DiT`` or ``UNet`` (its ``num_classes`` is the null class for guidance).
    schedule: the schedule it was trained with.
    ipc: images per class (>= 1).
    image_shape: ``(H, W, C)`` of the dataset, e.g. ``(28, 28, 1)``; must fit the model
      (``model.check_image_shape``).
    mean, std: the dataset's normalization (``Dataset.mean``, ``Dataset.std``).
    classes: class ids (default: all ``model.num_classes``).
    sample_steps, eta, cfg_scale, clip: see ``gaussian.sample`` (DDPM with ``eta=1``).
    batch_size: images generated per jitted call.

  Returns:
    ``SyntheticSet(images [K' * ipc, H, W, C] float32 (normalized), labels [K' * ipc] int32)``,
    class-major (the first ``ipc`` rows are the first class).
  """
  classes = check_request(model.num_classes, ipc, image_shape, classes)
  model.check_image_shape(tuple(image_shape))
  labels = np.repeat(classes, ipc).astype(np.int32)
  out = []
  for i, start in enumerate(range(0, labels.size, batch_size)):
    y = labels[start:start + batch_size]
    pad = batch_size - y.size if labels.size > batch_size else 0  # one compiled shape
    yb = jnp.asarray(np.concatenate([y, np.zeros(pad, np.int32)]))
    out.append(np.asarray(_generate(model, params, schedule, jax.random.fold_in(key, i), yb,
                                    tuple(image_shape), sample_steps, eta, cfg_scale, clip))[:y.size])
  images = to_data_space(jnp.asarray(np.concatenate(out)), mean, std)
  return SyntheticSet(images.astype(jnp.float32), jnp.asarray(labels))
