"""Reading and writing distilled sets: the library's npz, and the files of the PyTorch code bases.

Three layouts (``FORMATS``):

- ``"npz"``: this library's own file (what ``experiments/distill.py`` writes as ``synthetic.npz``):
  ``images`` ``[N, H, W, C]`` float32, ``labels`` ``[N]`` int class ids or ``[N, K]`` float soft labels,
  and ``log_lr`` (the log of the learned step size: a scalar, or DD's ``[S]``) when the set has one.
  Other keys are ignored.
- ``"mtt"``: mtt-distillation's ``distill.py`` (and its forks: DATM, FTD), which ``torch.save`` the
  tensors one per file into a run directory: ``images_<tag>.pt`` ``[N, C, H, W]`` float,
  ``labels_<tag>.pt`` ``[N]`` int64 (DATM: ``[N, K]`` float soft labels, read as logits as this
  library does), and, in the forks that learn it, ``lr_<tag>.pt``, the learned step size ``syn_lr``
  as a 0-d tensor (stored here as ``log_lr = log(lr)``). ``<tag>`` is the iteration or ``best``.
- ``"dc"``: DatasetCondensation's ``main.py`` / ``main_DM.py``: one ``res_<method>_<dataset>_<model>_
  <ipc>ipc.pt`` holding ``{'data': [[image_syn, label_syn], ...], 'accs_all_exps': {...}}``, one
  ``[image_syn [N, C, H, W], label_syn [N]]`` pair per experiment (``--num_exp``).

Conversion: their images are NCHW, this library's NHWC; both hold images normalized with the dataset's
per-channel mean / std (``jaxdistill.data.datasets.KNOWN``, the same statistics the references use), so
only the channel order changes, never the values. mtt-distillation may also have ZCA-whitened them
(``--zca``, its CIFAR commands do); the file does not say so, hence ``load_set``'s ``zca=``.

PyTorch is needed for the ``.pt`` layouts only: ``pip install -e '.[torch]'`` (a CPU build is enough:
``pip install torch --index-url https://download.pytorch.org/whl/cpu``).
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from typing import Optional

import numpy as np

from jaxdistill.data.datasets import validate_images, validate_labels
from jaxdistill.types import SyntheticSet

FORMATS = ("npz", "mtt", "dc")
_MTT_FILE = re.compile(r"^(images|labels|lr)_(zca_)?(.+)\.pt$")


class SetFileError(ValueError):
  """A file (or directory) that does not hold a distilled set of the layout it was read as."""


def _fail(path, problem) -> SetFileError:
  return SetFileError(f"{path}: {problem}")


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("Reading or writing PyTorch (.pt) sets needs PyTorch: pip install -e '.[torch]' "
                      "(a CPU build is enough: pip install torch --index-url "
                      "https://download.pytorch.org/whl/cpu).") from e
  return torch


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------

def load_set(path: str, *, format: Optional[str] = None, index: int = 0, tag: Optional[str] = None,
             zca: Optional[bool] = None, num_classes: Optional[int] = None) -> SyntheticSet:
  """Reads a distilled set saved by this library, mtt-distillation or DatasetCondensation.

  Args:
    path: an ``.npz`` file; mtt-distillation's run directory or its ``images_<tag>.pt`` (the labels
      are read from ``labels_<tag>.pt`` next to it, the step size from ``lr_<tag>.pt`` if present);
      or DatasetCondensation's ``res_*.pt``.
    format: ``"npz"``, ``"mtt"`` or ``"dc"``; None picks it from the path (a directory or
      ``images_*.pt``: mtt; another ``.pt``: dc; ``.npz``: npz).
    index: the experiment to read from a dc file (its ``'data'`` list holds one set per experiment).
    tag: which of an mtt directory's sets (``images_<tag>.pt``, e.g. ``"best"`` or ``"5000"``); needed
      when the directory holds more than one.
    zca: mtt only: whether the images are ZCA-whitened (``--zca``). The file does not record it:
      None warns when nothing tells, and refuses when an ``images_zca_<tag>.pt`` next to the file
      shows they are (that file holds the same images un-whitened: pass its path to read those). Pass
      True for whitened images (evaluate them on ``jaxdistill.data.whiten_dataset(data)``, which is
      MTT's whitening), False for images only normalized. DatasetCondensation never whitens
      (``zca=True`` is refused there); an npz is read as it is.
    num_classes: if given, hard labels must lie in ``[0, num_classes)`` and soft ones be
      ``[N, num_classes]``.

  Returns:
    ``SyntheticSet(images [N, H, W, C] float32, labels [N] int32 or [N, K] float32, log_lr)``, with
    ``log_lr`` float32 (a scalar; an npz's may be ``[S]``) when the file holds a step size, else None. Pixel values are the
    file's (normalized with the dataset's mean / std, as ``jaxdistill.data.load`` gives them).

  Raises:
    FileNotFoundError: ``path`` (or the labels file an mtt set needs) does not exist.
    SetFileError: (a ``ValueError``) naming the file and the problem: an unknown extension or
      format, another layout (a dict without ``'data'``, a lone tensor, images not ``[N, C, H, W]``),
      ``index`` or ``tag`` that do not pick one set, NaN / inf images, labels that do not match the
      images, a step size that is not one positive number, a ZCA state that contradicts ``zca``, or
      a ``.pt`` holding objects other than tensors and containers (never unpickled: that could run code).
    ImportError: a ``.pt`` file without PyTorch installed.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory.")
  format = format or _detect(path)
  if format not in FORMATS:
    raise _fail(path, f"unknown format {format!r}; known: {list(FORMATS)}.")
  if tag is not None and format != "mtt":
    raise _fail(path, f"tag= picks one of an mtt-distillation directory's sets; this is a {format} file.")
  if index != 0 and format != "dc":
    raise _fail(path, f"index= picks a DatasetCondensation experiment; this is a {format} set.")
  if zca and format == "dc":
    raise _fail(path, "zca=True, but DatasetCondensation's code never whitens its sets.")
  log_lr = lr = None
  if format == "npz":
    images, labels, log_lr = _read_npz(path)
  elif format == "mtt":
    images, labels, lr = _read_mtt(path, tag, zca)
  else:
    images, labels, lr = _read_dc(path, index)
  syn_images, syn_labels = _check_set(path, images, labels, num_classes)
  if lr is not None:
    log_lr = _log_lr(path, lr)
  elif log_lr is not None:
    log_lr = np.asarray(log_lr, np.float32)
    if not np.isfinite(log_lr).all():
      raise _fail(path, f"log_lr is not finite ({log_lr}).")
  return SyntheticSet(syn_images, syn_labels, log_lr)


def _detect(path: str) -> str:
  if os.path.isdir(path):
    return "mtt"
  name = os.path.basename(path)
  if name.endswith(".npz"):
    return "npz"
  if name.endswith(".pt"):
    return "mtt" if _MTT_FILE.match(name) else "dc"
  raise _fail(path, "unknown extension: pass an .npz file, an mtt-distillation run directory or "
                    "images_<tag>.pt, or a DatasetCondensation res_*.pt (or name format=).")


def _read_npz(path: str):
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise _fail(path, f"not a readable npz file ({type(e).__name__}: {e}).") from e
  with z:
    missing = [k for k in ("images", "labels") if k not in z.files]
    if missing:
      raise _fail(path, f"an npz set needs 'images' [N, H, W, C] and 'labels'; missing {missing} "
                        f"(keys: {z.files}).")
    return z["images"], z["labels"], (z["log_lr"] if "log_lr" in z.files else None)


def _read_pt(path: str):
  """``torch.load(weights_only=True)``: a ``.pt`` is a pickle, which could run any code when read;
  the safe loader rebuilds only tensors, containers and numbers (here also NumPy scalars, which
  DatasetCondensation's accuracies are), so a file from anywhere can be opened."""
  torch = _torch()
  import numpy._core.multiarray as multiarray  # pylint: disable=import-outside-toplevel
  safe = [multiarray.scalar, (multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype,
          *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32"))]
  try:
    with torch.serialization.safe_globals(safe):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    try:
      unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # pylint: disable=broad-except
      unsafe = None  # not a torch archive at all
    if not unsafe:
      raise _fail(path, f"not a readable torch file (not a torch.save archive, or a corrupt one: "
                        f"{type(e).__name__}).") from e
    raise _fail(path, f"holds objects other than tensors, containers and numbers ({unsafe}), which "
                      f"torch.load(weights_only=True) refuses to build (unpickling them could run "
                      f"code). If you trust the file, torch.load(path, weights_only=False) it yourself "
                      f"and pass the arrays to jaxdistill.SyntheticSet.") from e
  except Exception as e:  # pylint: disable=broad-except
    raise _fail(path, f"not a readable torch file ({type(e).__name__}: {e}).") from e


def _array(torch, path, value, what):
  if not isinstance(value, torch.Tensor):
    raise _fail(path, f"{what} must be a tensor; got {type(value).__name__}.")
  value = value.detach().cpu()
  if value.is_floating_point():
    value = value.float()
  return value.numpy()


def _nchw_to_nhwc(path, x) -> np.ndarray:
  if x.ndim != 4:
    raise _fail(path, f"images must be [N, C, H, W] (the PyTorch code bases' layout); got shape "
                      f"{tuple(x.shape)}.")
  if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
    raise _fail(path, f"images of shape {tuple(x.shape)} look channels-last already; the PyTorch "
                      f"code bases save [N, C, H, W].")
  return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _mtt_files(path: str, tag: Optional[str]):
  """(images file, its tag, whether it is the un-whitened images_zca_ file)."""
  if os.path.isdir(path):
    tags = sorted(m.group(3) for m in map(_MTT_FILE.match, os.listdir(path))
                  if m and m.group(1) == "images" and not m.group(2))
    if tag is None:
      if len(tags) != 1:
        raise _fail(path, ("no images_<tag>.pt here (mtt-distillation's layout)" if not tags else
                           f"holds {len(tags)} sets (images_<tag>.pt with tags {tags}): pass tag=")
                    + ".")
      tag = tags[0]
    path = os.path.join(path, f"images_{tag}.pt")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no such file (tags here: {tags}).")
    return path, tag, False
  m = _MTT_FILE.match(os.path.basename(path))
  if not m or m.group(1) != "images":
    raise _fail(path, "pass mtt-distillation's images_<tag>.pt (or its directory); the labels and "
                      "step size are read from the files next to it.")
  if tag is not None and tag != m.group(3):
    raise _fail(path, f"tag={tag!r} contradicts the file name's tag {m.group(3)!r}.")
  return path, m.group(3), bool(m.group(2))


def _read_mtt(path: str, tag: Optional[str], zca: Optional[bool]):
  torch = _torch()
  images_file, tag, unwhitened = _mtt_files(path, tag)
  folder = os.path.dirname(images_file)
  zca_file = os.path.join(folder, f"images_zca_{tag}.pt")
  if unwhitened and zca:
    raise _fail(images_file, "zca=True, but images_zca_<tag>.pt holds mtt-distillation's images with "
                             "the whitening undone; read images_<tag>.pt for the whitened ones.")
  if not unwhitened and os.path.exists(zca_file):
    if zca is None:
      raise _fail(images_file, f"these images are ZCA-whitened ({os.path.basename(zca_file)} next to "
                               f"them holds them un-whitened): pass zca=True to read them whitened "
                               f"(evaluate on jaxdistill.data.whiten_dataset(data)), or read "
                               f"{zca_file} for the normalized images.")
    if zca is False:
      raise _fail(images_file, f"zca=False, but {os.path.basename(zca_file)} next to it shows these "
                               f"images are ZCA-whitened; read {zca_file} for the normalized images.")
  elif not unwhitened and zca is None:
    warnings.warn(f"{images_file}: whether mtt-distillation ZCA-whitened these images (--zca) is not "
                  f"recorded; they are read as they are. Pass zca=False if they are only normalized, "
                  f"zca=True if whitened (then evaluate on jaxdistill.data.whiten_dataset(data)).",
                  stacklevel=3)
  labels_file = os.path.join(folder, f"labels_{tag}.pt")
  if not os.path.exists(labels_file):
    raise FileNotFoundError(f"{labels_file}: no such file (mtt-distillation saves the labels of "
                            f"{os.path.basename(images_file)} there).")
  images = _nchw_to_nhwc(images_file, _array(torch, images_file, _read_pt(images_file), "images"))
  labels = _array(torch, labels_file, _read_pt(labels_file), "labels")
  lr_file = os.path.join(folder, f"lr_{tag}.pt")
  lr = None
  if os.path.exists(lr_file):
    lr = (lr_file, _array(torch, lr_file, _read_pt(lr_file), "the step size"))
  return (images_file, images), (labels_file, labels), lr


def _read_dc(path: str, index: int):
  torch = _torch()
  obj = _read_pt(path)
  if not isinstance(obj, dict) or "data" not in obj:
    got = f"a dict with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else \
        f"a {type(obj).__name__}" + (f" of shape {tuple(obj.shape)}" if hasattr(obj, "shape") else "")
    raise _fail(path, f"DatasetCondensation's res_*.pt is a dict {{'data': [[image_syn, label_syn], "
                      f"...], 'accs_all_exps': ...}}; got {got}. (mtt-distillation's files are named "
                      f"images_<tag>.pt / labels_<tag>.pt.)")
  data = obj["data"]
  if not isinstance(data, (list, tuple)) or not data:
    raise _fail(path, f"'data' must be a non-empty list of [image_syn, label_syn] pairs; got "
                      f"{type(data).__name__}" + (" (empty)" if isinstance(data, (list, tuple)) else "")
                + ".")
  if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(data):
    raise _fail(path, f"index={index!r}, but the file holds {len(data)} experiment(s) "
                      f"(index 0 to {len(data) - 1}).")
  pair = data[index]
  if not isinstance(pair, (list, tuple)) or len(pair) != 2:
    raise _fail(path, f"'data'[{index}] must be [image_syn, label_syn]; got {type(pair).__name__}"
                      + (f" of length {len(pair)}" if isinstance(pair, (list, tuple)) else "") + ".")
  where = f"{path} ('data'[{index}])"
  images = _nchw_to_nhwc(where, _array(torch, where, pair[0], "image_syn"))
  return (where, images), (where, _array(torch, where, pair[1], "label_syn")), None


def _check_set(path, images, labels, num_classes):
  """Images and labels (each a (where, array) pair, or arrays of ``path``) checked as one set."""
  (img_where, images), (lab_where, labels) = [v if isinstance(v, tuple) else (path, v)
                                              for v in (images, labels)]
  try:
    images = validate_images(images, name="images")
  except ValueError as e:
    raise _fail(img_where, e) from e
  if not np.issubdtype(images.dtype, np.floating):
    raise _fail(img_where, f"images must be float (normalized); got {images.dtype}.")
  n = images.shape[0]
  labels = np.asarray(labels)
  try:
    if labels.ndim == 2 and labels.shape[1] > 1 and np.issubdtype(labels.dtype, np.floating):
      if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries but there are {n} images.")
      if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"soft labels must be [N, {num_classes}]; got {labels.shape}.")
      if not np.isfinite(labels).all():
        raise ValueError("soft labels contain NaN or inf.")
      labels = labels.astype(np.float32)
    else:
      k = num_classes if num_classes is not None else int(labels.max(initial=0)) + 1
      labels = validate_labels(labels, k, n=n)
  except ValueError as e:
    raise _fail(lab_where, e) from e
  return images.astype(np.float32), labels


def _log_lr(path, lr):
  where, lr = lr if isinstance(lr, tuple) else (path, lr)
  lr = np.asarray(lr, np.float64)
  if lr.size != 1 or not np.isfinite(lr).all() or float(lr.reshape(-1)[0]) <= 0:
    raise _fail(where, f"the step size must be one finite positive number; got shape {lr.shape} "
                       f"values {lr.reshape(-1)[:4]}.")
  return np.float32(np.log(float(lr.reshape(-1)[0])))


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------

def save_set(path: str, syn: SyntheticSet, *, format: Optional[str] = None, tag: str = "best",
             accs_all_exps: Optional[dict] = None) -> list:
  """Writes ``syn`` as this library's npz, or so that mtt-distillation / DatasetCondensation read it.

  The images are written as they are (normalized with the dataset's mean / std, whitened if they
  were): ``[N, C, H, W]`` float32 tensors for the ``.pt`` layouts, labels int64 (``[N, K]`` float32
  soft labels as they are), the step size ``exp(log_lr)`` as a 0-d float32 tensor.

  Args:
    path: ``*.npz`` (npz); a directory (mtt: ``images_<tag>.pt``, ``labels_<tag>.pt`` and, when
      ``syn.log_lr`` is set, ``lr_<tag>.pt`` in it; created if missing) or ``images_<tag>.pt``
      (mtt, with that tag; an ``lr_<tag>.pt`` or ``images_zca_<tag>.pt`` left there by an earlier set
      of that tag is removed, as it is not this set's); another ``*.pt`` (dc: ``{'data': [[image_syn, label_syn]],
      'accs_all_exps': accs_all_exps or {}}``, the one experiment ``res_*.pt`` holds per run).
    syn: the set: images ``[N, H, W, C]``, labels ``[N]`` or ``[N, K]``, optional ``log_lr`` (a scalar
      for the ``.pt`` layouts; an npz keeps any shape, e.g. DD's ``[S]``, one per unrolled step).
    format: ``"npz"``, ``"mtt"`` or ``"dc"``; None picks it from ``path`` as above.
    tag: the mtt file names' tag when ``path`` is a directory (the originals use the iteration or
      ``"best"``).
    accs_all_exps: dc only: the accuracies dict stored beside the data (``{model: [accuracies]}``).

  Returns:
    The paths written.

  Raises:
    SetFileError: a path whose layout cannot be told, a bad set (the checks of ``load_set``), a
      ``log_lr`` that is not finite, or not a scalar for a ``.pt`` layout, or a dc file
      asked to hold a step size (DatasetCondensation stores none: write mtt or npz instead).
    ImportError: a ``.pt`` layout without PyTorch installed.
  """
  path = os.fspath(path)
  if format is None:
    name = os.path.basename(path.rstrip(os.sep))
    if name.endswith(".npz"):
      format = "npz"
    elif name.endswith(".pt"):
      format = "mtt" if _MTT_FILE.match(name) else "dc"
    elif os.path.isdir(path) or path.endswith(os.sep) or "." not in name:
      format = "mtt"
    else:
      raise _fail(path, "unknown extension: name an .npz, a directory or images_<tag>.pt (mtt), or "
                        "a res_*.pt (dc), or pass format=.")
  if format not in FORMATS:
    raise _fail(path, f"unknown format {format!r}; known: {list(FORMATS)}.")
  images, labels = _check_set(path, np.asarray(syn.images), np.asarray(syn.labels), None)
  log_lr = None
  if syn.log_lr is not None:
    log_lr = np.asarray(syn.log_lr, np.float32)
    if not np.isfinite(log_lr).all():
      raise _fail(path, f"log_lr is not finite ({log_lr}).")
    if format != "npz" and log_lr.size != 1:
      raise _fail(path, f"log_lr must be one number for the PyTorch layouts; got shape {log_lr.shape} "
                        f"(DD's one step size per step: write an npz, which keeps it).")
  if format == "npz":
    extra = {} if log_lr is None else {"log_lr": log_lr}
    np.savez(path, images=images, labels=labels, **extra)
    return [path]
  torch = _torch()
  image_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  label_t = torch.from_numpy(labels.astype(np.float32 if labels.ndim == 2 else np.int64))
  if format == "dc":
    if log_lr is not None:
      raise _fail(path, "DatasetCondensation's res_*.pt holds no step size, and this set has one "
                        "(log_lr): write format='mtt' or an npz, or drop it (syn._replace(log_lr=None)).")
    torch.save({"data": [[image_t, label_t]], "accs_all_exps": dict(accs_all_exps or {})}, path)
    return [path]
  m = _MTT_FILE.match(os.path.basename(path))
  if m:
    if m.group(1) != "images" or m.group(2):
      raise _fail(path, "name the images file images_<tag>.pt (or pass the directory).")
    folder, tag = os.path.dirname(path) or ".", m.group(3)
  else:
    folder = path
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise _fail(path, "exists and is not a directory (mtt-distillation's layout is a directory).")
  os.makedirs(folder, exist_ok=True)
  written = [os.path.join(folder, f"{kind}_{tag}.pt") for kind in ("images", "labels", "lr")]
  # A set written over another of the same tag: its step size and un-whitened copy are not this set's.
  for stale in ([written[2]] if log_lr is None else []) + [os.path.join(folder, f"images_zca_{tag}.pt")]:
    if os.path.exists(stale):
      os.remove(stale)
  torch.save(image_t, written[0])
  torch.save(label_t, written[1])
  if log_lr is None:
    return written[:2]
  torch.save(torch.tensor(float(np.exp(log_lr.reshape(()))), dtype=torch.float32), written[2])
  return written
