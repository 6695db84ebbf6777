"""Data: the real Fashion-MNIST IDX files, npz, TFDS under mock_data (no tensorflow), ZCA, sampling,
bad input."""
import functools
import gzip
import importlib.util

import jax
import numpy as np
import pytest

from jaxdistill import data
from jaxdistill.data import datasets
from jaxdistill.types import Dataset

import archives

@pytest.fixture(scope="module")
def fmnist():
  return data.load("fashion_mnist")


def test_fashion_mnist_idx_real_files(fmnist):
  assert fmnist.x_train.shape == (60000, 28, 28, 1) and fmnist.x_train.dtype == np.float32
  assert fmnist.x_test.shape == (10000, 28, 28, 1)
  assert fmnist.y_train.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(fmnist.y_train), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(fmnist.y_test), np.full(10, 1000))
  assert fmnist.num_classes == 10 and fmnist.class_names[0] == "T-shirt/top"
  # Normalized with the reference constants: close to zero mean, unit std over the training set.
  assert abs(float(fmnist.x_train.mean())) < 0.01 and abs(float(fmnist.x_train.std()) - 1) < 0.01


def test_max_per_class_is_balanced_and_keyed():
  a = data.load("fashion_mnist", max_per_class=50, key=jax.random.key(0))
  b = data.load("fashion_mnist", max_per_class=50, key=jax.random.key(0))
  c = data.load("fashion_mnist", max_per_class=50, key=jax.random.key(1))
  np.testing.assert_array_equal(np.bincount(a.y_train), np.full(10, 50))
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert not np.array_equal(a.x_train, c.x_train)
  assert a.x_test.shape[0] == 10000
  with pytest.raises(ValueError, match="key"):
    data.load("fashion_mnist", max_per_class=5)


def _write_idx(path, arr):
  arr = np.asarray(arr, np.uint8)
  header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + arr.tobytes())


def _fake_idx_dir(tmp_path, gz=True, n=30):
  rng = np.random.default_rng(0)
  ext = ".gz" if gz else ""
  for split, m in (("train", n), ("t10k", n // 3)):
    _write_idx(str(tmp_path / f"{split}-images-idx3-ubyte{ext}"), rng.integers(0, 256, (m, 28, 28)))
    _write_idx(str(tmp_path / f"{split}-labels-idx1-ubyte{ext}"), np.arange(m) % 10)
  return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_from_explicit_dir(tmp_path, gz):
  d = data.load("fashion_mnist", data_dir=str(_fake_idx_dir(tmp_path, gz)))
  assert d.x_train.shape == (30, 28, 28, 1) and d.x_test.shape == (10, 28, 28, 1)
  np.testing.assert_array_equal(d.y_train, np.arange(30) % 10)


def test_corrupt_and_truncated_idx(tmp_path):
  _fake_idx_dir(tmp_path)
  p = str(tmp_path / "train-images-idx3-ubyte.gz")
  with gzip.open(p, "rb") as f:
    raw = f.read()
  with gzip.open(p, "wb") as f:
    f.write(raw[:-100])
  with pytest.raises(data.DataError, match="corrupt"):
    data.load("fashion_mnist", data_dir=str(tmp_path))
  with open(p, "wb") as f:
    f.write(b"not a gzip file at all")
  with pytest.raises(data.DataError, match="Cannot read IDX"):
    data.load("fashion_mnist", data_dir=str(tmp_path))


def test_npz_round_trip(tmp_path, fmnist):
  small = data.load("fashion_mnist", max_per_class=3, key=jax.random.key(0))
  path = str(tmp_path / "fashion_mnist.npz")
  data.save_npz(path, small)
  back = data.load("fashion_mnist", data_dir=str(tmp_path))
  np.testing.assert_allclose(back.x_train, small.x_train, atol=1e-5)
  np.testing.assert_array_equal(back.y_train, small.y_train)
  np.testing.assert_array_equal(data.load("fashion_mnist", data_dir=path).y_test, small.y_test)


def test_tfds_path_under_mock_data_without_tensorflow():
  import tensorflow_datasets as tfds
  assert importlib.util.find_spec("tensorflow") is None, "this test checks the no-tensorflow path"
  with tfds.testing.mock_data(num_examples=12):
    mnist = data.load("mnist", source="tfds")
    cifar = data.load("cifar10", source="tfds")
  assert mnist.x_train.shape == (12, 28, 28, 1) and mnist.x_train.dtype == np.float32
  assert cifar.x_train.shape == (12, 32, 32, 3) and cifar.x_test.shape == (12, 32, 32, 3)
  assert cifar.class_names[0] == "airplane" and cifar.num_classes == 10
  assert cifar.y_train.dtype == np.int32 and 0 <= cifar.y_train.min() <= cifar.y_train.max() < 10
  assert np.isfinite(cifar.x_train).all()


def test_zca_round_trip_and_whitening():
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(48, 48))
  x = (rng.normal(size=(2000, 48)) @ mix).reshape(2000, 4, 4, 3).astype(np.float32)
  z = data.fit_zca(x, eps=1e-4)
  w = np.asarray(data.apply_zca(z, x))
  assert w.shape == x.shape
  np.testing.assert_allclose(np.asarray(data.invert_zca(z, w)), x, atol=2e-3 * np.abs(x).max())
  cov = np.cov(w.reshape(2000, -1), rowvar=False)
  np.testing.assert_allclose(cov, np.eye(48), atol=0.05)  # whitened: identity covariance
  # Regularization (eps=0.1) shrinks the spectrum: covariance eigenvalues strictly below 1.
  reg = np.asarray(data.apply_zca(data.fit_zca(x, eps=0.1), x)).reshape(2000, -1)
  assert np.linalg.eigvalsh(np.cov(reg, rowvar=False)).max() < 1.0
  with pytest.raises(ValueError, match="NaN"):
    data.fit_zca(np.full((4, 2, 2, 1), np.nan, np.float32))
  with pytest.raises(ValueError, match="Unknown ZCA mode"):
    data.fit_zca(x, mode="pca")


def test_zca_modes_are_kornias_absolute_floor_and_kips_relative_one():
  """"kornia" (MTT / DATM): ``(x - mean) U diag(1 / sqrt(S + eps)) U^T`` with the covariance over
  N - 1, fitted on [0, 1] pixels by whiten_dataset; "relative" (KIP / FRePo): floor eps * mean(S),
  covariance over N, on the images as given."""
  rng = np.random.default_rng(1)
  pix = rng.uniform(size=(300, 3, 3, 1)).astype(np.float64)
  flat = pix.reshape(300, -1)
  xc = flat - flat.mean(0)
  def expected(cov, floor):
    u, s, _ = np.linalg.svd(cov)
    return xc @ (u @ np.diag(1.0 / np.sqrt(s + floor)) @ u.T)
  got = np.asarray(data.apply_zca(data.fit_zca(pix, 0.1), pix)).reshape(300, -1)
  np.testing.assert_allclose(got, expected(xc.T @ xc / 299, 0.1), rtol=2e-4, atol=2e-5)
  rel_cov = xc.T @ xc / 300
  got = np.asarray(data.apply_zca(data.fit_zca(pix, 0.1, "relative"), pix)).reshape(300, -1)
  np.testing.assert_allclose(got, expected(rel_cov, 0.1 * np.linalg.eigvalsh(rel_cov).mean()),
                             rtol=2e-4, atol=2e-5)
  mean, std = (0.3,), (0.2,)
  d = Dataset("toy", ((pix - 0.3) / 0.2).astype(np.float32), np.zeros(300, np.int32),
              ((pix[:10] - 0.3) / 0.2).astype(np.float32), np.zeros(10, np.int32), 1, ("a",), mean, std)
  white, _ = data.whiten_dataset(d)  # the normalized images are whitened as their [0, 1] pixels
  np.testing.assert_allclose(white.x_train.reshape(300, -1), expected(xc.T @ xc / 299, 0.1),
                             rtol=2e-4, atol=2e-4)


def test_balanced_sampling_keyed():
  labels = np.repeat(np.arange(4), [5, 6, 7, 8])
  a = data.sample_balanced(jax.random.key(0), labels, 4, 5)
  b = data.sample_balanced(jax.random.key(0), labels, 4, 5)
  c = data.sample_balanced(jax.random.key(1), labels, 4, 5)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(labels[a], np.repeat(np.arange(4), 5))
  assert len(set(a.tolist())) == 20
  idx = data.class_indices(labels, 4)
  assert [len(i) for i in idx] == [5, 6, 7, 8] and all((labels[i] == c).all() for c, i in enumerate(idx))
  with pytest.raises(ValueError, match="larger than class 0"):
    data.sample_balanced(jax.random.key(0), labels, 4, 6)


def test_bad_input(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="Unknown dataset 'imagenot'.*fashion_mnist"):
    data.load("imagenot")
  with pytest.raises(data.DataError, match="does not exist"):
    data.load("fashion_mnist", data_dir=str(tmp_path / "missing"))
  with pytest.raises(data.DataError, match="neither IDX"):
    data.load("fashion_mnist", data_dir=str(tmp_path))
  monkeypatch.setitem(datasets.KNOWN, "fashion_mnist",
                      datasets._Info((0.5,), (0.5,), (), str(tmp_path / "gone")))
  with pytest.raises(data.DataError, match="apt-get install -y dataset-fashion-mnist"):
    data.load("fashion_mnist", source="local")
  with pytest.raises(ValueError, match="NaN"):
    data.validate_images(np.full((2, 4, 4, 1), np.nan))
  with pytest.raises(ValueError, match="rank"):
    data.validate_images(np.zeros((4, 4, 1)))
  with pytest.raises(ValueError, match="3 channel"):
    data.validate_images(np.zeros((2, 4, 4, 1)), channels=3)
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    data.validate_labels(np.array([0, 10]), 10)
  bad = tmp_path / "bad"
  bad.mkdir()
  np.savez(bad / "data.npz", x_train=np.zeros((2, 4, 4)))
  with pytest.raises(data.DataError, match="lacks the arrays"):
    data.load("custom", data_dir=str(bad))


def test_layout_mistakes_are_refused_not_guessed(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
  y = np.repeat(np.arange(2), 10)

  def write(name, **arrays):
    path = tmp_path / f"{name}.npz"
    np.savez(path, **{**dict(x_train=x, y_train=y, x_test=x, y_test=y), **arrays})
    return str(path)

  with pytest.raises(ValueError, match=r"NCHW.*transpose\(0, 2, 3, 1\)"):
    data.load("custom", data_dir=write("nchw", x_train=x.transpose(0, 3, 1, 2),
                                      x_test=x.transpose(0, 3, 1, 2)))
  with pytest.raises(ValueError, match="non-integer values"):
    data.load("custom", data_dir=write("floaty", y_train=y + 0.5))
  with pytest.raises(ValueError, match=r"one-hot.*argmax"):
    data.load("custom", data_dir=write("onehot", y_train=np.eye(2)[y]))
  ok = data.load("custom", data_dir=write("wholefloat", y_train=y.astype(np.float32)))
  np.testing.assert_array_equal(ok.y_train, y)
  with pytest.raises(data.DataError, match=r"train images are in \[0, 1\] but test images in \[0, 255\]"):
    data.load("custom", data_dir=write("scales", x_train=x / 255.0))
  with pytest.raises(ValueError, match="Unknown dataset name 'fasion_mnist'"):
    data.load("fasion_mnist", data_dir=write("name"))
  # Images saved already normalized would be divided by 255 as pixels and come out nearly constant.
  normed = ((x / 255.0 - 0.2861) / 0.3530).astype(np.float32)
  with pytest.raises(data.DataError, match=r"train images hold values in \[-0.81.*store the images "
                                           r"unnormalized"):
    data.load("custom", data_dir=write("normalized", x_train=normed, x_test=normed))
  # max_per_class caps each class; a smaller class keeps all its images and cuts no other class.
  uneven = write("uneven", x_train=x[:15], y_train=y[:15])  # class 0: 10 images, class 1: 5
  counts = np.bincount(data.load("custom", data_dir=uneven, max_per_class=8,
                                 key=jax.random.key(0)).y_train)
  np.testing.assert_array_equal(counts, [8, 5])
  with pytest.raises(ValueError, match="max_per_class must be an integer >= 1; got 0"):
    data.load("custom", data_dir=uneven, max_per_class=0, key=jax.random.key(0))


def _rgb_npz(path, k=3, per=4, classes_in_train=None):
  rng = np.random.default_rng(0)
  y_train = np.repeat(np.asarray(classes_in_train if classes_in_train is not None else range(k)), per)
  x_train = rng.integers(0, 256, (len(y_train), 4, 4, 3)).astype(np.uint8)
  x_train[0] = 0  # black pixels: de-normalized, float rounding puts them just below 0
  x_test = rng.integers(0, 256, (k * 2, 4, 4, 3)).astype(np.uint8)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=np.arange(k * 2) % k)
  return x_train


def test_rgb_npz_round_trip_with_black_pixels_and_tiny_imagenets_statistics(tmp_path):
  for name in ("cifar10", "tiny_imagenet"):
    raw = _rgb_npz(str(tmp_path / "in.npz"), k=10)
    d = data.load(name, data_dir=str(tmp_path / "in.npz"))
    data.save_npz(str(tmp_path / "out.npz"), d)
    back = data.load(name, data_dir=str(tmp_path / "out.npz"))
    np.testing.assert_allclose(back.x_train, d.x_train, atol=1e-5)
    np.testing.assert_allclose(data.denormalize(back.x_train, back), raw / 255.0, atol=1e-5)
  np.testing.assert_allclose(d.mean + d.std, (0.485, 0.456, 0.406, 0.229, 0.224, 0.225), rtol=1e-6)
  for source in ("local", "auto"):
    with pytest.raises(data.DataError, match="tiny_imagenet.npz"):
      data.load("tiny_imagenet", source=source)


def test_a_corrupt_gzip_stream_is_a_data_error(tmp_path):
  _fake_idx_dir(tmp_path)
  p = tmp_path / "t10k-labels-idx1-ubyte.gz"
  raw = bytearray(p.read_bytes())
  hit = 0
  for offset in range(12, len(raw) - 8):  # flip bytes of the deflate stream until zlib objects
    bad = bytearray(raw)
    bad[offset] ^= 0xFF
    bad[offset + 1] ^= 0xFF
    p.write_bytes(bytes(bad))
    try:
      data.load("fashion_mnist", data_dir=str(tmp_path))
    except data.DataError:
      hit += 1
    except Exception as e:  # anything else (zlib.error) is the bug
      raise AssertionError(f"offset {offset}: {type(e).__name__}: {e}") from e
  assert hit > 0


def test_max_per_class_keeps_a_class_with_no_training_images_empty(tmp_path):
  _rgb_npz(str(tmp_path / "d.npz"), k=5, classes_in_train=[0, 1, 2, 3])  # class 4: test only
  d = data.load("custom", data_dir=str(tmp_path / "d.npz"), max_per_class=2, key=jax.random.key(0))
  assert d.num_classes == 5 and np.bincount(d.y_train, minlength=5).tolist() == [2, 2, 2, 2, 0]


def test_whitened_data_records_its_zca_and_maps_back_to_pixels(tmp_path):
  raw = _rgb_npz(str(tmp_path / "d.npz"), k=10, per=20)
  d = data.load("cifar10", data_dir=str(tmp_path / "d.npz"))
  for mode in ("kornia", "relative"):
    w, z = data.whiten_dataset(d, mode=mode)
    assert w.zca.w_inv is z.w_inv and w.zca.mode == mode and w.mean == d.mean
    np.testing.assert_allclose(data.denormalize(w.x_train, w), raw / 255.0, atol=2e-3)
    with pytest.raises(ValueError, match="whitened already"):
      data.whiten_dataset(w)
  data.save_npz(str(tmp_path / "w.npz"), w)  # the pixels, not the whitened values
  np.testing.assert_allclose(data.load("cifar10", data_dir=str(tmp_path / "w.npz")).x_train,
                             d.x_train, atol=2e-3 / min(d.std))


def test_initialize_leaves_the_cluster_to_jax_where_no_count_is_set(monkeypatch):
  from jaxdistill import parallel
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  parallel.initialize()  # SLURM-style: JAX reads the address and detects the rest
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  parallel.initialize()
  parallel.initialize("h:1", 8, 0)
  assert calls == [(None, None, None), (None, 4, 2), ("h:1", 8, 0)]


def _poisoned(n=20, rows=(12, 17)):
  """20 real images of 2 classes (10 each), with an inf pixel in ``rows[0]`` and a NaN in the rest."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
  x[rows[0], 1, 2, 0] = np.inf
  for r in rows[1:]:
    x[r, 3, 0, 0] = np.nan
  return x, np.repeat(np.arange(2, dtype=np.int32), n // 2)


def _entries(tmp_path):
  """Every entry that takes raw real images, as ``name -> fn(images, labels)``."""
  from jaxdistill import evaluate, experts, models, selection
  from jaxdistill.data import sampling
  k = jax.random.key(0)
  scores = np.arange(20, dtype=np.float64)

  def accuracy(x, y):  # the evaluation's test set
    good, _ = _poisoned(rows=(0,))
    good[0] = 0.0
    d = Dataset("toy", good, y, x, y, 2, ("a", "b"), (0.0,), (1.0,))
    syn = (good[:2], y[[0, 10]])
    evaluate.accuracy(k, syn, d, model="mlp", num_seeds=1, model_kwargs={"width": 4},
                      cfg=evaluate.EvalConfig(epochs=1, augment="none"))

  return {
      "class_balanced_sampler": lambda x, y: sampling.class_balanced_sampler(x, y, 2, 2),
      "random_sampler": lambda x, y: sampling.random_sampler(x, y, 4),
      "subset_per_class": lambda x, y: sampling.subset_per_class(k, x, y, 2, 2),
      "coreset.random": lambda x, y: selection.random(k, x, y, 2, 1),
      "coreset.herding": lambda x, y: selection.herding(x, y, 2, 1),
      "coreset.k_center": lambda x, y: selection.k_center(x, y, 2, 1),
      "coreset.k_means": lambda x, y: selection.k_means(k, x, y, 2, 1),
      "coreset.average": lambda x, y: selection.average(k, x, y, 2, 1),
      "window_init": lambda x, y: selection.window_init(scores, x, y, 2, 1, 0.0),
      "experts.train": lambda x, y: experts.train(k, (x, y), models.get_model("mlp", 2, width=4),
                                                  str(tmp_path / "experts"), progress=False,
                                                  cfg=experts.ExpertConfig(epochs=1, augment="none")),
      "evaluate.accuracy test set": accuracy,
  }


ENTRIES = ("class_balanced_sampler", "random_sampler", "subset_per_class", "coreset.random",
           "coreset.herding", "coreset.k_center", "coreset.k_means", "coreset.average", "window_init",
           "experts.train", "evaluate.accuracy test set")


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_entry_taking_raw_real_images_refuses_nan_and_inf_naming_the_rows(entry, tmp_path):
  """One inf pixel (row 12) and one NaN pixel (row 17) among 20 real images: refused where the array
  enters, with the rows named, before any step runs."""
  fn = _entries(tmp_path)[entry]
  x, y = _poisoned()
  with pytest.raises(ValueError, match=r"rows \[12, 17\] contain NaN or inf \(2 of 20 images\)"):
    fn(x, y)
  fn(np.nan_to_num(x, posinf=0.0), y)  # the same call on finite images goes through


def test_the_finite_check_names_at_most_ten_rows_and_lets_integer_images_pass(tmp_path):
  from jaxdistill.checks import check_finite_images
  x = np.zeros((30, 2, 2, 1), np.float32)
  x[5:25] = np.nan
  with pytest.raises(ValueError, match=r"Real images: rows \[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, \.\.\. "
                                       r"\(10 more\)\] contain NaN or inf \(20 of 30 images\)"):
    check_finite_images(x, "Real images")
  check_finite_images(np.zeros((3, 2, 2, 1), np.uint8))
  xl, yl = _poisoned()
  np.savez(tmp_path / "d.npz", x_train=xl, y_train=yl, x_test=np.zeros((2, 4, 4, 1)),
           y_test=np.arange(2))
  with pytest.raises(ValueError, match=r"custom train images: rows \[12, 17\] contain NaN or inf"):
    data.load("custom", data_dir=str(tmp_path / "d.npz"))


# ----------------------------------------------------------------------------------------------------
# The datasets' published archives (tests/archives.py writes small ones in each format)
# ----------------------------------------------------------------------------------------------------

def _pixels(d, split="train"):
  """``d``'s images back as the uint8 pixels they were read from."""
  return np.round(data.denormalize(getattr(d, f"x_{split}"), d) * 255).astype(np.uint8)


def _assert_same(d, written):
  x_train, y_train, x_test, y_test = written[:4]
  np.testing.assert_array_equal(_pixels(d), x_train)
  np.testing.assert_array_equal(d.y_train, y_train)
  np.testing.assert_array_equal(_pixels(d, "test"), x_test)
  np.testing.assert_array_equal(d.y_test, y_test)


CIFAR_FILES = {("cifar10", "python"): ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
               ("cifar100", "python"): ("cifar-100-python.tar.gz", "cifar-100-python"),
               ("cifar10", "binary"): ("cifar-10-binary.tar.gz", "cifar-10-batches-bin"),
               ("cifar100", "binary"): ("cifar-100-binary.tar.gz", "cifar-100-binary")}


@pytest.mark.parametrize("name,kind", sorted(CIFAR_FILES))
def test_cifar_from_its_published_tarball_or_extracted_folder(tmp_path, name, kind):
  import tarfile
  tarball, folder = CIFAR_FILES[(name, kind)]
  written = archives.cifar(str(tmp_path / tarball), name, kind)
  for data_dir in (tmp_path / tarball, tmp_path):  # the file, or the directory holding it
    d = data.load(name, data_dir=str(data_dir))
    _assert_same(d, written)
  assert d.num_classes == (10 if name == "cifar10" else 100) and d.class_names == tuple(written[4])
  assert d.x_train.shape == (15 if name == "cifar10" else 3, 32, 32, 3)
  np.testing.assert_allclose(d.mean, datasets.KNOWN[name].mean)
  with tarfile.open(tmp_path / tarball) as tar:
    tar.extractall(tmp_path / "x", filter="data")
  (tmp_path / tarball).unlink()
  for data_dir in (tmp_path / "x", tmp_path / "x" / folder):
    _assert_same(data.load(name, data_dir=str(data_dir)), written)


def test_corrupt_truncated_or_foreign_cifar_archives_are_data_errors_naming_the_file(tmp_path):
  import pickle
  import tarfile
  path = tmp_path / "cifar-10-python.tar.gz"
  archives.cifar(str(path), "cifar10", "python")
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(data.DataError, match=r"Cannot read .*cifar-10-python.tar.gz.*truncated or corrupt"):
    data.load("cifar10", data_dir=str(tmp_path))
  path.write_bytes(b"\x1f\x8b not really gzip")
  with pytest.raises(data.DataError, match="cifar-10-python.tar.gz"):
    data.load("cifar10", data_dir=str(path))
  # A member that is not a CIFAR batch, and one whose pickle would call a function: refused unrun.
  (tmp_path / "x" / "cifar-10-batches-py").mkdir(parents=True)
  archives.cifar(str(path), "cifar10", "python")
  with tarfile.open(path) as tar:
    tar.extractall(tmp_path / "x", filter="data")
  batch = tmp_path / "x" / "cifar-10-batches-py" / "data_batch_3"
  batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, protocol=2))
  with pytest.raises(data.DataError, match=r"data_batch_3: data uint8 \(2, 3072\) and labels \(1,\)"):
    data.load("cifar10", data_dir=str(tmp_path / "x"))
  marker = tmp_path / "was_run"

  class Payload:  # unpickling it would create `marker`
    def __reduce__(self):
      return (open, (str(marker), "w"))

  batch.write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2))
  with pytest.raises(data.DataError, match=r"data_batch_3.*refusing to load io.open"):
    data.load("cifar10", data_dir=str(tmp_path / "x"))
  assert not marker.exists()
  (tmp_path / "x" / "cifar-10-batches-py" / "test_batch").unlink()
  with pytest.raises(data.DataError, match=r"Cannot read .*test_batch"):
    data.load("cifar10", data_dir=str(tmp_path / "x"))
  bin_path = tmp_path / "b" / "cifar-10-binary.tar.gz"
  bin_path.parent.mkdir()
  archives.cifar(str(bin_path), "cifar10", "binary")
  with tarfile.open(bin_path) as tar:
    tar.extractall(tmp_path / "b", filter="data")
  rec = tmp_path / "b" / "cifar-10-batches-bin" / "data_batch_2.bin"
  rec.write_bytes(rec.read_bytes()[:-5])
  with pytest.raises(data.DataError, match=r"data_batch_2.bin is truncated or corrupt"):
    data.load("cifar10", data_dir=str(tmp_path / "b" / "cifar-10-batches-bin"))
  with pytest.raises(data.DataError, match=r"nor cifar-100-python.tar.gz"):
    data.load("cifar100", data_dir=str(tmp_path / "b"))


def test_svhn_from_its_published_mat_files(tmp_path):
  written = archives.svhn(str(tmp_path))
  d = data.load("svhn_cropped", data_dir=str(tmp_path))
  _assert_same(d, written)
  assert d.y_train[0] == 0 and d.num_classes == 10  # stored as 10
  (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 but cut")
  with pytest.raises(data.DataError, match="Cannot read .*test_32x32.mat"):
    data.load("svhn_cropped", data_dir=str(tmp_path))


def test_tiny_imagenet_from_its_published_zip_or_extracted_folder(tmp_path):
  """The JPEGs are compared with Pillow's decoding of the same bytes (JPEG is lossy: the pixels
  drawn before encoding are not what any decoder returns)."""
  import io
  import zipfile
  from PIL import Image
  zpath = tmp_path / "tiny-imagenet-200.zip"
  train, val, wnids = archives.tiny_imagenet(str(zpath))
  classes = sorted(wnids)  # ImageFolder's numbering, as the reference code's
  decode = lambda raw: np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
  expected = []
  for files in (train, val):
    names = sorted(files)
    expected += [np.stack([decode(files[n][0]) for n in names]),
                 np.asarray([classes.index(files[n][1]) for n in names])]
  assert len(np.unique(expected[1])) == 3 and Image.open(io.BytesIO(
      train["tiny-imagenet-200/train/n02/images/n02_1.JPEG"][0])).mode == "L"  # a greyscale image
  with zipfile.ZipFile(zpath) as zf:
    zf.extractall(tmp_path / "x")
  for data_dir in (zpath, tmp_path, tmp_path / "x", tmp_path / "x" / "tiny-imagenet-200"):
    d = data.load("tiny_imagenet", data_dir=str(data_dir))
    _assert_same(d, expected)
  assert d.class_names == ("n01", "n02", "n03") and d.x_train.shape == (6, 64, 64, 3)
  np.testing.assert_allclose(d.mean + d.std, (0.485, 0.456, 0.406, 0.229, 0.224, 0.225), rtol=1e-6)
  (tmp_path / "x" / "tiny-imagenet-200" / "val" / "images" / "val_2.JPEG").write_bytes(b"\xff\xd8 cut")
  with pytest.raises(data.DataError, match=r"Cannot decode .*val/images/val_2.JPEG"):
    data.load("tiny_imagenet", data_dir=str(tmp_path / "x"))
  zpath.write_bytes(zpath.read_bytes()[:100])
  with pytest.raises(data.DataError, match=r"Cannot read .*tiny-imagenet-200.zip"):
    data.load("tiny_imagenet", data_dir=str(zpath))


# ----------------------------------------------------------------------------------------------------
# TFDS's downloads, offline: its download cache seeded, or a server on 127.0.0.1
# ----------------------------------------------------------------------------------------------------

def _seed_tfds_cache(root, name, key, write):
  return archives.seed_tfds_cache(root, name, datasets._PUBLISHED_URLS[name][key], write)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn_cropped"])
def test_tfds_builders_downloads_are_read_without_tensorflow(tmp_path, name):
  """Without TensorFlow (the stock builders extract, read and encode through tf.io / tf.image) load
  reads the files TFDS's download manager fetched for the builder's registered URLs: every image and
  label as written."""
  import tensorflow_datasets as tfds
  assert importlib.util.find_spec("tensorflow") is None, "this test checks the no-tensorflow path"
  if name == "svhn_cropped":
    import shutil
    (tmp_path / "mat").mkdir()
    written = archives.svhn(str(tmp_path / "mat"))
    for split in ("train", "test"):
      _seed_tfds_cache(tmp_path, name, split, functools.partial(
          shutil.copyfile, str(tmp_path / "mat" / f"{split}_32x32.mat")))
    shutil.rmtree(tmp_path / "mat")  # only the cached copies remain
  else:
    written = _seed_tfds_cache(tmp_path, name, "archive", lambda p: archives.cifar(p, name, "binary"))
  d = data.load(name, tfds_data_dir=str(tmp_path))
  _assert_same(d, written)
  assert not tfds.builder(name, data_dir=str(tmp_path)).is_prepared()
  if name != "svhn_cropped":
    assert d.class_names == tuple(written[4])


def test_tfds_download_manager_fetches_over_http_and_checks_the_registered_checksum(tmp_path,
                                                                                    monkeypatch):
  """The download itself (TFDS's downloader over HTTP, from a server on 127.0.0.1) with the file's
  checksum registered for its URL; a wrong registered checksum is refused."""
  import functools
  import http.server
  import threading
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.download import checksums
  served = tmp_path / "www"
  served.mkdir()
  written = archives.cifar(str(served / "cifar-10-binary.tar.gz"), "cifar10", "binary")
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
  handler.log_message = lambda *a: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-binary.tar.gz"
    monkeypatch.setitem(datasets._PUBLISHED_URLS, "cifar10", {"archive": url})
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    good = checksums.compute_url_info(served / "cifar-10-binary.tar.gz")
    builder = type(tfds.builder("cifar10"))
    monkeypatch.setattr(builder, "url_infos", {url: good})
    _assert_same(data.load("cifar10", tfds_data_dir=str(tmp_path / "a")), written)
    assert list((tmp_path / "a" / "downloads" / "cifar10").glob("*.tar.gz"))  # in TFDS's cache
    monkeypatch.setattr(builder, "url_infos", {url: checksums.UrlInfo(good.size, "0" * 64, None)})
    with pytest.raises(data.DataError, match="wrong checksum"):
      data.load("cifar10", tfds_data_dir=str(tmp_path / "b"))
  finally:
    server.shutdown()
