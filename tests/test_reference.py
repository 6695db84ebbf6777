"""The defaults compute what the reference code bases compute: each test writes the reference's
computation by hand and compares (step-size updates, DM/DC with BatchNorm, DC's inner training, the
evaluation schedule). Model initialization is checked in test_models.py, the DSA strategy in
test_augment.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import distill, evaluate, models, objectives
from jaxdistill.objectives.gradient import gradient_distance
from jaxdistill.models.nets import as_net
from jaxdistill.types import SyntheticSet
import toys

K, IPC, P = 3, 2, 4


def test_step_size_update_equals_the_originals_update_in_lr_space():
  """MTT updates syn_lr itself: lr' = lr - lr_lr * buf, buf = m * buf + dL/dlr. Stored as log_lr, the
  default optimizer must give exp(log_lr') == lr' for the same gradients (two steps: momentum too)."""
  lr_lr, m = 1e-5, 0.5
  tx = distill.optimizer(optax.sgd(1.0), log_lr=optax.sgd(lr_lr, momentum=m))
  params = {"images": jnp.zeros((2, 3)), "log_lr": jnp.log(jnp.float32(0.01))}
  state = tx.init(params)
  lr, buf = 0.01, 0.0
  for g_lr in (-120.0, 35.0):  # dL/dlr as the original's autograd gives it
    grads = {"images": jnp.zeros((2, 3)), "log_lr": jnp.float32(g_lr * float(jnp.exp(params["log_lr"])))}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    buf = m * buf + g_lr
    lr = lr - lr_lr * buf
    np.testing.assert_allclose(float(jnp.exp(params["log_lr"])), lr, rtol=1e-6)
  assert abs(lr - 0.01) > 1e-4  # the step size moved as far as the original's
  # The explicit log-space option moves log_lr by the optimizer's step directly.
  tx_log = distill.optimizer(optax.sgd(1.0), log_lr=optax.sgd(0.1), step_size="log")
  p = {"images": jnp.zeros((2, 3)), "log_lr": jnp.float32(-2.0)}
  u, _ = tx_log.update({"images": jnp.zeros((2, 3)), "log_lr": jnp.float32(1.0)}, tx_log.init(p), p)
  np.testing.assert_allclose(float(u["log_lr"]), -0.1, rtol=1e-6)
  with pytest.raises(ValueError, match="step_size"):
    distill.optimizer(optax.sgd(1.0), log_lr=optax.sgd(0.1), step_size="exp")


def test_step_size_stays_positive():
  tx = distill.in_lr_space(optax.sgd(1.0), min_lr=1e-8)
  p = jnp.log(jnp.float32(0.01))
  u, _ = tx.update(jnp.float32(10.0), tx.init(p), p)  # would make lr negative in lr space
  assert np.isfinite(float(p + u)) and float(jnp.exp(p + u)) == pytest.approx(1e-8, rel=1e-3)


def _bn_net():
  return models.get_model("convnet_bn", K, width=4, depth=1)


def _real_and_syn(seed=0, hw=8):
  rng = np.random.default_rng(seed)
  real = jnp.asarray(rng.normal(size=(K, P, hw, hw, 1)) + np.arange(K)[:, None, None, None, None],
                     jnp.float32)
  syn = SyntheticSet(jnp.asarray(rng.normal(size=(K * IPC, hw, hw, 1)), jnp.float32),
                     jnp.repeat(jnp.arange(K, dtype=jnp.int32), IPC))
  return real, syn


@pytest.mark.slow
def test_dm_with_batchnorm_embeds_all_classes_in_one_batch(key):
  net = _bn_net()
  fns = as_net(net)
  real, syn = _real_and_syn()
  obj = objectives.distribution_matching(net, K)
  value, _ = obj.loss(syn, {"images": real}, key, ())
  net_key, _ = jax.random.split(key)
  variables = fns.init(net_key, real[0])
  # The reference (ConvNetBN branch): all real images in one batch, all synthetic in one batch.
  fr = fns.embed(variables, real.reshape(K * P, 8, 8, 1)).reshape(K, P, -1).mean(1)
  fs = fns.embed(variables, syn.images).reshape(K, IPC, -1).mean(1)
  np.testing.assert_allclose(float(value), float(jnp.sum((fr - fs) ** 2)), rtol=1e-5)
  # Class-by-class synthetic embedding would give per-class statistics: refused.
  with pytest.raises(ValueError, match="remat_syn"):
    objectives.distribution_matching(net, K, remat_syn=True).loss(syn, {"images": real}, key, ())
  # ... which differs from embedding class by class (BatchNorm statistics per class).
  per_class = sum(float(jnp.sum((fns.embed(variables, real[c]).mean(0)
                                 - fns.embed(variables, syn.images[c * IPC:(c + 1) * IPC]).mean(0)) ** 2))
                  for c in range(K))
  assert abs(per_class - float(value)) > 1e-3 * abs(float(value))


@pytest.mark.slow
def test_dc_with_batchnorm_matches_in_eval_mode_after_refreshing_running_stats(key):
  net = _bn_net()
  real, syn = _real_and_syn(1)
  obj = objectives.gradient_matching(net, K, outer_loop=2, inner_loop=1, bn_per_class=2)
  state = obj.init(key, syn)
  prepared = obj.prepare(state, {"images": real})
  # Running statistics: 0.9 * old + 0.1 * the batch's, over 2 real images per class (PyTorch momentum
  # 0.1). The first BN layer's input is the first conv's output, written out here.
  params = state.variables["params"]
  xr = real[:, :2].reshape(K * 2, 8, 8, 1)
  conv = models.conv2d(xr, params["Conv_0"]["kernel"], 1, 3) + params["Conv_0"]["bias"]
  old = state.variables["batch_stats"]["BatchNorm_0"]
  new = prepared.variables["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * conv.mean((0, 1, 2)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * conv.var((0, 1, 2)), rtol=1e-4)
  # The loss: per class, the reference distance of gradients computed in eval mode (running stats).
  value, _ = obj.loss(syn, {"images": real}, key, prepared)
  v = prepared.variables

  def ce_grad(x, c):
    return jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        net.apply({**v, "params": p}, x, train=False), jnp.full((x.shape[0],), c))))(v["params"])

  expected = sum(float(gradient_distance(ce_grad(real[c], c), ce_grad(syn.images[c * IPC:(c + 1) * IPC], c)))
                 for c in range(K))
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.slow
def test_dc_inner_training_uses_a_short_last_batch(key):
  """DC trains its network on the synthetic set in batches of batch_train, the last one short (a
  DataLoader without drop_last), plain SGD lr_net."""
  net = toys.TinyConv()
  fns = as_net(net)
  rng = np.random.default_rng(0)
  syn = SyntheticSet(jnp.asarray(rng.normal(size=(K * 3, 8, 8, 1)), jnp.float32),
                     jnp.repeat(jnp.arange(K, dtype=jnp.int32), 3))  # 9 rows, batches 4, 4, 1
  obj = objectives.gradient_matching(net, K, outer_loop=5, inner_loop=2, lr_net=0.05, batch_train=4)
  state = obj.init(key, syn)
  upd_key = jax.random.key(7)
  got = obj.update(state, syn, upd_key).variables["params"]

  params = state.variables["params"]
  for k in jax.random.split(upd_key, 2):
    perm_key, _ = jax.random.split(k)
    perm = np.asarray(jax.random.permutation(perm_key, 9))
    for rows in (perm[:4], perm[4:8], perm[8:]):
      g = jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          fns.apply({"params": p}, syn.images[rows]), syn.labels[rows])))(params)
      params = jax.tree.map(lambda p, gi: p - 0.05 * gi, params, g)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, params)


@pytest.mark.parametrize("epochs", [4, 5])
def test_evaluation_schedule_is_the_references(epochs, key):
  """evaluate_synset: for ep in range(E + 1): train one epoch; if ep == E // 2 + 1: lr /= 10 with a new
  SGD (momentum restarts). Full batches and no augmentation, so the run is deterministic."""
  model = models.get_model("mlp", K, width=8)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(6, 4, 4, 1)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
  cfg = evaluate.EvalConfig(epochs=epochs, lr=0.1, batch_size=6, augment="none")
  assert cfg.trained_epochs() == epochs + 1
  variables = evaluate.init_variables(key, model, x.shape[1:])
  got = evaluate.train(key, model, x, y, cfg, variables=variables)["params"]

  p = variables["params"]
  lr, buf = 0.1, jax.tree.map(jnp.zeros_like, p)
  loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, x, train=True), y))
  for ep in range(epochs + 1):
    g = jax.tree.map(lambda gi, pi: gi + 5e-4 * pi, jax.grad(loss)(p), p)
    buf = jax.tree.map(lambda b, gi: 0.9 * b + gi, buf, g)
    p = jax.tree.map(lambda pi, b: pi - lr * b, p, buf)
    if ep == epochs // 2 + 1:
      lr /= 10
      buf = jax.tree.map(jnp.zeros_like, p)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), got, p)
  # The old simplification (E epochs, x0.1 at E // 2, momentum kept) is an explicit option and differs.
  half = evaluate.train(key, model, x, y, cfg._replace(schedule="half"), variables=variables)["params"]
  assert not np.allclose(half["Dense_0"]["kernel"], p["Dense_0"]["kernel"], atol=1e-6)


@pytest.mark.slow
def test_dc_in_pieces_equals_whole_batches(key):
  """DC's real-image gradients and inner training summed over 2-row pieces give the whole-batch
  matching loss, image gradient and trained network (up to float rounding)."""
  net = toys.TinyConv()
  rng = np.random.default_rng(1)
  syn = SyntheticSet(jnp.asarray(rng.normal(size=(K * 4, 8, 8, 1)), jnp.float32),
                     jnp.repeat(jnp.arange(K, dtype=jnp.int32), 4))
  batch = {"images": jnp.asarray(rng.normal(size=(K, 6, 8, 8, 1)), jnp.float32)}
  out = {}
  for mb in (0, 2):
    obj = objectives.gradient_matching(net, K, outer_loop=5, inner_loop=2, batch_train=8, microbatch=mb)
    state = obj.init(key, syn)
    value, grad = jax.value_and_grad(lambda im: obj.loss(syn._replace(images=im), batch, key, state)[0])(
        syn.images)
    out[mb] = (value, grad, obj.update(state, syn, jax.random.key(3)).variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), out[2], out[0])


def test_dm_in_pieces_equals_whole_classes(key):
  """DM's real means embedded in 3-image pieces, and its synthetic means class by class with their
  activations recomputed for the gradient (``remat_syn``), equal the whole-batch computation: same loss
  and image gradient (up to float rounding)."""
  net = toys.TinyConv()
  rng = np.random.default_rng(2)
  syn = SyntheticSet(jnp.asarray(rng.normal(size=(K * 2, 8, 8, 1)), jnp.float32),
                     jnp.repeat(jnp.arange(K, dtype=jnp.int32), 2))
  batch = {"images": jnp.asarray(rng.normal(size=(K, 6, 8, 8, 1)), jnp.float32)}
  out = {}
  for mb, remat in ((0, False), (3, False), (0, True)):
    obj = objectives.distribution_matching(net, K, microbatch=mb, remat_syn=remat)
    out[mb, remat] = jax.value_and_grad(
        lambda im: obj.loss(syn._replace(images=im), batch, key, ())[0])(syn.images)
  for other in ((3, False), (0, True)):  # real pieces; synthetic classes one at a time, rematerialized
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 out[other], out[0, False])
