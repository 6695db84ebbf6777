"""Trajectory matching (MTT / DATM) on tiny problems."""
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import distill, experts, objectives, partial_updates
from jaxdistill.objectives import trajectory
from jaxdistill.types import SyntheticSet

K, IPC, HW = 3, 2, 8
N = K * IPC


class TinyMLP(nn.Module):
  num_classes: int = K

  @nn.compact
  def __call__(self, x, train=True, return_features=False):
    f = nn.tanh(nn.Dense(6)(x.reshape(x.shape[0], -1)))
    logits = nn.Dense(self.num_classes)(f)
    return (logits, f) if return_features else logits


def toy_syn(seed=1, soft=False):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(K), IPC)
  x = jnp.asarray(rng.normal(size=(N, HW, HW, 1)) + y[:, None, None, None], jnp.float32)
  labels = (jnp.asarray(rng.normal(size=(N, K)) + 3 * np.eye(K)[y], jnp.float32) if soft
            else jnp.asarray(y, jnp.int32))
  return SyntheticSet(x, labels, jnp.log(jnp.float32(0.05)))


def toy_trajectories(num_experts=2, epochs=4, model=TinyMLP()):
  """Fake expert trajectories: plain SGD on noisy data, one 'epoch' = 3 full-batch steps."""
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(K), 8)
  x = jnp.asarray(rng.normal(size=(y.size, HW, HW, 1)) + y[:, None, None, None], jnp.float32)
  grad = jax.jit(jax.grad(lambda p: trajectory.cross_entropy(model.apply({"params": p}, x),
                                                             jnp.asarray(y, jnp.int32))))
  out = []
  for i in range(num_experts):
    p = model.init(jax.random.key(10 + i), x[:1])["params"]
    traj = [p]
    for _ in range(epochs):
      for _ in range(3):
        p = jax.tree.map(lambda a, g: a - 0.5 * g, p, grad(p))
      traj.append(p)
    out.append(traj)
  return experts.from_params(out)


def segment_batch(traj, t=1, m=2, expert=0):
  return {"start": jnp.asarray(traj.params[expert, t])[None],
          "target": jnp.asarray(traj.params[expert, t + m])[None]}


def python_loop_loss(model, traj, syn, key, syn_steps, batch_syn, t=1, m=2):
  """The same unrolled SGD, written as a plain Python loop over pytrees."""
  perm_key, _ = trajectory.segment_key(key, 0)
  idx = np.asarray(trajectory.minibatch_indices(perm_key, N, batch_syn, syn_steps))
  p = traj.params_at(0, t)
  lr = jnp.exp(syn.log_lr)
  grad = jax.jit(jax.grad(lambda q, x, y: trajectory.cross_entropy(model.apply({"params": q}, x), y)))
  for s in range(syn_steps):
    rows = idx[s]
    g = grad(p, syn.images[rows], syn.labels[rows])
    p = jax.tree.map(lambda a, b: a - lr * b, p, g)
  flat = jax.flatten_util.ravel_pytree(p)[0]
  start, target = jnp.asarray(traj.params[0, t]), jnp.asarray(traj.params[0, t + m])
  return jnp.sum(jnp.square(flat - target)) / jnp.sum(jnp.square(start - target))


def test_minibatch_indices_are_permutation_chunks(key):
  idx = np.asarray(trajectory.minibatch_indices(key, 6, 2, 7))
  assert idx.shape == (7, 2)
  for p in range(2):  # steps 0-2 and 3-5 each cover every row once
    assert sorted(idx[3 * p:3 * p + 3].ravel().tolist()) == list(range(6))
  with pytest.raises(ValueError, match="batch_syn=4 does not divide the 6 synthetic rows"):
    trajectory.minibatch_indices(key, 6, 4, 3)


@pytest.mark.parametrize("soft", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_loss_equals_python_loop(key, soft):
  traj = toy_trajectories()
  syn = toy_syn(soft=soft)
  obj = objectives.trajectory_matching(TinyMLP(), K, syn_steps=5, batch_syn=3, remat=False)
  loss, aux = obj.loss(syn, segment_batch(traj), key, ())
  want = python_loop_loss(TinyMLP(), traj, syn, key, 5, 3)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  assert 0 < float(loss) and np.isfinite(float(aux["expert_distance"]))


@pytest.mark.slow
def test_grads_finite_nonzero_and_remat_matches(key):
  traj = toy_trajectories()
  syn = toy_syn(soft=True)
  noise = lambda k, x: x + 0.1 * jax.random.normal(k, x.shape)  # key-dependent, like DSA

  def value_and_grads(remat, scan_unroll=1):
    obj = objectives.trajectory_matching(TinyMLP(), K, syn_steps=4, batch_syn=2, augment=noise,
                                         remat=remat, scan_unroll=scan_unroll)
    f = lambda im, lab, llr: obj.loss(SyntheticSet(im, lab, llr), segment_batch(traj), key, ())[0]
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(syn.images, syn.labels, syn.log_lr)

  v0, g0 = value_and_grads(False)
  # remat, and the scan unrolled partly (2 steps per iteration) or fully (4: no loop), with and without
  # remat: the same values and gradients.
  for remat, scan_unroll in ((True, 1), (True, 2), (True, 4), (False, 4)):
    v1, g1 = value_and_grads(remat, scan_unroll)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-5)
    for a, b in zip(g0, g1):
      assert np.all(np.isfinite(np.asarray(a))) and float(jnp.abs(a).max()) > 0
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match="scan_unroll"):
    objectives.trajectory_matching(TinyMLP(), K, syn_steps=4, scan_unroll=0)


@pytest.mark.slow
def test_convnet_with_dsa_has_finite_gradients(key):
  from jaxdistill import augment, models
  model = models.get_model("convnet", K, width=4, depth=1)
  traj = toy_trajectories(num_experts=1, epochs=3, model=model)
  obj = objectives.trajectory_matching(model, K, syn_steps=2,
                                       augment=augment.get_augment("dsa", siamese=False,
                                                                   strategy="rotate"))
  syn = toy_syn()
  f = lambda im, llr: obj.loss(syn._replace(images=im, log_lr=llr), segment_batch(traj, 0, 2), key,
                               ())[0]
  v, (gi, gl) = jax.value_and_grad(f, argnums=(0, 1))(syn.images, syn.log_lr)
  assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(gi))) and float(jnp.abs(gi).max()) > 0
  assert np.isfinite(float(gl)) and float(gl) != 0


def test_distill_run_changes_distilled_rows_only(key):
  traj = toy_trajectories()
  mask = np.array([True, False] * K)
  obj = objectives.trajectory_matching(TinyMLP(), K, syn_steps=4, batch_syn=3)
  sampler = objectives.trajectory_sampler(traj, expert_epochs=2, max_start_epoch=3)
  tx = distill.optimizer(optax.sgd(100.0, momentum=0.5), log_lr=optax.sgd(1e-2, momentum=0.5))
  d = distill.Distiller(obj, tx, sampler, mask=mask, learn_lr=True)
  syn = toy_syn()
  state, hist = distill.run(key, syn, d, 3, progress=False)
  got, init = np.asarray(state.syn.images), np.asarray(syn.images)
  np.testing.assert_array_equal(got[~mask], init[~mask])
  assert np.all(np.abs(got[mask] - init[mask]).reshape(K, -1).max(1) > 0)
  assert float(state.syn.log_lr) != float(syn.log_lr)
  assert all(np.isfinite(h["loss"]) and 0 <= h["start_epoch"] < 3 for h in hist)


def test_sampler_segments_and_datm_schedule(key):
  traj = toy_trajectories(num_experts=3, epochs=6)
  upper = [int(trajectory.start_epoch_upper(s, 5, 2, 6)) for s in (0, 1, 2, 3, 4, 6, 100)]
  assert upper == [2, 2, 3, 3, 4, 5, 5]
  s = objectives.trajectory_sampler(traj, expert_epochs=1, max_start_epoch=5, min_start_epoch=1,
                                    segments=64, initial_max_start_epoch=2, expansion_steps=6)
  assert s.uses_step
  early = s.fn(key, s.arrays, jnp.int32(0))
  assert early["start"].shape == (64, traj.num_params)
  assert set(np.asarray(early["start_epoch"]).tolist()) == {1}
  late = s.fn(key, s.arrays, jnp.int32(6))
  t, e = np.asarray(late["start_epoch"]), np.asarray(late["expert"])
  assert set(t.tolist()) == {1, 2, 3, 4} and set(e.tolist()) == {0, 1, 2}
  np.testing.assert_array_equal(np.asarray(late["start"]), traj.params[e, t])
  np.testing.assert_array_equal(np.asarray(late["target"]), traj.params[e, t + 1])
  assert not objectives.trajectory_sampler(traj, 1, 5).uses_step


def test_bad_input(key):
  traj = toy_trajectories(epochs=4)
  with pytest.raises(ValueError, match=r"4 epoch\(s\), too few for max_start_epoch=4 and "
                                       r"expert_epochs=2.*need 5"):
    objectives.trajectory_sampler(traj, expert_epochs=2, max_start_epoch=4)
  with pytest.raises(ValueError, match="min_start_epoch < max_start_epoch"):
    objectives.trajectory_sampler(traj, 1, 2, min_start_epoch=2)
  with pytest.raises(ValueError, match="both initial_max_start_epoch and expansion_steps"):
    objectives.trajectory_sampler(traj, 1, 3, initial_max_start_epoch=2)
  obj = objectives.trajectory_matching(TinyMLP(), K, syn_steps=2, batch_syn=4)
  with pytest.raises(ValueError, match="batch_syn=4 does not divide the 6"):
    obj.loss(toy_syn(), segment_batch(traj), key, ())
  obj = objectives.trajectory_matching(TinyMLP(), K, syn_steps=2)
  with pytest.raises(ValueError, match="needs learnable step sizes"):
    obj.loss(toy_syn()._replace(log_lr=None), segment_batch(traj), key, ())
  with pytest.raises(ValueError, match="log_lr must be a scalar or"):
    obj.loss(toy_syn()._replace(log_lr=jnp.zeros(3)), segment_batch(traj), key, ())
  other = objectives.trajectory_matching(TinyMLP(num_classes=4), 4, syn_steps=2)
  with pytest.raises(ValueError, match="another architecture"):
    other.loss(toy_syn(), segment_batch(traj), key, ())
  with pytest.raises(ValueError, match=r"Soft labels must be \[N, 3\]"):
    obj.loss(toy_syn()._replace(labels=jnp.zeros((N, 4))), segment_batch(traj), key, ())
  with pytest.raises(ValueError, match="syn_steps must be >= 1"):
    objectives.trajectory_matching(TinyMLP(), K, syn_steps=0)


def test_zero_expert_distance_gives_non_finite_loss(key):
  traj = toy_trajectories()
  batch = {"start": jnp.asarray(traj.params[0, 1])[None], "target": jnp.asarray(traj.params[0, 1])[None]}
  loss, _ = objectives.trajectory_matching(TinyMLP(), K, syn_steps=1).loss(toy_syn(), batch, key, ())
  assert not np.isfinite(float(loss))  # what distill.run stops on (the reference buffer.py bug)


def test_soft_labels_from_experts():
  x = jnp.asarray(np.eye(3, dtype=np.float32)[:, None, None, :])  # [3, 1, 1, 3]
  apply_fn = lambda w, im: im.reshape(im.shape[0], -1) @ w
  good, bad = jnp.eye(3, dtype=jnp.float32) * 2, jnp.roll(jnp.eye(3, dtype=jnp.float32), 1, axis=1)
  labels = np.array([0, 1, 2])
  np.testing.assert_allclose(objectives.soft_labels_from_experts(apply_fn, [good, bad], x),
                             (good + bad) / 2)
  np.testing.assert_allclose(objectives.soft_labels_from_experts(apply_fn, [good, bad], x, labels),
                             good)
  # No network right about any row: all networks averaged.
  np.testing.assert_allclose(objectives.soft_labels_from_experts(apply_fn, bad, x, labels), bad)


MULTI = textwrap.dedent("""
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  sys.path.insert(0, {tests!r})
  import jax, numpy as np, optax
  from test_trajectory import TinyMLP, toy_syn, toy_trajectories, K
  from jaxdistill import distill, objectives, parallel
  traj = toy_trajectories()
  obj = objectives.trajectory_matching(TinyMLP(), K, syn_steps=3, batch_syn=3)
  sampler = objectives.trajectory_sampler(traj, 2, 3, segments=2)
  tx = distill.optimizer(optax.sgd(100.0, momentum=0.5), log_lr=optax.sgd(1e-2))
  d = distill.Distiller(obj, tx, sampler, learn_lr=True)
  out = {{}}
  for n in (1, 2):
    s, h = distill.run(jax.random.key(0), toy_syn(), d, 2, progress=False, mesh=parallel.data_mesh(n))
    out[n] = (np.asarray(s.syn.images), [m["loss"] for m in h])
  np.testing.assert_allclose(out[1][0], out[2][0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out[1][1], out[2][1], rtol=1e-4)
  print("MATCH")
""")


@pytest.mark.slow
def test_two_devices_match_one_device():
  code = MULTI.format(tests=os.path.dirname(__file__))
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "MATCH" in r.stdout, r.stderr[-3000:]


def test_combined_augmentation_inside_the_unroll_routes_rows_by_group(key):
  """augment=(a0, a1) with groups: rows of group g get a_g in every unrolled step."""
  traj, syn = toy_trajectories(), toy_syn()
  batch = segment_batch(traj)
  shift = lambda k, x: x + 1.0   # stands for DSA (distilled rows)
  flip = lambda k, x: -x          # stands for crop+flip (frozen rows)
  loss = lambda **kw: float(objectives.trajectory_matching(TinyMLP(), K, syn_steps=3, batch_syn=2,
                                                           **kw).loss(syn, batch, key, ())[0])
  mask = np.array([True, False] * K)  # one distilled, one frozen row per class
  groups = partial_updates.augment_groups(mask)
  # All rows in one group: the same as that augmentation alone.
  np.testing.assert_allclose(loss(augment=(shift, flip), groups=np.zeros(N, np.int32)),
                             loss(augment=shift), rtol=1e-6)
  np.testing.assert_allclose(loss(augment=(shift, flip), groups=np.ones(N, np.int32)),
                             loss(augment=flip), rtol=1e-6)
  # Mixed: the same as augmenting the images by hand, row by row, with no augmentation in the unroll.
  by_hand = syn._replace(images=jnp.where(mask[:, None, None, None], syn.images + 1.0, -syn.images))
  mixed = loss(augment=(shift, flip), groups=groups)
  np.testing.assert_allclose(
      mixed, float(objectives.trajectory_matching(TinyMLP(), K, syn_steps=3, batch_syn=2).loss(
          by_hand, batch, key, ())[0]), rtol=1e-6)
  assert mixed != loss(augment=shift) and mixed != loss(augment=flip)
  with pytest.raises(ValueError, match="pass groups"):
    objectives.trajectory_matching(TinyMLP(), K, 3, augment=(shift, flip))
  with pytest.raises(ValueError, match=r"groups must lie in \[0, 2\)"):
    objectives.trajectory_matching(TinyMLP(), K, 3, augment=(shift, flip), groups=np.full(N, 2))
  with pytest.raises(ValueError, match="groups has 4 rows but the synthetic set has 6"):
    loss(augment=(shift, flip), groups=np.zeros(4, np.int32))
