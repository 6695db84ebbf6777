"""The evaluation protocol: learning works, determinism, learned lr, routing, soft labels, bad input."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import evaluate, partial_updates, training
from jaxdistill.types import Dataset, SyntheticSet


class TinyNet(nn.Module):
  """Any Flax module with ``__call__(x, train)`` works with the protocol."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=True):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(16)(x)))


def _toy(n_per=20, seed=0, K=3):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(K, 6, 6, 1)) * 2
  y = np.repeat(np.arange(K), n_per).astype(np.int32)
  x = (means[y] + rng.normal(size=(y.size, 6, 6, 1))).astype(np.float32)
  return x, y


@pytest.fixture(scope="module")
def data():
  xtr, ytr = _toy(20, 0)
  xte, yte = _toy(50, 0)
  return Dataset("toy", xtr, ytr, xte, yte, 3, ("a", "b", "c"), (0.0,), (1.0,))


CFG = evaluate.EvalConfig(epochs=30, augment="none", batch_size=16)


def test_learns_and_is_deterministic(data):
  syn = SyntheticSet(jnp.asarray(data.x_train), jnp.asarray(data.y_train))
  a = evaluate.accuracy(jax.random.key(0), syn, data, model=TinyNet(), num_seeds=2, cfg=CFG)
  b = evaluate.accuracy(jax.random.key(0), syn, data, model=TinyNet(), num_seeds=2, cfg=CFG)
  assert a.accuracies.shape == (2,)
  assert a.mean > 0.9  # well separated toy classes; chance is 1/3
  np.testing.assert_array_equal(a.accuracies, b.accuracies)


def test_progress_reports_each_network_and_changes_nothing(data):
  """One line per trained network, and the same accuracies as without progress (the networks run one
  per call of the same program; their keys are split from the same key)."""
  syn = (data.x_train, data.y_train)
  lines = []
  a = evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 3, CFG, progress=lines.append)
  b = evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 3, CFG)
  np.testing.assert_array_equal(a.accuracies, b.accuracies)
  assert len(lines) == 3 and lines[-1].startswith("evaluation: network 3/3 trained (31 epochs)")


def test_networks_trained_side_by_side_are_the_networks_trained_one_at_a_time(data):
  """parallel_networks only decides how many of the same program's calls run at once (threads): every
  network's accuracy is bit-identical; a bad value is refused."""
  syn = (data.x_train, data.y_train)
  a = evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 3, CFG, parallel_networks=1)
  b = evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 3, CFG, parallel_networks=2)
  np.testing.assert_array_equal(a.accuracies, b.accuracies)
  assert evaluate.resolve_parallel_networks(3) == 3
  assert evaluate.resolve_parallel_networks("auto") in (1, 2)
  for bad in (0, -1, 1.5, True, "two"):
    with pytest.raises(ValueError, match="parallel_networks must be"):
      evaluate.resolve_parallel_networks(bad)


def test_cached_networks_are_read_back_and_resume_a_longer_evaluation(data, tmp_path):
  """With cache_dir each network is stored as it finishes: a repeat trains nothing, more networks
  train only the new ones (network i's key does not depend on num_seeds), and every accuracy equals
  the uncached evaluation's; another set, protocol or key does not hit the cache; an unreadable
  file and an unidentifiable protocol are refused."""
  syn = (data.x_train, data.y_train)
  d = str(tmp_path / "nets")
  ref = evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 4, CFG)
  three = evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 3, CFG, cache_dir=d)
  np.testing.assert_array_equal(three.accuracies, ref.accuracies[:3])
  files = sorted(os.listdir(d))
  assert len(files) == 3 and all(f.endswith(".npy") for f in files)
  lines = []
  four = evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 4, CFG, cache_dir=d,
                           progress=lines.append)
  np.testing.assert_array_equal(four.accuracies, ref.accuracies)
  assert lines[0] == f"evaluation: 3/4 networks read back from {d}" and len(lines) == 2, lines
  assert len(os.listdir(d)) == 4
  x2 = np.array(data.x_train)
  x2[0, 0, 0, 0] += 1.0
  evaluate.accuracy(jax.random.key(5), (x2, data.y_train), data, TinyNet(), 1, CFG, cache_dir=d)
  evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 1, CFG._replace(epochs=29), cache_dir=d)
  evaluate.accuracy(jax.random.key(6), syn, data, TinyNet(), 1, CFG, cache_dir=d)
  assert len(os.listdir(d)) == 7
  with open(os.path.join(d, files[0]), "wb") as f:
    f.write(b"not an array")
  with pytest.raises(ValueError, match=r"cached network result .*unreadable.*delete it"):
    evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 4, CFG, cache_dir=d)
  with pytest.raises(ValueError, match="holds a function"):
    evaluate.accuracy(jax.random.key(5), syn, data, TinyNet(), 1, CFG._replace(augment=lambda k, x: x),
                      cache_dir=d)


def test_paper_protocols_are_the_papers_and_refuse_what_they_cannot_run():
  """The presets carry each paper's epochs, augmentation and networks; unknown names and DC on MNIST
  (DC's own augmentation there is not implemented) are refused."""
  dc, dsa, dm, mtt = (evaluate.protocol(n, "fashion_mnist") for n in ("dc", "dsa", "dm", "mtt"))
  assert (dc.cfg.num_epochs(), dc.cfg.augment, dc.num_models) == (300, "none", 20)
  assert (dsa.cfg.num_epochs(), dsa.cfg.augment, dsa.num_models) == (1000, "dsa", 20)
  assert dm.cfg == dsa.cfg and dm.num_models == 20
  assert (mtt.num_models, mtt.use_learned_lr, dsa.use_learned_lr) == (5, True, False)
  assert dict(dc.model_kwargs) == {"width": 128, "depth": 3}
  assert dict(evaluate.protocol("dm", "custom_tiny_imagenet").model_kwargs)["depth"] == 4
  for p in (dc, dsa, mtt):  # the rest is the reference's training
    assert (p.cfg.lr, p.cfg.momentum, p.cfg.weight_decay, p.cfg.batch_size, p.cfg.schedule) == \
        (0.01, 0.9, 5e-4, 256, "step")
  idc = evaluate.protocol("idc", "fashion_mnist")
  assert (idc.cfg.num_epochs(), idc.cfg.trained_epochs(), idc.cfg.batch_size, idc.cfg.augment,
          idc.cfg.mix, idc.cfg.mix_p, idc.cfg.schedule) == (1000, 1000, 64, "idc", "cutmix", 0.5,
                                                            "multistep")
  sm = evaluate.protocol("selmatch", "cifar10", ratio=0.3)
  assert (sm.model, sm.cfg.num_epochs(), sm.cfg.trained_epochs(), sm.cfg.lr, sm.cfg.batch_size,
          sm.use_learned_lr) == ("resnet18bn", 167, 168, 0.1, 128, False)
  assert evaluate.protocol("selmatch", ratio=0.05).cfg.num_epochs() == 1000
  with pytest.raises(ValueError, match="ratio"):
    evaluate.protocol("selmatch")
  with pytest.raises(ValueError, match="Unknown evaluation protocol 'kip'"):
    evaluate.protocol("kip")
  with pytest.raises(ValueError, match="crop / scale / rotate"):
    evaluate.protocol("dc", "mnist")
  # IDC's test.py per setting: MNIST with factor > 1 trains without CutMix; SVHN IPC 1 factor 1 is
  # another strategy (refused); both need the setting named.
  assert evaluate.protocol("idc", "mnist", factor=2).cfg.mix == "none"
  assert evaluate.protocol("idc", "mnist", factor=1).cfg.mix == "cutmix"
  assert evaluate.protocol("idc", "svhn_cropped", ipc=10, factor=2).cfg.mix == "cutmix"
  for ds, kw, match in (("mnist", {}, "pass factor"), ("svhn_cropped", {"factor": 2}, "pass ipc"),
                        ("svhn_cropped", {"ipc": 1, "factor": 1}, "cutout")):
    with pytest.raises(ValueError, match=match):
      evaluate.protocol("idc", ds, **kw)


@pytest.mark.slow
def test_vmap_and_map_seeds_agree(data):
  syn = (data.x_train, data.y_train)
  a = evaluate.accuracy(jax.random.key(3), syn, data, TinyNet(), 2, CFG._replace(seed_parallel="vmap"))
  b = evaluate.accuracy(jax.random.key(3), syn, data, TinyNet(), 2, CFG._replace(seed_parallel="map"))
  np.testing.assert_allclose(a.accuracies, b.accuracies, atol=0.02)


@pytest.mark.slow
def test_learned_lr_overrides_config(data):
  """A learned step size of ~0 leaves the network at its initialization, like cfg.lr = 0."""
  tiny = SyntheticSet(jnp.asarray(data.x_train), jnp.asarray(data.y_train), jnp.asarray(-40.0))
  a = evaluate.accuracy(jax.random.key(1), tiny, data, TinyNet(), 2, CFG)
  b = evaluate.accuracy(jax.random.key(1), tiny[:2], data, TinyNet(), 2, CFG._replace(lr=0.0))
  c = evaluate.accuracy(jax.random.key(1), tiny[:2], data, TinyNet(), 2, CFG)
  np.testing.assert_array_equal(a.accuracies, b.accuracies)
  assert c.mean > a.mean


def test_train_step_matches_manual_sgd():
  """One full-batch epoch, no momentum/decay: params move by exactly -lr * grad of the mean loss."""
  x, y = _toy(4, 1)
  model = TinyNet()
  cfg = evaluate.EvalConfig(epochs=1, augment="none", momentum=0.0, weight_decay=0.0, lr=0.5,
                            schedule="constant", batch_size=64)
  key = jax.random.key(0)
  v0 = evaluate.init_variables(jax.random.split(key)[0], model, x.shape[1:])
  v1 = evaluate.train(key, model, jnp.asarray(x), jnp.asarray(y), cfg)

  def loss(p):
    logits = model.apply({"params": p}, jnp.asarray(x))
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(y)[:, None], 1))

  g = jax.grad(loss)(v0["params"])
  want = jax.tree.map(lambda p, gi: p - 0.5 * gi, v0["params"], g)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), v1["params"], want)


def test_partial_last_batch_is_masked():
  logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
  y = jnp.array([0, 0, 1])
  w = jnp.array([1.0, 1.0, 0.0])  # the third row is padding
  got = training.weighted_loss(logits, y, w, "ce")
  want = training.weighted_loss(logits[:2], y[:2], jnp.ones(2), "ce")
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_augment_routing_by_group():
  x = jnp.ones((4, 2, 2, 1))
  groups = jnp.array([0, 1, 0, 1])
  out = partial_updates.route_augment((lambda k, v: v * 0.0, lambda k, v: v + 1.0), jax.random.key(0), x,
                              groups)
  np.testing.assert_array_equal(np.asarray(out[:, 0, 0, 0]), [0.0, 2.0, 0.0, 2.0])


def test_soft_labels_mse_and_test_groups(data):
  soft = jax.nn.one_hot(data.y_train, 3)
  mask = np.arange(len(data.y_test)) % 2 == 0
  res = evaluate.accuracy(jax.random.key(0), (data.x_train, soft), data, TinyNet(), 1,
                          CFG._replace(loss="mse"), test_groups={"even": mask, "odd": ~mask})
  assert res.mean > 0.8
  avg = (res.group_accuracies["even"] + res.group_accuracies["odd"]) / 2
  np.testing.assert_allclose(avg, res.accuracies, atol=1e-6)


def test_bad_inputs(data):
  x, y = data.x_train, data.y_train
  with pytest.raises(ValueError, match="NaN"):
    evaluate.accuracy(jax.random.key(0), (np.where(x > 3, np.nan, x), y), data, TinyNet(), 1, CFG)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    evaluate.accuracy(jax.random.key(0), (x[..., 0], y), data, TinyNet(), 1, CFG)
  with pytest.raises(ValueError, match="per image but the dataset"):
    evaluate.accuracy(jax.random.key(0), (x[:, :4], y), data, TinyNet(), 1, CFG)
  with pytest.raises(ValueError, match="Labels must lie in"):
    evaluate.accuracy(jax.random.key(0), (x, y + 1), data, TinyNet(), 1, CFG)
  with pytest.raises(ValueError, match="Soft labels must be"):
    evaluate.accuracy(jax.random.key(0), (x, np.ones((len(y), 4), np.float32)), data, TinyNet(), 1, CFG)
  with pytest.raises(ValueError, match="Unknown schedule"):
    evaluate.accuracy(jax.random.key(0), (x, y), data, TinyNet(), 1, CFG._replace(schedule="poly"))


def test_soft_labels_are_logits_by_default_and_probability_rows_need_saying_so(data):
  """A set's [N, K] labels are logits (targets softmax(labels), as the trajectory objective and DATM
  read them): an evaluation of logits equals one of their softmax rows given as distributions, and
  each reading refuses the other's rows instead of training on them silently."""
  x, y = data.x_train, data.y_train
  logits = 4.0 * (2.0 * np.eye(3, dtype=np.float32)[y] - 1.0)  # rows like [4, -4, -4]
  as_logits = evaluate.accuracy(jax.random.key(0), (x, logits), data, TinyNet(), 2, CFG)
  as_probs = evaluate.accuracy(jax.random.key(0), (x, np.asarray(jax.nn.softmax(logits))), data,
                               TinyNet(), 2, CFG, soft_labels="probs")
  np.testing.assert_allclose(as_logits.accuracies, as_probs.accuracies, atol=1e-6)
  assert as_logits.mean > 0.8  # raw logits read as target "distributions" trained to chance and NaN
  with pytest.raises(ValueError, match="Every soft-label row is a probability distribution"):
    evaluate.accuracy(jax.random.key(0), (x, np.eye(3, dtype=np.float32)[y]), data, TinyNet(), 1, CFG)
  with pytest.raises(ValueError, match="rows are not"):
    evaluate.accuracy(jax.random.key(0), (x, logits), data, TinyNet(), 1, CFG, soft_labels="probs")
  with pytest.raises(ValueError, match="Unknown soft_labels"):
    evaluate.accuracy(jax.random.key(0), (x, logits), data, TinyNet(), 1, CFG, soft_labels="raw")


def test_misused_arguments_are_refused_by_name(data):
  x, y = data.x_train, data.y_train
  run = lambda **kw: evaluate.accuracy(jax.random.key(0), kw.pop("syn", (x, y)), data, TinyNet(),
                                       kw.pop("num_seeds", 1), kw.pop("cfg", CFG), **kw)
  for field, value in (("lr", -0.01), ("momentum", 1.5), ("weight_decay", -1.0), ("mix_p", 1.7),
                       ("epochs", 0), ("batch_size", 0), ("mix_beta", 0.0)):
    with pytest.raises(ValueError, match=f"EvalConfig.{field} must be"):
      run(cfg=CFG._replace(**{field: value}))
  with pytest.raises(ValueError, match="num_seeds must be an int >= 1"):
    run(num_seeds=0)
  with pytest.raises(ValueError, match="images are integers"):
    run(syn=(np.clip(x * 60 + 128, 0, 255).astype(np.uint8), y))
  routed = CFG._replace(augment=("none", "none"))
  with pytest.raises(ValueError, match=r"groups must be \[N=60\] integers"):
    run(cfg=routed, groups=np.array([0, 1]))
  with pytest.raises(ValueError, match=r"groups must lie in \[0, 2\)"):
    run(cfg=routed, groups=np.full(len(y), 2))
  with pytest.raises(ValueError, match="would be ignored"):
    run(groups=np.zeros(len(y), np.int32))
  with pytest.raises(ValueError, match=r"test_groups\['odd'\] must be a bool mask over the 150"):
    run(test_groups={"odd": np.arange(1, 150, 2)})
  dd = SyntheticSet(jnp.asarray(x), jnp.asarray(y), jnp.log(jnp.array([0.05, 1e-6, 1e-6])))
  with pytest.raises(ValueError, match="3 learned step sizes"):
    run(syn=dd)
  assert run(syn=dd, use_learned_lr=False).mean > 0.5


def test_the_last_partial_batch_runs_at_its_real_size_when_asked():
  """``exact_last`` (BatchNorm networks) gives the last batch only its real rows, in the same order
  with the same key, so batch statistics never see the weight-0 padding; otherwise it is padded."""
  x = jnp.arange(10.0)
  step = lambda carry, inp: (carry + 1, (jnp.mean(x[inp[0]]), jnp.sum(inp[1]), inp[0].shape[0]))
  key = jax.random.key(3)
  n_pad, (m_pad, w_pad, b_pad) = training.scan_epoch(step, 0, key, 10, 8)
  n_ex, (m_ex, w_ex, b_ex) = training.scan_epoch(step, 0, key, 10, 8, exact_last=True)
  assert int(n_pad) == int(n_ex) == 2 and list(w_pad) == list(w_ex) == [8.0, 2.0]
  assert list(b_pad) == [8, 8] and list(b_ex) == [8, 2]
  rows, _ = training.epoch_batches(jax.random.split(key)[0], 10, 8)
  np.testing.assert_allclose(m_ex, [x[rows[0]].mean(), x[rows[1, :2]].mean()], rtol=1e-6)
  assert abs(float(m_pad[1]) - float(x[rows[1, :2]].mean())) > 0  # the padding entered the mean
  np.testing.assert_array_equal(m_pad[0], m_ex[0])


def test_a_network_trained_to_nan_is_refused_not_reported(data):
  with pytest.raises(ValueError, match="trained to NaN or inf"):
    evaluate.accuracy(jax.random.key(0), (data.x_train, data.y_train), data, TinyNet(), 1,
                      CFG._replace(lr=1e30))


@pytest.mark.slow
@pytest.mark.parametrize("kind,soft", [("ce", False), ("ce", True), ("mse", False)])
def test_microbatched_gradient_equals_whole_batch(kind, soft):
  """Pieces of 4 rows (masked padding rows included) give the whole batch's loss and gradient."""
  from jaxdistill import models
  x, y = _toy(4, 2)  # 12 rows
  model = models.get_model("convnet", 3, width=4, depth=2)
  params = evaluate.init_variables(jax.random.key(0), model, x.shape[1:])["params"]
  t = jax.nn.softmax(jax.random.normal(jax.random.key(1), (12, 3))) if soft else jnp.asarray(y)
  w = jnp.ones(12).at[-3:].set(0.0)
  whole = training.loss_and_grads(model, params, None, jnp.asarray(x), t, w, kind, microbatch=0)
  piece = training.loss_and_grads(model, params, None, jnp.asarray(x), t, w, kind, microbatch=5)
  assert training.piece_size(12, 5) == 4
  np.testing.assert_allclose(piece[0], whole[0], rtol=1e-6)
  assert piece[1] is None
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), piece[2], whole[2])


@pytest.mark.slow
def test_batchnorm_networks_always_run_whole_batches():
  from jaxdistill import models
  x, y = _toy(4, 2)
  model = models.get_model("convnet", 3, width=4, depth=1, norm="batchnorm")
  v = evaluate.init_variables(jax.random.key(0), model, x.shape[1:])
  args = (model, v["params"], models.state_of(v), jnp.asarray(x), jnp.asarray(y), jnp.ones(12), "ce")
  a, b = training.loss_and_grads(*args, microbatch=0), training.loss_and_grads(*args, microbatch=2)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_microbatch_resolution_and_bad_values():
  assert training.resolve_microbatch("auto") == (training.CPU_MICROBATCH
                                                  if jax.default_backend() == "cpu" else 0)
  assert training.piece_size(256, 32) == 32 and training.piece_size(100, 32) == 25
  assert training.piece_size(7, 0) == 7 and training.piece_size(7, 64) == 7
  assert evaluate.resolve_test_batch("auto") == (32 if jax.default_backend() == "cpu" else 256)
  for bad in (0, -3, 1.5, "big"):
    with pytest.raises(ValueError, match="test_batch_size must be"):
      evaluate.resolve_test_batch(bad)
  for bad in (-1, 2.5, "fast", True):
    with pytest.raises(ValueError, match="microbatch must be"):
      training.resolve_microbatch(bad)


def test_protocol_with_pieces_matches_whole_batches(data):
  """The evaluation protocol trains the same network (to float rounding) in pieces or whole."""
  cfg = CFG._replace(epochs=3, batch_size=20)
  args = (jax.random.key(3), TinyNet(), jnp.asarray(data.x_train), jnp.asarray(data.y_train))
  a = evaluate.train(*args, cfg._replace(microbatch=0))
  b = evaluate.train(*args, cfg._replace(microbatch=4))
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), a, b)


@pytest.mark.slow
def test_predict_auto_model_equals_explicit_convolutions():
  """``predict`` runs an "auto" ConvNet with lax.conv: the same classes as with either explicit choice."""
  from jaxdistill import models
  x, _ = _toy(10, 4)
  auto = models.get_model("convnet", 3, width=8, depth=2)
  v = evaluate.init_variables(jax.random.key(2), auto, x.shape[1:])
  logits = auto.apply(v, jnp.asarray(x), train=False)
  assert float(jnp.min(jnp.abs(jnp.diff(jnp.sort(logits, -1), axis=-1)[:, -1]))) > 1e-4  # no near ties
  got = evaluate.predict(auto, v, jnp.asarray(x), 8)
  for impl in ("patches", "lax"):
    want = evaluate.predict(auto.clone(conv_impl=impl), v, jnp.asarray(x), 8)
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got, logits.argmax(-1))


def test_multistep_schedule_is_idc_multisteplr():
  """lr x0.2 from epoch index 2E // 3 and again from 5E // 6 (torch MultiStepLR stepped per epoch)."""
  cfg = evaluate.EvalConfig(epochs=300, schedule="multistep")
  f = evaluate._lr_schedule(cfg, jnp.asarray(1.0), 300 * 4, 4)
  lrs = np.array([float(f(jnp.asarray(e * 4))) for e in (0, 199, 200, 249, 250, 299)])
  np.testing.assert_allclose(lrs, [1, 1, 0.2, 0.2, 0.04, 0.04], rtol=1e-6)
  assert cfg.trained_epochs() == 300


def test_cosine_epoch_schedule_is_selmatch_cosineannealinglr():
  """Per epoch e of E + 1: eta_min + (lr - eta_min) (1 + cos(pi e / E)) / 2, eta_min = lr / 100."""
  cfg = evaluate.EvalConfig(epochs=10, schedule="cosine_epoch", lr=0.1)
  f = evaluate._lr_schedule(cfg, jnp.asarray(0.1), 11 * 3, 3)
  for e in (0, 3, 10):
    want = 0.001 + 0.099 * (1 + np.cos(np.pi * e / 10)) / 2
    np.testing.assert_allclose([float(f(jnp.asarray(3 * e + j))) for j in range(3)], [want] * 3,
                               rtol=1e-5)
  assert cfg.trained_epochs() == 11


def test_cutmix_evaluation_trains_and_refuses_an_unknown_mix(data):
  syn = (data.x_train, data.y_train)
  cfg = CFG._replace(mix="cutmix", mix_p=1.0)
  a = evaluate.accuracy(jax.random.key(0), syn, data, TinyNet(), 1, cfg)
  assert a.mean > 0.6  # still learns the toy classes under full mixing
  with pytest.raises(ValueError, match="Unknown mix 'mixup'"):
    evaluate.accuracy(jax.random.key(0), syn, data, TinyNet(), 1, CFG._replace(mix="mixup"))
