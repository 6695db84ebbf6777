"""Per-example difficulty scores: forgetting events and first-learned epoch (from the correctness
history the experts record), EL2N, SelMatch's combined difficulty, and score files such as C-scores."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import training
from jaxdistill.checks import check_images_labels, check_label_range


def _check_history(history) -> np.ndarray:
  h = np.asarray(history)
  if h.ndim != 2:
    raise ValueError(f"A correctness history must be [E, N] (epochs x examples); got shape {h.shape}.")
  if h.dtype != bool:
    if not np.all((h == 0) | (h == 1)):
      raise ValueError("A correctness history must be boolean (or 0/1).")
    h = h.astype(bool)
  return h


def forgetting_counts(history) -> np.ndarray:
  """Forgetting events per example (Toneva et al., ICLR 2019), from a history sampled once per epoch.

  Toneva et al. count transitions between the predictions made on the example's (augmented)
  mini-batch during training; the experts here record eval-mode predictions on the un-augmented
  images after each epoch, which sees fewer transitions (at most one per epoch).

  Args:
    history: ``[E, N]`` bool, ``history[e, n]`` = example ``n`` classified correctly after epoch
      ``e + 1``.

  Returns:
    ``[N]`` int32: the number of transitions correct -> incorrect between consecutive epochs. An example
    never learned has 0 events, like an unforgettable one; tell them apart with ``first_learned_epoch``
    (Toneva et al. rank never-learned examples as the most forgotten).
  """
  h = _check_history(history)
  return np.sum(h[:-1] & ~h[1:], axis=0).astype(np.int32)


def forgetting_score(history) -> np.ndarray:
  """Toneva et al.'s forgetting ranking (SelMatch's difficulty on Tiny-ImageNet): forgetting events,
  with examples never classified correctly in any epoch ranked above every other (Toneva et al. count
  them as forgotten infinitely often; here ``E``, more than the at most ``E // 2`` events a learned
  example can have). Higher = harder.

  Args:
    history: ``[E, N]`` bool correctness after each epoch.

  Returns:
    ``[N]`` float64.
  """
  h = _check_history(history)
  return np.where(h.any(axis=0), forgetting_counts(h), float(h.shape[0])).astype(np.float64)


def first_learned_epoch(history) -> np.ndarray:
  """The epoch after which each example is learned for good.

  Args:
    history: ``[E, N]`` bool, ``history[e, n]`` = example ``n`` classified correctly after epoch
      ``e + 1``.

  Returns:
    ``[N]`` int32 in ``1..E + 1``: the first (1-based) epoch after which the example is correct and
    stays correct through epoch ``E``; ``E + 1`` means never learned (incorrect after the last epoch).
  """
  h = _check_history(history)
  e = h.shape[0]
  wrong = ~h
  # Index (0-based) of the last incorrect epoch, -1 if always correct; learned from the next one on.
  last_wrong = np.where(wrong.any(0), e - 1 - np.argmax(wrong[::-1], axis=0), -1)
  return (last_wrong + 2).astype(np.int32)


def el2n_scores(apply_fn: Callable, params_list: Sequence[Any], images, labels,
                batch_size: int = 1000) -> np.ndarray:
  """EL2N scores (Paul et al., NeurIPS 2021): mean over networks of ``||softmax(f(x)) - onehot(y)||_2``.

  Args:
    apply_fn: ``apply_fn(params, x [B, H, W, C]) -> logits [B, K]``, e.g.
      ``lambda p, x: model.apply({"params": p}, x, train=False)``.
    params_list: the networks' parameters, typically early-epoch checkpoints of several experts
      (``load_trajectory(dir, i)`` at epoch 1-20, or ``Trajectories.params_at(i, e)``).
    images: ``[N, H, W, C]`` float32.
    labels: ``[N]`` int class ids.
    batch_size: rows per forward pass.

  Returns:
    ``[N]`` float32 scores; larger = harder.
  """
  params_list = list(params_list)
  if not params_list:
    raise ValueError("el2n_scores needs at least one network.")
  images, labels = check_images_labels(images, labels, hard=True)
  images = jnp.asarray(images, jnp.float32)
  num_classes = jax.eval_shape(apply_fn, params_list[0], images[:1]).shape[-1]
  check_label_range(labels, num_classes)  # out of range: an all-zero one-hot, a plausible score
  labels = jnp.asarray(labels, jnp.int32)

  @jax.jit
  def err(params, x, y):
    logits = apply_fn(params, x)
    return jnp.linalg.norm(jax.nn.softmax(logits) - jax.nn.one_hot(y, logits.shape[-1]), axis=-1)

  total = np.zeros(images.shape[0], np.float64)
  for params in params_list:
    total += np.asarray(training.batched_apply(lambda x, y: err(params, x, y), images, labels, batch_size), np.float64)
  return (total / len(params_list)).astype(np.float32)


def load_scores(path: str, n: int, key: Optional[str] = None, labels=None) -> np.ndarray:
  """Per-example scores from a file: C-scores (Jiang et al.) or anything saved with ``np.save``.

  Args:
    path: a ``.npy`` file holding ``[N]`` numbers, or an ``.npz`` (the C-score release's
      ``cifar10-cscores-orig-order.npz`` has ``scores`` and ``labels``): the array ``key``, else
      ``scores``, else its only array.
    n: the number of training examples the scores must cover.
    key: the array to read from an ``.npz``.
    labels: optional ``[n]`` labels of the training set the scores are for: an ``.npz`` that holds a
      ``labels`` array must agree with them row for row (scores of another ordering of the same
      images would be paired with the wrong ones).

  Returns:
    ``[n]`` float32.

  Raises:
    FileNotFoundError: no such file. ValueError: not 1-D, wrong length, NaN/inf, unknown ``.npz`` key,
    labels that disagree.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"No score file at {path}.")
  loaded = np.load(path, allow_pickle=False)
  if isinstance(loaded, np.lib.npyio.NpzFile):
    with loaded:
      names = list(loaded.files)
      if key is None:
        key = "scores" if "scores" in names else (names[0] if len(names) == 1 else None)
      if key not in names:
        raise ValueError(f"{path} holds arrays {names}; say which one with key=.")
      scores = loaded[key]
      if labels is not None and "labels" in names and key != "labels":
        stored, labels = np.asarray(loaded["labels"]).reshape(-1), np.asarray(labels).reshape(-1)
        if stored.shape != labels.shape or np.any(stored != labels):
          where = (f"first at row {int(np.flatnonzero(stored != labels)[0])}"
                   if stored.shape == labels.shape
                   else f"{stored.shape[0]} stored, {labels.shape[0]} given")
          raise ValueError(f"The labels stored in {path} disagree with the training labels given "
                           f"({where}): the scores are for another ordering of the images.")
  else:
    scores = loaded
  scores = np.asarray(scores)
  if scores.ndim != 1:
    raise ValueError(f"Scores in {path} must be 1-D [N]; got shape {scores.shape}.")
  if scores.shape[0] != n:
    raise ValueError(f"Scores in {path} have length {scores.shape[0]}, but the dataset has {n} "
                     f"examples.")
  if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
    raise ValueError(f"Scores in {path} must be real numbers; got dtype {scores.dtype}.")
  scores = scores.astype(np.float32)
  bad = ~np.isfinite(scores)
  if bad.any():
    raise ValueError(f"Scores in {path} contain {int(bad.sum())} NaN/inf value(s) (first at index "
                     f"{int(np.argmax(bad))}).")
  return scores


def difficulty(first_learned, forgetting, num_epochs: int) -> np.ndarray:
  """SelMatch-style difficulty of each example from one expert: first-learned epoch + forgetting
  events / (E + 1) (higher = harder; the forgetting term only breaks ties within an epoch). Among
  the examples not learned for good (first-learned E + 1), one never classified correctly counts E
  events, as in ``forgetting_score`` (Toneva et al. rank it most forgotten): with its 0 events it
  would rank easier than one learned and forgotten.

  Args:
    first_learned: ``[N]`` from ``first_learned_epoch``; forgetting: ``[N]`` from ``forgetting_counts``.
    num_epochs: E, the epochs the history covers.

  Returns:
    ``[N]`` float64. Average it over experts for a less noisy ranking.
  """
  first_learned, forgetting = np.asarray(first_learned), np.asarray(forgetting)
  if first_learned.shape != forgetting.shape or first_learned.ndim != 1:
    raise ValueError(f"first_learned and forgetting must both be [N]; got {first_learned.shape} and "
                     f"{forgetting.shape}.")
  # Wrong after the last epoch with no correct -> wrong transition: never correct at all.
  never = (first_learned == num_epochs + 1) & (forgetting == 0)
  return first_learned.astype(np.float64) + np.where(never, num_epochs, forgetting) / (num_epochs + 1.0)
