"""Loading labelled image datasets into host memory as a :class:`jaxdistill.types.Dataset`.

Sources, tried in this order:

1. ``data_dir`` given explicitly: IDX files (MNIST / Fashion-MNIST layout, gzipped or not), npz files,
   or the dataset's published archive (below).
2. The dataset's default local directory (``/usr/share/datasets/fashion-mnist`` for ``fashion_mnist``,
   the Debian package ``dataset-fashion-mnist``).
3. TensorFlow Datasets: ``tfds.data_source`` (array_record). TFDS's stock CIFAR and SVHN builders
   extract, read and PNG-encode through TensorFlow, so without TensorFlow a copy TFDS prepared
   earlier is read, and otherwise the files those builders download (the same URLs, checked against
   TFDS's registered sha256, kept in ``<tfds_data_dir>/downloads``) are read directly. ``tfds.load``
   only when tensorflow happens to be installed and no array_record copy can be read.

What each dataset needs (sizes of the published files; ``data_dir=`` takes the file, its extracted
folder, or a directory holding either):

- ``cifar10``: ``cifar-10-python.tar.gz`` (163 MB, torchvision's) or ``cifar-10-binary.tar.gz``
  (170 MB, what TFDS downloads); in memory 50,000 + 10,000 images of 32x32x3, 0.7 GB as float32.
- ``cifar100``: ``cifar-100-python.tar.gz`` (161 MB) or ``cifar-100-binary.tar.gz`` (169 MB); the 100
  fine labels; 0.7 GB in memory.
- ``svhn_cropped``: ``train_32x32.mat`` (182 MB) and ``test_32x32.mat`` (64 MB); 1.0 GB in memory. (TFDS's
  builder, with TensorFlow, also downloads ``extra_32x32.mat``, 1.3 GB.)
- ``tiny_imagenet``: ``tiny-imagenet-200.zip`` (237 MB; not in TFDS), or ``tiny_imagenet.npz``;
  100,000 training and the 10,000 labelled validation images (the test split) of 64x64x3, 4.9 GB in
  memory as float32. Reading it decodes 110,000 JPEGs with Pillow.

Offline: copy the archive to the machine and pass ``data_dir=``; or copy a TFDS data directory
(prepared copy or ``downloads/``) and pass ``tfds_data_dir=``. Reading the archives checks them: a
truncated or corrupt file is a :class:`DataError` that names it.

Images come back NHWC float32, scaled to [0, 1] and then normalized with the dataset's per-channel
mean / std (the constants of the reference repositories where they exist, else the training set's).
Images holding NaN or inf are refused, the rows named.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import io
import os
import pickle
import struct
import tarfile
import tempfile
import zipfile
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
    # Not in the TFDS catalogue: loaded from data_dir= (the zip or an npz); ImageNet's statistics, as the
    # references normalize it.
    "tiny_imagenet": _Info((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), in_tfds=False),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_INSTALL_HINT = {
    "fashion_mnist": "install it with 'sudo apt-get install -y dataset-fashion-mnist'",
    "tiny_imagenet": "download tiny-imagenet-200.zip and pass data_dir= (its path or folder), or "
                     "prepare tiny_imagenet.npz (x_train [100000, 64, 64, 3] uint8, y_train, and the "
                     "10,000 validation images as x_test / y_test)",
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
# The datasets' published archives: CIFAR (python or binary), SVHN (.mat), Tiny-ImageNet (.zip)
# ----------------------------------------------------------------------------------------------------

# name -> (archive file, its top folder, train members, test members, label-name member, label key /
# label byte). The python tarballs are torchvision's and the PyTorch code bases'; the binary ones
# TFDS's (its CIFAR builders download them).
_CIFAR = {
    ("cifar10", "python"): ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                            [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                            "labels"),
    ("cifar100", "python"): ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], ["test"], "meta",
                             "fine_labels"),
    ("cifar10", "binary"): ("cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                            [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"],
                            "batches.meta.txt", 0),
    ("cifar100", "binary"): ("cifar-100-binary.tar.gz", "cifar-100-binary", ["train.bin"], ["test.bin"],
                             "fine_label_names.txt", 1),  # record: coarse label byte, fine label byte
}
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
_TINY_ZIP, _TINY_DIR = "tiny-imagenet-200.zip", "tiny-imagenet-200"


class _CifarUnpickler(pickle.Unpickler):
  """The CIFAR python batches are pickled dicts of str / bytes / lists / one uint8 ndarray. Unpickling
  can run any callable the stream names, so only what rebuilding such an ndarray needs is allowed."""
  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")
    return super().find_class(module, name)


def _cifar_python_batch(raw: bytes, label_key: str, where: str) -> tuple:
  d = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()  # Python 2 pickles, as torchvision
  if not isinstance(d, dict) or "data" not in d or label_key not in d:
    raise DataError(f"{where} is not a CIFAR batch (a dict with 'data' and {label_key!r}).")
  x, y = np.asarray(d["data"]), np.asarray(d[label_key])
  if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (x.shape[0],):
    raise DataError(f"{where}: data {x.dtype} {x.shape} and {label_key} {y.shape} are not [N, 3072] "
                    f"uint8 and [N].")
  return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int64)


def _cifar_binary_batch(raw: bytes, label_byte: int, where: str) -> tuple:
  rec = 3072 + label_byte + 1
  if len(raw) == 0 or len(raw) % rec:
    raise DataError(f"{where} is truncated or corrupt: {len(raw)} bytes is not a whole number of "
                    f"{rec}-byte records.")
  r = np.frombuffer(raw, np.uint8).reshape(-1, rec)
  return r[:, label_byte + 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), r[:, label_byte].astype(
      np.int64)


def _read_members(path: str, wanted: Sequence[str]) -> dict:
  """``{member: bytes}`` of the archive (any tar compression) or directory at ``path``."""
  try:
    if os.path.isdir(path):
      out = {}
      for m in wanted:
        with open(os.path.join(path, m), "rb") as f:
          out[m] = f.read()
      return out
    with tarfile.open(path, "r:*") as tar:
      out = {}
      for member in tar:
        rel = member.name.split("/", 1)[-1]  # below the archive's top folder
        if member.isfile() and rel in wanted:
          out[rel] = tar.extractfile(member).read()
  except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
    raise DataError(f"Cannot read {path}: {e} (truncated or corrupt? download it again).") from e
  missing = sorted(set(wanted) - set(out))
  if missing:
    raise DataError(f"{path} lacks {missing} (is it the complete published archive?).")
  return out


def read_cifar(path: str, name: str) -> tuple:
  """Reads CIFAR-10 / CIFAR-100 from its published archive, or the folder it extracts to.

  Args:
    path: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (pickled batches, the files
      torchvision and the PyTorch code bases use), ``cifar-10-binary.tar.gz`` /
      ``cifar-100-binary.tar.gz`` (TFDS's download), or the extracted ``cifar-10-batches-py/``,
      ``cifar-100-python/``, ``cifar-10-batches-bin/`` or ``cifar-100-binary/`` folder.
    name: ``"cifar10"`` or ``"cifar100"`` (CIFAR-100: the 100 fine labels).

  Returns:
    ``(x_train [N, 32, 32, 3] uint8, y_train [N], x_test [M, 32, 32, 3] uint8, y_test [M],
    class_names)``.

  Raises:
    DataError: naming the file that is missing, truncated, corrupt or not in the format.
  """
  base = os.path.basename(os.path.normpath(path))
  kind = next((k for (n, k), spec in _CIFAR.items() if n == name and base in spec[:2]), None)
  if kind is None:
    raise DataError(f"{path} is not one of {name}'s archives or folders "
                    f"({', '.join(x for (n, _), spec in _CIFAR.items() if n == name for x in spec[:2])}).")
  _, _, train, test, meta, label = _CIFAR[(name, kind)]
  raw = _read_members(path, train + test + [meta])
  where = lambda m: f"{path}: {m}"
  split = []
  for members in (train, test):
    parts = []
    for m in members:
      try:
        parts.append(_cifar_python_batch(raw[m], label, where(m)) if kind == "python"
                     else _cifar_binary_batch(raw[m], label, where(m)))
      except DataError:
        raise
      except Exception as e:  # pickle's errors on a corrupt stream are of many types
        raise DataError(f"Cannot read {where(m)}: {type(e).__name__}: {e}") from e
    split += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
  try:
    if kind == "python":
      names = _CifarUnpickler(io.BytesIO(raw[meta]), encoding="latin1").load()
      names = names["label_names" if name == "cifar10" else "fine_label_names"]
    else:
      names = [n for n in raw[meta].decode().split("\n") if n.strip()]
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"Cannot read the class names in {where(meta)}: {type(e).__name__}: {e}") from e
  return (*split, tuple(str(n) for n in names))


def read_svhn(directory: str) -> tuple:
  """Reads SVHN (cropped digits) from its published ``train_32x32.mat`` and ``test_32x32.mat``.

  Returns:
    ``(x_train [N, 32, 32, 3] uint8, y_train [N], x_test, y_test)``, digit ``0`` as label 0 (the
    files store it as 10).

  Raises:
    DataError: naming a missing or unreadable file.
  """
  import scipy.io  # pylint: disable=g-import-not-at-top
  out = []
  for split, fn in _SVHN_FILES.items():
    path = os.path.join(directory, fn)
    try:
      m = scipy.io.loadmat(path)
      x, y = np.asarray(m["X"]), np.asarray(m["y"]).reshape(-1)
    except Exception as e:  # scipy raises ValueError / OSError / KeyError on bad files
      raise DataError(f"Cannot read {path}: {type(e).__name__}: {e}") from e
    if x.dtype != np.uint8 or x.shape[:3] != (32, 32, 3) or y.shape != (x.shape[3],) or (
        y.size and (y.min() < 1 or y.max() > 10)):
      raise DataError(f"{path}: X {x.dtype} {x.shape} and y {y.shape} are not SVHN's [32, 32, 3, N] "
                      f"uint8 images and [N, 1] digits 1..10.")
    out += [x.transpose(3, 0, 1, 2), (y % 10).astype(np.int64)]
  return tuple(out)


def read_tiny_imagenet(path: str) -> tuple:
  """Reads Tiny-ImageNet from its published ``tiny-imagenet-200.zip`` or the extracted folder.

  The 100,000 training images (``train/<wnid>/images/*.JPEG``) and the 10,000 labelled validation
  images (``val/images`` with ``val/val_annotations.txt``) become the train and test splits (the
  published test images have no labels). Class ``i`` is the ``i``-th wnid of ``wnids.txt`` in sorted
  order, as ``torchvision.datasets.ImageFolder`` numbers the training folders in the reference code.
  Images are decoded by Pillow (greyscale ones to RGB); rows are sorted by file name.

  Returns:
    ``(x_train [N, 64, 64, 3] uint8, y_train [N], x_test [M, 64, 64, 3] uint8, y_test [M], wnids)``.

  Raises:
    DataError: naming the missing, corrupt or inconsistent file.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    if os.path.isdir(path):
      top = path if os.path.exists(os.path.join(path, "wnids.txt")) else os.path.join(path, _TINY_DIR)
      names = [os.path.relpath(os.path.join(r, f), top) for r, _, fs in os.walk(top) for f in fs]
      read = lambda rel: open(os.path.join(top, rel), "rb").read()
      where = lambda rel: os.path.join(top, rel)
    else:
      zf = zipfile.ZipFile(path)
      prefix = _TINY_DIR + "/"
      names = [n[len(prefix):] for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
      read = lambda rel: zf.read(prefix + rel)
      where = lambda rel: f"{path}: {prefix}{rel}"
  except (OSError, zipfile.BadZipFile) as e:
    raise DataError(f"Cannot read {path}: {e} (truncated or corrupt? download it again).") from e

  def text(rel):
    try:
      return read(rel).decode()
    except (KeyError, OSError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError) as e:
      raise DataError(f"Cannot read {where(rel)}: {e}") from e

  wnids = sorted(w.strip() for w in text("wnids.txt").split("\n") if w.strip())
  cls = {w: i for i, w in enumerate(wnids)}

  def decode(rel):
    try:
      with Image.open(io.BytesIO(read(rel))) as im:
        x = np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow's errors on bad data, zip's CRC check
      raise DataError(f"Cannot decode {where(rel)}: {type(e).__name__}: {e}") from e
    if x.shape != (64, 64, 3):
      raise DataError(f"{where(rel)} is {x.shape[1]}x{x.shape[0]}; Tiny-ImageNet's images are 64x64.")
    return x

  train = sorted(n for n in names if n.startswith("train/") and n.lower().endswith(".jpeg"))
  y_train = []
  for n in train:
    wnid = n.split("/")[1]
    if wnid not in cls:
      raise DataError(f"{where(n)}: class folder {wnid!r} is not in wnids.txt.")
    y_train.append(cls[wnid])
  val = {}
  for line in text("val/val_annotations.txt").split("\n"):
    if line.strip():
      fields = line.split("\t")
      if len(fields) < 2 or fields[1] not in cls:
        raise DataError(f"{where('val/val_annotations.txt')}: line {line!r} does not name a file and "
                        f"a wnid of wnids.txt (tab-separated).")
      val["val/images/" + fields[0]] = cls[fields[1]]
  missing = sorted(set(val) - set(names))
  if not train or not val or missing:
    raise DataError(f"{path} holds {len(train)} training and {len(val)} annotated validation images"
                    f"{'; missing: ' + str(missing[:5]) if missing else ''}: not Tiny-ImageNet's layout "
                    f"(wnids.txt, train/<wnid>/images/*.JPEG, val/images/, val/val_annotations.txt).")
  test = sorted(val)
  try:
    return (np.stack([decode(n) for n in train]), np.asarray(y_train),
            np.stack([decode(n) for n in test]), np.asarray([val[n] for n in test]), tuple(wnids))
  finally:
    if not os.path.isdir(path):
      zf.close()


def _archive(name: str, path: str) -> Optional[tuple]:
  """The published archive of ``name`` at ``path`` (the file or folder itself, or inside the directory
  ``path``), read as ``(x_train, y_train, x_test, y_test, class_names)``; None where there is none."""
  base = os.path.basename(os.path.normpath(path))
  if name in ("cifar10", "cifar100"):
    candidates = [x for (n, _), spec in _CIFAR.items() if n == name for x in spec[:2]]
    if base in candidates:
      return read_cifar(path, name)
    for c in (c for c in candidates[1::2] + candidates[0::2]):  # folders before tarballs
      if os.path.exists(os.path.join(path, c)):
        return read_cifar(os.path.join(path, c), name)
  elif name == "svhn_cropped" and os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, f)) for f in _SVHN_FILES.values()):
    return (*read_svhn(path), ())
  elif name == "tiny_imagenet":
    if base in (_TINY_ZIP, _TINY_DIR) or os.path.exists(os.path.join(path, "wnids.txt")):
      return read_tiny_imagenet(path)
    for c in (_TINY_DIR, _TINY_ZIP):
      if os.path.exists(os.path.join(path, c)):
        return read_tiny_imagenet(os.path.join(path, c))
  return None


_ARCHIVE_HINT = {
    "cifar10": "cifar-10-python.tar.gz (or cifar-10-batches-py/, or the binary version)",
    "cifar100": "cifar-100-python.tar.gz (or cifar-100-python/, or the binary version)",
    "svhn_cropped": "train_32x32.mat and test_32x32.mat",
    "tiny_imagenet": "tiny-imagenet-200.zip (or tiny-imagenet-200/)",
}


# ----------------------------------------------------------------------------------------------------
# TFDS
# ----------------------------------------------------------------------------------------------------

def _tfds_arrays(name: str, split: str, data_dir: Optional[str], download: bool = True) -> tuple:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    # array_record named explicitly: with a data_dir, data_source leaves TFDS's default (tfrecord,
    # which it cannot read).
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=download,
                           builder_kwargs={"file_format": "array_record"})
    records = [src[i] for i in range(len(src))]
    x = np.stack([np.asarray(r["image"]) for r in records])
    y = np.asarray([int(r["label"]) for r in records])
    return x, y
  except Exception as first:  # pylint: disable=broad-except
    if not download:
      raise DataError(f"TFDS has no prepared {name!r} ({type(first).__name__}: {first}).") from first
    if importlib.util.find_spec("tensorflow") is None:
      raise DataError(
          f"TFDS could not provide {name!r} ({type(first).__name__}: {first}). Without tensorflow "
          f"only prepared array_record datasets can be read; pass data_dir= with IDX or npz files, "
          f"or prepare the dataset with tfds (file_format='array_record').") from first
    ds = tfds.load(name, split=split, data_dir=data_dir, batch_size=-1, as_supervised=True)
    x, y = tfds.as_numpy(ds)
    return np.asarray(x), np.asarray(y)


# The files TFDS's builders download for these datasets (its registered URLs and checksums). SVHN's
# builder also downloads extra_32x32.mat (1.3 GB), which no config uses.
_PUBLISHED_URLS = {
    "cifar10": {"archive": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"},
    "cifar100": {"archive": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"},
    "svhn_cropped": {"train": "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                     "test": "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"},
}


def _published_via_tfds(name: str, data_dir: Optional[str]) -> tuple:
  """``name``'s published files downloaded by TFDS's download manager (the builder's URLs, checked
  against its registered sha256; a file already in TFDS's download cache is not fetched again), read
  by :func:`read_cifar` / :func:`read_svhn`: the path without TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  try:
    dl = tfds.download.DownloadManager(download_dir=os.path.join(root, "downloads"), dataset_name=name,
                                       url_infos=tfds.builder_cls(name).url_infos)
    paths = {k: os.fspath(v) for k, v in dl.download(_PUBLISHED_URLS[name]).items()}
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"TFDS could not download {name!r} ({type(e).__name__}: {e}).") from e
  if name == "svhn_cropped":
    with tempfile.TemporaryDirectory() as tmp:  # read_svhn reads the files by their published names
      for split, fn in _SVHN_FILES.items():
        os.symlink(paths[split], os.path.join(tmp, fn))
      return (*read_svhn(tmp), ())
  base = _CIFAR[(name, "binary")][0]
  with tempfile.TemporaryDirectory() as tmp:
    os.symlink(paths["archive"], os.path.join(tmp, base))
    return read_cifar(os.path.join(tmp, base), name)


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
      npz (``<name>.npz`` or ``data.npz`` with ``x_train, y_train, x_test, y_test``), or an npz path;
      or, for ``cifar10`` / ``cifar100`` / ``svhn_cropped`` / ``tiny_imagenet``, the dataset's
      published archive (the file, its extracted folder, or a directory holding either; see the module
      docstring).
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
  archive_names = ()
  if data_dir is not None:
    if os.path.isfile(data_dir) and data_dir.endswith(".npz"):
      arrays = _load_npz(data_dir)
    elif not os.path.exists(data_dir):
      raise DataError(f"data_dir {data_dir!r} does not exist.")
    elif os.path.isdir(data_dir) and _has_idx(data_dir):
      arrays = _load_idx(data_dir)
    elif os.path.isdir(data_dir) and _npz_path(data_dir, name):
      arrays = _load_npz(_npz_path(data_dir, name))
    elif (found := _archive(name, data_dir)) is not None:
      *arrays, archive_names = found
    else:
      archive = f", nor {_ARCHIVE_HINT[name]}" if name in _ARCHIVE_HINT else ""
      raise DataError(f"{data_dir!r} holds neither IDX files ({', '.join(IDX_FILES['train'])}, "
                      f"{', '.join(IDX_FILES['test'])}, optionally .gz) nor {name}.npz / data.npz"
                      f"{archive}.")
  elif source != "tfds" and info is not None and info.default_dir and os.path.isdir(info.default_dir):
    if not _has_idx(info.default_dir):
      raise DataError(f"{info.default_dir} exists but lacks some IDX files; reinstall it "
                      f"({_INSTALL_HINT.get(name, 'or pass data_dir=')}).")
    arrays = _load_idx(info.default_dir)
  elif source == "local":
    hint = _INSTALL_HINT.get(name, "pass data_dir= with IDX or npz files")
    raise DataError(f"No local copy of {name!r} found"
                    f"{' in ' + info.default_dir if info and info.default_dir else ''}: {hint}.")

  class_names = (info.class_names if info else ()) or archive_names
  if arrays is None and info is not None and not info.in_tfds:
    raise DataError(f"{name!r} is not in TFDS and no data_dir= was given: {_INSTALL_HINT[name]}.")
  if arrays is None:  # TFDS
    if info is None and not _is_tfds_name(name):
      raise ValueError(f"Unknown dataset {name!r}. Known: {', '.join(sorted(KNOWN))}, or any TFDS "
                       f"image-classification name; or pass data_dir= with IDX / npz files.")
    try:
      # The stock CIFAR / SVHN builders extract, read and PNG-encode through tf.io / tf.image:
      # without TensorFlow a copy TFDS prepared is read, else the files its builder downloads.
      no_tf = name in _PUBLISHED_URLS and importlib.util.find_spec("tensorflow") is None
      try:
        arrays = (*_tfds_arrays(name, "train", tfds_data_dir, download=not no_tf),
                  *_tfds_arrays(name, "test", tfds_data_dir, download=not no_tf))
      except DataError:
        if not no_tf:
          raise
        *arrays, archive_names = _published_via_tfds(name, tfds_data_dir)
    except DataError as e:
      hint = _INSTALL_HINT.get(name) or (f"download {_ARCHIVE_HINT[name]} and pass data_dir="
                                         if name in _ARCHIVE_HINT else None)
      raise DataError(f"{e}{' Or ' + hint + '.' if hint else ''}") from e
    class_names = class_names or archive_names or _tfds_class_names(name, tfds_data_dir)

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
