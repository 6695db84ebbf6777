"""SelMatch: sliding-window selection, window search, partial-update mask, combined augmentation."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import augment, evaluate, partial_updates, selection, training
from jaxdistill.types import Dataset, EvalResult, SyntheticSet

# Two interleaved classes: class 0 = rows 0, 2, ..., 14, 16, 17, 18, 19 (12 images), class 1 = rows 1, 3,
# ..., 15 (8 images). Scores: higher = harder; row 0 is the hardest, row 19 the easiest.
LABELS = np.array([0, 1] * 8 + [0, 0, 0, 0], np.int32)
SCORES = np.arange(LABELS.size, dtype=np.float32)[::-1].copy()


def _class_rows(c):
  return np.flatnonzero(LABELS == c)  # already hardest first (scores decrease with the index)


def test_difficulty_order_hardest_first_and_score_convention():
  order = selection.difficulty_order(SCORES, LABELS, 2)
  np.testing.assert_array_equal(order[0], _class_rows(0))
  np.testing.assert_array_equal(order[1], _class_rows(1))
  # C-score-like convention (higher = easier): the reverse order.
  easy_first = selection.difficulty_order(SCORES, LABELS, 2, higher_is_harder=False)
  np.testing.assert_array_equal(easy_first[0], _class_rows(0)[::-1])
  # Ties keep index order.
  tied = selection.difficulty_order(np.array([1.0, 5.0, 1.0, 5.0]), np.zeros(4, np.int32), 1)
  np.testing.assert_array_equal(tied[0], [1, 3, 0, 2])


@pytest.mark.parametrize("unit, beta, start0, start1", [
    ("code", 0.0, 0, 0),
    ("code", 0.5, 2, 2),     # int(0.5 * ipc=4) = 2 in every class
    ("code", 0.9, 3, 3),     # int(3.6) = 3
    ("percent", 0.25, 3, 2),  # int(0.25 * 12) = 3, int(0.25 * 8) = 2
    ("percent", 0.5, 6, 4),   # exactly reaches the end of class 1 (4 + 4 = 8)
])
def test_window_indices_both_units(unit, beta, start0, start1):
  idx = selection.window_indices(SCORES, LABELS, 2, 4, beta, unit=unit)
  expected = np.concatenate([_class_rows(0)[start0:start0 + 4], _class_rows(1)[start1:start1 + 4]])
  np.testing.assert_array_equal(idx, expected)


def test_window_set_is_class_major_hardest_first():
  images = np.arange(LABELS.size, dtype=np.float32).reshape(-1, 1, 1, 1) * np.ones((1, 2, 2, 1), np.float32)
  syn = selection.window_init(SCORES, images, LABELS, 2, 3, 1.0)  # start = int(1.0 * 3) = 3
  assert isinstance(syn, SyntheticSet)
  assert syn.images.dtype == jnp.float32 and syn.labels.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(syn.labels), [0, 0, 0, 1, 1, 1])
  rows = np.asarray(syn.images)[:, 0, 0, 0].astype(int)
  np.testing.assert_array_equal(rows, [6, 8, 10, 7, 9, 11])
  assert np.all(np.diff(SCORES[rows[:3]]) < 0) and np.all(np.diff(SCORES[rows[3:]]) < 0)


def test_window_errors():
  with pytest.raises(ValueError, match="beta"):
    selection.window_indices(SCORES, LABELS, 2, 4, -0.1)
  # Code unit: start int(1.5 * 4) = 6, 6 + 4 > 8 images of class 1.
  with pytest.raises(ValueError, match=r"class 1: the class has 8 images, the window starts at 6 and "
                                       r"holds ipc=4"):
    selection.window_indices(SCORES, LABELS, 2, 4, 1.5)
  # Percent unit: class 0 starts at int(0.75 * 12) = 9, 9 + 4 > 12.
  with pytest.raises(ValueError, match="class 0: the class has 12 images, the window starts at 9"):
    selection.window_indices(SCORES, LABELS, 2, 4, 0.75, unit="percent")
  with pytest.raises(ValueError, match="NaN"):
    selection.window_indices(np.where(np.arange(20) == 3, np.nan, SCORES), LABELS, 2, 2, 0.0)
  with pytest.raises(ValueError, match="one entry per image"):
    selection.window_indices(SCORES[:-1], LABELS, 2, 2, 0.0)
  with pytest.raises(ValueError, match="unit"):
    selection.window_indices(SCORES, LABELS, 2, 2, 0.0, unit="fraction")


def _data():
  x = np.arange(LABELS.size, dtype=np.float32).reshape(-1, 1, 1, 1)
  return Dataset("toy", x, LABELS, x[:4], LABELS[:4], 2, ("a", "b"), (0.0,), (1.0,))


def test_window_search_picks_best_beta_and_skips_windows_past_the_end():
  data = _data()
  seen = []

  def fake_eval(key, syn):
    # Accuracy peaks for the window whose hardest class-0 image is row 4 (beta 0.5, ipc 4: start 2).
    seen.append(jax.random.key_data(key))
    first = float(syn.images[0, 0, 0, 0])
    return EvalResult(-abs(first - 4.0), 0.0, np.zeros(1))

  with pytest.warns(UserWarning, match=r"skipped beta\(s\) \[1.5\]"):
    best, results = selection.window_search(jax.random.key(0), SCORES, data, 4,
                                            betas=(0.0, 0.25, 0.5, 1.0, 1.5), evaluate_fn=fake_eval)
  assert best == 0.5
  assert sorted(results) == [0.0, 0.25, 0.5, 1.0]
  assert results[0.5].mean == 0.0
  # The same key for every window.
  assert all(np.array_equal(s, seen[0]) for s in seen)
  with pytest.raises(ValueError, match="No beta"):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      selection.window_search(jax.random.key(0), SCORES, data, 4, betas=(2.0,), evaluate_fn=fake_eval)
  with pytest.raises(TypeError):
    selection.window_search(jax.random.key(0), SCORES, data, 4, evaluate_fn=fake_eval, num_seeds=1)


def test_window_search_default_evaluation_runs():
  data = _data()
  cfg = evaluate.EvalConfig(epochs=1, augment="none", batch_size=8)
  best, results = selection.window_search(jax.random.key(0), SCORES, data, 2, betas=(0.0, 1.0),
                                          model="mlp", num_seeds=1, cfg=cfg)
  assert best in (0.0, 1.0) and set(results) == {0.0, 1.0}
  assert all(0.0 <= r.mean <= 1.0 for r in results.values())


# ------------------------------------------------------------------ partial-update mask


def test_selmatch_mask_freezes_the_hardest_rows_of_each_class():
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2], np.int32)
  np.testing.assert_array_equal(partial_updates.selmatch_mask(labels, 3, 0.0), np.zeros(10, bool))
  np.testing.assert_array_equal(partial_updates.selmatch_mask(labels, 3, 1.0), np.ones(10, bool))
  # alpha 0.5: floor(2) of 4, floor(2) of 4, floor(1) of 2 -- the last rows (easier) distilled.
  np.testing.assert_array_equal(partial_updates.selmatch_mask(labels, 3, 0.5),
                                [0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
  # Floor, as the reference's int(ipc * alpha): 0.6 * 4 = 2.4 -> 2, 0.6 * 2 = 1.2 -> 1.
  np.testing.assert_array_equal(partial_updates.selmatch_mask(labels, 3, 0.6),
                                [0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
  # The reference's int(ipc * alpha), float rounding included: 0.29 * 100 = 28.999... -> 28.
  assert partial_updates.selmatch_mask(np.zeros(100, np.int32), 1, 0.29).sum() == 28
  assert partial_updates.check_mask(partial_updates.selmatch_mask(labels, 3, 0.5), 10) is not None
  # The window's start in the reference's unit is its int(ipc * beta) exactly (0.7 * 90 = 62.99...);
  # in the paper's percent unit, which the reference never computes, float error is not floored away.
  from jaxdistill.selection import window
  assert window.window_start(0.7, 90, 300, unit="code") == 62 == int(90 * 0.7)
  assert window.window_start(0.7, 90, 300, unit="percent") == 210


def test_selmatch_mask_errors():
  labels = np.array([0, 0, 1, 1], np.int32)
  for alpha in (-0.1, 1.1, float("nan")):
    with pytest.raises(ValueError, match="alpha"):
      partial_updates.selmatch_mask(labels, 2, alpha)
  with pytest.raises(ValueError, match="class-major"):
    partial_updates.selmatch_mask(np.array([0, 1, 0, 1], np.int32), 2, 0.5)
  with pytest.raises(ValueError, match=r"\[0, num_classes=2\)"):
    partial_updates.selmatch_mask(np.array([0, 2], np.int32), 2, 0.5)


def test_augment_groups():
  mask = np.array([False, True, True, False])
  g = partial_updates.augment_groups(mask)
  assert g.dtype == np.int32
  np.testing.assert_array_equal(g, [1, 0, 0, 1])
  with pytest.raises(ValueError):
    partial_updates.augment_groups(np.array([0, 1]))


def test_masked_rows_zeroes_frozen_rows_and_keeps_the_inner_state():
  """The optax wrapper: frozen rows of images/labels get exactly zero updates under momentum and Adam
  (whose updates would otherwise move them), other leaves pass unchanged, and the state is the inner
  optimizer's own tree (checkpoints of the unwrapped optimizer restore)."""
  import optax
  mask = jnp.array([True, False, True])
  params = {"images": jnp.ones((3, 2, 2, 1)), "labels": jnp.ones((3, 4)), "log_lr": jnp.zeros(())}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  for inner in (optax.sgd(0.1, momentum=0.9), optax.adam(0.1)):
    tx = partial_updates.masked_rows(inner, mask)
    state = tx.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(inner.init(params))
    with jax.numpy_dtype_promotion("standard"):  # Adam's bias correction mixes int and float
      for _ in range(2):
        updates, state = tx.update(grads, state, params)
    for k in ("images", "labels"):
      assert (np.asarray(updates[k])[1] == 0).all()
      assert (np.asarray(updates[k])[[0, 2]] != 0).all()
    assert float(updates["log_lr"]) != 0.0
  inner = optax.sgd(0.1)
  assert partial_updates.masked_rows(inner, None) is inner


# ------------------------------------------------------------------ combined augmentation


def test_apply_augment_routes_rows_by_group():
  x = jnp.ones((4, 2, 2, 1), jnp.float32)
  groups = jnp.asarray(partial_updates.augment_groups(np.array([True, False, True, False])))
  augs = (lambda k, v: v * 10.0, lambda k, v: v * -1.0)
  out = np.asarray(partial_updates.route_augment(augs, jax.random.key(0), x, groups))
  np.testing.assert_array_equal(out[:, 0, 0, 0], [10.0, -1.0, 10.0, -1.0])


def _crop_flip_candidates(img, pad=4):
  """Every output of RandomCrop(padding=pad) + optional horizontal flip of one ``[H, W, C]`` image."""
  h, w, _ = img.shape
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  crops = [padded[oy:oy + h, ox:ox + w] for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)]
  return np.stack(crops + [c[:, ::-1] for c in crops])


def _is_crop_flip(out, img):
  cands = _crop_flip_candidates(img)
  return bool(np.any(np.all(np.abs(cands - out[None]) < 1e-6, axis=(1, 2, 3))))


def test_combined_augmentation_frozen_rows_crop_flip_distilled_rows_dsa():
  rng = np.random.default_rng(0)
  labels = np.array([0, 0, 0, 1, 1, 1], np.int32)
  x = jnp.asarray(rng.uniform(0.5, 1.5, size=(6, 8, 8, 3)), jnp.float32)
  mask = partial_updates.selmatch_mask(labels, 2, 1 / 3)  # one distilled (last) row per class
  np.testing.assert_array_equal(mask, [0, 0, 1, 0, 0, 1])
  groups = partial_updates.augment_groups(mask)
  cfg = evaluate.EvalConfig(augment=partial_updates.combined_augment())
  assert cfg.augment == ("dsa_image", "crop_flip")
  augs = tuple(training.resolve_augment(a, "cifar10") for a in cfg.augment)
  assert augs[1] is augment.crop_flip
  dsa_not_crop_flip = 0
  for i in range(8):
    out = np.asarray(partial_updates.route_augment(augs, jax.random.key(i), x, jnp.asarray(groups)))
    xs = np.asarray(x)
    for r in np.flatnonzero(~mask):
      assert _is_crop_flip(out[r], xs[r]), f"frozen row {r} is not a crop+flip of its input (key {i})"
    dsa_not_crop_flip += sum(not _is_crop_flip(out[r], xs[r]) for r in np.flatnonzero(mask))
  # DSA (colour, scale, rotate, cutout, ...) leaves the crop+flip set on most draws.
  assert dsa_not_crop_flip >= 4


def test_difficulty_orders_by_first_learned_epoch_then_forgetting():
  """Later-learned examples are harder; within an epoch, more forgetting events are harder; the
  forgetting term never outweighs an epoch."""
  from jaxdistill.selection import scores
  fl = np.array([1, 3, 3, 2])
  fg = np.array([4, 0, 2, 0])
  d = scores.difficulty(fl, fg, num_epochs=4)
  assert list(np.argsort(d)) == [0, 3, 1, 2]
  assert d[0] < 2  # four forgetting events at epoch 1 stay below any epoch-2 example
  with pytest.raises(ValueError, match="both be"):
    scores.difficulty(fl, fg[:3], num_epochs=4)


def test_forgetting_score_counts_events_and_ranks_never_learned_hardest():
  """Toneva et al.: correct -> incorrect transitions; an example never correct outranks every learned
  one, even the most forgotten; the registry's difficulty kinds are named or refused."""
  from jaxdistill.selection import scores
  from experiments import registry
  h = np.array([[1, 1, 0, 0],
                [0, 1, 0, 1],
                [1, 1, 0, 0],
                [0, 1, 0, 1]], bool)  # columns: forgotten twice, never forgotten, never learned, once
  s = scores.forgetting_score(h)
  np.testing.assert_array_equal(s, [2.0, 0.0, 4.0, 1.0])
  assert int(np.argmax(s)) == 2
  with pytest.raises(ValueError, match="Unknown difficulty 'cscore'"):
    registry.difficulty_scores("/nonexistent", [0], 4, "cscore")
