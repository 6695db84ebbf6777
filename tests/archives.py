"""Small archives in the datasets' published formats, for the loaders' tests: CIFAR-10 / CIFAR-100 as
the python tarballs (pickled batches, as torchvision reads them) and the binary tarballs (as TFDS's
builders read them), SVHN's ``.mat`` files and Tiny-ImageNet's zip. Each writer returns the pixels and
labels it wrote, to compare with what the loader reads back."""
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(rng, n, size=32):
  return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _tar(path, members: dict):
  with tarfile.open(path, "w:gz") as tar:
    for name, raw in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))


def cifar(path: str, name: str = "cifar10", kind: str = "python", per_batch: int = 3, test: int = 4,
          seed: int = 0) -> tuple:
  """Writes ``name``'s published archive (``kind`` "python" or "binary") at ``path``, ``per_batch``
  images in each training batch and ``test`` test images. Returns ``(x_train, y_train, x_test, y_test,
  class_names)`` as written (NHWC uint8)."""
  rng = np.random.default_rng(seed)
  k = 10 if name == "cifar10" else 100
  class_names = CIFAR10_NAMES if k == 10 else [f"class_{i:02d}" for i in range(k)]
  batches = ([f"data_batch_{i}" for i in range(1, 6)] if k == 10 else ["train"])
  tests = ["test_batch"] if k == 10 else ["test"]
  top = {("cifar10", "python"): "cifar-10-batches-py", ("cifar100", "python"): "cifar-100-python",
         ("cifar10", "binary"): "cifar-10-batches-bin", ("cifar100", "binary"): "cifar-100-binary"}[
             (name, kind)]
  members, split = {}, {}
  for part, names, n in (("train", batches, per_batch), ("test", tests, test)):
    xs, ys = [], []
    labels = rng.permutation(np.arange(n * len(names)) % k)  # every class once before any twice
    for j, b in enumerate(names):
      x, y = _images(rng, n), labels[j * n:(j + 1) * n]
      coarse = rng.integers(0, 20, n)
      chw = x.transpose(0, 3, 1, 2).reshape(n, 3072)  # the files' row-major CHW rows
      if kind == "python":
        d = {"batch_label": f"{part} batch", "data": chw, "filenames": [f"img_{i}.png" for i in range(n)]}
        d.update({"labels": y.tolist()} if k == 10 else
                 {"fine_labels": y.tolist(), "coarse_labels": coarse.tolist()})
        members[f"{top}/{b}"] = pickle.dumps(d, protocol=2)
      else:
        lab = y[:, None] if k == 10 else np.stack([coarse, y], 1)
        members[f"{top}/{b}.bin"] = np.concatenate([lab.astype(np.uint8), chw], 1).tobytes()
      xs.append(x)
      ys.append(y)
    split[part] = (np.concatenate(xs), np.concatenate(ys))
  if kind == "python":
    meta = ({"label_names": class_names, "num_vis": 3072} if k == 10 else
            {"fine_label_names": class_names, "coarse_label_names": [f"super_{i}" for i in range(20)]})
    members[f"{top}/{'batches.meta' if k == 10 else 'meta'}"] = pickle.dumps(meta, protocol=2)
  else:
    text = ("\n".join(class_names) + "\n\n").encode()
    if k == 10:
      members[f"{top}/batches.meta.txt"] = text
    else:
      members[f"{top}/fine_label_names.txt"] = text
      members[f"{top}/coarse_label_names.txt"] = "\n".join(f"super_{i}" for i in range(20)).encode()
  _tar(path, members)
  return (*split["train"], *split["test"], class_names)


def svhn(directory: str, train: int = 5, test: int = 3, seed: int = 0) -> tuple:
  """Writes ``train_32x32.mat`` and ``test_32x32.mat`` (``X [32, 32, 3, N]`` uint8, ``y [N, 1]`` with
  digit 0 stored as 10) in ``directory``. Returns ``(x_train, y_train, x_test, y_test)``, labels 0..9."""
  import scipy.io
  rng = np.random.default_rng(seed)
  out = []
  for fn, n in (("train_32x32.mat", train), ("test_32x32.mat", test)):
    x, digit = _images(rng, n), (np.arange(n) % 10)
    digit[0] = 0  # a zero: stored as 10
    scipy.io.savemat(os.path.join(directory, fn), {"X": x.transpose(1, 2, 3, 0),
                                                   "y": np.where(digit == 0, 10, digit)[:, None]})
    out += [x, digit]
  return tuple(out)


def tiny_imagenet(path: str, wnids=("n02", "n01", "n03"), per_class: int = 2, val: int = 4,
                  seed: int = 0) -> tuple:
  """Writes ``tiny-imagenet-200.zip``'s layout at ``path`` (JPEG images, one greyscale; ``wnids.txt``
  unsorted, as published). Returns ``(train {name: (jpeg bytes, wnid)}, val {name: (jpeg bytes, wnid)},
  wnids)``."""
  from PIL import Image
  rng = np.random.default_rng(seed)

  def jpeg(gray=False):
    im = Image.fromarray(_images(rng, 1, 64)[0])
    buf = io.BytesIO()
    (im.convert("L") if gray else im).save(buf, format="JPEG", quality=90)
    return buf.getvalue()

  train, vals = {}, {}
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
    for w in wnids:
      for i in range(per_class):
        name = f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG"
        train[name] = (jpeg(gray=(w, i) == (wnids[0], 1)), w)
        zf.writestr(name, train[name][0])
      zf.writestr(f"tiny-imagenet-200/train/{w}/{w}_boxes.txt", "")
    lines = []
    for i in range(val):
      w = wnids[(i + 1) % len(wnids)]
      vals[f"tiny-imagenet-200/val/images/val_{i}.JPEG"] = (jpeg(), w)
      zf.writestr(f"tiny-imagenet-200/val/images/val_{i}.JPEG", vals[f"tiny-imagenet-200/val/images/val_{i}.JPEG"][0])
      lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    zf.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(lines) + "\n")
    zf.writestr("tiny-imagenet-200/test/images/test_0.JPEG", jpeg())
  return train, vals, tuple(wnids)


def seed_tfds_cache(root, name: str, url: str, write) -> object:
  """Puts what ``write(path)`` writes where TFDS's download manager under data dir ``root`` keeps its
  download of ``name``'s registered ``url`` (the file name holds the registered sha256, an INFO file
  lies beside it), as a finished download leaves it; returns what ``write`` returned."""
  import tensorflow_datasets as tfds
  from etils import epath
  from tensorflow_datasets.core.download import resource as resource_lib
  info = tfds.builder_cls(name).url_infos[url]  # the builder's registered size and checksum
  folder = os.path.join(str(root), "downloads", name)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, resource_lib.get_dl_fname(url, info.checksum))
  out = write(path)
  resource_lib.write_info_file(url, epath.Path(path), name, url.rsplit("/", 1)[-1], info)
  return out
