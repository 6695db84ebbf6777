"""SelMatch's sliding-window selection: per class, a window of ``ipc`` real images at a chosen difficulty.

Within each class the images are sorted hardest first by a difficulty score; the window keeps ``ipc``
consecutive images, skipping a number of the hardest ones set by ``beta``. ``window_search`` evaluates the
windows for several ``beta`` and keeps the best (Lee et al., "SelMatch", ICML 2024).

Score convention: **higher = harder** by default (forgetting counts, EL2N, GraNd). For scores where higher
means easier (C-score, the reference's default score) pass ``higher_is_harder=False`` or negate them.
Ties keep index order (a stable sort, as the reference's Python ``sorted``).

Units of ``beta`` (the window's start, counted from the hardest image of each class):

- ``unit="code"``: ``start = int(beta * ipc)``, as the SelMatch reference code computes it
  (``ths = int(args.ipc * args.beta)`` in ``distill.py`` and ``eval.py``). The published (alpha, beta)
  table is in this unit.
- ``unit="percent"``: ``start = int(beta * class_size)``, beta as the fraction of the class skipped from
  the hardest end, as the paper's text describes it. The reference's sliding-window scripts stop beta
  exactly where a window in this unit would run past the class end (CIFAR-10, IPC 1000: beta <= 0.8; IPC
  1500: <= 0.7), although the code computes the start in the "code" unit.

The "code" unit is the reference's ``int(beta * ipc)`` exactly, float rounding included (``0.7 * 90``
gives 62, as there). The "percent" unit, which the reference does not compute, floors with a 1e-9
tolerance, so ``0.7 * 300 = 209.99...`` starts at 210.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import evaluate
from jaxdistill.checks import check_class_ids, check_images_labels
from jaxdistill.types import Dataset, EvalResult, SyntheticSet

UNITS = ("code", "percent")
DEFAULT_BETAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _floor(x: float) -> int:
  """``floor(x)`` tolerant to float error just below an integer (``0.29 * 100 = 28.999...`` -> 29)."""
  return int(math.floor(x + 1e-9))


def _check_scores(scores, labels, num_classes: int) -> tuple:
  scores = np.asarray(scores)
  labels = check_class_ids(labels, num_classes)
  if scores.shape != labels.shape:
    raise ValueError(f"scores must have one entry per image, shape {labels.shape}; got shape "
                     f"{scores.shape}.")
  if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
    raise ValueError(f"scores must be real numbers; got dtype {scores.dtype}.")
  if np.any(np.isnan(scores)):
    raise ValueError(f"scores contain {int(np.isnan(scores).sum())} NaN value(s), e.g. at index "
                     f"{int(np.flatnonzero(np.isnan(scores))[0])}; difficulty order is undefined.")
  return scores, labels


def difficulty_order(scores, labels, num_classes: int, higher_is_harder: bool = True) -> list:
  """Per class, the indices of its images sorted hardest first.

  Args:
    scores: ``[N]`` difficulty score per image (no NaN).
    labels: ``[N]`` int class ids in ``[0, num_classes)``.
    num_classes: K.
    higher_is_harder: True for forgetting / EL2N-like scores; False for C-score (higher = easier).

  Returns:
    A list of K int arrays; entry ``c`` holds the indices ``i`` with ``labels[i] == c`` ordered from the
    hardest to the easiest image, ties in increasing index order.

  Raises:
    ValueError: wrong shapes, NaN scores, labels out of range.
  """
  scores, labels = _check_scores(scores, labels, num_classes)
  key = -scores.astype(np.float64) if higher_is_harder else scores.astype(np.float64)
  order = np.argsort(key, kind="stable")  # hardest first overall, ties by index
  sorted_labels = labels[order]
  return [order[sorted_labels == c] for c in range(num_classes)]


def window_start(beta: float, ipc: int, class_size: int, unit: str = "code") -> int:
  """Offset of the window from the hardest image of a class of ``class_size`` images (see the module)."""
  if unit not in UNITS:
    raise ValueError(f"Unknown unit {unit!r}; known: {', '.join(UNITS)}.")
  beta = float(beta)
  if not math.isfinite(beta) or beta < 0:
    raise ValueError(f"beta must be a finite number >= 0; got {beta}.")
  return int(beta * ipc) if unit == "code" else _floor(beta * class_size)


def _window_per_class(order: list, ipc: int, beta: float, unit: str) -> list:
  if ipc < 1:
    raise ValueError(f"ipc must be >= 1; got {ipc}.")
  out = []
  for c, idx in enumerate(order):
    start = window_start(beta, ipc, idx.size, unit)
    if start + ipc > idx.size:
      raise ValueError(f"The window for beta={beta} (unit {unit!r}) runs past the end of class {c}: the "
                       f"class has {idx.size} images, the window starts at {start} and holds ipc={ipc}, "
                       f"so it needs {start + ipc}.")
    out.append(idx[start:start + ipc])
  return out


def window_indices(scores, labels, num_classes: int, ipc: int, beta: float, unit: str = "code",
                   higher_is_harder: bool = True) -> np.ndarray:
  """``[K * ipc]`` indices of the window subset, class-major, hardest first within each class.

  Per class ``c`` (images sorted hardest first), the rows ``start .. start + ipc - 1`` where
  ``start = int(beta * ipc)`` (``unit="code"``) or ``int(beta * class_size)`` (``unit="percent"``).

  Args:
    scores: ``[N]`` difficulty scores.
    labels: ``[N]`` int class ids.
    num_classes: K.
    ipc: images per class in the window.
    beta: window start (>= 0), in ``unit``.
    unit: ``"code"`` or ``"percent"`` (see the module docstring).
    higher_is_harder: score convention (False for C-score).

  Returns:
    ``[K * ipc]`` int indices into the N images.

  Raises:
    ValueError: beta < 0 (or not finite), ipc < 1, unknown unit, a window past the end of a class, scores
      of the wrong length, NaN scores, labels out of range.
  """
  order = difficulty_order(scores, labels, num_classes, higher_is_harder)
  return np.concatenate(_window_per_class(order, ipc, beta, unit))


def window_init(scores, images, labels, num_classes: int, ipc: int, beta: float, unit: str = "code",
           higher_is_harder: bool = True) -> SyntheticSet:
  """The window subset as a ``SyntheticSet`` (SelMatch's initialization).

  Row order: class-major (class 0's ``ipc`` rows, then class 1's, ...), and within each class hardest
  first. So for SelMatch's partial update the first ``ipc - floor(alpha * ipc)`` rows of each class are
  the harder images (kept frozen) and the last ``floor(alpha * ipc)`` the easier ones (distilled), as
  ``jaxdistill.partial_updates.selmatch_mask`` assumes.

  Args:
    scores: ``[N]`` difficulty scores.
    images: ``[N, H, W, C]`` real images.
    labels: ``[N]`` int class ids.
    num_classes: K.
    ipc: images per class.
    beta: window start (see ``window_indices``).
    unit: ``"code"`` or ``"percent"``.
    higher_is_harder: score convention.

  Returns:
    ``SyntheticSet(images [K * ipc, H, W, C] float32, labels [K * ipc] int32)``.
  """
  images, labels = check_images_labels(images, labels, hard=True)
  idx = window_indices(scores, labels, num_classes, ipc, beta, unit, higher_is_harder)
  return SyntheticSet(jnp.asarray(images[idx], jnp.float32), jnp.asarray(labels[idx], jnp.int32))


def window_search(key: jax.Array, scores, data: Dataset, ipc: int,
                  betas: Sequence[float] = DEFAULT_BETAS,
                  evaluate_fn: Optional[Callable[[jax.Array, SyntheticSet], EvalResult]] = None,
                  unit: str = "code", higher_is_harder: bool = True, **eval_kwargs) -> tuple:
  """Evaluates the window subset for each ``beta`` and returns the best one (SelMatch's window search).

  Every window is evaluated with the same ``key`` (same network initializations and batch orders), so the
  comparison between windows is not blurred by seed noise. Betas whose window runs past the end of some
  class are skipped with a ``UserWarning`` naming them (the reference scripts simply stop the beta range
  there); they are absent from the returned dict.

  Args:
    key: PRNG key passed to every evaluation.
    scores: ``[N]`` difficulty scores of ``data``'s training images.
    data: the dataset (``x_train``, ``y_train`` are selected from; the test split scores the windows,
      as in SelMatch's scripts). To choose beta without looking at test images, pass a copy whose
      ``x_test`` / ``y_test`` hold training images kept out of ``x_train``, or an ``evaluate_fn``
      that scores held-out images (``experiments.selmatch`` scores held-out and test images in one
      pass, as groups, and picks beta by the held-out group).
    ipc: images per class.
    betas: window starts to try (in ``unit``); default 0, 0.1, ..., 0.9.
    evaluate_fn: ``(key, syn) -> EvalResult``; default ``jaxdistill.evaluate.accuracy(key, syn, data,
      **eval_kwargs)`` (e.g. ``model=``, ``num_seeds=``, ``cfg=``).
    unit: ``"code"`` or ``"percent"``.
    higher_is_harder: score convention.
    **eval_kwargs: forwarded to ``evaluate.accuracy`` (only without ``evaluate_fn``).

  Returns:
    ``(best_beta, {beta: EvalResult})``: the beta with the highest mean accuracy (the first one on a tie,
    in the order given) and the results of every evaluated beta.

  Raises:
    ValueError: no beta gives a window that fits, an empty ``betas``, or the errors of ``window_indices``.
    TypeError: both ``evaluate_fn`` and ``eval_kwargs``.
  """
  if evaluate_fn is not None and eval_kwargs:
    raise TypeError(f"Pass either evaluate_fn or keyword arguments for evaluate.accuracy, not both; got "
                    f"{sorted(eval_kwargs)}.")
  if evaluate_fn is None:
    def evaluate_fn(k, syn):
      return evaluate.accuracy(k, syn, data, **eval_kwargs)

  betas = [float(b) for b in betas]
  if not betas:
    raise ValueError("betas is empty.")
  if ipc < 1:
    raise ValueError(f"ipc must be >= 1; got {ipc}.")
  order = difficulty_order(scores, data.y_train, data.num_classes, higher_is_harder)
  images = np.asarray(data.x_train)
  labels = np.asarray(data.y_train)
  results, skipped, seen = {}, [], {}
  for beta in betas:
    if any(window_start(beta, ipc, i.size, unit) + ipc > i.size for i in order):
      skipped.append(beta)
      continue
    idx = np.concatenate(_window_per_class(order, ipc, beta, unit))
    # Betas that round to the same start give the same window (e.g. 0.0 and 0.1 at ipc 5): train once.
    if idx.tobytes() not in seen:
      syn = SyntheticSet(jnp.asarray(images[idx], jnp.float32), jnp.asarray(labels[idx], jnp.int32))
      seen[idx.tobytes()] = evaluate_fn(key, syn)
    results[beta] = seen[idx.tobytes()]
  if skipped:
    warnings.warn(f"window_search skipped beta(s) {skipped}: with ipc={ipc} and unit {unit!r} their window "
                  f"runs past the end of a class (smallest class: {min(i.size for i in order)} images).",
                  UserWarning, stacklevel=2)
  if not results:
    raise ValueError(f"No beta in {betas} gives a window that fits every class (ipc={ipc}, unit {unit!r}, "
                     f"smallest class {min(i.size for i in order)} images).")
  best = max(results, key=lambda b: results[b].mean)  # max keeps the first of equal means
  return best, results
