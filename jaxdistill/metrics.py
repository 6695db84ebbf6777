"""Coverage of the real data by a synthetic set (SelMatch), easy / hard halves by difficulty, and the
quality report of a generated set (class agreement, an FID-style distance, nearest-real distances).

Coverage (Lee et al., SelMatch, ICML 2024): the fraction of real samples that lie within radius ``r`` of
some synthetic sample in a feature space, with ``r`` the mean distance from a real training sample to its
nearest other training sample. Distances are Euclidean. Nearest-neighbour searches run in blocks of
``query_chunk x ref_chunk`` distances (jitted ``lax.map`` over query blocks, ``lax.scan`` over reference
blocks), so memory stays bounded whatever the number of samples; the distance to the nearest neighbour
found is recomputed exactly as ``||q - r||``, so a point at exactly ``r`` counts as covered.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.models.adapter import adapt, is_model
from jaxdistill.models.adapter import embed as embed_model
from jaxdistill.selection.coreset import embed


def _features(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name} must be [num_samples, D] features; got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or inf.")
  return x


def _pad_rows(x: np.ndarray, multiple: int, value: float = 0.0) -> np.ndarray:
  extra = -x.shape[0] % multiple
  if extra == 0:
    return x
  return np.concatenate([x, np.full((extra,) + x.shape[1:], value, x.dtype)])


@functools.partial(jax.jit, static_argnames=("num_refs",))
def _nearest_padded(queries: jax.Array, query_ids: jax.Array, refs: jax.Array, num_refs: int) -> jax.Array:
  """Nearest-neighbour distances. ``queries`` ``[nq, cq, D]``, ``query_ids`` ``[nq, cq]`` (a reference
  whose index equals the query's id is excluded), ``refs`` ``[nr, cr, D]`` of which the first ``num_refs``
  rows (flattened) are real. Returns ``[nq, cq]``."""
  nr, cr, _ = refs.shape
  ref_ids = jnp.arange(nr * cr, dtype=jnp.int32).reshape(nr, cr)
  ref_sq = jnp.sum(refs * refs, axis=-1)
  flat_refs = refs.reshape(nr * cr, -1)

  def per_query_block(args):
    q, ids = args  # [cq, D], [cq]
    q_sq = jnp.sum(q * q, axis=-1)

    def body(carry, xs):
      best, arg = carry
      r, r_sq, rid = xs
      d2 = q_sq[:, None] - 2.0 * (q @ r.T) + r_sq[None, :]
      bad = (rid[None, :] >= num_refs) | (rid[None, :] == ids[:, None])
      d2 = jnp.where(bad, jnp.inf, d2)
      j = jnp.argmin(d2, axis=1)
      m = jnp.min(d2, axis=1)
      better = m < best
      return (jnp.where(better, m, best), jnp.where(better, rid[j], arg)), None

    init = (jnp.full(q.shape[0], jnp.inf, q.dtype), jnp.zeros(q.shape[0], jnp.int32))
    (best, arg), _ = jax.lax.scan(body, init, (refs, ref_sq, ref_ids))
    exact = jnp.sqrt(jnp.sum(jnp.square(q - flat_refs[arg]), axis=-1))
    return jnp.where(jnp.isinf(best), jnp.inf, exact)

  return jax.lax.map(per_query_block, (queries, query_ids))


def nearest_distance(queries, refs, query_ids=None, query_chunk: int = 1024,
                     ref_chunk: int = 4096) -> np.ndarray:
  """Euclidean distance from each query to its nearest reference, in bounded memory.

  Args:
    queries: ``[M, D]`` features.
    refs: ``[S, D]`` features.
    query_ids: optional ``[M]`` int; reference ``query_ids[i]`` is not a candidate for query ``i`` (to
      exclude a point itself when queries are rows of ``refs``). Default: nothing excluded.
    query_chunk, ref_chunk: block sizes; peak memory ~ ``query_chunk * ref_chunk`` floats.

  Returns:
    ``[M]`` float32 NumPy array (inf where no candidate is left).
  """
  q = _features(queries, "queries")
  r = _features(refs, "refs")
  if q.shape[1] != r.shape[1]:
    raise ValueError(f"queries have {q.shape[1]} features but refs have {r.shape[1]}.")
  if r.shape[0] == 0:
    raise ValueError("refs is empty.")
  m = q.shape[0]
  if m == 0:
    return np.zeros((0,), np.float32)
  ids = np.full((m,), -1, np.int32) if query_ids is None else np.asarray(query_ids, np.int32)
  if ids.shape != (m,):
    raise ValueError(f"query_ids must be [{m}]; got shape {ids.shape}.")
  # Distances are searched as |q|^2 - 2 q.r + |r|^2 in float32: centred on the references' mean, so
  # that features far from the origin (all-positive ReLU features) do not cancel their differences.
  center = r.mean(axis=0, dtype=np.float64).astype(np.float32)
  q, r = q - center, r - center
  cq = max(1, min(int(query_chunk), m))
  cr = max(1, min(int(ref_chunk), r.shape[0]))
  qp = _pad_rows(q, cq).reshape(-1, cq, q.shape[1])
  idp = _pad_rows(ids, cq, -1).reshape(-1, cq)
  rp = _pad_rows(r, cr).reshape(-1, cr, r.shape[1])
  out = _nearest_padded(jnp.asarray(qp), jnp.asarray(idp), jnp.asarray(rp), num_refs=r.shape[0])
  return np.asarray(out).reshape(-1)[:m]


def coverage(syn_features, real_features, radius: float, query_chunk: int = 1024,
             ref_chunk: int = 4096) -> float:
  """Fraction of real samples within ``radius`` (Euclidean, ``<=``) of at least one synthetic sample.

  Args:
    syn_features: ``[S, D]`` features of the synthetic set.
    real_features: ``[M, D]`` features of the real samples to cover.
    radius: covering radius ``r >= 0`` (SelMatch: ``coverage_radius`` of the training features).
    query_chunk, ref_chunk: block sizes of the nearest-neighbour search.

  Returns:
    Coverage in ``[0, 1]`` as a Python float.
  """
  radius = float(radius)
  if not math.isfinite(radius) or radius < 0:
    raise ValueError(f"radius must be a finite number >= 0; got {radius}.")
  real = _features(real_features, "real_features")
  if real.shape[0] == 0:
    raise ValueError("real_features is empty.")
  d = nearest_distance(real, syn_features, query_chunk=query_chunk, ref_chunk=ref_chunk)
  return float(np.mean(d <= np.float32(radius)))


def coverage_radius(train_features, sample_size: Optional[int] = None, key: Optional[jax.Array] = None,
                    query_chunk: int = 1024, ref_chunk: int = 4096) -> float:
  """Mean distance from a real training sample to its nearest *other* training sample.

  With ``sample_size``, the mean runs over ``sample_size`` training samples drawn without replacement by
  ``key``, each still searched against the whole training set (an unbiased estimate of the full mean; a
  nearest neighbour within the subset only would be farther). Duplicates count: an identical other sample
  is at distance 0.

  Args:
    train_features: ``[N, D]`` features, ``N >= 2``.
    sample_size: optional number of query samples (None or >= N: all).
    key: PRNG key, required with ``sample_size < N``.
    query_chunk, ref_chunk: block sizes of the nearest-neighbour search.

  Returns:
    The radius as a Python float.
  """
  f = _features(train_features, "train_features")
  n = f.shape[0]
  if n < 2:
    raise ValueError(f"coverage_radius needs at least 2 training samples; got {n}.")
  ids = np.arange(n, dtype=np.int32)
  if sample_size is not None and int(sample_size) < n:
    if int(sample_size) < 1:
      raise ValueError(f"sample_size must be >= 1; got {sample_size}.")
    if key is None:
      raise ValueError("coverage_radius with sample_size < N needs a PRNG key.")
    ids = np.sort(np.asarray(jax.random.choice(key, n, (int(sample_size),), replace=False))).astype(np.int32)
  d = nearest_distance(f[ids], f, query_ids=ids, query_chunk=query_chunk, ref_chunk=ref_chunk)
  return float(np.mean(d.astype(np.float64)))


def split_easy_hard(scores, higher_is_harder: bool = True) -> tuple:
  """Splits samples into an easy and a hard half by difficulty rank.

  Samples are ranked by score (stable sort: equal scores keep index order, the earlier index counted as
  harder); the ``N // 2`` hardest form the hard half and the other ``N - N // 2`` the easy half, so with
  distinct scores the hard half is exactly those above the median. With ties at the median the tied
  samples are split by index, keeping the halves equal in size (a ``score > median`` rule would leave
  them unbalanced, e.g. forgetting scores with many zeros).

  Args:
    scores: ``[N]`` difficulty scores (no NaN).
    higher_is_harder: False for C-score-like scores (higher = easier).

  Returns:
    ``(easy_mask [N] bool, hard_mask [N] bool)``, complementary NumPy arrays.
  """
  s = np.asarray(scores)
  if s.ndim != 1:
    raise ValueError(f"scores must be [N]; got shape {s.shape}.")
  s = s.astype(np.float64)
  if np.any(np.isnan(s)):
    raise ValueError("scores contain NaN.")
  order = np.argsort(-s if higher_is_harder else s, kind="stable")  # hardest first
  hard = np.zeros(s.shape, bool)
  hard[order[:s.size // 2]] = True
  return ~hard, hard


def coverage_report(embed_fn: Callable, params, syn_images, real_images, train_images=None, scores=None,
                    radius: Optional[float] = None, sample_size: Optional[int] = None,
                    key: Optional[jax.Array] = None, higher_is_harder: bool = True,
                    batch_size: int = 1000) -> dict:
  """Coverage of ``real_images`` by ``syn_images`` in the feature space of ``embed_fn``, overall and on
  the easy / hard halves of the real samples.

  Args:
    embed_fn: ``embed_fn(params, x [B, H, W, C]) -> [B, D]`` features (e.g. a trained network's
      penultimate layer), or a network (any model ``jaxdistill.models.adapt`` accepts), whose
      eval-mode features ``adapt`` finds.
    params: its parameters (with a network: its variables).
    syn_images: ``[S, H, W, C]``.
    real_images: ``[M, H, W, C]`` real samples to cover.
    train_images: ``[N, H, W, C]`` for the radius (default ``real_images``); unused if ``radius`` given.
    scores: optional ``[M]`` difficulty scores of ``real_images`` for the easy / hard split.
    radius: optional radius; default ``coverage_radius`` of the training features.
    sample_size, key: subsample for ``coverage_radius``.
    higher_is_harder: score convention of ``scores``.
    batch_size: embedding batch size.

  Returns:
    ``{"radius", "coverage"}`` and, with ``scores``, ``"easy"`` and ``"hard"``: Python floats.
  """

  def feats(x):
    if is_model(embed_fn):
      return np.asarray(embed_model(embed_fn, params, x, batch_size)).reshape(np.shape(x)[0], -1)
    return np.asarray(embed(embed_fn, params, x, batch_size)).reshape(np.shape(x)[0], -1)

  real = feats(real_images)
  syn = feats(syn_images)
  if scores is not None and np.shape(scores) != (real.shape[0],):
    raise ValueError(f"scores must be [{real.shape[0]}] (one per real image); got shape {np.shape(scores)}.")
  if radius is None:
    train = real if train_images is None else feats(train_images)
    radius = coverage_radius(train, sample_size, key)
  radius = float(radius)
  if not math.isfinite(radius) or radius < 0:
    raise ValueError(f"radius must be a finite number >= 0; got {radius}.")
  covered = nearest_distance(real, syn) <= np.float32(radius)
  out = {"radius": radius, "coverage": float(covered.mean())}
  if scores is not None:
    easy, hard = split_easy_hard(scores, higher_is_harder)
    out["easy"] = float(covered[easy].mean()) if easy.any() else float("nan")
    out["hard"] = float(covered[hard].mean()) if hard.any() else float("nan")
  return out


def frechet_distance(a, b) -> float:
  """The Fréchet distance between Gaussians fitted to features ``a`` ``[N, D]`` and ``b`` ``[M, D]``
  (FID's formula): ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``, covariances with
  ``N - 1`` / ``M - 1``, in float64; the matrix square root via the symmetric ``S_a^(1/2) S_b S_a^(1/2)``
  (same trace), so rank-deficient covariances (fewer samples than features) are fine."""
  a = _features(a, "a").astype(np.float64)
  b = _features(b, "b").astype(np.float64)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"a has {a.shape[1]} features but b has {b.shape[1]}.")
  if a.shape[0] < 2 or b.shape[0] < 2:
    raise ValueError(f"frechet_distance needs at least 2 samples on each side; got {a.shape[0]} and "
                     f"{b.shape[0]}.")
  sa, sb = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)
  w, v = np.linalg.eigh(sa)
  root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
  diff = a.mean(0) - b.mean(0)
  return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2 * cross)


def quality_report(logits_fn: Callable, features_fn: Optional[Callable], params, syn_images, syn_labels,
                   test_images, train_images, sample_size: Optional[int] = 2000,
                   key: Optional[jax.Array] = None, batch_size: int = 1000) -> dict:
  """How much a generated (or any synthetic) set looks like its classes, judged by a strong classifier.

  Args:
    logits_fn, features_fn: ``fn(params, x [B, H, W, C])`` -> ``[B, K]`` logits / ``[B, D]`` features of
      the classifier (e.g. its penultimate layer); or ``logits_fn`` a network (any model
      ``jaxdistill.models.adapt`` accepts) and ``features_fn`` None: its eval-mode logits and features.
    params: the classifier's parameters (with a network: its variables) (train it well: its test accuracy bounds what it can judge).
    syn_images, syn_labels: ``[S, H, W, C]`` and the requested classes ``[S]``.
    test_images: ``[M, H, W, C]`` the FID-style distance is measured against.
    train_images: ``[N, H, W, C]`` real images for the nearest-real distances (pixels, the images' own
      scale; the ratio does not depend on a global scale).
    sample_size, key: real images whose nearest other real image sets the reference distance
      (``coverage_radius``'s sample).
    batch_size: classifier batch size.

  Returns:
    ``{"class_agreement"}`` (fraction of images the classifier assigns to the requested class),
    ``"class_agreement_per_class"`` (list), ``"fid_like"`` (``frechet_distance`` of the classifier's
    features, set vs test images), ``"nearest_real"`` (mean distance to the nearest real image),
    ``"real_nearest_real"`` (the same among real images) and ``"nearest_real_ratio"`` (their ratio).
  """
  labels = np.asarray(syn_labels)
  if labels.ndim != 1 or labels.shape[0] != np.shape(syn_images)[0]:
    raise ValueError(f"syn_labels must be [{np.shape(syn_images)[0]}] class ids; got shape {labels.shape}.")
  if is_model(logits_fn):
    if features_fn is not None:
      raise ValueError("quality_report: with a network as logits_fn, leave features_fn None (the "
                       "network gives both).")
    net = logits_fn
    logits_fn = lambda v, x: adapt(net).apply(v, x, train=False)[0]
    features_fn = lambda v, x: adapt(net).apply(v, x, train=False, features=True)[0][1]
  logits = np.asarray(embed(logits_fn, params, syn_images, batch_size))
  hit = logits.argmax(-1) == labels
  k = logits.shape[-1]
  per_class = [float(hit[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(k)]
  feats = lambda x: np.asarray(embed(features_fn, params, x, batch_size)).reshape(np.shape(x)[0], -1)
  flat = lambda x: np.asarray(x, np.float32).reshape(np.shape(x)[0], -1)
  nearest = float(np.mean(nearest_distance(flat(syn_images), flat(train_images)).astype(np.float64)))
  real = coverage_radius(flat(train_images), sample_size, key)
  return {"class_agreement": float(hit.mean()), "class_agreement_per_class": per_class,
          "fid_like": frechet_distance(feats(syn_images), feats(test_images)),
          "nearest_real": nearest, "real_nearest_real": real, "nearest_real_ratio": nearest / real}
