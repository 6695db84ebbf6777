"""DD (unrolled SGD from random init) and IDC multi-formation on tiny problems."""
import math
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import distill, models, objectives, parameterization
from jaxdistill.objectives import unrolled
from jaxdistill.types import SyntheticSet
import toys

K, IPC, HW, B = 3, 2, 8, 12
N = K * IPC
STEPS, EPOCHS = 2, 2


toy_data = toys.toy_data  # K = 3 classes, 8x8


def toy_syn(seed=1, soft=True, n=N):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(K), n // K)
  x = jnp.asarray(rng.normal(size=(n, HW, HW, 1)), jnp.float32)
  labels = (jnp.asarray(rng.normal(size=(n, K)) + 3 * np.eye(K)[y], jnp.float32) if soft
            else jnp.asarray(y, jnp.int32))
  return SyntheticSet(x, labels, jnp.full((STEPS * EPOCHS,), math.log(0.05), jnp.float32))


def real_batch(seed=2):
  x, y = toy_data()
  idx = np.random.default_rng(seed).choice(len(y), B, replace=False)
  return {"images": jnp.asarray(x[idx]), "labels": jnp.asarray(y[idx])}


MLP = models.get_model("mlp", K, width=8)


# ----------------------------------------------------------------------------------------------------
# DD
# ----------------------------------------------------------------------------------------------------

def test_step_rows_are_class_balanced_for_class_major_sets():
  np.testing.assert_array_equal(unrolled.step_rows(6, 2), [[0, 2, 4], [1, 3, 5]])
  np.testing.assert_array_equal(unrolled.step_rows(4, 3, per_step_batches=False), [[0, 1, 2, 3]] * 3)
  with pytest.raises(ValueError, match="do not split into unroll_steps=4"):
    unrolled.step_rows(6, 4)


def python_loop_dd(syn, batch, key):
  """DD written as a plain Python loop over pytrees: epochs x steps, one lr per step."""
  net_key, _ = jax.random.split(key)
  params = MLP.init(net_key, syn.images[:1], train=False)["params"]
  rows = np.arange(N).reshape(N // STEPS, STEPS).T  # step s: rows s, s + STEPS, ...
  lrs = jnp.exp(syn.log_lr)
  t = 0
  for _ in range(EPOCHS):
    for s in range(STEPS):
      r = rows[s]
      g = jax.grad(lambda p: unrolled.cross_entropy(MLP.apply({"params": p}, syn.images[r]),
                                                     syn.labels[r]))(params)
      params = jax.tree.map(lambda a, b: a - lrs[t] * b, params, g)
      t += 1
  return unrolled.cross_entropy(MLP.apply({"params": params}, batch["images"]), batch["labels"])


@pytest.mark.slow
def test_dd_loss_matches_python_loop_and_gradients_reach_everything(key):
  syn, batch = toy_syn(), real_batch()
  obj = objectives.dataset_distillation(MLP, K, unroll_steps=STEPS, epochs=EPOCHS)
  f = jax.jit(jax.value_and_grad(lambda s: obj.loss(s, batch, key, ()), has_aux=True))
  (loss, aux), g = f(syn)
  np.testing.assert_allclose(float(loss), float(jax.jit(python_loop_dd)(syn, batch, key)), rtol=1e-5)
  assert np.isfinite(float(aux["syn_loss"]))
  for leaf in (g.images, g.labels, g.log_lr):
    assert np.all(np.isfinite(leaf)) and float(jnp.abs(leaf).max()) > 0
  assert float(jnp.abs(g.log_lr).min()) > 0  # every step's size matters
  # A fresh network per key: another key, another loss.
  other = jax.jit(lambda s, k: obj.loss(s, batch, k, ())[0])(syn, jax.random.key(5))
  assert float(other) != float(loss)
  # Hard labels and a shared scalar step size work too.
  hard = syn._replace(labels=syn.hard_labels(), log_lr=jnp.asarray(math.log(0.05), jnp.float32))
  g_hard = jax.jit(jax.grad(lambda im, lr: obj.loss(hard._replace(images=im, log_lr=lr), batch, key,
                                                   ())[0], argnums=(0, 1)))(hard.images, hard.log_lr)
  assert np.all(np.isfinite(g_hard[0])) and float(g_hard[1]) != 0


def test_dd_train_is_the_network_the_loss_scores(key):
  syn, batch = toy_syn(), real_batch()
  loss, _ = objectives.dataset_distillation(MLP, K, unroll_steps=STEPS, epochs=EPOCHS).loss(
      syn, batch, key, ())
  variables = objectives.dd_train(MLP, syn, key, unroll_steps=STEPS, epochs=EPOCHS)
  logits = MLP.apply(variables, batch["images"], train=False)
  np.testing.assert_allclose(float(unrolled.cross_entropy(logits, batch["labels"])), float(loss),
                             rtol=1e-5)
  # Untrained (step sizes ~0) it is the fresh network: the learned step sizes are what it uses.
  still = objectives.dd_train(MLP, syn._replace(log_lr=jnp.full_like(syn.log_lr, -60.0)), key,
                              STEPS, EPOCHS)
  fresh = MLP.init(jax.random.split(key)[0], syn.images[:1], train=False)
  chex.assert_trees_all_close(still, fresh, atol=1e-6)
  with pytest.raises(ValueError, match=r"Soft labels must be float \[N, 3\]"):
    objectives.dd_train(MLP, syn._replace(labels=syn.labels[:, :2]), key, STEPS, EPOCHS,
                        num_classes=K)


def test_dd_bad_input(key):
  syn, batch = toy_syn(), real_batch()
  obj = objectives.dataset_distillation(MLP, K, unroll_steps=STEPS, epochs=EPOCHS)
  with pytest.raises(ValueError, match=r"log_lr must be a scalar or \[unroll_steps \* epochs\] = \[4\]"):
    obj.loss(syn._replace(log_lr=jnp.zeros((3,))), batch, key, ())
  with pytest.raises(ValueError, match="needs learnable step sizes"):
    obj.loss(syn._replace(log_lr=None), batch, key, ())
  with pytest.raises(ValueError, match=r"Soft labels must be float \[N, 3\]"):
    obj.loss(syn._replace(labels=jnp.zeros((N, K + 1))), batch, key, ())
  with pytest.raises(ValueError, match=r"Labels must be \[N\] or \[N, K\]"):
    obj.loss(syn._replace(labels=syn.hard_labels()[:-1]), batch, key, ())
  with pytest.raises(ValueError, match=r"batch labels must be \[B\]"):
    obj.loss(syn, {**batch, "labels": jax.nn.one_hot(batch["labels"], K)}, key, ())
  with pytest.raises(ValueError, match="do not split"):
    objectives.dataset_distillation(MLP, K, unroll_steps=4).loss(syn._replace(log_lr=jnp.zeros(())),
                                                                 batch, key, ())
  with pytest.raises(ValueError, match=">= 1"):
    objectives.dataset_distillation(MLP, K, unroll_steps=0)


@pytest.mark.slow
def test_dd_partial_update_mask_holds(key):
  x, y = toy_data()
  obj = objectives.dataset_distillation(MLP, K, unroll_steps=STEPS, epochs=EPOCHS)
  mask = np.array([True, False] * K)
  tx = distill.optimizer(optax.adam(0.01), labels=optax.adam(0.01), log_lr=optax.adam(0.01),
                         step_size="log")
  d = distill.Distiller(obj, tx, distill.random_sampler(x, y, B), mask=mask, learn_labels=True,
                        learn_lr=True)
  syn = toy_syn()
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
    state, hist = distill.run(key, syn, d, num_steps=3, progress=False)
  assert all(np.isfinite(h["loss"]) for h in hist)
  for got, init in ((state.syn.images, syn.images), (state.syn.labels, syn.labels)):
    got, init = np.asarray(got), np.asarray(init)
    np.testing.assert_array_equal(got[~mask], init[~mask])
    assert np.abs(got[mask] - init[mask]).max() > 1e-4
  assert not np.allclose(state.syn.log_lr, syn.log_lr)


# ----------------------------------------------------------------------------------------------------
# IDC
# ----------------------------------------------------------------------------------------------------

def torch_bilinear_upsample(img, out):
  """PyTorch ``nn.Upsample(size, mode="bilinear")`` (align_corners=False) of one ``[h, w]`` image."""
  h, w = img.shape

  def axis(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0

  r0, r1, a = axis(h, out)
  c0, c1, b = axis(w, out)
  top = img[r0][:, c0] * (1 - b) + img[r0][:, c1] * b
  bot = img[r1][:, c0] * (1 - b) + img[r1][:, c1] * b
  return top * (1 - a[:, None]) + bot * a[:, None]


def test_idc_decode_shapes_labels_and_subimages():
  rng = np.random.default_rng(0)
  stored = jnp.asarray(rng.normal(size=(2, HW, HW, 1)), jnp.float32)
  hard = SyntheticSet(stored, jnp.array([0, 1], jnp.int32), jnp.zeros((4,)))
  out = parameterization.idc_decode(2)(hard)
  assert out.images.shape == (8, HW, HW, 1) and out.images.dtype == jnp.float32
  np.testing.assert_array_equal(out.labels, [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(out.log_lr, hard.log_lr)
  soft = hard._replace(labels=jnp.asarray([[1.0, 0.0], [0.2, 0.8]]))
  np.testing.assert_array_equal(parameterization.idc_decode(2)(soft).labels,
                                np.repeat(np.asarray(soft.labels), 4, axis=0))
  s = np.asarray(stored)
  for i in range(2):
    for a in range(2):
      for b in range(2):
        sub = s[i, a * 4:(a + 1) * 4, b * 4:(b + 1) * 4, 0]
        np.testing.assert_allclose(out.images[i * 4 + a * 2 + b, ..., 0], torch_bilinear_upsample(sub, HW),
                                   rtol=1e-5, atol=1e-6)
        near = parameterization.idc_decode(2, "nearest")(hard).images[i * 4 + a * 2 + b, ..., 0]
        np.testing.assert_array_equal(near, np.repeat(np.repeat(sub, 2, 0), 2, 1))
  np.testing.assert_array_equal(parameterization.idc_decode(1)(hard).images, stored)


def test_idc_decode_gradient_reaches_every_stored_pixel():
  stored = jnp.asarray(np.random.default_rng(0).normal(size=(2, HW, HW, 2)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.5, size=(8, HW, HW, 2)), jnp.float32)
  decode = parameterization.idc_decode(2)
  g = jax.grad(lambda x: jnp.sum(w * decode(SyntheticSet(x, jnp.zeros((2,), jnp.int32))).images))(stored)
  assert np.all(np.asarray(g) > 0)


def test_idc_init_packs_downsampled_real_images():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(8, HW, HW, 1)).astype(np.float32)
  stored = parameterization.idc_init(real, 2)
  assert stored.shape == (2, HW, HW, 1)
  for i in range(2):
    for a in range(2):
      for b in range(2):
        np.testing.assert_array_equal(stored[i, a * 4:(a + 1) * 4, b * 4:(b + 1) * 4],
                                      real[i * 4 + a * 2 + b, ::2, ::2])
  area = parameterization.idc_init(real, 2, "area")
  np.testing.assert_allclose(area[0, :4, :4, 0], real[0].reshape(4, 2, 4, 2).mean((1, 3)), rtol=1e-5)
  assert parameterization.idc_init(real, 2, "bilinear").shape == (2, HW, HW, 1)
  # decode(init(x)) gives back x's (nearest) down-and-up-sampled images, in x's order.
  dec = parameterization.idc_decode(2, "nearest")(SyntheticSet(stored, jnp.zeros((2,), jnp.int32)))
  np.testing.assert_array_equal(dec.images, np.repeat(np.repeat(real[:, ::2, ::2], 2, 1), 2, 2))


def test_idc_bad_input():
  x = jnp.zeros((4, 28, 28, 1))
  syn = SyntheticSet(x, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="factor=3 does not divide the image size 28x28"):
    parameterization.idc_decode(3)(syn)
  with pytest.raises(ValueError, match="factor=3 does not divide"):
    parameterization.idc_init(jnp.zeros((9, 28, 28, 1)), 3)
  with pytest.raises(ValueError, match="multiple of f\\^2 = 4"):
    parameterization.idc_init(jnp.zeros((6, 28, 28, 1)), 2)
  with pytest.raises(ValueError, match="Unknown upsampling"):
    parameterization.idc_decode(2, "cubic")
  with pytest.raises(ValueError, match="Unknown downsampling"):
    parameterization.idc_init(x, 2, "cubic")
  with pytest.raises(ValueError, match="int >= 1"):
    parameterization.idc_decode(0)
  with pytest.raises(ValueError, match="4 stored images but 3 labels"):
    parameterization.idc_decode(2)(syn._replace(labels=jnp.zeros((3,), jnp.int32)))


TinyConv = toys.TinyConv  # K = 3 classes, width 4


def test_idc_with_partial_update_mask_in_the_loop(key):
  """The mask has one entry per stored row and is applied before decoding (DM objective)."""
  x, y = toy_data()
  obj = objectives.distribution_matching(TinyConv(), K)
  mask = np.array([True, False] * K)  # 6 stored rows -> 24 decoded training images
  d = distill.Distiller(obj, distill.optimizer(optax.sgd(1.0, momentum=0.5)),
                        distill.class_balanced_sampler(x, y, K, 4), mask=mask,
                        decode=parameterization.idc_decode(2))
  syn = toy_syn(soft=False)._replace(log_lr=None)
  state, hist = distill.run(key, syn, d, num_steps=3, progress=False)
  assert all(np.isfinite(h["loss"]) for h in hist)
  got, init = np.asarray(state.syn.images), np.asarray(syn.images)
  assert got.shape == init.shape  # the state stores the packed images
  np.testing.assert_array_equal(got[~mask], init[~mask])
  assert np.all(np.abs(got[mask] - init[mask]).reshape(K, -1).max(1) > 1e-4)
  assert distill.decoded(state, d).images.shape == (4 * N, HW, HW, 1)
  with pytest.raises(ValueError, match="one entry per synthetic row"):
    distill.init_state(key, syn, d._replace(mask=np.ones(4 * N, bool)))


MULTI = textwrap.dedent("""
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  sys.path.insert(0, {tests!r})
  import jax, numpy as np, optax
  from jaxdistill import distill, objectives, parallel
  import test_dd_idc as td, test_kernel_objectives as tk
  assert jax.device_count() == 2
  for method in ("dd", "kip"):
    out = {{}}
    for n in (1, 2):
      if method == "dd":
        x, y = td.toy_data()
        obj, syn = objectives.dataset_distillation(td.MLP, td.K, td.STEPS, td.EPOCHS), td.toy_syn()
      else:
        x, y = tk.toy_data()
        obj, syn = objectives.kip(tk.KERNEL, tk.K), tk.toy_syn()
      tx = distill.optimizer(optax.sgd(0.1), labels=optax.sgd(0.1),
                             log_lr=optax.sgd(0.01) if method == "dd" else None, step_size="log")
      d = distill.Distiller(obj, tx, distill.random_sampler(x, y, 12), learn_labels=True,
                            learn_lr=method == "dd")
      s, h = distill.run(jax.random.key(0), syn, d, 2, progress=False, mesh=parallel.data_mesh(n))
      out[n] = (np.asarray(s.syn.images), [m["loss"] for m in h])
    np.testing.assert_allclose(out[1][0], out[2][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out[1][1], out[2][1], rtol=1e-5)
  print("MATCH")
""")


@pytest.mark.slow
def test_two_devices_match_one_device():
  """The real batch is split over devices; the losses' pmean must give the one-device result."""
  code = MULTI.format(tests=os.path.dirname(__file__))
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "MATCH" in r.stdout, r.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------
# IDC's own matching objective
# ----------------------------------------------------------------------------------------------------

def test_idc_gradient_distance_matches_the_closed_form_and_skips_biases_and_the_classifier():
  g_real = {"conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones((2,))},
            "fc": {"kernel": jnp.ones((4, 3))}}
  g_syn = jax.tree.map(lambda g: 0.5 * g, g_real)
  # l1: only the 18 kernel entries, each |1 - 0.5|; mse: 18 x 0.25.
  np.testing.assert_allclose(objectives.idc_gradient_distance(g_real, g_syn), 9.0, rtol=1e-6)
  np.testing.assert_allclose(objectives.idc_gradient_distance(g_real, g_syn, "mse"), 4.5, rtol=1e-6)
  np.testing.assert_allclose(objectives.idc_gradient_distance(g_real, g_syn, bias=True, fc=True),
                             9.0 + 1.0 + 6.0, rtol=1e-6)
  assert float(objectives.idc_gradient_distance(g_real, g_real)) == 0.0
  with pytest.raises(ValueError, match="Unknown IDC metric 'cos'"):
    objectives.idc_gradient_distance(g_real, g_syn, "cos")


def idc_distiller(inner_loop=3, clamp=None):
  x, y = toy_data()
  obj = objectives.idc_matching(TinyConv(), K, inner_loop=inner_loop, mix_p=1.0)
  sampler = distill.class_balanced_sampler(x, y, K, 4, train_batches=(2, 6))
  return distill.Distiller(obj, distill.optimizer(optax.sgd(0.1, momentum=0.5)), sampler,
                           decode=parameterization.idc_decode(2), project=clamp)


def test_idc_matching_trains_its_network_on_real_batches_and_renews_it_every_inner_loop(key):
  """The network of IDC's objective changes between matchings (trained on the batch's real
  images), a fresh one is drawn after ``inner_loop`` matchings, and the loss is 0 when the synthetic
  images of every class are its real batch."""
  d = idc_distiller(inner_loop=3)
  syn = toy_syn(soft=False)._replace(log_lr=None)
  state = distill.init_state(key, syn, d)
  step, sample = distill.make_step(d), distill.make_sample(d)
  batch = sample(state)
  chex.assert_shape(batch["train_images"], (2, 6, HW, HW, 1))
  chex.assert_shape(batch["train_labels"], (2, 6))
  kernels, inner = [], []
  for _ in range(4):
    kernels.append(np.asarray(jax.tree.leaves(state.obj_state.variables)[0]))
    inner.append(int(state.obj_state.inner))
    prepared = d.objective.prepare(state.obj_state, sample(state))
    if inner[-1] == 0:  # the first matching of a network uses it untrained
      np.testing.assert_array_equal(jax.tree.leaves(prepared.variables)[0], kernels[-1])
    else:
      assert np.abs(np.asarray(jax.tree.leaves(prepared.variables)[0]) - kernels[-1]).max() > 1e-6
    state, metrics = step(state, sample(state))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  assert inner == [0, 1, 2, 0]
  # The same synthetic images as the real batch (no augmentation): identical gradients.
  b = sample(state)
  real = SyntheticSet(b["images"].reshape(-1, HW, HW, 1), jnp.repeat(jnp.arange(K), 4))
  loss, _ = d.objective.loss(real, b, key, state.obj_state)
  np.testing.assert_allclose(float(loss), 0.0, atol=1e-6)


def test_idc_clamp_and_refusals(key):
  """``clamp_every`` clips the stored images only after every ``every``-th step; bad arguments are
  refused by name."""
  d = idc_distiller(inner_loop=2, clamp=distill.clamp_every(-0.5, 0.5, 2))
  syn = toy_syn(soft=False)._replace(log_lr=None)
  state = distill.init_state(key, syn, d)
  step, sample = distill.make_step(d), distill.make_sample(d)
  state, _ = step(state, sample(state))
  assert np.abs(np.asarray(state.syn.images)).max() > 0.5  # step 1: not clamped
  state, _ = step(state, sample(state))
  assert np.abs(np.asarray(state.syn.images)).max() <= 0.5  # after step 2
  # With a mask the clamp acts on the distilled rows only: frozen rows stay bit-identical.
  mask = np.arange(syn.images.shape[0]) % 2 == 0
  masked = d._replace(mask=jnp.asarray(mask))
  state = distill.init_state(key, syn, masked)
  step = distill.make_step(masked)
  for _ in range(2):
    state, _ = step(state, sample(state))
  np.testing.assert_array_equal(np.asarray(state.syn.images)[~mask], np.asarray(syn.images)[~mask])
  assert np.abs(np.asarray(syn.images)[~mask]).max() > 0.5  # the clamp would have changed them
  assert np.abs(np.asarray(state.syn.images)[mask]).max() <= 0.5
  with pytest.raises(ValueError, match="lo < hi"):
    distill.clamp_every(1.0, 0.0)
  with pytest.raises(ValueError, match="mix_p"):
    objectives.idc_matching(TinyConv(), K, mix_p=2.0)
  with pytest.raises(ValueError, match="running statistics"):
    objectives.idc_matching(models.get_model("resnet18bn", K), K).init(key, syn)
  x, y = toy_data()
  with pytest.raises(ValueError, match="needs 6000 distinct images"):
    distill.class_balanced_sampler(x, y, K, 4, train_batches=(100, 60))
