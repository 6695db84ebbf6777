"""jaxdistill.io: sets saved by the PyTorch code bases (written here as their code writes them) are read
right, channel order included; sets written here load in torch as the originals'; bad files are refused."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import jaxdistill as jd
from jaxdistill.io import SetFileError, load_set, save_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torch():
  return pytest.importorskip("torch")


def _nchw(n=6, c=3, h=5, w=7, seed=0):
  """Distinct values everywhere and H != W != C: a wrong transposition changes shape or values."""
  return np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32)


def _labels(n=6, k=3):
  return np.arange(n) % k


def _save_mtt(torch, folder, images, labels, lr=None, tag="best"):
  """As mtt-distillation's distill.py (DATM's fork adds the step size): one torch.save per tensor."""
  os.makedirs(folder, exist_ok=True)
  image_syn = torch.tensor(images, requires_grad=True)
  label_syn = torch.tensor(labels, dtype=torch.long if labels.ndim == 1 else torch.float)
  torch.save(image_syn.detach().cpu(), os.path.join(folder, f"images_{tag}.pt"))
  torch.save(label_syn.cpu(), os.path.join(folder, f"labels_{tag}.pt"))
  if lr is not None:
    syn_lr = torch.tensor(lr).requires_grad_(True)
    torch.save(syn_lr.detach().cpu(), os.path.join(folder, f"lr_{tag}.pt"))


def _save_dc(torch, path, pairs):
  """As DatasetCondensation's main.py: the accuracies are NumPy scalars (its utils.epoch sums with
  np.sum), which a safe torch.load must still read."""
  data_save = [[torch.tensor(x).detach().cpu(), torch.tensor(y, dtype=torch.long).detach().cpu()]
               for x, y in pairs]
  accs = [np.sum(np.array([1, 0, 1]) == 1) / 3.0, np.float64(0.5)]
  torch.save({"data": data_save, "accs_all_exps": {"ConvNet": accs}}, path)


def _assert_nhwc_of(images, nchw):
  assert images.shape == (nchw.shape[0], nchw.shape[2], nchw.shape[3], nchw.shape[1])
  assert images.dtype == np.float32
  assert images[1, 2, 4, 0] == nchw[1, 0, 2, 4] and images[3, 4, 6, 2] == nchw[3, 2, 4, 6]
  np.testing.assert_array_equal(images, nchw.transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------------------------------
# Read here what the PyTorch code bases wrote
# ----------------------------------------------------------------------------------------------------

def test_reads_mtt_run_directory_and_images_file(tmp_path):
  torch = _torch()
  x, y = _nchw(), _labels()
  _save_mtt(torch, tmp_path, x, y, lr=0.0123)
  for path in (tmp_path, tmp_path / "images_best.pt"):
    syn = load_set(path, zca=False)
    _assert_nhwc_of(np.asarray(syn.images), x)
    assert syn.labels.dtype == np.int32
    np.testing.assert_array_equal(syn.labels, y)
    np.testing.assert_allclose(np.exp(syn.log_lr), 0.0123, rtol=1e-6)


def test_mtt_without_step_size_file_and_soft_labels(tmp_path):
  torch = _torch()
  x = _nchw()
  soft = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)  # DATM's learned logits
  _save_mtt(torch, tmp_path, x, soft, tag="5000")
  syn = load_set(tmp_path / "images_5000.pt", zca=False, num_classes=3)
  assert syn.log_lr is None
  assert syn.labels.dtype == np.float32 and syn.labels.shape == (6, 3)
  np.testing.assert_array_equal(syn.labels, soft)


def test_mtt_zca_is_never_guessed(tmp_path):
  torch = _torch()
  x, y = _nchw(), _labels()
  _save_mtt(torch, tmp_path / "plain", x, y)
  with pytest.warns(UserWarning, match="ZCA-whitened these images .* is not\\s+recorded"):
    load_set(tmp_path / "plain")
  # distill.py with --zca also saves the un-whitened images as images_zca_<tag>.pt
  _save_mtt(torch, tmp_path / "zca", x, y)
  unwhitened = x * 2.0 + 1.0
  torch.save(torch.tensor(unwhitened), tmp_path / "zca" / "images_zca_best.pt")
  with pytest.raises(SetFileError, match="images_best.pt: these images are ZCA-whitened"):
    load_set(tmp_path / "zca")
  with pytest.raises(SetFileError, match="zca=False, but images_zca_best.pt"):
    load_set(tmp_path / "zca", zca=False)
  _assert_nhwc_of(np.asarray(load_set(tmp_path / "zca", zca=True).images), x)
  syn = load_set(tmp_path / "zca" / "images_zca_best.pt")  # un-whitened: no warning, same labels
  _assert_nhwc_of(np.asarray(syn.images), unwhitened)
  np.testing.assert_array_equal(syn.labels, y)
  with pytest.raises(SetFileError, match="with\\s+the whitening undone"):
    load_set(tmp_path / "zca" / "images_zca_best.pt", zca=True)


def test_reads_dc_res_file_by_experiment(tmp_path):
  torch = _torch()
  pairs = [(_nchw(seed=0), _labels()), (_nchw(seed=1), _labels()[::-1].copy())]
  path = tmp_path / "res_DSA_FashionMNIST_ConvNet_1ipc.pt"
  _save_dc(torch, path, pairs)
  for index in (0, 1):
    syn = load_set(path, index=index, num_classes=3)
    _assert_nhwc_of(np.asarray(syn.images), pairs[index][0])
    np.testing.assert_array_equal(syn.labels, pairs[index][1])
    assert syn.log_lr is None
  with pytest.raises(SetFileError, match=r"index=2, but the file holds 2 experiment\(s\)"):
    load_set(path, index=2)
  with pytest.raises(SetFileError, match="never whitens"):
    load_set(path, zca=True)
  with pytest.raises(SetFileError, match="tag= picks one of an mtt-distillation directory's sets"):
    load_set(path, tag="best")


# ----------------------------------------------------------------------------------------------------
# Write here, read with torch as the PyTorch code bases do
# ----------------------------------------------------------------------------------------------------

def _syn(log_lr=None, seed=3):
  x = np.random.default_rng(seed).normal(size=(6, 5, 7, 3)).astype(np.float32)  # [N, H, W, C]
  return jd.SyntheticSet(x, np.array([0, 1, 2, 2, 1, 0], np.int32), log_lr)


def test_written_mtt_files_load_in_torch(tmp_path):
  torch = _torch()
  syn = _syn(np.float32(np.log(0.02)))
  written = save_set(tmp_path / "run", syn)
  assert [os.path.basename(p) for p in written] == ["images_best.pt", "labels_best.pt", "lr_best.pt"]
  image_syn = torch.load(tmp_path / "run" / "images_best.pt", weights_only=True)
  label_syn = torch.load(tmp_path / "run" / "labels_best.pt", weights_only=True)
  syn_lr = torch.load(tmp_path / "run" / "lr_best.pt", weights_only=True)
  assert image_syn.shape == (6, 3, 5, 7) and image_syn.dtype == torch.float32
  assert float(image_syn[1, 0, 2, 4]) == syn.images[1, 2, 4, 0]
  np.testing.assert_array_equal(image_syn.numpy(), syn.images.transpose(0, 3, 1, 2))
  assert label_syn.dtype == torch.int64
  np.testing.assert_array_equal(label_syn.numpy(), syn.labels)
  assert syn_lr.dim() == 0 and syn_lr.dtype == torch.float32
  np.testing.assert_allclose(syn_lr.item(), 0.02, rtol=1e-6)
  # written again without a step size: the earlier lr_best.pt is not left to be read with it
  save_set(tmp_path / "run" / "images_best.pt", syn._replace(log_lr=None))
  assert not os.path.exists(tmp_path / "run" / "lr_best.pt")
  assert load_set(tmp_path / "run", zca=False).log_lr is None


def test_written_dc_file_loads_in_torch(tmp_path):
  torch = _torch()
  syn = _syn()
  path = tmp_path / "res_DM_FashionMNIST_ConvNet_1ipc.pt"
  save_set(path, syn, accs_all_exps={"ConvNet": [0.5]})
  res = torch.load(path, weights_only=True)
  image_syn, label_syn = res["data"][0]
  np.testing.assert_array_equal(image_syn.numpy(), syn.images.transpose(0, 3, 1, 2))
  assert label_syn.dtype == torch.int64
  np.testing.assert_array_equal(label_syn.numpy(), syn.labels)
  assert res["accs_all_exps"] == {"ConvNet": [0.5]}
  with pytest.raises(SetFileError, match="holds no step size"):
    save_set(path, syn._replace(log_lr=np.float32(-4.0)))


def test_npz_round_trip(tmp_path):
  soft = jd.SyntheticSet(_syn().images, np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32),
                         np.float32(-3.5))
  for syn in (_syn(), _syn(np.float32(-4.25)), soft):
    save_set(tmp_path / "s.npz", syn)
    got = load_set(tmp_path / "s.npz")
    np.testing.assert_array_equal(got.images, syn.images)
    np.testing.assert_array_equal(got.labels, syn.labels)
    assert got.labels.dtype == syn.labels.dtype
    assert (got.log_lr is None) == (syn.log_lr is None)
    if syn.log_lr is not None:
      assert float(got.log_lr) == float(syn.log_lr)
  # the file experiments/distill.py writes (images and labels only) reads the same way
  np.savez(tmp_path / "synthetic.npz", images=_syn().images, labels=_syn().labels)
  assert load_set(tmp_path / "synthetic.npz").log_lr is None


def test_per_step_log_lr_stays_in_npz_and_is_refused_for_pt(tmp_path):
  per_step = np.log(np.array([0.01, 0.02, 0.03], np.float32))  # DD: one step size per unrolled step
  save_set(tmp_path / "dd.npz", _syn(per_step))
  np.testing.assert_array_equal(load_set(tmp_path / "dd.npz").log_lr, per_step)
  with pytest.raises(SetFileError, match=r"one number for the PyTorch layouts; got shape \(3,\)"):
    save_set(tmp_path / "run", _syn(per_step))
  with pytest.raises(SetFileError, match="log_lr is not finite"):
    save_set(tmp_path / "s.npz", _syn(np.float32(np.nan)))


# ----------------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file and the problem
# ----------------------------------------------------------------------------------------------------

def _bad_cases(torch, d):
  x, y = _nchw(), _labels()
  cases = []
  torch.save({"images": torch.tensor(x)}, d / "res_nodata.pt")
  cases.append(("res_nodata.pt", SetFileError, r"res_nodata.pt: .*got a dict with keys \['images'\]"))
  torch.save(torch.tensor(x), d / "lone.pt")
  cases.append(("lone.pt", SetFileError, r"lone.pt: .*got a Tensor of shape \(6, 3, 5, 7\)"))
  torch.save(torch.tensor(x[0]), d / "images_3d.pt")
  torch.save(torch.tensor(y, dtype=torch.long), d / "labels_3d.pt")
  cases.append(("images_3d.pt", SetFileError, r"images_3d.pt: images must be \[N, C, H, W\].*\(3, 5, 7\)"))
  _save_mtt(torch, d / "count", x, y[:5])
  cases.append(("count", SetFileError, "labels_best.pt: labels has 5 entries but there are 6 images"))
  nan = x.copy()
  nan[2, 0, 0, 0] = np.nan
  _save_mtt(torch, d / "nan", nan, y)
  cases.append(("nan", SetFileError, r"images_best.pt: images: rows \[2\] contain NaN or inf \(1 of 6"))
  _save_dc(torch, d / "res_nan.pt", [(nan, y)])
  cases.append(("res_nan.pt", SetFileError, r"res_nan.pt \('data'\[0\]\): images: rows \[2\] contain NaN"))
  _save_mtt(torch, d / "nhwc", x.transpose(0, 2, 3, 1).copy(), y)
  cases.append(("nhwc", SetFileError, "look channels-last already"))
  _save_mtt(torch, d / "neglr", x, y, lr=-0.01)
  cases.append(("neglr", SetFileError, "lr_best.pt: the step size must be one finite positive"))
  _save_mtt(torch, d / "two", x, y, tag="best")
  _save_mtt(torch, d / "two", x, y, tag="1000")
  cases.append(("two", SetFileError, r"holds 2 sets .*tags \['1000', 'best'\]\): pass tag="))
  os.makedirs(d / "nolabels")
  torch.save(torch.tensor(x), d / "nolabels" / "images_best.pt")
  cases.append(("nolabels", FileNotFoundError, "labels_best.pt: no such file"))
  (d / "junk.pt").write_bytes(b"not a torch file")
  cases.append(("junk.pt", SetFileError, "junk.pt: not a readable torch file"))
  cases.append(("missing.npz", FileNotFoundError, "missing.npz: no such file"))
  (d / "set.h5").write_bytes(b"")
  cases.append(("set.h5", SetFileError, "set.h5: unknown extension"))
  np.savez(d / "nolab.npz", images=x.transpose(0, 2, 3, 1))
  cases.append(("nolab.npz", SetFileError, r"nolab.npz: .*missing \['labels'\]"))
  return cases


def test_bad_files_are_refused_naming_file_and_problem(tmp_path):
  torch = _torch()
  for name, error, match in _bad_cases(torch, tmp_path):
    with pytest.raises(error, match=match):
      load_set(tmp_path / name, zca=False)


def test_unsafe_pickle_is_not_run(tmp_path):
  torch = _torch()
  torch.save({"data": [[torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long)]],
              "args": argparse_namespace()}, tmp_path / "res_args.pt")
  with pytest.raises(SetFileError, match=r"res_args.pt: holds objects other than tensors.*argparse"):
    load_set(tmp_path / "res_args.pt")


def argparse_namespace():
  import argparse  # pylint: disable=import-outside-toplevel
  return argparse.Namespace(lr=0.01)


def test_missing_torch_says_how_to_install(tmp_path, monkeypatch):
  (tmp_path / "res_x.pt").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
  with pytest.raises(ImportError, match=re.escape("pip install -e '.[torch]'")):
    load_set(tmp_path / "res_x.pt")
  with pytest.raises(ImportError, match="download.pytorch.org/whl/cpu"):
    save_set(tmp_path / "run", _syn())


# ----------------------------------------------------------------------------------------------------
# The command and the example
# ----------------------------------------------------------------------------------------------------

def _fmnist_set(ipc=2):
  data = jd.data.load("fashion_mnist")
  idx = np.concatenate([np.flatnonzero(data.y_train == c)[:ipc] for c in range(data.num_classes)])
  return jd.SyntheticSet(data.x_train[idx], data.y_train[idx])


@pytest.mark.slow
def test_evaluate_set_command(tmp_path, capsys):
  torch = _torch()
  from experiments import evaluate_set  # pylint: disable=import-outside-toplevel
  syn = _fmnist_set()
  _save_mtt(torch, tmp_path, np.asarray(syn.images).transpose(0, 3, 1, 2), np.asarray(syn.labels))
  evaluate_set.main([str(tmp_path), "--protocol", "dsa", "--epochs", "2", "--num-models", "1",
                     "--no-zca"])
  out = capsys.readouterr().out
  m = re.search(r"protocol dsa .*1 network\(s\), E = 2: test accuracy ([\d.]+) ± ([\d.]+) %", out)
  assert m, out
  # 20 real images, 3 epochs: clearly above chance (10 %), one network so no spread
  assert 20.0 < float(m.group(1)) <= 100.0 and float(m.group(2)) == 0.0


@pytest.mark.slow
def test_example_runs(tmp_path):
  _torch()
  out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "evaluate_pytorch_set.py"),
                        str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-3000:]
  m = re.search(r"test accuracy ([\d.]+) ± ([\d.]+) %", out.stdout)
  assert m, out.stdout
  assert 20.0 < float(m.group(1)) <= 100.0
