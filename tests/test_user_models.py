"""A researcher's own models through every entry point: Flax linen (no flag; a ``training`` flag with
BatchNorm and Dropout), Flax NNX (BatchNorm, Dropout), Equinox (BatchNorm state) and plain functions.

Each kind runs a few steps of DM, DC, MTT (experts and objective), KIP's empirical NTK and FRePo where
they apply, the evaluation, and the feature-based selection baselines and coverage."""
import functools

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import toys
from jaxdistill import distill, evaluate, experts, kernels, metrics, models, objectives, selection
from jaxdistill.types import Dataset, SyntheticSet

K, IPC, P, HW = 3, 2, 4, 8


class LinenPlain(nn.Module):
  """Written as the Flax examples write a CNN: ``__call__(self, x)`` and nothing else."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(K)(x)


class LinenBNDrop(nn.Module):
  """BatchNorm and Dropout under a ``training`` flag."""

  @nn.compact
  def __call__(self, x, training: bool):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not training)(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(0.2, deterministic=not training)(x)
    return nn.Dense(K)(x)


class NNXNet(nnx.Module):
  def __init__(self, rngs, num_classes=K, drop=0.2):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.drop = nnx.Dropout(drop, rngs=rngs)
    self.fc = nnx.Linear(4 * HW * HW, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    return self.fc(self.drop(x.reshape(x.shape[0], -1)))


class EqxNet(eqx.Module):
  conv: eqx.nn.Conv2d
  bn: eqx.nn.BatchNorm
  fc: eqx.nn.Linear

  def __init__(self, key):
    k1, k2 = jax.random.split(key)
    self.conv = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
    self.bn = eqx.nn.BatchNorm(4, axis_name="batch", mode="batch")
    self.fc = eqx.nn.Linear(4 * HW * HW, K, key=k2)

  def embed(self, x, state):
    h, state = self.bn(self.conv(x), state)
    return jax.nn.relu(h).reshape(-1), state

  def __call__(self, x, state):
    h, state = self.embed(x, state)
    return self.fc(h), state


class EqxPlain(eqx.Module):
  """Stateless: a conv and a linear layer, one example at a time."""
  conv: eqx.nn.Conv2d
  fc: eqx.nn.Linear

  def __init__(self, key):
    k1, k2 = jax.random.split(key)
    self.conv = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
    self.fc = eqx.nn.Linear(4 * HW * HW, K, key=k2)

  def embed(self, x):
    return jax.nn.relu(self.conv(x)).reshape(-1)

  def __call__(self, x):
    return self.fc(self.embed(x))


def _mlp_init(key, x):
  k1, k2 = jax.random.split(key)
  d = int(np.prod(x.shape[1:]))
  return {"w1": jax.random.normal(k1, (d, 16)) / np.sqrt(d), "b1": jnp.zeros(16),
          "w2": jax.random.normal(k2, (16, K)) / 4.0, "b2": jnp.zeros(K)}


def _mlp_features(p, x):
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])


def _mlp_apply(p, x):
  return _mlp_features(p, x) @ p["w2"] + p["b2"]


KINDS = {
    "linen": LinenPlain(),
    "linen_bn_dropout": LinenBNDrop(),
    "nnx": NNXNet,
    "equinox": models.equinox_model(EqxPlain, features="embed"),
    "equinox_bn": models.equinox_model(EqxNet, features="embed"),
    "functions": models.functions(_mlp_init, _mlp_apply, features=_mlp_features),
}
STATELESS = ("linen", "functions", "equinox")


def toy_syn(seed=1):
  rng = np.random.default_rng(seed)
  return SyntheticSet(jnp.asarray(rng.normal(size=(K * IPC, HW, HW, 1)), jnp.float32),
                      jnp.repeat(jnp.arange(K, dtype=jnp.int32), IPC))


def toy_dataset():
  x, y = toys.toy_data()
  xt, yt = toys.toy_data(seed=5, n_per=6)
  return Dataset("toy", x, y, xt, yt, K, tuple("abc"), (0.0,), (1.0,))


def _run(objective, sampler, key, steps=2):
  d = distill.Distiller(objective, distill.optimizer(optax.sgd(0.1, momentum=0.5)), sampler)
  syn = toy_syn()
  state = distill.init_state(key, syn, d)
  step = distill.make_step(d)
  sample = distill.make_sample(d)
  losses = []
  for _ in range(steps):
    state, m = step(state, sample(state))
    losses.append(float(m["loss"]))
  assert np.all(np.isfinite(losses)) and losses[0] > 0
  assert not np.allclose(np.asarray(state.syn.images), np.asarray(syn.images))
  return state


@pytest.mark.parametrize("kind", list(KINDS))
def test_adapter_init_apply_state_and_features(kind, key):
  net = models.adapt(KINDS[kind])
  x = jnp.asarray(toys.toy_data()[0][:5])
  v = net.init(key, x)
  logits, v_eval = net.apply(v, x, train=False)
  assert logits.shape == (5, K) and v_eval is v
  (logits_f, feats), _ = net.apply(v, x, train=False, features=True)
  np.testing.assert_allclose(logits_f, logits, rtol=1e-5, atol=1e-5)
  assert feats.ndim == 2 and feats.shape[0] == 5
  train_logits, v_train = net.apply(v, x, train=True, key=jax.random.key(3))
  assert train_logits.shape == (5, K)
  assert net.has_state(v) == (kind not in STATELESS)
  if kind not in STATELESS:  # BatchNorm statistics move in training mode, and only there
    before = jax.tree.leaves(models.state_of(v))
    after = jax.tree.leaves(models.state_of(v_train))
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # A different key gives a different network: fresh networks really are fresh.
  v2 = net.init(jax.random.key(9), x)
  assert not np.allclose(ravel(v["params"]), ravel(v2["params"]))


def ravel(tree):
  return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(tree)])


def test_dropout_is_on_in_training_and_seeded_by_the_key(key):
  for model in (LinenBNDrop(), NNXNet):
    net = models.adapt(model)
    x = jnp.asarray(toys.toy_data()[0][:6])
    v = net.init(key, x)
    a = net.apply(v, x, train=True, key=jax.random.key(1))[0]
    b = net.apply(v, x, train=True, key=jax.random.key(2))[0]
    c = net.apply(v, x, train=True, key=jax.random.key(1))[0]
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)
    e1 = net.apply(v, x, train=False)[0]
    np.testing.assert_array_equal(e1, net.apply(v, x, train=False, key=jax.random.key(2))[0])


# Equinox's BatchNorm reduces over a vmap axis, which JAX's shard_map (the distillation step runs in
# one) does not take: stateful Equinox models run in the evaluation, expert training and selection.
IN_STEP = [k for k in KINDS if k != "equinox_bn"]


@pytest.mark.parametrize("kind", IN_STEP)
def test_dm_and_dc_run_with_any_model(kind, key):
  x, y = toys.toy_data()
  model = KINDS[kind]
  _run(objectives.distribution_matching(model, K), distill.class_balanced_sampler(x, y, K, P), key)
  _run(objectives.gradient_matching(model, K, outer_loop=2, inner_loop=1),
       distill.class_balanced_sampler(x, y, K, P), key)


@pytest.mark.parametrize("kind", list(KINDS))
def test_evaluation_trains_any_model(kind, key):
  data = toy_dataset()
  cfg = evaluate.EvalConfig(epochs=3, lr=0.05, batch_size=4, augment="none")
  res = evaluate.accuracy(key, toy_syn(), data, model=KINDS[kind], num_seeds=2, cfg=cfg)
  assert res.accuracies.shape == (2,) and 0.0 <= res.mean <= 1.0
  # Training changes the network.
  net = models.adapt(KINDS[kind])
  v0 = evaluate.init_variables(key, net, data.image_shape)
  v1 = evaluate.train(key, net, toy_syn().images, toy_syn().labels, cfg)
  assert not np.allclose(ravel(v0["params"]), ravel(v1["params"]))


@pytest.mark.parametrize("kind", list(KINDS))
def test_experts_and_trajectory_matching_with_any_model(kind, key, tmp_path):
  x, y = toys.toy_data()
  model = KINDS[kind]
  cfg = experts.ExpertConfig(epochs=2, batch_size=8, augment="none", lr=0.05)
  traj = experts.train(key, (x, y), model, str(tmp_path), num_experts=1, cfg=cfg, progress=False)
  assert traj.params.shape[:2] == (1, 3)
  assert not np.allclose(traj.params[0, 0], traj.params[0, 2])
  again = experts.train(key, (x, y), model, str(tmp_path), num_experts=1, cfg=cfg, progress=False)
  np.testing.assert_array_equal(again.params, traj.params)  # read back, not retrained
  if kind not in IN_STEP:
    return
  mtt = objectives.trajectory_matching(model, K, syn_steps=2)
  d = distill.Distiller(mtt, distill.optimizer(optax.sgd(10.0, momentum=0.5),
                                               log_lr=optax.sgd(1e-5)),
                        objectives.trajectory_sampler(traj, expert_epochs=1, max_start_epoch=1))
  syn = toy_syn()._replace(log_lr=jnp.log(jnp.float32(0.01)))
  state = distill.init_state(key, syn, d)
  state, m = distill.make_step(d)(state, distill.make_sample(d)(state))
  assert np.isfinite(float(m["loss"])) and float(m["loss"]) > 0
  assert not np.allclose(np.asarray(state.syn.images), np.asarray(syn.images))


@pytest.mark.parametrize("kind", ["linen", "nnx", "functions"])
def test_kip_empirical_ntk_and_frepo_with_any_model(kind, key):
  """KIP and FRePo run their networks without dropout keys: NNX here without dropout (rate 0), and a
  model with dropout is refused with one error."""
  x, y = toys.toy_data()
  model = functools.partial(NNXNet, drop=0.0) if kind == "nnx" else KINDS[kind]
  if kind == "nnx":
    model = models.nnx_model(model)
    with pytest.raises(models.ModelError, match="without dropout"):
      kernels.empirical_ntk_kernel(NNXNet)(jnp.asarray(x[:2]), jnp.asarray(x[:3]), key)
  kip = objectives.kip(kernels.empirical_ntk_kernel(model), K, keyed_kernel=True)
  syn = toy_syn()
  syn = syn._replace(labels=objectives.kip_labels(syn.labels, K))
  d = distill.Distiller(kip, distill.optimizer(optax.sgd(0.01), labels=optax.sgd(0.01)),
                        distill.random_sampler(x, y, 8, num_classes=K))
  state = distill.init_state(key, syn, d)
  state, m = distill.make_step(d)(state, distill.make_sample(d)(state))
  assert np.isfinite(float(m["loss"]))
  assert not np.allclose(np.asarray(state.syn.images), np.asarray(syn.images))
  fr = objectives.frepo(model, K, pool_size=2, online_batch_size=6)
  d = distill.Distiller(fr, distill.optimizer(optax.sgd(0.01), labels=optax.sgd(0.01)),
                        distill.random_sampler(x, y, 8, num_classes=K))
  state = distill.init_state(key, syn, d)
  state, m = distill.make_step(d)(state, distill.make_sample(d)(state))
  assert np.isfinite(float(m["loss"]))


@pytest.mark.parametrize("kind", list(KINDS))
def test_selection_and_coverage_in_a_models_features(kind, key):
  x, y = toys.toy_data()
  model = KINDS[kind]
  v = models.adapt(model).init(key, jnp.asarray(x[:1]))
  feats = np.asarray(models.embed(model, v, x))
  assert feats.shape[0] == x.shape[0]
  for fn in (selection.herding, selection.k_center):
    got = fn(x, y, K, IPC, model=model, variables=v)
    want = fn(x, y, K, IPC, features=feats)
    np.testing.assert_array_equal(got.images, want.images)
  km = selection.k_means(key, x, y, K, IPC, model=model, variables=v, nearest=True)
  assert km.images.shape == (K * IPC, HW, HW, 1)
  rep = metrics.coverage_report(model, v, x[:6], x)
  assert 0.0 < rep["coverage"] <= 1.0
  q = metrics.quality_report(model, None, v, x[:6], y[:6], x[6:], x)
  assert 0.0 <= q["class_agreement"] <= 1.0 and np.isfinite(q["fid_like"])


def test_dd_training_with_a_user_model(key):
  syn = toy_syn()._replace(log_lr=jnp.full((2,), jnp.log(jnp.float32(0.02))))
  net = models.adapt(LinenPlain())
  v0 = net.init(key, syn.images)
  v = objectives.dd_train(LinenPlain(), syn, key, unroll_steps=2)
  assert not np.allclose(ravel(v0["params"]), ravel(v["params"]))


def test_bad_models_get_one_clear_error(key):
  x = jnp.asarray(toys.toy_data()[0][:2])

  class Seq(nn.Module):  # logits [B, H*W] of a pixel-wise head: not [B, K]
    @nn.compact
    def __call__(self, x):
      return nn.Dense(K)(x)

  with pytest.raises(models.ModelError, match=r"logits \[B, K\]"):
    models.adapt(Seq()).init(key, x)

  class NoDense(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(K, (8, 8), padding="VALID")(x).reshape(x.shape[0], -1)

  net = models.adapt(NoDense())
  v = net.init(key, x)
  with pytest.raises(models.ModelError, match="features="):
    net.apply(v, x, features=True)
  with pytest.raises(models.ModelError, match="features"):
    models.adapt(models.functions(_mlp_init, _mlp_apply)).apply(
        {"params": _mlp_init(key, x)}, x, features=True)
  with pytest.raises(models.ModelError, match="class"):
    models.adapt(NNXNet(nnx.Rngs(0)))
  with pytest.raises(models.ModelError, match="equinox_model"):
    models.adapt(EqxNet(key))
  with pytest.raises(models.ModelError, match="no such argument"):
    models.adapt(LinenPlain(), train_arg="train")
  with pytest.raises(models.ModelError, match="Cannot use"):
    models.adapt(object())
  data = toy_dataset()
  with pytest.raises(ValueError, match="logits"):
    wide = models.functions(lambda k, x: _mlp_init(k, x) | {"w2": jnp.zeros((16, 5)),
                                                           "b2": jnp.zeros(5)}, _mlp_apply)
    evaluate.accuracy(key, toy_syn(), data, model=wide, num_seeds=1,
                      cfg=evaluate.EvalConfig(epochs=1, augment="none"))
  # The trained weights of an NNX instance, for entry points that use trained weights.
  inst = NNXNet(nnx.Rngs(0))
  v = models.nnx_variables(inst)
  inst.eval()
  np.testing.assert_allclose(models.adapt(NNXNet).apply(v, x)[0], inst(x), rtol=1e-5, atol=1e-6)


def test_the_librarys_networks_keep_their_identity_and_variables(key):
  model = models.get_model("convnet", K, width=8)
  net = models.adapt(model)
  assert net.identity() == repr(model)
  x = jnp.zeros((1, 28, 28, 1))
  a = net.init(key, x)
  b = model.init(key, x, train=False)
  np.testing.assert_array_equal(ravel(a), ravel(b))
  assert jax.tree.structure(a) == jax.tree.structure(dict(b))
