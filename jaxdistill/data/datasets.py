"""Loading labelled image datasets into host memory as a :class:`jaxdistill.types.Dataset`.

Sources, tried in this order:

1. ``data_dir`` given explicitly: IDX files (MNIST / Fashion-MNIST layout, gzipped or not) or npz files.
2. The dataset's default local directory (``/usr/share/datasets/fashion-mnist`` for ``fashion_mnist``,
   the Debian package ``dataset-fashion-mnist``).
3. TensorFlow Datasets: ``tfds.data_source`` (array_record, no tensorflow needed); ``tfds.load`` only
   when tensorflow happens to be installed.

Images come back NHWC float32, scaled to [0, 1] and then normalized with the dataset's per-channel
mean / std (the constants of the reference repositories where they exist, else the training set's).
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import struct
import zlib
from typing import Optional, Sequence

import jax
import numpy as np

from jaxdistill.checks import check_finite_images, check_positive_int
from jaxdistill.data import sampling
from jaxdistill.data import zca as zca_lib
from jaxdistill.types import Dataset


@dataclasses.dataclass(frozen=True)
class _Info:
  mean: tuple
  std: tuple
  class_names: tuple = ()
  default_dir: Optional[str] = None
  in_tfds: bool = True  # False: read from data_dir= only


_FMNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Ankle boot")
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Per-channel mean / std of the [0, 1]-scaled training images, as used by the DC / MTT references.
KNOWN = {
    "fashion_mnist": _Info((0.2861,), (0.3530,), _FMNIST_NAMES, "/usr/share/datasets/fashion-mnist"),
    "mnist": _Info((0.1307,), (0.3081,), tuple(str(i) for i in range(10)),
                   "/usr/share/datasets/mnist"),
    "cifar10": _Info((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), _CIFAR10_NAMES),
    "cifar100": _Info((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": _Info((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                          tuple(str(i) for i in range(10))),
    # Not in the TFDS catalogue: loaded from data_dir= (an npz); ImageNet's statistics, as the
    # references normalize it.
    "tiny_imagenet": _Info((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), in_tfds=False),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_INSTALL_HINT = {
    "fashion_mnist": "install it with 'sudo apt-get install -y dataset-fashion-mnist'",
    "tiny_imagenet": "prepare tiny_imagenet.npz (x_train [100000, 64, 64, 3] uint8, y_train, and the "
                     "10,000 validation images as x_test / y_test) and pass data_dir=",
}


class DataError(ValueError):
  """A dataset that cannot be found or read (missing, corrupt or inconsistent files)."""


# ----------------------------------------------------------------------------------------------------
# Checks shared by the library
# ----------------------------------------------------------------------------------------------------

def validate_images(x, name: str = "images", channels: Optional[int] = None) -> np.ndarray:
  """Checks ``x`` is a finite ``[N, H, W, C]`` array (with ``C == channels`` if given).

  Raises:
    ValueError: naming the problem (rank, channel count, the rows holding NaN / inf).
  """
  x = np.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"{name} must be NHWC [N, H, W, C]; got shape {x.shape} (rank {x.ndim}).")
  if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3, 4) and x.shape[2] == x.shape[3]:
    raise ValueError(f"{name} look channels-first (NCHW) with shape {x.shape}; jaxdistill uses NHWC: "
                     f"pass x.transpose(0, 2, 3, 1).")
  if channels is not None and x.shape[-1] != channels:
    raise ValueError(f"{name} must have {channels} channel(s) (NHWC); got shape {x.shape}.")
  check_finite_images(x, name)
  return x


def validate_labels(y, num_classes: int, n: Optional[int] = None, name: str = "labels") -> np.ndarray:
  """Checks ``y`` is ``[N]`` integer class ids in ``[0, num_classes)`` (``N == n`` if given)."""
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] > 1:
    raise ValueError(f"{name} look one-hot or soft ({y.shape}); pass class ids [N], e.g. "
                     f"labels.argmax(-1).")
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1:
    raise ValueError(f"{name} must be a vector [N] of class ids; got shape {y.shape}.")
  if np.issubdtype(y.dtype, np.floating) and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
    y = y.astype(np.int64)  # whole-number floats (e.g. from a CSV) are class ids
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{name} must be integer class ids; got dtype {y.dtype}"
                     + (" with non-integer values (truncating them would be wrong)"
                        if np.issubdtype(y.dtype, np.floating) else "") + ".")
  if n is not None and y.shape[0] != n:
    raise ValueError(f"{name} has {y.shape[0]} entries but there are {n} images.")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{name} must lie in [0, {num_classes}); got range [{y.min()}, {y.max()}].")
  return y.astype(np.int32)


# ----------------------------------------------------------------------------------------------------
# IDX and npz
# ----------------------------------------------------------------------------------------------------

def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzipped if the name ends in ``.gz``) into a uint8 array.

  Raises:
    DataError: on a truncated, corrupt or non-uint8 file.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f"Cannot read IDX file {path}: {e}") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4]!r}).")
  if raw[2] != 0x08:
    raise DataError(f"{path}: only unsigned-byte IDX data is supported (type code {raw[2]:#x}).")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path} is truncated (header of {header} bytes, file has {len(raw)}).")
  dims = struct.unpack(">" + "I" * ndim, raw[4:header])
  size = int(np.prod(dims))
  if len(raw) - header != size:
    raise DataError(f"{path} is corrupt: header says {dims} = {size} bytes of data, file holds "
                    f"{len(raw) - header}.")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find(directory: str, stem: str) -> Optional[str]:
  for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
    p = os.path.join(directory, name)
    if os.path.exists(p):
      return p
  return None


def _has_idx(directory: str) -> bool:
  return all(_find(directory, s) for pair in IDX_FILES.values() for s in pair)


def _load_idx(directory: str) -> tuple:
  out = []
  for split in ("train", "test"):
    images = read_idx(_find(directory, IDX_FILES[split][0]))
    labels = read_idx(_find(directory, IDX_FILES[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
      raise DataError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not "
                      f"match (expected [N, H, W] and [N]).")
    out += [images[..., None], labels.astype(np.int32)]
  return tuple(out)


def _npz_path(directory: str, name: str) -> Optional[str]:
  for fn in (f"{name}.npz", "data.npz"):
    p = os.path.join(directory, fn)
    if os.path.exists(p):
      return p
  return None


def _load_npz(path: str) -> tuple:
  """npz with ``x_train, y_train, x_test, y_test`` (uint8 or [0, 1] float images, NHWC or NHW)."""
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test") if k in f}
  except Exception as e:  # zipfile / pickle errors
    raise DataError(f"Cannot read npz file {path}: {e}") from e
  missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
  if missing:
    raise DataError(f"{path} lacks the arrays {sorted(missing)} (needs x_train, y_train, x_test, "
                    f"y_test).")
  out = []
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.ndim == 3:
      x = x[..., None]
    out += [x, np.asarray(y)]
  return tuple(out)


def save_npz(path: str, data: Dataset) -> None:
  """Writes ``data`` (de-normalized to [0, 1]) in the npz layout that :func:`load` reads."""
  pixels = {}
  for split in ("train", "test"):
    x = denormalize(getattr(data, f"x_{split}"), data)
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if lo < -1e-3 or hi > 1 + 1e-3:  # normalized with other statistics than data's
      raise ValueError(f"save_npz: the {split} images de-normalized span [{lo:.4g}, {hi:.4g}], not "
                       f"[0, 1] pixels: data.mean / data.std are not the statistics they were "
                       f"normalized with.")
    pixels[split] = np.clip(x, 0.0, 1.0)  # float rounding puts a 0 pixel at -3e-8
  np.savez_compressed(path, x_train=pixels["train"], y_train=data.y_train, x_test=pixels["test"],
                      y_test=data.y_test)


# ----------------------------------------------------------------------------------------------------
# TFDS
# ----------------------------------------------------------------------------------------------------

def _tfds_arrays(name: str, split: str, data_dir: Optional[str]) -> tuple:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    src = tfds.data_source(name, split=split, data_dir=data_dir)
    records = [src[i] for i in range(len(src))]
    x = np.stack([np.asarray(r["image"]) for r in records])
    y = np.asarray([int(r["label"]) for r in records])
    return x, y
  except Exception as first:  # pylint: disable=broad-except
    if importlib.util.find_spec("tensorflow") is None:
      raise DataError(
          f"TFDS could not provide {name!r} ({type(first).__name__}: {first}). Without tensorflow "
          f"only prepared array_record datasets can be read; pass data_dir= with IDX or npz files, "
          f"or prepare the dataset with tfds (file_format='array_record').") from first
    ds = tfds.load(name, split=split, data_dir=data_dir, batch_size=-1, as_supervised=True)
    x, y = tfds.as_numpy(ds)
    return np.asarray(x), np.asarray(y)


def _tfds_class_names(name: str, data_dir: Optional[str]) -> tuple:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    feature = tfds.builder(name, data_dir=data_dir).info.features["label"]
    return tuple(feature.names)
  except Exception:  # pylint: disable=broad-except
    return ()


def _is_tfds_name(name: str) -> bool:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return name in tfds.list_builders()
  except Exception:  # pylint: disable=broad-except
    return False


# ----------------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------------

def _subset(key: jax.Array, y: np.ndarray, num_classes: int, per_class) -> np.ndarray:
  return np.sort(sampling.sample_balanced(key, y, num_classes, per_class))


def load(name: str, data_dir: Optional[str] = None, *, source: str = "auto",
         max_per_class: Optional[int] = None, key: Optional[jax.Array] = None,
         tfds_data_dir: Optional[str] = None, num_classes: Optional[int] = None) -> Dataset:
  """Loads a labelled image-classification dataset.

  Args:
    name: ``fashion_mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped`` or any TFDS
      image-classification name (with ``image`` and ``label`` features).
    data_dir: a directory with IDX files (``train-images-idx3-ubyte[.gz]`` and the three others) or an
      npz (``<name>.npz`` or ``data.npz`` with ``x_train, y_train, x_test, y_test``), or an npz path.
    source: ``"auto"`` (the order in the module docstring), ``"local"`` or ``"tfds"``.
    max_per_class: keep at most this many training images per class (chosen with ``key``); a class
      with fewer keeps all of its images (the others are not cut to its size).
    key: PRNG key for ``max_per_class``.
    tfds_data_dir: TFDS data directory.
    num_classes: override the class count (default: known value, else ``max(label) + 1``).

  Returns:
    a :class:`Dataset` (train/test NHWC float32 normalized, int32 labels).

  Raises:
    ValueError: unknown dataset name (listing the known ones) or source.
    DataError: missing, corrupt or inconsistent files (saying how to get them).
  """
  if source not in ("auto", "local", "tfds"):
    raise ValueError(f"Unknown source {source!r}; use 'auto', 'local' or 'tfds'.")
  info = KNOWN.get(name)
  arrays = None
  if data_dir is not None and name not in KNOWN and not name.startswith("custom"):
    raise ValueError(f"Unknown dataset name {name!r} with data_dir=: known names are "
                     f"{', '.join(sorted(KNOWN))}; for other data name it 'custom' (or 'custom_<name>'), "
                     f"so that no dataset-specific setting is picked by mistake.")
  if data_dir is not None:
    if os.path.isfile(data_dir) and data_dir.endswith(".npz"):
      arrays = _load_npz(data_dir)
    elif not os.path.isdir(data_dir):
      raise DataError(f"data_dir {data_dir!r} does not exist.")
    elif _has_idx(data_dir):
      arrays = _load_idx(data_dir)
    elif _npz_path(data_dir, name):
      arrays = _load_npz(_npz_path(data_dir, name))
    else:
      raise DataError(f"{data_dir!r} holds neither IDX files ({', '.join(IDX_FILES['train'])}, "
                      f"{', '.join(IDX_FILES['test'])}, optionally .gz) nor {name}.npz / data.npz.")
  elif source != "tfds" and info is not None and info.default_dir and os.path.isdir(info.default_dir):
    if not _has_idx(info.default_dir):
      raise DataError(f"{info.default_dir} exists but lacks some IDX files; reinstall it "
                      f"({_INSTALL_HINT.get(name, 'or pass data_dir=')}).")
    arrays = _load_idx(info.default_dir)
  elif source == "local":
    hint = _INSTALL_HINT.get(name, "pass data_dir= with IDX or npz files")
    raise DataError(f"No local copy of {name!r} found"
                    f"{' in ' + info.default_dir if info and info.default_dir else ''}: {hint}.")

  class_names = info.class_names if info else ()
  if arrays is None and info is not None and not info.in_tfds:
    raise DataError(f"{name!r} is not in TFDS and no data_dir= was given: {_INSTALL_HINT[name]}.")
  if arrays is None:  # TFDS
    if info is None and not _is_tfds_name(name):
      raise ValueError(f"Unknown dataset {name!r}. Known: {', '.join(sorted(KNOWN))}, or any TFDS "
                       f"image-classification name; or pass data_dir= with IDX / npz files.")
    try:
      arrays = (*_tfds_arrays(name, "train", tfds_data_dir), *_tfds_arrays(name, "test", tfds_data_dir))
    except DataError as e:
      hint = _INSTALL_HINT.get(name)
      raise DataError(f"{e}{' Or ' + hint + '.' if hint else ''}") from e
    class_names = class_names or _tfds_class_names(name, tfds_data_dir)

  x_train, y_train, x_test, y_test = arrays
  x_train = validate_images(x_train, f"{name} train images")
  x_test = validate_images(x_test, f"{name} test images", channels=x_train.shape[-1])
  if x_train.shape[1:] != x_test.shape[1:]:
    raise DataError(f"{name}: train images {x_train.shape[1:]} and test images {x_test.shape[1:]} "
                    f"differ in shape.")
  k = num_classes or (len(class_names) if class_names else int(max(y_train.max(), y_test.max())) + 1)
  y_train = validate_labels(y_train, k, x_train.shape[0], f"{name} train labels")
  y_test = validate_labels(y_test, k, x_test.shape[0], f"{name} test labels")
  if not class_names or len(class_names) != k:
    class_names = tuple(str(i) for i in range(k))

  scale = _pixel_scale(x_train, x_test, name)
  if info is not None and len(info.mean) == x_train.shape[-1]:
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
  else:
    unit = x_train.astype(np.float32) / scale
    mean, std = unit.mean((0, 1, 2)), unit.std((0, 1, 2)) + 1e-8

  if max_per_class is not None:
    if key is None:
      raise ValueError("max_per_class needs a PRNG key (key=jax.random.key(seed)).")
    check_positive_int("max_per_class", max_per_class)
    counts = np.bincount(y_train, minlength=k)
    keep = _subset(key, y_train, k, np.minimum(counts, max_per_class))
    x_train, y_train = x_train[keep], y_train[keep]

  norm = lambda x: ((x.astype(np.float32) / scale - mean) / std).astype(np.float32)
  return Dataset(name=name, x_train=norm(x_train), y_train=y_train, x_test=norm(x_test),
                 y_test=y_test, num_classes=k, class_names=tuple(class_names),
                 mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def _pixel_scale(x_train: np.ndarray, x_test: np.ndarray, name: str) -> float:
  """255 for [0, 255] pixels, 1 for [0, 1]; decided from both splits, which must agree. Values outside
  [0, 255] (e.g. images already normalized) are refused: they would be scaled as pixels."""
  for split, x in (("train", x_train), ("test", x_test)):
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if lo < 0 or hi > 255:
      raise DataError(f"{name}: {split} images hold values in [{lo:.4g}, {hi:.4g}], outside raw pixels' "
                      f"[0, 1] or [0, 255]; store the images unnormalized (load normalizes them; "
                      f"jaxdistill.data.denormalize maps normalized images back to [0, 1]).")
  scales = [255.0 if x.dtype == np.uint8 or float(x.max(initial=0.0)) > 1.5 else 1.0
            for x in (x_train, x_test)]
  if scales[0] != scales[1]:
    raise DataError(f"{name}: train images are in [0, {scales[0]:g}] but test images in "
                    f"[0, {scales[1]:g}]; store both splits with the same pixel scale.")
  return scales[0]


def denormalize(x, data: Dataset) -> np.ndarray:
  """Maps images in ``data``'s space back to [0, 1] pixels (for saving / viewing): undoes the
  whitening first where ``data.zca`` records one, then the normalization."""
  x = np.asarray(x, np.float32)
  if data.zca is not None:
    x = np.asarray(zca_lib.invert_zca(data.zca, x))
    if data.zca.mode == "kornia":  # whitened [0, 1] pixels, not normalized ones
      return x
  return x * np.asarray(data.std, np.float32) + np.asarray(data.mean, np.float32)


def names() -> Sequence[str]:
  """The dataset names with built-in statistics (any TFDS image-classification name also loads)."""
  return tuple(sorted(KNOWN))
