"""KIP and FRePo objectives on tiny problems."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import distill, kernels, objectives
from jaxdistill.types import SyntheticSet
import toys

K, IPC, HW, B = 3, 2, 6, 12
N = K * IPC


class TinyNet(nn.Module):
  num_classes: int = K

  @nn.compact
  def __call__(self, x, train=True, return_features=False):
    f = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    logits = nn.Dense(self.num_classes)(f)
    return (logits, f) if return_features else logits


def toy_data(seed=0, n_per=12):
  return toys.toy_data(seed, n_per, K, HW)  # K = 3 classes, HW x HW


def toy_syn(seed=1, soft=True):
  rng = np.random.default_rng(seed)
  y = jnp.repeat(jnp.arange(K, dtype=jnp.int32), IPC)
  x = jnp.asarray(rng.normal(size=(N, HW, HW, 1)), jnp.float32)
  return SyntheticSet(x, objectives.kip_labels(y, K) if soft else y)


def real_batch(seed=2):
  x, y = toy_data()
  idx = np.random.default_rng(seed).choice(len(y), B, replace=False)
  return {"images": jnp.asarray(x[idx]), "labels": jnp.asarray(y[idx])}


KERNEL = kernels.fc_kernel_fn("ntk", depth=2)


def test_kip_labels():
  got = objectives.kip_labels(jnp.array([0, 2], jnp.int32), 3)
  np.testing.assert_allclose(got, [[2 / 3, -1 / 3, -1 / 3], [-1 / 3, -1 / 3, 2 / 3]], rtol=1e-6)
  with pytest.raises(ValueError, match="int class ids"):
    objectives.kip_labels(jnp.zeros((2, 3)), 3)


def test_kip_loss_equals_closed_form(key):
  syn, batch, reg = toy_syn(), real_batch(), 1e-3
  obj = objectives.kip(KERNEL, K, reg=reg)
  loss, aux = jax.jit(lambda s, b: obj.loss(s, b, key, ()))(syn, batch)
  xs, xt = syn.images.reshape(N, -1), batch["images"].reshape(B, -1)
  k_ss = np.asarray(KERNEL(xs, xs), np.float64)
  k_ts = np.asarray(KERNEL(xt, xs), np.float64)
  alpha = np.linalg.solve(k_ss + reg * np.trace(k_ss) / N * np.eye(N), np.asarray(syn.labels, np.float64))
  pred = k_ts @ alpha
  y_t = np.eye(K)[np.asarray(batch["labels"])] - 1 / K
  np.testing.assert_allclose(float(loss), 0.5 * np.mean((pred - y_t) ** 2), rtol=1e-4)
  np.testing.assert_allclose(float(aux["krr_acc"]),
                             np.mean(pred.argmax(1) == np.asarray(batch["labels"])), atol=1e-6)
  assert float(aux["krr_ok"]) == 1.0 and float(aux["krr_used_fallback"]) == 0.0
  # Hard labels are converted to the same centered one-hot targets.
  hard, _ = obj.loss(syn._replace(labels=syn.hard_labels()), batch, key, ())
  np.testing.assert_allclose(float(hard), float(loss), rtol=1e-5)


def test_kip_gradients_reach_images_and_labels(key):
  syn, batch = toy_syn(), real_batch()
  obj = objectives.kip(KERNEL, K)
  g = jax.jit(jax.grad(lambda s: obj.loss(s, batch, key, ())[0]))(syn)
  for leaf in (g.images, g.labels):
    assert np.all(np.isfinite(leaf)) and float(jnp.abs(leaf).max()) > 0


def test_kip_with_keyed_empirical_ntk(key):
  syn, batch = toy_syn(), real_batch()
  obj = objectives.kip(kernels.empirical_ntk_kernel(TinyNet()), K, keyed_kernel=True)
  f = jax.jit(lambda s, k: obj.loss(s, batch, k, ())[0])
  a, b = f(syn, key), f(syn, jax.random.key(7))
  assert np.isfinite(float(a)) and float(a) != float(b)


def test_wrong_label_shapes_raise(key):
  syn, batch = toy_syn(), real_batch()
  obj = objectives.kip(KERNEL, K)
  with pytest.raises(ValueError, match=r"\[N, 3\] float"):
    obj.loss(syn._replace(labels=jnp.zeros((N, K + 1))), batch, key, ())
  with pytest.raises(ValueError, match=r"\[N, 3\] float"):
    obj.loss(syn._replace(labels=jnp.zeros((N, K), jnp.int32)), batch, key, ())
  with pytest.raises(ValueError, match=r"batch labels must be \[B\] int"):
    obj.loss(syn, {**batch, "labels": jax.nn.one_hot(batch["labels"], K)}, key, ())
  with pytest.raises(ValueError, match="random_sampler"):
    obj.loss(syn, {"images": batch["images"]}, key, ())
  fr = objectives.frepo(TinyNet(), K, pool_size=2)
  state = fr.init(key, syn)
  with pytest.raises(ValueError, match=r"\[N, 3\] float"):
    fr.loss(syn._replace(labels=jnp.zeros((N, 2))), batch, key, state)


@pytest.mark.slow
def test_krr_test_accuracy(key):
  x, y = toy_data(n_per=30)
  # The class means are a good support set for this toy problem.
  means = np.stack([x[y == c].mean(0) for c in range(K)])
  syn = SyntheticSet(jnp.asarray(means), objectives.kip_labels(jnp.arange(K, dtype=jnp.int32), K))
  acc = objectives.krr_test_accuracy(KERNEL, syn, x, y, reg=1e-6, batch_size=30)
  k_ss = np.asarray(KERNEL(syn.images, syn.images), np.float64)
  k_ts = np.asarray(KERNEL(jnp.asarray(x), syn.images), np.float64)
  pred = k_ts @ np.linalg.solve(k_ss + 1e-6 * np.trace(k_ss) / K * np.eye(K), np.asarray(syn.labels))
  np.testing.assert_allclose(acc, np.mean(pred.argmax(1) == y))
  assert acc > 0.5, acc  # chance is 1/3


def test_singular_kernel_gives_nan_loss_flag_and_stops_the_loop(key):
  zero = lambda a, b: jnp.zeros((a.shape[0], b.shape[0]), jnp.float32)
  obj = objectives.kip(zero, K)
  loss, aux = jax.jit(lambda s, b: obj.loss(s, b, key, ()))(toy_syn(), real_batch())
  assert not np.isfinite(float(loss)) and float(aux["krr_ok"]) == 0.0
  x, y = toy_data()
  d = distill.Distiller(obj, distill.optimizer(optax.sgd(0.1)), distill.random_sampler(x, y, B))
  with pytest.raises(FloatingPointError, match="not finite"):
    distill.run(key, toy_syn(), d, 2, progress=False)
  with pytest.raises(np.linalg.LinAlgError, match="singular"):
    objectives.krr_test_accuracy(zero, toy_syn(), *toy_data())


@pytest.mark.slow
def test_frepo_loss_gradients_and_pool_update(key):
  syn, batch = toy_syn(), real_batch()
  obj = objectives.frepo(TinyNet(), K, pool_size=3, max_online_updates=4)
  state = obj.init(key, syn)
  np.testing.assert_array_equal(state.age, [0, 1, 2])  # staggered: (4 // 3) * i
  assert jax.tree.leaves(state.variables)[0].shape[0] == 3
  (loss, aux), g = jax.jit(jax.value_and_grad(lambda s: obj.loss(s, batch, key, state), has_aux=True))(syn)
  assert np.isfinite(float(loss)) and float(aux["krr_ok"]) == 1.0
  np.testing.assert_allclose(float(loss), float(aux["kernel_loss"] + aux["label_loss"]), rtol=1e-6)
  for leaf in (g.images, g.labels):
    assert np.all(np.isfinite(leaf)) and float(jnp.abs(leaf).max()) > 0

  update = jax.jit(obj.update)
  i = int(state.current)
  new = update(state, syn, jax.random.key(3))
  assert int(new.age[i]) == int(state.age[i]) + 1
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a[i] - b[i]).max()), new.variables, state.variables)
  assert max(jax.tree.leaves(moved)) > 0  # the member took an Adam step
  others = np.array([j for j in range(3) if j != i])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[others], b[others]), new.variables,
               state.variables)
  # A member past max_online_updates is reinitialized (age 0, fresh optimizer state), not trained.
  old = state._replace(age=state.age.at[i].set(5))
  re = update(old, syn, jax.random.key(3))
  assert int(re.age[i]) == 0
  assert all(int(jnp.max(c)) == 0 for c in jax.tree.leaves(re.opt_state) if c.dtype == jnp.int32
             and c.ndim == 1)
  currents = {int(update(state, syn, jax.random.key(s)).current) for s in range(12)}
  assert len(currents) > 1
  # Hard labels: fixed centered one-hot targets, no label-margin term.
  hard, aux_h = jax.jit(lambda s: obj.loss(s, batch, key, state))(syn._replace(labels=syn.hard_labels()))
  assert float(aux_h["label_loss"]) == 0.0
  np.testing.assert_allclose(float(hard), float(aux["kernel_loss"]), rtol=1e-5)


@pytest.mark.slow
def test_frepo_registry_default_net_and_flip(key):
  syn, batch = toy_syn(), real_batch()
  obj = objectives.frepo("convnet_frepo", K, pool_size=2, net_options={"width": 4, "depth": 2})
  state = jax.eval_shape(obj.init, key, syn)  # shapes only: compiling the ConvNet is slow here
  # One channel: the first conv pads by 3 (6 -> 10), pool 5, conv, pool 2: 2 * 2 * (2 * 4) features.
  assert state.variables["params"]["Dense_0"]["kernel"].shape == (2, 2 * 2 * 8, K)
  loss, aux = jax.eval_shape(lambda s, st: obj.loss(s, batch, key, st), syn, state)
  assert loss.shape == () and aux["krr_acc"].shape == ()
  with pytest.raises(ValueError, match="net_options only applies"):
    objectives.frepo(TinyNet(), K, net_options={"width": 4})
  # use_flip: the support set is the synthetic set plus its horizontal flips.
  flip = objectives.frepo(TinyNet(), K, pool_size=2, use_flip=True)
  st = flip.init(key, syn)
  both = syn._replace(images=jnp.concatenate([syn.images, jnp.flip(syn.images, 2)]),
                      labels=jnp.concatenate([syn.labels, syn.labels]))
  plain = objectives.frepo(TinyNet(), K, pool_size=2, label_margin_weight=0.0)
  f = jax.jit(lambda o, s: o.loss(s, batch, key, st)[1]["kernel_loss"], static_argnums=0)
  np.testing.assert_allclose(float(f(flip, syn)), float(f(plain, both)), rtol=1e-5)


def test_frepo_kernel_loss_sums_over_classes_as_frepos_code(key):
  """FRePo's mean_squared_loss: 0.5 * sum over classes, mean over rows (KIP's colab: mean over both):
  the kernel loss is the KRR prediction's row MSE from the pool member's features."""
  from jaxdistill.objectives import kernel as kernel_lib
  syn, batch = toy_syn(), real_batch()
  obj = objectives.frepo(TinyNet(), K, pool_size=2)
  state = obj.init(key, syn)
  _, aux = obj.loss(syn, batch, key, state)
  variables = jax.tree.map(lambda a: a[state.current], state.variables)
  feats = lambda x: TinyNet().apply(variables, x, return_features=True)[1]
  f_s, f_t = feats(syn.images), feats(batch["images"])
  sol = kernels.krr_fit(f_s @ f_s.T, syn.labels, 1e-6)
  pred = f_t @ f_s.T @ sol.alpha
  y_t = objectives.kip_labels(batch["labels"], K)
  want = 0.5 * jnp.mean(jnp.sum((pred - y_t) ** 2, -1))
  np.testing.assert_allclose(float(aux["kernel_loss"]), float(want), rtol=1e-4)
  np.testing.assert_allclose(float(kernel_lib.row_mse(pred, y_t)), K * float(kernel_lib.mse(pred, y_t)),
                             rtol=1e-6)


def test_frepo_convnet_has_flax_default_initialization(key):
  from jaxdistill import models
  net = models.get_model("convnet_frepo", K, width=4, depth=2)
  params = net.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
  biases = [p["bias"] for p in params.values()]
  assert all(float(jnp.abs(b).max()) == 0.0 for b in biases)  # zero biases
  k = params["Conv_1"]["kernel"]  # 3 x 3 x 4 -> 8: LeCun normal, variance 1 / fan_in
  np.testing.assert_allclose(float(jnp.std(k)), (1 / (3 * 3 * 4)) ** 0.5, rtol=0.25)


def test_label_margin():
  y = jnp.asarray([[1.0, 0.0, 0.0], [0.5, 0.4, 0.0]])
  # Row 1: margin 1 capped at 1/3; row 2: margin 0.1.
  np.testing.assert_allclose(objectives.label_margin(y), -(1 / 3 + 0.1) / 2, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kip", "frepo"])
def test_partial_update_mask_holds(method, key):
  x, y = toy_data()
  obj = (objectives.kip(KERNEL, K) if method == "kip"
         else objectives.frepo(TinyNet(), K, pool_size=2, max_online_updates=2))
  mask = np.array([True, False] * K)
  tx = distill.optimizer(optax.adam(0.04), labels=optax.adam(0.04))
  d = distill.Distiller(obj, tx, distill.random_sampler(x, y, B), mask=mask, learn_labels=True)
  syn = toy_syn()
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
    state, hist = distill.run(key, syn, d, num_steps=4, progress=False)
  assert all(np.isfinite(h["loss"]) for h in hist)
  for got, init in ((state.syn.images, syn.images), (state.syn.labels, syn.labels)):
    got, init = np.asarray(got), np.asarray(init)
    np.testing.assert_array_equal(got[~mask], init[~mask])
    assert np.abs(got[mask] - init[mask]).max() > 1e-3
