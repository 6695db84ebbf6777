"""Selection baselines: shapes, class balance, determinism, hand-checkable picks, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import selection
from jaxdistill.types import SyntheticSet

K = 3


@pytest.fixture(scope="module")
def toy():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(K), [20, 25, 30]).astype(np.int32)
  images = (rng.normal(size=(labels.size, 4, 4, 1)) + labels[:, None, None, None]).astype(np.float32)
  return images, labels


@pytest.mark.slow
@pytest.mark.parametrize("method", selection.METHODS)
@pytest.mark.parametrize("ipc", [1, 5])
def test_shape_balance_determinism(toy, method, ipc):
  images, labels = toy
  a = selection.select(method, jax.random.key(1), images, labels, K, ipc)
  b = selection.select(method, jax.random.key(1), images, labels, K, ipc)
  assert isinstance(a, SyntheticSet)
  assert a.images.shape == (K * ipc, 4, 4, 1) and a.images.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(a.labels), np.repeat(np.arange(K), ipc))
  np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))


@pytest.mark.parametrize("fn", ["random_indices", "herding_indices", "kcenter_indices"])
def test_real_selections_are_distinct_members_of_their_class(toy, fn):
  images, labels = toy
  f = images.reshape(len(images), -1)
  if fn == "random_indices":
    idx = selection.random_indices(jax.random.key(0), labels, K, 6)
  else:
    idx = getattr(selection, fn)(labels, K, 6, f)
  assert idx.shape == (K * 6,)
  assert len(set(idx.tolist())) == idx.size
  np.testing.assert_array_equal(labels[idx], np.repeat(np.arange(K), 6))


def test_random_differs_across_keys(toy):
  images, labels = toy
  a = selection.random_indices(jax.random.key(0), labels, K, 5)
  b = selection.random_indices(jax.random.key(1), labels, K, 5)
  assert not np.array_equal(a, b)


def test_herding_first_pick_is_nearest_to_mean():
  feats = np.array([[0.0], [10.0], [4.0], [6.0]], np.float32)  # mean 5
  idx = selection.herding_indices(np.zeros(4, np.int32), 1, 2, feats)
  assert idx[0] in (2, 3)  # both at distance 1 from the mean
  # Second pick brings the running mean back to 5: the other of (4, 6).
  assert sorted(idx.tolist()) == [2, 3]


def test_kcenter_picks_farthest_points():
  feats = np.array([[0.0], [1.0], [2.0], [-9.0], [12.0]], np.float32)  # mean 1.2 -> start at 1
  idx = selection.kcenter_indices(np.zeros(5, np.int32), 1, 3, feats)
  assert idx.tolist() == [1, 4, 3]


def test_kmeans_recovers_separated_clusters():
  rng = np.random.default_rng(0)
  centers = np.array([[0, 0], [10, 10], [-10, 10]], np.float32)
  pts = np.concatenate([c + 0.1 * rng.normal(size=(30, 2)) for c in centers]).astype(np.float32)
  cents, assign = selection.kmeans(jax.random.key(0), pts, 3)
  got = np.sort(np.asarray(cents), axis=0)
  np.testing.assert_allclose(got, np.sort(centers, axis=0), atol=0.1)
  assert len(set(np.asarray(assign).tolist())) == 3


def test_average_ipc1_is_class_mean(toy):
  images, labels = toy
  syn = selection.average(jax.random.key(0), images, labels, K, 1)
  for c in range(K):
    np.testing.assert_allclose(np.asarray(syn.images[c]), images[labels == c].mean(0), atol=1e-5)


@pytest.mark.slow
def test_kmeans_nearest_returns_real_images(toy):
  images, labels = toy
  syn = selection.k_means(jax.random.key(0), images, labels, K, 2, nearest=True)
  flat = images.reshape(len(images), -1)
  for row in np.asarray(syn.images).reshape(K * 2, -1):
    assert np.min(np.abs(flat - row).sum(1)) == 0


def test_bad_inputs(toy):
  images, labels = toy
  with pytest.raises(ValueError, match="larger than class 0, which has 20"):
    selection.random(jax.random.key(0), images, labels, K, 21)
  with pytest.raises(ValueError, match="Unknown selection method 'foo'.*herding"):
    selection.select("foo", jax.random.key(0), images, labels, K, 1)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    selection.herding(images[..., 0], labels, K, 1)
  with pytest.raises(ValueError, match="Labels must lie in"):
    selection.random(jax.random.key(0), images, labels + 1, K, 1)
  with pytest.raises(ValueError, match="ipc must be >= 1"):
    selection.random(jax.random.key(0), images, labels, K, 0)
  with pytest.raises(ValueError, match=rf"Labels must be int \[N={len(labels)}\] class ids; got int32 "
                                       rf"\({len(labels) - 1},\)"):
    selection.herding(images, labels[:-1], K, 1)
  with pytest.raises(ValueError, match="must be int"):
    selection.window_init(np.zeros(len(labels)), images, labels.astype(np.float32), K, 1, 0.0)
  # Features of another row count would score images on other images' features.
  for method in ("herding", "k_center", "k_means"):
    with pytest.raises(ValueError, match=rf"features must have one row per image \({len(labels)}\)"):
      selection.select(method, jax.random.key(0), images, labels, K, 2,
                       features=images.reshape(len(labels), -1)[:10])
  with pytest.raises(ValueError, match="features contain NaN"):
    selection.herding(images, labels, K, 2, features=np.full((len(labels), 3), np.nan, np.float32))


def test_difficulty_ranks_a_never_correct_image_above_one_learned_and_forgotten():
  from jaxdistill.selection import scores
  # E = 6: image 0 forgotten 3 times, image 1 never correct, image 2 right 5 times then wrong.
  h = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 0]], bool)
  d = scores.difficulty(scores.first_learned_epoch(h), scores.forgetting_counts(h), 6)
  assert list(np.argsort(-d)) == [1, 0, 2]  # the forgetting ranking's order within epoch E + 1
  assert list(np.argsort(-scores.forgetting_score(h))) == [1, 0, 2]
  assert np.all(np.floor(d) == 7)  # the tie-break stays below one epoch


def test_k_center_and_k_means_pick_distinct_images_when_a_class_repeats_itself():
  f = jnp.array([[0.0], [0.0], [1.0], [-1.0]])
  labels = np.zeros(4, np.int32)
  idx = selection.coreset.kcenter_indices(labels, 1, 4, f)
  assert sorted(idx.tolist()) == [0, 1, 2, 3]
  # Six images, two distinct: k-means cannot form three clusters of different images.
  images = np.array([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5], np.float32).reshape(6, 1, 1, 1)
  y = np.zeros(6, np.int32)
  for nearest in (False, True):
    syn = selection.k_means(jax.random.key(0), images, y, 1, 3, nearest=nearest)
    rows = np.asarray(syn.images).reshape(-1)
    assert set(rows.tolist()) <= {-0.5, 0.5}, (nearest, rows)  # real images, never a zero 'mean'
  syn = selection.k_means(jax.random.key(0), images, y, 1, 2)
  assert sorted(np.asarray(syn.images).reshape(-1).tolist()) == [-0.5, 0.5]


def test_selection_refuses_labels_that_are_not_integer_class_ids():
  f = jnp.ones((6, 2))
  onehot = np.eye(2, dtype=np.int32)[[0, 0, 0, 1, 1, 1]]
  with pytest.raises(ValueError, match=r"int \[N\] class ids"):
    selection.coreset.herding_indices(onehot, 2, 2, f)
  with pytest.raises(ValueError, match=r"int \[N\] class ids"):
    selection.window.difficulty_order(np.arange(6.0), np.array([0, 0, 0.5, 1, 1, 1]), 2)


def test_el2n_and_score_files_refuse_labels_they_cannot_pair():
  from jaxdistill.selection import scores
  apply = lambda p, x: x.reshape(x.shape[0], -1)[:, :3] * p
  x = np.ones((3, 1, 1, 3), np.float32)
  assert scores.el2n_scores(apply, [1.0], x, np.array([0, 1, 2])).shape == (3,)
  with pytest.raises(ValueError, match="must lie in"):
    scores.el2n_scores(apply, [1.0], x, np.array([0, 3, 1]))


def test_load_scores_checks_stored_labels_against_the_training_labels(tmp_path):
  from jaxdistill.selection import scores
  path = str(tmp_path / "c.npz")
  np.savez(path, scores=np.arange(4.0), labels=np.array([0, 1, 1, 0]))
  np.testing.assert_array_equal(scores.load_scores(path, 4, labels=[0, 1, 1, 0]), np.arange(4.0))
  with pytest.raises(ValueError, match="first at row 2"):
    scores.load_scores(path, 4, labels=[0, 1, 0, 1])
  assert scores.load_scores(path, 4).shape == (4,)  # no labels given: not checked


def test_k_means_nearest_selects_real_images_of_each_class():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(40, 4, 4, 1)).astype(np.float32)
  labels = np.repeat(np.arange(4), 10).astype(np.int32)
  syn = selection.select("k_means_nearest", jax.random.key(0), images, labels, 4, 3)
  flat = images.reshape(40, -1)
  for row, y in zip(np.asarray(syn.images).reshape(12, -1), np.asarray(syn.labels)):
    i = int(np.argmin(np.abs(flat - row).sum(1)))
    assert np.array_equal(flat[i], row) and labels[i] == y
  assert "k_means_nearest" in selection.METHODS
