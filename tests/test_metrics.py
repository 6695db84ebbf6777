"""Coverage, coverage radius, easy / hard split: hand-computed values, chunking, bad input."""
import jax
import numpy as np
import pytest

from jaxdistill import metrics

SYN = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
# Distances to the nearest synthetic point: 0, 1, 5, 2, 10.
REAL = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 4.0], [10.0, 2.0], [20.0, 0.0]], np.float32)


@pytest.mark.parametrize("radius, expected", [(0.0, 0.2), (1.0, 0.4), (1.999, 0.4), (2.0, 0.6),
                                              (5.0, 0.8), (10.0, 1.0)])
def test_coverage_hand_computed(radius, expected):
  got = metrics.coverage(SYN, REAL, radius)
  assert isinstance(got, float)
  assert got == pytest.approx(expected)


def test_nearest_distance_chunked_matches_brute_force():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(23, 5)).astype(np.float32)
  r = rng.normal(size=(17, 5)).astype(np.float32)
  brute = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1)).min(1)
  got = metrics.nearest_distance(q, r, query_chunk=4, ref_chunk=5)  # ragged last blocks
  np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-6)
  # Excluding self when the queries are the references.
  d = np.sqrt(((r[:, None] - r[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  got = metrics.nearest_distance(r, r, query_ids=np.arange(17), query_chunk=3, ref_chunk=4)
  np.testing.assert_allclose(got, d.min(1), rtol=1e-5, atol=1e-6)


def test_coverage_radius_hand_computed():
  pts = np.array([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0], [4.0, 3.0]], np.float32)
  # Nearest other point: 1, 1, 3, 3 -> mean 2.
  assert metrics.coverage_radius(pts) == pytest.approx(2.0)
  assert metrics.coverage_radius(pts, query_chunk=1, ref_chunk=1) == pytest.approx(2.0)
  # A duplicate is another sample at distance 0.
  dup = np.concatenate([pts, pts[:1]])
  assert metrics.coverage_radius(dup) == pytest.approx((0 + 1 + 3 + 3 + 0) / 5)


def test_coverage_radius_subsample_searches_the_whole_set():
  line = np.stack([np.arange(10.0), np.zeros(10)], 1).astype(np.float32)  # every nearest neighbour at 1
  r = metrics.coverage_radius(line, sample_size=3, key=jax.random.key(0))
  assert r == pytest.approx(1.0)
  assert metrics.coverage_radius(line, sample_size=50) == pytest.approx(1.0)  # >= N: all, no key needed
  with pytest.raises(ValueError, match="key"):
    metrics.coverage_radius(line, sample_size=3)
  with pytest.raises(ValueError, match="at least 2"):
    metrics.coverage_radius(line[:1])


def test_split_easy_hard():
  easy, hard = metrics.split_easy_hard(np.array([5.0, 1.0, 3.0, 2.0, 4.0]))
  np.testing.assert_array_equal(hard, [1, 0, 0, 0, 1])
  np.testing.assert_array_equal(easy, ~hard)
  easy, hard = metrics.split_easy_hard(np.array([5.0, 1.0, 3.0, 2.0]), higher_is_harder=False)
  np.testing.assert_array_equal(hard, [0, 1, 0, 1])  # C-score-like: low = hard
  # Ties at the median are split by index (earlier = harder), keeping the halves equal.
  easy, hard = metrics.split_easy_hard(np.array([0, 0, 0, 0, 1, 1]))
  np.testing.assert_array_equal(hard, [1, 0, 0, 0, 1, 1])
  assert easy.sum() == hard.sum() == 3
  with pytest.raises(ValueError, match="NaN"):
    metrics.split_easy_hard(np.array([0.0, np.nan]))


def test_coverage_report():
  def embed_fn(scale, x):
    return x.reshape(x.shape[0], -1) * scale

  as_images = lambda p: p.reshape(-1, 1, 1, 2)
  train = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]], np.float32)  # radius 2
  scores = np.array([0.0, 0.0, 1.0, 1.0, 1.0])  # rows 2, 3, 4 tie; the N // 2 = 2 hard: rows 2, 3
  out = metrics.coverage_report(embed_fn, 1.0, as_images(SYN), as_images(REAL), as_images(train),
                                scores=scores)
  assert out["radius"] == pytest.approx(2.0)
  assert out["coverage"] == pytest.approx(0.6)  # distances 0, 1, 5, 2, 10
  # Easy: rows 0, 1, 4 (0, 1, 10 -> 2 of 3 covered); hard: rows 2, 3 (5, 2 -> 1 of 2).
  assert out["easy"] == pytest.approx(2 / 3)
  assert out["hard"] == pytest.approx(0.5)
  # Features are scaled by params: radius and distances scale together.
  out2 = metrics.coverage_report(embed_fn, 3.0, as_images(SYN), as_images(REAL), as_images(train))
  assert out2["radius"] == pytest.approx(6.0) and out2["coverage"] == pytest.approx(0.6)
  assert "easy" not in out2
  with pytest.raises(ValueError, match="scores"):
    metrics.coverage_report(embed_fn, 1.0, as_images(SYN), as_images(REAL), scores=scores[:2])


def test_bad_input():
  with pytest.raises(ValueError, match="radius"):
    metrics.coverage(SYN, REAL, -1.0)
  with pytest.raises(ValueError, match="features"):
    metrics.coverage(SYN, REAL[:, :1], 1.0)
  with pytest.raises(ValueError, match=r"\[num_samples, D\]"):
    metrics.coverage(SYN[0], REAL, 1.0)
  with pytest.raises(ValueError, match="NaN"):
    metrics.coverage(SYN, np.full((2, 2), np.nan, np.float32), 1.0)


def test_frechet_distance_closed_forms():
  """Zero for the same sample; for diagonal Gaussians ||mu||^2 + sum (sqrt(a) - sqrt(b))^2."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4000, 3))
  assert abs(metrics.frechet_distance(x, x)) < 1e-6
  y = x * np.array([2.0, 1.0, 0.5]) + np.array([1.0, 0.0, -2.0])
  sx, sy = np.var(x, 0, ddof=1), np.var(y, 0, ddof=1)
  want = 5.0 + np.sum((np.sqrt(sx) - np.sqrt(sy)) ** 2)
  assert abs(metrics.frechet_distance(x, y) - want) < 0.05
  assert metrics.frechet_distance(x[:5], y) > 0  # fewer samples than needed for a full-rank covariance
  with pytest.raises(ValueError, match="at least 2 samples"):
    metrics.frechet_distance(x[:1], y)


def test_quality_report_judges_by_the_classifier_and_the_real_images():
  """A classifier that reads the class off the first pixel: agreement counts its hits per class; a set
  moved far from the real images has a larger nearest-real ratio and FID-style distance."""
  rng = np.random.default_rng(1)
  train = rng.normal(size=(200, 4, 4, 1)).astype(np.float32)
  logits_fn = lambda p, x: jax.nn.one_hot((x[:, 0, 0, 0] > 0).astype(np.int32), 2)
  feats_fn = lambda p, x: x.reshape(x.shape[0], -1)
  syn = np.abs(rng.normal(size=(6, 4, 4, 1))).astype(np.float32)  # first pixel > 0: class 1
  labels = np.array([1, 1, 1, 1, 0, 0])
  rep = metrics.quality_report(logits_fn, feats_fn, None, syn, labels, train, train, sample_size=None)
  assert rep["class_agreement"] == pytest.approx(4 / 6)
  assert rep["class_agreement_per_class"] == [0.0, 1.0]
  far = metrics.quality_report(logits_fn, feats_fn, None, syn + 10.0, labels, train, train,
                               sample_size=None)
  assert far["nearest_real_ratio"] > 3 * rep["nearest_real_ratio"] and far["fid_like"] > rep["fid_like"]
  assert rep["real_nearest_real"] == pytest.approx(metrics.coverage_radius(train.reshape(200, -1)))
  with pytest.raises(ValueError, match="syn_labels"):
    metrics.quality_report(logits_fn, feats_fn, None, syn, labels[:3], train, train)


def test_nearest_distance_finds_the_nearest_far_from_the_origin():
  rng = np.random.default_rng(0)
  offset = np.full(48, 300.0)  # |x|^2 ~ 4e6: the float32 expansion cancels the 0.01-scale gaps
  refs = offset + 0.01 * rng.standard_normal((300, 48))
  q = offset + 0.01 * rng.standard_normal((200, 48))
  exact = np.sqrt(((q[:, None, :] - refs[None]) ** 2).sum(-1)).min(1)
  got = metrics.nearest_distance(q.astype(np.float32), refs.astype(np.float32))
  np.testing.assert_allclose(got, exact, rtol=1e-3, atol=1e-5)
