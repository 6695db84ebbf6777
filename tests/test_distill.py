"""The distillation loop and the DC/DM objectives on tiny problems."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import distill, objectives
from jaxdistill.types import SyntheticSet
import toys

K, IPC, P, HW = 3, 2, 4, 8


TinyConv = toys.TinyConv  # K = 3 classes, width 4


toy_data = toys.toy_data  # K = 3 classes, 8x8


def toy_syn(seed=1):
  rng = np.random.default_rng(seed)
  return SyntheticSet(jnp.asarray(rng.normal(size=(K * IPC, HW, HW, 1)), jnp.float32),
                      jnp.repeat(jnp.arange(K, dtype=jnp.int32), IPC))


def make(method="dm", mask=None, lr=0.1):
  x, y = toy_data()
  if method == "dm":
    obj = objectives.distribution_matching(TinyConv(), K)
  else:
    obj = objectives.gradient_matching(TinyConv(), K, outer_loop=2, inner_loop=1)
  tx = distill.optimizer(optax.sgd(lr, momentum=0.5))
  return distill.Distiller(obj, tx, distill.class_balanced_sampler(x, y, K, P), mask=mask)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dm", "dc"])
def test_objective_finite_grad_shape_and_step_moves(method, key):
  d = make(method)
  syn = toy_syn()
  state = distill.init_state(key, syn, d)
  batch = distill.make_sample(d)(state)
  loss, aux = d.objective.loss(syn, batch, key, state.obj_state)
  assert np.isfinite(float(loss)) and float(loss) > 0
  g = jax.grad(lambda im: d.objective.loss(syn._replace(images=im), batch, key, state.obj_state)[0])(
      syn.images)
  assert g.shape == syn.images.shape and np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  new, metrics = distill.make_step(d)(state, batch)
  assert int(new.step) == 1 and np.isfinite(metrics["loss"])
  assert not np.allclose(np.asarray(new.syn.images), np.asarray(syn.images))


def test_dm_loss_zero_when_synthetic_equals_real(key):
  x, y = toy_data()
  obj = objectives.distribution_matching(TinyConv(), K)
  real = jnp.stack([jnp.asarray(x[y == c][:IPC]) for c in range(K)])  # [K, IPC, ...]
  syn = SyntheticSet(real.reshape(K * IPC, HW, HW, 1), jnp.repeat(jnp.arange(K), IPC))
  loss, _ = obj.loss(syn, {"images": real}, key, ())
  assert float(loss) == 0.0
  loss2, _ = obj.loss(syn._replace(images=syn.images + 0.1), {"images": real}, key, ())
  assert float(loss2) > 0


def test_gradient_distance_zero_for_identical_and_positive_otherwise():
  g = {"conv": {"kernel": jnp.arange(36.0).reshape(3, 3, 1, 4) - 10, "bias": jnp.ones(4)},
       "dense": {"kernel": jnp.arange(12.0).reshape(4, 3) - 5}}
  np.testing.assert_allclose(objectives.gradient_distance(g, g), 0.0, atol=1e-5)
  flipped = jax.tree.map(lambda a: -a, g)
  # Every output row anti-parallel: 1 - (-1) = 2 per row: 4 conv rows + 3 dense rows.
  np.testing.assert_allclose(objectives.gradient_distance(g, flipped), 2.0 * 7, rtol=1e-5)
  only_bias = {**g, "conv": {**g["conv"], "bias": -g["conv"]["bias"]}}
  np.testing.assert_allclose(objectives.gradient_distance(g, only_bias), 0.0, atol=1e-5)


def test_gradient_distance_of_a_dead_unit_has_a_finite_gradient():
  """A synthetic gradient row of zeros (a dead ReLU unit) adds 1 - 0 to the distance and, as PyTorch's
  norm backward gives, a finite gradient: 0 through the zero row's norm, the dot product's term
  elsewhere (a NaN here would stop a DC run at its first step)."""
  r = jnp.array([[1.0, 2.0], [3.0, -1.0]])
  s = jnp.array([[0.0, 0.0], [1.0, 1.0]])
  dist = lambda s: objectives.gradient_distance({"w": r.T}, {"w": s.T})
  grad = jax.grad(dist)(s)
  assert np.isfinite(np.asarray(grad)).all()
  # Row 0: d/ds [-(r.s) / (|r||s| + eps)] at s = 0 is -r / eps (the eps keeps it finite).
  np.testing.assert_allclose(grad[0], -r[0] / 1e-6, rtol=1e-4)
  np.testing.assert_allclose(dist(s), 1.0 + 1.0 - 2.0 / (np.sqrt(10) * np.sqrt(2)), rtol=1e-5)


def test_frozen_rows_bit_identical_while_distilled_rows_move(key):
  mask = np.array([True, False] * K)  # one distilled and one frozen row per class
  d = make("dm", mask=mask, lr=1.0)
  d = d._replace(tx=distill.optimizer(optax.adamw(0.05, weight_decay=0.1)))  # decay + eps: still 0
  syn = toy_syn()
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
    state, _ = distill.run(key, syn, d, num_steps=15, progress=False)
  got, init = np.asarray(state.syn.images), np.asarray(syn.images)
  np.testing.assert_array_equal(got[~mask], init[~mask])
  assert np.all(np.abs(got[mask] - init[mask]).reshape(K, -1).max(1) > 1e-3)


@pytest.mark.slow
def test_step_compiles_once(key):
  d = make("dc")
  state = distill.init_state(key, toy_syn(), d)
  step, sample = distill.make_step(d), distill.make_sample(d)
  for _ in range(4):
    state, _ = step(state, sample(state))
  assert step._cache_size() == 1


def test_weakly_typed_log_lr_does_not_recompile(key):
  # jnp.log(0.01) is weakly typed; the updated value is not: init_state must make it strong. (DM never
  # reads a step size; the stand-in objective below declares that it does, so one may be learned.)
  dm = make("dm")
  d = dm._replace(learn_lr=True, tx=distill.optimizer(optax.sgd(0.1), log_lr=optax.sgd(0.1)),
                  objective=dm.objective._replace(reads=("images", "labels", "log_lr")))
  state = distill.init_state(key, toy_syn()._replace(log_lr=jnp.log(0.01)), d)
  step, sample = distill.make_step(d), distill.make_sample(d)
  for _ in range(3):
    state, _ = step(state, sample(state))
  assert step._cache_size() == 1


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path, key):
  d = make("dc")
  full, _ = distill.run(key, toy_syn(), d, 6, progress=False)
  ckpt = str(tmp_path / "ck")
  distill.run(key, toy_syn(), d, 3, checkpoint_dir=ckpt, checkpoint_every=1, progress=False)
  resumed, hist = distill.run(key, toy_syn(seed=9), d, 6, checkpoint_dir=ckpt, checkpoint_every=1,
                              progress=False)
  assert [h["step"] for h in hist] == [4, 5, 6]
  jax.tree.map(np.testing.assert_array_equal, jax.random.key_data(full.key),
               jax.random.key_data(resumed.key))
  np.testing.assert_array_equal(np.asarray(full.syn.images), np.asarray(resumed.syn.images))
  jax.tree.map(np.testing.assert_array_equal, full.obj_state, resumed.obj_state)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, key):
  d = make("dm")
  dm = d.objective

  def loss(syn, batch, k, count, axis_name=None):  # NaN from the third step on
    value, aux = dm.loss(syn, batch, k, (), axis_name)
    return jnp.where(count >= 2, jnp.nan, value), aux

  bad = d._replace(objective=dm._replace(init=lambda k, s: jnp.zeros((), jnp.int32), loss=loss,
                                         update=lambda count, s, k: count + 1))
  ckpt = str(tmp_path / "ck")
  with pytest.raises(FloatingPointError, match=r"step 3: .*not finite.*last checkpoint, step 2"):
    distill.run(key, toy_syn(), bad, 5, checkpoint_dir=ckpt, checkpoint_every=1, progress=False,
                config={"m": 1})
  from jaxdistill.checkpoint import Checkpointer
  c = Checkpointer(ckpt, {"m": 1})
  assert c.latest_step() == 2
  restored = c.restore(distill.init_state(key, toy_syn(), bad))
  assert int(restored.step) == 2 and np.all(np.isfinite(np.asarray(restored.syn.images)))


def test_bad_input(tmp_path, key):
  with pytest.raises(ValueError, match="one entry per synthetic row"):
    distill.init_state(key, toy_syn(), make(mask=np.ones(5, bool)))
  with pytest.raises(ValueError, match="Unknown optimizer 'sgdd'"):
    distill.make_optimizer("sgdd", learning_rate=1.0)
  with pytest.raises(ValueError, match="class 0 has only 12"):
    distill.class_balanced_sampler(*toy_data(), K, 13)
  ckpt = str(tmp_path / "ck")
  distill.run(key, toy_syn(), make(), 1, checkpoint_dir=ckpt, config={"lr": 0.1}, progress=False)
  with pytest.raises(ValueError, match="(?s)another configuration.*lr: checkpoint has 0.1, this run has 0.2"):
    distill.run(key, toy_syn(), make(), 2, checkpoint_dir=ckpt, config={"lr": 0.2}, progress=False)
  bad = toy_syn()._replace(images=toy_syn().images.at[0, 0, 0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="NaN"):
    distill.init_state(key, bad, make())
  with pytest.raises(ValueError, match="class-major"):
    from jaxdistill.objectives.common import check_class_major
    check_class_major(np.array([0, 1, 0, 1, 2, 2]), K)


MULTI = textwrap.dedent("""
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  sys.path.insert(0, {tests!r})
  import jax, numpy as np
  from test_distill import K, make, toy_data, toy_syn
  from jaxdistill import distill, parallel
  assert jax.device_count() == 4
  out = {{}}
  for method in ("dm", "dc"):
    for n in (1, 4):
      s, h = distill.run(jax.random.key(0), toy_syn(), make(method), 4, progress=False,
                         mesh=parallel.data_mesh(n))
      out[(method, n)] = (np.asarray(s.syn.images), [m["loss"] for m in h])
    np.testing.assert_allclose(out[(method, 1)][0], out[(method, 4)][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[(method, 1)][1], out[(method, 4)][1], rtol=1e-4)
  # DC with BatchNorm: the running statistics come from the first bn_per_class real images per class
  # of the whole batch on any device count (each device's shard held only P / 4 of them).
  from jaxdistill import models, objectives
  import optax
  x, y = toy_data()
  net = models.get_model("convnet", K, width=4, depth=1, norm="batchnorm")
  obj = objectives.gradient_matching(net, K, outer_loop=2, inner_loop=1, bn_per_class=2)
  d = distill.Distiller(obj, distill.optimizer(optax.sgd(0.1)), distill.class_balanced_sampler(x, y, K, 4))
  bn = [distill.run(jax.random.key(0), toy_syn(), d, 2, progress=False, mesh=parallel.data_mesh(n))
        for n in (1, 4)]
  np.testing.assert_allclose(*[[m["loss"] for m in h] for _, h in bn], rtol=1e-5)
  print("MATCH")
""")


@pytest.mark.slow
def test_four_devices_match_one_device():
  code = MULTI.format(tests=os.path.dirname(__file__))
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "MATCH" in r.stdout, r.stderr[-3000:]


SIGTERM_RUN = textwrap.dedent("""
  import sys
  sys.path.insert(0, {tests!r})
  import jax, test_distill as td
  from jaxdistill import distill
  # Far more steps than the test waits for: it is stopped by SIGTERM after its first checkpoints.
  distill.run(jax.random.key(0), td.toy_syn(), td.make("dm"), 100000, checkpoint_dir={ckpt!r},
              checkpoint_every=1, keep=2, progress=False)
""")


@pytest.mark.slow
def test_sigterm_leaves_the_last_checkpoint_loadable_and_resumable(tmp_path, key):
  """A run killed by SIGTERM mid-training keeps a checkpoint that restores and resumes."""
  import signal
  import time

  from jaxdistill.checkpoint import Checkpointer
  ckpt = str(tmp_path / "ck")
  proc = subprocess.Popen([sys.executable, "-c", SIGTERM_RUN.format(tests=os.path.dirname(__file__),
                                                                    ckpt=ckpt)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      steps = [int(n) for n in (os.listdir(ckpt) if os.path.isdir(ckpt) else []) if n.isdigit()]
      if steps and max(steps) >= 3:
        break
      time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before it was signalled: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
  last = Checkpointer(ckpt, None).latest_step()
  assert last is not None and last >= 3
  d = make("dm")
  resumed, hist = distill.run(key, toy_syn(seed=9), d, last + 2, checkpoint_dir=ckpt,
                              checkpoint_every=1, progress=False)
  assert [h["step"] for h in hist] == [last + 1, last + 2]
  # The same steps as an uninterrupted run with the run's key (key(0) in the subprocess).
  full, _ = distill.run(jax.random.key(0), toy_syn(), d, last + 2, progress=False)
  np.testing.assert_array_equal(np.asarray(full.syn.images), np.asarray(resumed.syn.images))


def test_a_step_above_the_loss_threshold_changes_nothing():
  """DATM's threshold: the set and optimizer state stay as they were where the loss exceeds it, and
  the step says so (``skipped``); below it the step updates as without a threshold."""
  import optax
  from jaxdistill import distill, objectives
  from jaxdistill.types import SyntheticSet
  syn = SyntheticSet(jnp.ones((2, 2, 2, 1)), jnp.arange(2, dtype=jnp.int32))
  obj = objectives.Objective(lambda k, s: (), lambda s, b, k, st, axis_name=None: (
      jnp.sum(jnp.square(s.images)), {}), lambda st, s, k: st, name="toy")
  sampler = distill.random_sampler(np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1]), 2)
  tx = distill.optimizer(optax.sgd(0.1))
  for threshold, moved in ((1.0, False), (100.0, True)):
    d = distill.Distiller(obj, tx, sampler, loss_threshold=threshold)
    state, hist = distill.run(jax.random.key(0), syn, d, 2, log_every=1, progress=False)
    assert [h["skipped"] for h in hist] == [float(not moved)] * 2
    assert bool(jnp.any(state.syn.images != syn.images)) == moved


def test_class_sequential_sgd_equals_one_momentum_step_per_class():
  """IDC steps PyTorch's SGD once per class inside each iteration; the closed form gives the same
  rows and momentum buffer as that loop (gradients fixed within an iteration)."""
  import optax
  from jaxdistill import distill
  rng = np.random.default_rng(0)
  classes = np.array([0, 0, 1, 1, 2, 2])
  lr, mu, k = 0.1, 0.5, 3
  tx = distill.class_sequential_sgd(lr, mu, classes, k)
  x = rng.normal(size=(6, 2)).astype(np.float32)
  x_ref, buf = x.astype(np.float64).copy(), np.zeros((6, 2))
  state = tx.init(jnp.asarray(x))
  params = jnp.asarray(x)
  for _ in range(4):
    g = rng.normal(size=(6, 2))
    for c in range(k):  # the reference's loop: zero_grad, class c's gradient, step
      gc = np.where((classes == c)[:, None], g, 0.0)
      buf = mu * buf + gc
      x_ref = x_ref - lr * buf
    upd, state = tx.update(jnp.asarray(g, jnp.float32), state)
    params = optax.apply_updates(params, upd)
  np.testing.assert_allclose(np.asarray(params), x_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state), buf, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="momentum"):
    distill.class_sequential_sgd(lr, 1.0, classes, k)
  with pytest.raises(ValueError, match="row_classes"):
    distill.class_sequential_sgd(lr, mu, np.array([0.0, 1.0]), 2)


def test_a_nan_loss_step_is_held_under_a_threshold():
  import optax
  from jaxdistill import distill, objectives
  from jaxdistill.types import SyntheticSet
  syn = SyntheticSet(jnp.ones((2, 2, 2, 1)), jnp.arange(2, dtype=jnp.int32))
  obj = objectives.Objective(lambda k, s: (), lambda s, b, k, st, axis_name=None: (
      jnp.sum(s.images) * jnp.nan, {}), lambda st, s, k: st, name="toy")
  sampler = distill.random_sampler(np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1]), 2)
  d = distill.Distiller(obj, distill.optimizer(optax.sgd(0.1)), sampler, loss_threshold=1.0)
  state = distill.init_state(jax.random.key(0), syn, d)
  new, metrics = distill.make_step(d)(state, sampler.fn(jax.random.key(1), sampler.arrays))
  assert float(metrics["skipped"]) == 1.0
  np.testing.assert_array_equal(np.asarray(new.syn.images), np.asarray(syn.images))
