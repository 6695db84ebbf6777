"""The evaluation protocol: learning works, determinism, learned lr, routing, soft labels, bad input."""
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


def test_vmap_and_map_seeds_agree(data):
  syn = (data.x_train, data.y_train)
  a = evaluate.accuracy(jax.random.key(3), syn, data, TinyNet(), 2, CFG._replace(seed_parallel="vmap"))
  b = evaluate.accuracy(jax.random.key(3), syn, data, TinyNet(), 2, CFG._replace(seed_parallel="map"))
  np.testing.assert_allclose(a.accuracies, b.accuracies, atol=0.02)


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
