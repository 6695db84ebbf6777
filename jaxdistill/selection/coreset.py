"""Selection baselines: random, herding, k-center greedy, k-means centroids, class-average images.

Each ``*_indices`` function returns, per class, the indices of the selected real images (class-major,
``[K * ipc]``); the public functions return a ``SyntheticSet`` (rows ordered class-major, hard labels), the
type every distillation method starts from. Herding and k-center work in a feature space: pass
``features`` ``[N, D]`` (e.g. from ``embed``), else flattened pixels are used.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.checks import check_class_ids, check_images_labels
from jaxdistill.types import SyntheticSet


def _per_class(labels: np.ndarray, num_classes: int, ipc: int) -> list:
  """Per-class index arrays, checking that every class has at least ``ipc`` members."""
  labels = check_class_ids(labels, num_classes)
  if ipc < 1:
    raise ValueError(f"ipc must be >= 1; got {ipc}.")
  out = []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    if idx.size < ipc:
      raise ValueError(f"ipc={ipc} is larger than class {c}, which has {idx.size} images.")
    out.append(idx)
  return out


def _flat(x, n: int) -> jax.Array:
  """``x`` as ``[n, D]`` float32 features, one row per image; refused with another row count (each
  image would be scored on another's features) or non-finite values."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 0 or x.shape[0] != n:
    raise ValueError(f"features must have one row per image ({n}); got shape {x.shape}.")
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError("features contain NaN or inf.")
  return x.reshape(n, -1)


def random_indices(key: jax.Array, labels: np.ndarray, num_classes: int, ipc: int) -> np.ndarray:
  """``[K * ipc]`` indices: ``ipc`` distinct random images per class (class-major)."""
  per = _per_class(labels, num_classes, ipc)
  keys = jax.random.split(key, num_classes)
  return np.concatenate([idx[np.asarray(jax.random.choice(k, idx.size, (ipc,), replace=False))]
                         for k, idx in zip(keys, per)])


@functools.partial(jax.jit, static_argnums=1)
def _herding_order(f: jax.Array, k: int) -> jax.Array:
  """Greedy herding over rows of ``f`` ``[n, D]``; returns ``k`` picks."""
  mu = f.mean(0)
  n = f.shape[0]

  def body(carry, t):
    total, chosen = carry
    # Running mean if each candidate were added; pick the one closest to the class mean.
    cand = (total[None, :] + f) / (t + 1.0)
    d = jnp.sum(jnp.square(cand - mu[None, :]), axis=1)
    d = jnp.where(chosen, jnp.inf, d)
    i = jnp.argmin(d)
    return (total + f[i], chosen.at[i].set(True)), i

  (_, _), picks = jax.lax.scan(body, (jnp.zeros_like(mu), jnp.zeros(n, bool)),
                               jnp.arange(k, dtype=jnp.float32))
  return picks


def herding_indices(labels: np.ndarray, num_classes: int, ipc: int,
                    features: jax.Array) -> np.ndarray:
  """Herding (Welling 2009, as in the DC baselines): per class, greedily add the image whose addition
  keeps the running feature mean closest to the class mean. ``features``: ``[N, D]``."""
  per = _per_class(labels, num_classes, ipc)
  f = _flat(features, len(labels))
  return np.concatenate([idx[np.asarray(_herding_order(f[idx], ipc))] for idx in per])


@functools.partial(jax.jit, static_argnums=1)
def _kcenter_order(f: jax.Array, k: int) -> jax.Array:
  """Greedy k-center on ``f`` ``[n, D]``, starting from the point nearest the mean; never the same
  point twice (once every distance left is 0, duplicates of chosen points are taken in order)."""
  first = jnp.argmin(jnp.sum(jnp.square(f - f.mean(0)), axis=1))
  dist = jnp.sum(jnp.square(f - f[first]), axis=1)
  chosen = jnp.zeros(f.shape[0], bool).at[first].set(True)

  def body(carry, _):
    dist, chosen = carry
    i = jnp.argmax(jnp.where(chosen, -jnp.inf, dist))
    return (jnp.minimum(dist, jnp.sum(jnp.square(f - f[i]), axis=1)), chosen.at[i].set(True)), i

  _, rest = jax.lax.scan(body, (dist, chosen), None, length=k - 1)
  return jnp.concatenate([first[None], rest])


def kcenter_indices(labels: np.ndarray, num_classes: int, ipc: int,
                    features: jax.Array) -> np.ndarray:
  """K-center greedy (Sener & Savarese 2018): per class, start at the image nearest the class mean
  (this library's deterministic choice; DeepCore starts at a random image), then repeatedly add the
  image farthest from all chosen ones. ``features``: ``[N, D]``."""
  per = _per_class(labels, num_classes, ipc)
  f = _flat(features, len(labels))
  return np.concatenate([idx[np.asarray(_kcenter_order(f[idx], ipc))] for idx in per])


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """``[n, m]`` squared Euclidean distances between rows of ``a`` ``[n, D]`` and ``b`` ``[m, D]``."""
  return jnp.sum(a * a, 1)[:, None] - 2.0 * a @ b.T + jnp.sum(b * b, 1)[None, :]


def kmeans(key: jax.Array, points: jax.Array, k: int, iters: int = 50) -> tuple:
  """Lloyd's k-means with k-means++ seeding. ``points``: ``[n, D]``.

  Returns:
    ``(centroids [k, D], assignment [n])``. Empty clusters keep their previous centroid.
  """
  points = jnp.asarray(points)
  n = points.shape[0] if points.ndim else 0
  points = _flat(points, n)
  if k > n:
    raise ValueError(f"k={k} is larger than the number of points {n}.")
  return _kmeans(key, points, k, iters)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _kmeans(key, points, k, iters):
  n = points.shape[0]
  k0, key = jax.random.split(key)
  first = jax.random.randint(k0, (), 0, n)
  cents = jnp.zeros((k, points.shape[1]), points.dtype).at[0].set(points[first])
  d2 = jnp.sum(jnp.square(points - points[first]), axis=1)
  chosen = jnp.zeros(n, bool).at[first].set(True)

  def seed(i, carry):  # k-means++: sample proportional to squared distance
    cents, d2, chosen, key = carry
    key, sub = jax.random.split(key)
    # Every point left coincides with a centroid: any point not yet taken, uniformly.
    w = jnp.where(d2.sum() > 0, d2, jnp.where(chosen, 0.0, 1.0))
    j = jax.random.choice(sub, n, p=w / jnp.maximum(w.sum(), 1e-12))
    cents = cents.at[i].set(points[j])
    return (cents, jnp.minimum(d2, jnp.sum(jnp.square(points - points[j]), axis=1)),
            chosen.at[j].set(True), key)

  cents, _, _, _ = jax.lax.fori_loop(1, k, seed, (cents, d2, chosen, key))

  def assign(c):
    return jnp.argmin(_sq_dists(points, c), axis=1)

  def lloyd(c, _):
    a = assign(c)
    onehot = jax.nn.one_hot(a, k, dtype=points.dtype)
    counts = onehot.sum(0)
    new = (onehot.T @ points) / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, new, c), None

  cents, _ = jax.lax.scan(lloyd, cents, None, length=iters)
  return cents, assign(cents)


def _from_indices(images, labels, idx) -> SyntheticSet:
  return SyntheticSet(jnp.asarray(images[idx], jnp.float32), jnp.asarray(labels[idx], jnp.int32))


def random(key: jax.Array, images, labels, num_classes: int, ipc: int) -> SyntheticSet:
  """``ipc`` random real images per class. ``images``: ``[N, H, W, C]``, ``labels``: ``[N]``."""
  images, labels = check_images_labels(images, labels, hard=True)
  return _from_indices(images, labels, random_indices(key, labels, num_classes, ipc))


def _features(images, features, model, variables):
  """The feature rows to select in: ``features``, else a network's embedding of ``images`` (``model``
  and its trained ``variables``, any model ``jaxdistill.models.adapt`` accepts), else the pixels."""
  if model is None:
    if variables is not None:
      raise ValueError("variables= without model=: pass the network they belong to.")
    return images if features is None else features
  if features is not None:
    raise ValueError("Pass features= or model= (with variables=), not both.")
  if variables is None:
    raise ValueError("model= needs the trained variables= whose embedding to select in (a freshly "
                     "initialized network's features are close to random projections).")
  from jaxdistill.models.adapter import embed as embed_model
  return embed_model(model, variables, images)


def herding(images, labels, num_classes: int, ipc: int, features=None, model=None,
            variables=None) -> SyntheticSet:
  """Herding selection in ``features`` ``[N, D]``, or in the embedding of a trained network
  (``model`` with its ``variables``: any model ``jaxdistill.models.adapt`` accepts, its features as
  ``adapt`` finds them), else in pixels."""
  images, labels = check_images_labels(images, labels, hard=True)
  f = _features(images, features, model, variables)
  return _from_indices(images, labels, herding_indices(labels, num_classes, ipc, f))


def k_center(images, labels, num_classes: int, ipc: int, features=None, model=None,
             variables=None) -> SyntheticSet:
  """K-center greedy selection in ``features`` ``[N, D]`` or a trained network's embedding (as
  ``herding``), else in pixels."""
  images, labels = check_images_labels(images, labels, hard=True)
  f = _features(images, features, model, variables)
  return _from_indices(images, labels, kcenter_indices(labels, num_classes, ipc, f))


def _distinct_nearest(f: jax.Array, cents: jax.Array) -> np.ndarray:
  """For each centroid in order, the row of ``f`` nearest it among those not taken by an earlier one
  (``[k]`` distinct indices)."""
  d = np.array(_sq_dists(f, cents))
  out = []
  for j in range(d.shape[1]):
    i = int(np.argmin(d[:, j]))
    out.append(i)
    d[i, :] = np.inf
  return np.asarray(out)


def k_means(key: jax.Array, images, labels, num_classes: int, ipc: int, features=None,
            nearest: bool = False, iters: int = 50, model=None, variables=None) -> SyntheticSet:
  """Per class, ``ipc`` k-means clusters (in ``features``, default pixels); each row is the mean image
  of a cluster, or with ``nearest=True`` the real image nearest the cluster's centroid, ``ipc``
  distinct images (a centroid whose nearest image an earlier one took gets its next nearest). A
  cluster left empty (a class with fewer distinct images than ``ipc``) gets that nearest image
  instead of a mean of nothing. Features: as ``herding`` (``features``, or ``model`` with its
  ``variables``, else pixels)."""
  images, labels = check_images_labels(images, labels, hard=True)
  per = _per_class(labels, num_classes, ipc)
  f = _flat(_features(images, features, model, variables), len(labels))
  rows = []
  for k, idx in zip(jax.random.split(key, num_classes), per):
    cents, assign = kmeans(k, f[idx], ipc, iters)
    near = images[idx[_distinct_nearest(f[idx], cents)]].astype(np.float32)
    if nearest:
      rows.append(jnp.asarray(near))
    else:
      onehot = jax.nn.one_hot(assign, ipc, dtype=jnp.float32)
      x = jnp.asarray(images[idx], jnp.float32).reshape(idx.size, -1)
      counts = onehot.sum(0)
      means = ((onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]).reshape(ipc, *images.shape[1:])
      rows.append(jnp.where((counts > 0)[:, None, None, None], means, near))
  return SyntheticSet(jnp.concatenate(rows), jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc))


def average(key: jax.Array, images, labels, num_classes: int, ipc: int) -> SyntheticSet:
  """Class-average images: each class split at random into ``ipc`` near-equal groups, one mean image
  per group (``ipc=1``: the class mean)."""
  images, labels = check_images_labels(images, labels, hard=True)
  per = _per_class(labels, num_classes, ipc)
  rows = []
  for k, idx in zip(jax.random.split(key, num_classes), per):
    perm = idx[np.asarray(jax.random.permutation(k, idx.size))]
    rows += [images[g].mean(0) for g in np.array_split(perm, ipc)]
  return SyntheticSet(jnp.asarray(np.stack(rows), jnp.float32),
                      jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc))


def embed(apply_fn: Callable, params, images, batch_size: int = 1000) -> jax.Array:
  """Features ``[N, D]`` of ``images`` ``[N, H, W, C]`` under ``apply_fn(params, x) -> [B, D]``."""
  images = np.asarray(images)
  fn = jax.jit(apply_fn)
  return jnp.concatenate([fn(params, jnp.asarray(images[i:i + batch_size]))
                          for i in range(0, images.shape[0], batch_size)])


METHODS = ("random", "herding", "k_center", "k_means", "k_means_nearest", "average")


def select(method: str, key: jax.Array, images, labels, num_classes: int, ipc: int,
           features=None) -> SyntheticSet:
  """Runs the baseline named ``method`` (one of ``METHODS``)."""
  if method == "random":
    return random(key, images, labels, num_classes, ipc)
  if method == "herding":
    return herding(images, labels, num_classes, ipc, features)
  if method == "k_center":
    return k_center(images, labels, num_classes, ipc, features)
  if method == "k_means":
    return k_means(key, images, labels, num_classes, ipc, features)
  if method == "k_means_nearest":  # DC-bench's k-means baseline: real images
    return k_means(key, images, labels, num_classes, ipc, features, nearest=True)
  if method == "average":
    return average(key, images, labels, num_classes, ipc)
  raise ValueError(f"Unknown selection method {method!r}; known: {', '.join(METHODS)}.")
