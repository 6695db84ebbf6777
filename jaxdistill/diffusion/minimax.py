"""Minimax Diffusion's criteria (Gu et al., CVPR 2024) over fixed-size per-class memories.

Per class two ring buffers of the last ``memory_size`` items, flattened to ``D`` features:

- the real memory holds clean training images (the diffusion model's ``x0``), in the terms' space;
- the generated memory holds the model's "pseudo embeddings": the clean images implied by its noise
  predictions, ``predict_x0(x_t, t, eps)``, in the same space, stored without gradient.

The terms' space is the model's own unless the training step is given an ``embed`` map (e.g. an
autoencoder's encoder, ``MinimaxConfig.embed``): both memories then hold its outputs.

For each class present in a batch (whose memories are not empty), with ``P`` its pseudo embeddings:

- representativeness: ``lambda_pos * (1 - min cos(P, real memory))``, pulling toward the least similar
  real item;
- diversity: ``lambda_neg * max cos(P, generated memory)``, pushing from the most similar generated one;

min and max run over all pairs of the class; each is averaged over the classes present in the batch
(all of them, also those whose memory is still empty). The terms use the memories as they were before
the batch; the batch's items are written afterwards. This follows the authors' public code.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Memory(NamedTuple):
  """Per-class ring buffers (arrays only, so a training step carrying them is one jitted function).

  Attributes:
    real: ``[K, M, D]`` float32 real items.
    fake: ``[K, M, D]`` float32 generated items (pseudo embeddings).
    pos: ``[K]`` int32 next write slot per class.
    count: ``[K]`` int32 filled slots per class (``<= M``).
  """
  real: jax.Array
  fake: jax.Array
  pos: jax.Array
  count: jax.Array


def init_memory(num_classes: int, memory_size: int, dim: int) -> Memory:
  """Empty memories of ``memory_size`` items of ``dim`` features for each of ``num_classes`` classes."""
  if memory_size < 1:
    raise ValueError(f"memory_size must be >= 1; got {memory_size}.")
  z = lambda: jnp.zeros((num_classes, memory_size, dim), jnp.float32)  # distinct buffers
  zi = lambda: jnp.zeros((num_classes,), jnp.int32)
  return Memory(z(), z(), zi(), zi())


def _rank_in_class(labels: jax.Array, num_classes: int) -> tuple:
  """``(rank [B], per-class counts [K])``: rank = number of earlier batch items of the same class."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  before = jnp.cumsum(onehot, axis=0) - onehot
  return jnp.take_along_axis(before, labels[:, None], axis=1)[:, 0], onehot.sum(0)


def push(buffer: jax.Array, pos: jax.Array, count: jax.Array, items: jax.Array,
         labels: jax.Array) -> tuple:
  """Appends ``items`` ``[B, D]`` to their classes' ring buffers ``[K, M, D]`` in batch order; when a
  class is full its oldest items are overwritten (of more than ``M`` new items only the last ``M``
  stay). Returns ``(buffer, pos, count)``."""
  k, m = buffer.shape[0], buffer.shape[1]
  rank, n = _rank_in_class(labels, k)
  keep = rank >= n[labels] - m  # the last M of each class in this batch
  slot = (pos[labels] + rank) % m
  row = jnp.where(keep, labels, k)  # out of range: dropped
  buffer = buffer.at[row, slot].set(items.astype(buffer.dtype), mode="drop")
  return buffer, (pos + n) % m, jnp.minimum(count + n, m)


def update(mem: Memory, real: jax.Array, fake: jax.Array, labels: jax.Array) -> Memory:
  """Writes a batch's real items and pseudo embeddings ``[B, ...]`` (flattened, gradient stopped)."""
  b = labels.shape[0]
  real_buf, pos, count = push(mem.real, mem.pos, mem.count, real.reshape(b, -1), labels)
  fake_buf, _, _ = push(mem.fake, mem.pos, mem.count,
                        jax.lax.stop_gradient(fake).reshape(b, -1), labels)
  return Memory(real_buf, fake_buf, pos, count)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine similarities ``[..., M]`` between rows ``a`` ``[..., D]`` and ``b`` ``[..., M, D]``."""
  an = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  bn = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return jnp.einsum("...d,...md->...m", an, bn)


def terms(pseudo: jax.Array, labels: jax.Array, mem: Memory, lambda_pos: float,
          lambda_neg: float) -> tuple:
  """The two criteria for a batch's pseudo embeddings ``[B, ...]`` with labels ``[B]``.

  Returns:
    ``(pos_loss, neg_loss)``: scalars, ``lambda_pos / |C| * sum_c (1 - min cos(P_c, real_c))`` and
    ``lambda_neg / |C| * sum_c max cos(P_c, fake_c)`` over the classes ``C`` present in the batch, a
    class contributing only once its memories hold items.
  """
  k = mem.real.shape[0]
  p = pseudo.reshape(pseudo.shape[0], -1)
  valid = jnp.arange(mem.real.shape[1])[None, :] < mem.count[labels][:, None]  # [B, M]
  sim_real = jnp.where(valid, cosine(p, mem.real[labels]), jnp.inf).min(-1)  # [B]
  sim_fake = jnp.where(valid, cosine(p, mem.fake[labels]), -jnp.inf).max(-1)
  min_c = jax.ops.segment_min(sim_real, labels, num_segments=k)  # [K], +inf if absent
  max_c = jax.ops.segment_max(sim_fake, labels, num_segments=k)
  present = jnp.zeros((k,), bool).at[labels].set(True)
  active = present & (mem.count > 0)
  num_present = jnp.maximum(present.sum(), 1).astype(p.dtype)
  pos = jnp.sum(jnp.where(active, 1.0 - min_c, 0.0)) / num_present
  neg = jnp.sum(jnp.where(active, max_c, 0.0)) / num_present
  return lambda_pos * pos, lambda_neg * neg
