"""Fault injection and bad input: every silent-wrong-result case fails loudly, checkpoints are verified,
a resume is of the same run. Tiny models; the kill test runs the loop in a subprocess."""
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import distill, evaluate, kernels, objectives
from jaxdistill.checkpoint import Checkpointer, CheckpointMismatchError, CorruptCheckpointError
from jaxdistill.types import Dataset, SyntheticSet
import toys

K, IPC, P, HW = 3, 2, 4, 8


def toy_syn(seed=1):
  rng = np.random.default_rng(seed)
  return SyntheticSet(jnp.asarray(rng.normal(size=(K * IPC, HW, HW, 1)), jnp.float32),
                      jnp.repeat(jnp.arange(K, dtype=jnp.int32), IPC))


def make(method="dm", lr=0.1, **kw):
  x, y = toys.toy_data()
  if method == "dm":
    obj = objectives.distribution_matching(toys.TinyConv(), K)
  else:
    obj = objectives.gradient_matching(toys.TinyConv(), K, outer_loop=2, inner_loop=1)
  return distill.Distiller(obj, distill.optimizer(optax.sgd(lr, momentum=0.5), **kw),
                           distill.class_balanced_sampler(x, y, K, P))


@pytest.mark.parametrize("method", ["dm", "dc"])
def test_per_class_objectives_refuse_rows_that_are_not_class_major(method, key):
  syn = toy_syn()
  shuffled = syn._replace(labels=jnp.tile(jnp.arange(K, dtype=jnp.int32), IPC))  # 0,1,2,0,1,2
  with pytest.raises(ValueError, match="class-major"):
    distill.init_state(key, shuffled, make(method))


def test_learnable_leaves_come_from_the_optimizer_and_contradictions_are_refused(key):
  syn = toy_syn()._replace(log_lr=jnp.log(jnp.float32(0.01)))
  dm = make(log_lr=optax.sgd(1e-5))
  # DM and DC read only the images: a step size or labels optimizer would leave them as they are.
  with pytest.raises(ValueError, match="log_lr have an optimizer, but the objective 'dm' never reads"):
    distill.init_state(key, syn, dm)
  with pytest.raises(ValueError, match="labels have an optimizer, but the objective 'dc' never reads"):
    distill.learned_leaves(make("dc", labels=optax.sgd(1.0)))
  d = dm._replace(objective=dm.objective._replace(reads=("images", "labels", "log_lr")))
  assert distill.learned_leaves(d) == ("images", "log_lr")  # derived: the step size learns
  with pytest.raises(ValueError, match="log_lr= optimizer but learn_lr=False"):
    distill.init_state(key, syn, d._replace(learn_lr=False))
  with pytest.raises(ValueError, match="learn_labels=True but the optimizer has no labels="):
    distill.init_state(key, syn, d._replace(learn_labels=True))


def test_labels_and_class_counts_that_do_not_fit_the_objective_are_refused(key):
  """Out-of-range synthetic hard labels (a finite but meaningless loss), real labels beyond the
  objective's classes (all-zero KIP targets, DD's NaN read as divergence) and a per-class batch of
  another class count (an unreadable scan error) are refused, each naming the counts."""
  x, y = toys.toy_data()
  x5, y5 = toys.toy_data(num_classes=5)
  bad = toy_syn()._replace(labels=jnp.array([0, 0, 1, 1, 2, 5], jnp.int32))
  stateless = {"kip": objectives.kip(kernels.fc_kernel_fn("ntk", depth=1), K),
               "mtt": objectives.trajectory_matching(toys.TinyConv(), K, syn_steps=1),
               "dd": objectives.dataset_distillation(toys.TinyConv(), K, unroll_steps=2)}
  for name, obj in stateless.items():
    with pytest.raises(ValueError, match=r"Synthetic labels must lie in \[0, num_classes=3\); got range \[0, 5\]"):
      obj.init(key, bad)
    assert obj.init(key, toy_syn()) == ()
  with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=3\); got range \[0, 4\]"):
    distill.random_sampler(x5, y5, 6, num_classes=K)
  batch5 = distill.class_balanced_sampler(x5, y5, 5, P)
  for name in ("dm", "dc"):
    d = make(name)._replace(sampler=batch5)
    state = distill.init_state(key, toy_syn(), d)
    with pytest.raises(ValueError, match="real batch holds 5 classes .* num_classes=3"):
      distill.make_step(d)(state, distill.make_sample(d)(state))


def test_a_non_finite_optimizer_or_objective_state_stops_the_run_before_it_is_saved(tmp_path, key):
  """A state that overflows (an Adam moment, a diverged inner network) is not checkpointed as good:
  the run stops at that step, and the checkpoint before it holds finite values."""
  d = make()
  bad = d.objective._replace(init=lambda k, syn: jnp.zeros(()),
                             update=lambda st, syn, k: jnp.where(st >= 1, jnp.inf, st + 1.0))
  ck = str(tmp_path / "ck")
  with pytest.raises(distill.DivergenceError, match="Stopped at step 2: .*objective's state are not "
                                                    "finite.*step 1 .*smaller one"):
    distill.run(key, toy_syn(), d._replace(objective=bad), 4, checkpoint_dir=ck, checkpoint_every=1,
                progress=False)
  state = distill.init_state(key, toy_syn(), d._replace(objective=bad))
  got = Checkpointer(ck, None).restore(state)
  assert int(got.step) == 1 and float(got.obj_state) == 1.0


_REFUSED_THEN_HELD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import jax, test_guarantees as tg
    from jaxdistill import distill
    try:
      distill.run(jax.random.key(0), tg.toy_syn(), tg.make(), 1, checkpoint_dir={d!r}, progress=False)
    except ValueError as e:
      err = e  # kept alive, as a notebook keeps the last exception
      print("refused", flush=True)
    sys.stdin.readline()
""")


def test_a_refused_resume_releases_the_writer_lock(tmp_path, key):
  """``run`` refusing a directory (here: its checkpoint is past num_steps) releases the writer lock
  at once, even while the exception is still referenced."""
  d = str(tmp_path / "run")
  distill.run(key, toy_syn(), make(), 2, checkpoint_dir=d, progress=False)
  p = subprocess.Popen([sys.executable, "-c", _REFUSED_THEN_HELD.format(
      tests=os.path.dirname(__file__), d=d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert p.stdout.readline().strip() == "refused"
    Checkpointer(d, None).close()  # not "being written by process ..."
  finally:
    p.kill()
    p.wait()


@pytest.mark.parametrize("tx", [optax.sgd(-0.1), optax.adam(-0.01)])
def test_negative_learning_rate_is_refused(tx, key):
  d = make()._replace(tx=distill.optimizer(tx))
  with pytest.raises(ValueError, match="uphill"):
    distill.init_state(key, toy_syn(), d)


def test_bad_arguments_name_the_problem(tmp_path, key):
  x, y = toys.toy_data()
  with pytest.raises(ValueError, match="per_class must be an integer >= 1; got 0"):
    distill.class_balanced_sampler(x, y, K, 0)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=3\).*-1"):
    distill.class_balanced_sampler(x, np.where(y == 0, -1, y), K, 2)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=2\)"):
    distill.class_balanced_sampler(x, y, 2, 2)
  # Images and labels of different lengths would be paired wrongly (JAX clamps the indices).
  with pytest.raises(ValueError, match=rf"Real labels must be int \[N={len(y)}\] class ids; got "
                                       rf"int\d+ \({len(y) - 3},\)"):
    distill.class_balanced_sampler(x, y[:-3], K, 2)
  with pytest.raises(ValueError, match=rf"Real labels must be int \[N={len(y) - 3}\]"):
    distill.random_sampler(x[:-3], y, 4)
  for kw, msg in (({"keep": 0}, "keep must be an integer >= 1; got 0"),
                  ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1; got 0")):
    with pytest.raises(ValueError, match=msg):
      distill.run(key, toy_syn(), make(), 2, checkpoint_dir=str(tmp_path / "c"), progress=False, **kw)


def test_nan_soft_labels_and_step_size_are_refused_by_evaluation(key):
  x, y = toys.toy_data()
  data = Dataset("toy", x, y, x, y, K, ("0", "1", "2"), (0.0,), (1.0,))
  soft = jnp.full((K * IPC, K), jnp.nan, jnp.float32)
  with pytest.raises(ValueError, match="Soft labels contain NaN"):
    evaluate.accuracy(key, toy_syn()._replace(labels=soft), data, model=toys.TinyConv(), num_seeds=1,
                      cfg=evaluate.EvalConfig(epochs=1, augment="none"))
  with pytest.raises(ValueError, match="step size"):
    evaluate.accuracy(key, toy_syn()._replace(log_lr=jnp.float32(jnp.nan)), data, model=toys.TinyConv(),
                      num_seeds=1, cfg=evaluate.EvalConfig(epochs=1, augment="none"))


def test_finite_divergence_stops_with_the_checkpoint_intact(tmp_path, key):
  """Image lr 1e12: the loss stays finite (instance-norm-like invariance) but the images explode."""
  ckpt = str(tmp_path / "ck")
  with pytest.raises(distill.DivergenceError, match=r"magnitude .* above the bound .*Guard.image_bound"):
    distill.run(key, toy_syn(), make(lr=1e12), 10, checkpoint_dir=ckpt, checkpoint_every=100,
                progress=False)
  # No checkpoint of a diverged state was written.
  assert Checkpointer(ckpt).latest_step() is None
  # The loss guard, opt-in.
  d = make()
  dm = d.objective
  bad = d._replace(objective=dm._replace(
      init=lambda k, s: jnp.zeros((), jnp.int32), update=lambda c, s, k: c + 1,
      loss=lambda syn, b, k, c, axis_name=None: _jump(dm.loss(syn, b, k, (), axis_name)[0], c)))
  with pytest.raises(distill.DivergenceError, match="step 4: the loss .* exceeds 1000 times"):
    distill.run(key, toy_syn(), bad, 6, progress=False, log_every=1,
                guard=distill.Guard(loss_factor=1e3))


def _jump(loss, count):
  """The loss a millionfold from the fourth step on, with unchanged gradients."""
  return loss + jax.lax.stop_gradient(loss * jnp.where(count >= 3, 1e6 - 1.0, 0.0)), {}


def _array_files(ckpt_dir, step):
  files = [f for f in glob.glob(os.path.join(ckpt_dir, str(step), "state", "**", "*"), recursive=True)
           if os.path.isfile(f)]
  return sorted(files, key=os.path.getsize)


@pytest.mark.parametrize("fault", ["bitflip", "truncate"])
def test_corrupt_latest_checkpoint_is_detected_and_the_run_resumes_from_the_verified_one(
    fault, tmp_path, key):
  d = make()
  ref, _ = distill.run(key, toy_syn(), d, 4, progress=False)
  ckpt = str(tmp_path / "ck")
  distill.run(key, toy_syn(), d, 4, checkpoint_dir=ckpt, checkpoint_every=2, progress=False)
  biggest = _array_files(ckpt, 4)[-1]
  raw = bytearray(open(biggest, "rb").read())
  if fault == "bitflip":
    raw[len(raw) // 2] ^= 0x10
  else:
    raw = raw[:len(raw) // 2]
  open(biggest, "wb").write(bytes(raw))
  like = distill.init_state(key, toy_syn(), d)
  with pytest.raises(CorruptCheckpointError, match="step 4"):
    Checkpointer(ckpt).restore(like, step=4)
  with pytest.warns(RuntimeWarning, match=r"step 4 .*(corrupt|could not be read)"):
    state, hist = distill.run(key, toy_syn(), d, 4, checkpoint_dir=ckpt, checkpoint_every=2,
                              progress=False)
  assert [h["step"] for h in hist] == [3, 4]  # resumed from step 2
  np.testing.assert_array_equal(np.asarray(state.syn.images), np.asarray(ref.syn.images))
  assert os.path.isdir(os.path.join(ckpt, "4.corrupt"))  # kept aside for inspection


def _write_legacy_step(directory, step, tree):
  """A step as earlier versions of the library wrote it: one orbax item, no checksums."""
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(directory)
  mngr.save(step, args=ocp.args.StandardSave(tree))
  mngr.wait_until_finished()
  mngr.close()


def test_legacy_checkpoint_is_refused_until_adopted_then_restores_exactly(tmp_path, key):
  d = str(tmp_path / "ck")
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "key": jax.random.key(3),
          "step": np.int32(7)}
  ck = Checkpointer(d, {"run": 1})
  _write_legacy_step(d, 5, jax.tree.map(lambda x: jax.random.key_data(x)
                                        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
                                        tree))
  ck = Checkpointer(d, {"run": 1})
  with pytest.raises(CorruptCheckpointError, match="adopt_legacy"):
    ck.restore(tree)
  wrong = dict(tree, w=np.zeros((3, 3), np.float32))
  with pytest.raises(CorruptCheckpointError, match="step 5"):
    ck.adopt_legacy(wrong)
  assert ck.all_steps() == [5] and not os.path.exists(os.path.join(d, "5.legacy"))
  assert ck.adopt_legacy(tree) == [5]
  assert ck.adopt_legacy(tree) == []  # once
  got = Checkpointer(d, {"run": 1}).restore(tree)
  np.testing.assert_array_equal(got["w"], tree["w"])
  np.testing.assert_array_equal(jax.random.key_data(got["key"]), jax.random.key_data(tree["key"]))
  assert int(got["step"]) == 7
  assert os.path.isdir(os.path.join(d, "5.legacy"))  # the original is kept


def test_restoring_into_another_structure_is_a_usage_error_not_corruption(tmp_path):
  """A ``like`` with other shapes or dtypes names the arrays that differ; no step is reported corrupt,
  moved aside or replaced by an older one."""
  d = str(tmp_path / "ck")
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(7)}
  ck = Checkpointer(d, {"run": 1}, save_every=1)
  for s in (1, 2):
    ck.save(s, tree, force=True)
  ck.close()
  ck = Checkpointer(d, {"run": 1})
  for wrong, shown in ((dict(tree, w=tree["w"].astype(np.float16)), "float16"),
                       (dict(tree, w=np.zeros((3, 3), np.float32)), r"\(3, 3\)")):
    with pytest.raises(CheckpointMismatchError, match=rf"step 2 .*\n  w: stored \(\(2, 3\), "
                                                      rf"dtype\('float32'\)\), expected .*{shown}"):
      ck.restore(wrong)
  assert ck.all_steps() == [1, 2] and not glob.glob(os.path.join(d, "*.corrupt*"))
  np.testing.assert_array_equal(ck.restore(tree)["w"], tree["w"])


_OTHER_TOPOLOGY = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp
    from jaxdistill.checkpoint import Checkpointer
    dev = jax.devices()[1]  # a device this test's process does not have
    for epoch in (0, 1):
      tree = {{"variables": {{"params": {{"w": jax.device_put(jnp.full((2, 3), float(epoch)), dev)}}}},
              "step": jax.device_put(jnp.int32(epoch), dev)}}
      ck = Checkpointer({d!r}, {{"run": 1}}, save_every=1)
      ck.save(epoch, tree, force=True)
      ck.close()
""")


def test_checkpoints_written_on_other_devices_restore_here(tmp_path):
  """A checkpoint records the devices that wrote it (a CPU run resumed on a GPU, another device
  count): both the template restore and the template-free expert reader place it on this machine."""
  from jaxdistill import experts
  d = str(tmp_path / "experts" / "expert_0")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  r = subprocess.run([sys.executable, "-c", _OTHER_TOPOLOGY.format(d=d)], env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert len(jax.devices()) == 1
  like = {"variables": {"params": {"w": np.zeros((2, 3), np.float32)}}, "step": np.int32(0)}
  got = Checkpointer(d, {"run": 1}).restore(like, 1)
  np.testing.assert_array_equal(np.asarray(got["variables"]["params"]["w"]), np.ones((2, 3)))
  assert int(got["step"]) == 1
  traj = experts.load_trajectory(str(tmp_path / "experts"), 0)
  np.testing.assert_array_equal(traj["w"], np.stack([np.zeros((2, 3)), np.ones((2, 3))]))


def test_resume_checks_the_run_identity_without_a_config(tmp_path, key):
  ckpt = str(tmp_path / "ck")
  d = make()
  distill.run(key, toy_syn(), d, 2, checkpoint_dir=ckpt, progress=False)
  with pytest.raises(ValueError, match="(?s)another run identity.*key"):
    distill.run(jax.random.key(5), toy_syn(), d, 3, checkpoint_dir=ckpt, progress=False)
  with pytest.raises(ValueError, match="(?s)another run identity.*optimizer_probe"):
    distill.run(key, toy_syn(), make(lr=0.2), 3, checkpoint_dir=ckpt, progress=False)
  with pytest.raises(ValueError, match="at step 2, past num_steps=1"):
    distill.run(key, toy_syn(), d, 1, checkpoint_dir=ckpt, progress=False)
  # Extending the run is allowed and equals the uninterrupted longer run.
  state, hist = distill.run(key, toy_syn(), d, 4, checkpoint_dir=ckpt, progress=False)
  ref, _ = distill.run(key, toy_syn(), d, 4, progress=False)
  assert [h["step"] for h in hist] == [3, 4]
  np.testing.assert_array_equal(np.asarray(state.syn.images), np.asarray(ref.syn.images))


def test_a_corrupt_expert_epoch_is_refused_by_the_trajectory_reader(tmp_path):
  from jaxdistill import experts
  d = str(tmp_path / "experts" / "expert_0")
  w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
  ck = Checkpointer(d, {"run": 1}, save_every=1)
  for epoch in (0, 1):
    ck.save(epoch, {"variables": {"params": {"w": w + epoch}}, "step": np.int32(epoch)}, force=True)
  ck.close()
  traj = experts.load_trajectory(str(tmp_path / "experts"), 0)
  np.testing.assert_array_equal(traj["w"], np.stack([w, w + 1]))
  biggest = _array_files(d, 1)[-1]
  raw = bytearray(open(biggest, "rb").read())
  raw[len(raw) // 2] ^= 0x10
  open(biggest, "wb").write(bytes(raw))
  with pytest.raises(CorruptCheckpointError, match="step 1 "):
    experts.load_trajectory(str(tmp_path / "experts"), 0)


def test_extending_an_expert_whose_last_epoch_is_corrupt_retrains_it(tmp_path, key):
  """The corrupt newest epoch is reported, moved aside and trained again from the one before, so the
  extended expert equals one trained straight through."""
  from jaxdistill import experts
  x, y = toys.toy_data()
  cfg = experts.ExpertConfig(epochs=2, batch_size=8, augment="none", record_correct=False)
  straight = experts.train(key, (x, y), toys.TinyConv(), str(tmp_path / "a"),
                           cfg=cfg._replace(epochs=3), progress=False)
  d = str(tmp_path / "b")
  experts.train(key, (x, y), toys.TinyConv(), d, cfg=cfg, progress=False)
  biggest = _array_files(os.path.join(d, "expert_0"), 2)[-1]
  raw = bytearray(open(biggest, "rb").read())
  raw[len(raw) // 2] ^= 0x10
  open(biggest, "wb").write(bytes(raw))
  with pytest.warns(RuntimeWarning, match="step 2 .*Trying the previous checkpoint"):
    again = experts.train(key, (x, y), toys.TinyConv(), d, cfg=cfg._replace(epochs=3), progress=False)
  np.testing.assert_array_equal(again.params, straight.params)
  assert glob.glob(os.path.join(d, "expert_0", "2.corrupt*"))


def test_identity_measurements_tolerate_another_devices_rounding_only(tmp_path):
  """The optimizer probe as a GPU measured it (a std of 7.45e-9 where the CPU gets 0) resumes on the
  CPU; another optimizer, another key or another shape is still refused."""
  d = str(tmp_path / "ck")
  ident = {"key": [0, 1], "optimizer_probe": {"images": [-0.1, 7.45058e-09]},
           "synthetic": {"images": [[10, 8, 8, 1], "float32"]}}
  Checkpointer(d, {"run": 1}, identity=ident)
  Checkpointer(d, {"run": 1}, identity=dict(ident, optimizer_probe={"images": [-0.1, 0.0]}))
  for other, what in ((dict(ident, optimizer_probe={"images": [-0.1001, 0.0]}), "optimizer_probe"),
                      (dict(ident, key=[0, 2]), "key"),
                      (dict(ident, synthetic={"images": [[10, 8, 8, 3], "float32"]}), "synthetic")):
    with pytest.raises(ValueError, match=f"(?s)another run identity.*{what}"):
      Checkpointer(d, {"run": 1}, identity=other)


_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import jax
    from jaxdistill import distill
    import test_guarantees as t
    def slow(step, syn):
      time.sleep(0.05)
    distill.run(jax.random.key(0), t.toy_syn(), t.make(), 400, checkpoint_dir={ckpt!r},
                checkpoint_every=1, keep=2, progress=False, on_images=slow, image_every=1)
""")


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_identical(tmp_path):
  """SIGKILL a child mid-run (between steps or inside a checkpoint write) twice; resuming finishes with
  exactly the uninterrupted result."""
  ckpt = str(tmp_path / "ck")
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  script = _CHILD.format(tests=tests_dir, ckpt=ckpt)
  rng = np.random.default_rng(0)
  done = 0
  for _ in range(2):
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tests_dir)
    deadline = time.time() + 120
    while time.time() < deadline:
      steps = [int(n) for n in os.listdir(ckpt) if n.isdigit()] if os.path.isdir(ckpt) else []
      if steps and max(steps) >= done + 3:
        done = max(steps)
        break
      time.sleep(0.05)
    time.sleep(float(rng.uniform(0.0, 0.5)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  d = make()
  key = jax.random.key(0)
  assert 0 < done < 60
  state, _ = distill.run(key, toy_syn(), d, 60, checkpoint_dir=ckpt, checkpoint_every=1, keep=2,
                         progress=False)
  ref, _ = distill.run(key, toy_syn(), d, 60, progress=False)
  np.testing.assert_array_equal(np.asarray(state.syn.images), np.asarray(ref.syn.images))


_HOST = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from jaxdistill import parallel
    parallel.initialize("127.0.0.1:{port}", 2, int(sys.argv[1]))
    import numpy as np
    from jaxdistill import distill
    import test_guarantees as t
    assert jax.process_count() == 2 and jax.device_count() == 2
    state, _ = distill.run(jax.random.key(0), t.toy_syn(), t.make(), 3, progress=False,
                           checkpoint_dir={ckpt!r}, checkpoint_every=1)
    if jax.process_index() == 0:
      np.save({out!r}, np.asarray(state.syn.images))
""")


@pytest.mark.slow
def test_two_processes_on_localhost_match_one_and_their_checkpoint_resumes_in_one(tmp_path):
  """jax.distributed over two CPU processes (gloo collectives), one device each: the same run as one
  process to ~1e-6 per step (the same tolerance as the fake-device test), and the checkpoint the two
  wrote resumes in a single process."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  ckpt, out = str(tmp_path / "ck"), str(tmp_path / "out.npy")
  script = _HOST.format(tests=tests_dir, port=port, ckpt=ckpt, out=out)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=tests_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  logs = [p.communicate(timeout=300)[0].decode()[-2000:] for p in procs]
  assert all(p.returncode == 0 for p in procs), logs
  key = jax.random.key(0)
  one, _ = distill.run(key, toy_syn(), make(), 3, progress=False)
  np.testing.assert_allclose(np.load(out), np.asarray(one.syn.images), rtol=1e-5, atol=1e-5)
  resumed, hist = distill.run(key, toy_syn(), make(), 4, checkpoint_dir=ckpt, progress=False)
  assert [h["step"] for h in hist] == [4]
  assert np.all(np.isfinite(np.asarray(resumed.syn.images)))


def test_trim_after_compiles_releases_after_each_compilation_and_only_inside_the_block():
  from jaxdistill import host
  calls = []
  f = jax.jit(lambda x: jnp.sin(x) * 3.0)
  with host.trim_after_compiles(lambda: calls.append(1)):
    f(np.ones(5, np.float32))  # compiles
    f(np.ones(5, np.float32))  # cached: no compilation
    f(np.ones(6, np.float32))  # a new shape compiles again
  assert len(calls) == 2
  f(np.ones(7, np.float32))
  assert len(calls) == 2  # the listener is gone after the block
  if sys.platform.startswith("linux"):  # glibc
    assert host.release_freed_memory()


def test_read_verified_reads_and_checks_only_the_part_asked_for(tmp_path):
  """``read_verified`` restores one part of a step's state and checks it against its own checksums:
  a bad checksum elsewhere in the state does not concern it (a full restore refuses it), a bad one in
  the part does, naming the array."""
  from jaxdistill.checkpoint import read_verified
  d = str(tmp_path / "ck")
  tree = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "opt": {"m": jnp.ones(4)}}
  ck = Checkpointer(d, {"run": 1}, save_every=1)
  ck.save(0, tree, force=True)
  ck.close()
  [got] = read_verified(d, [0], ("params",))
  assert set(got) == {"w"}
  np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(tree["params"]["w"]))
  sums_file = os.path.join(d, "0", "checksums", "metadata")  # orbax's JSON item file

  def tamper(name):
    sums = json.load(open(sums_file))
    sums[name] = "0" * 32
    json.dump(sums, open(sums_file, "w"))

  tamper("['opt']['m']")
  read_verified(d, [0], ("params",))
  with pytest.raises(CorruptCheckpointError, match=r"\['opt'\]\['m'\]"):
    Checkpointer(d, {"run": 1}).restore(tree, step=0)
  tamper("['params']['w']")
  with pytest.raises(CorruptCheckpointError, match=r"step 0 .*\['params'\]\['w'\]"):
    read_verified(d, [0], ("params",))
  with pytest.raises(CorruptCheckpointError, match="step 0 .*could not be read"):
    read_verified(d, [0], ("no_such_part",))


_HOLD = textwrap.dedent("""
    import sys, time
    from jaxdistill.checkpoint import Checkpointer
    ck = Checkpointer({d!r}, {{"run": 1}})
    print("holding", flush=True)
    time.sleep(60)
""")


def test_a_second_process_cannot_write_a_run_being_written(tmp_path):
  """While one process holds a run's Checkpointer, another is refused (naming the holder) instead of
  writing or pruning the same checkpoints; once the first ends, the run opens again."""
  d = str(tmp_path / "run")
  p = subprocess.Popen([sys.executable, "-c", _HOLD.format(d=d)], stdout=subprocess.PIPE, text=True)
  try:
    assert p.stdout.readline().strip() == "holding"
    with pytest.raises(RuntimeError, match=f"being written by process {p.pid}"):
      Checkpointer(d, {"run": 1})
  finally:
    p.kill()
    p.wait()
  ck = Checkpointer(d, {"run": 1})
  ck.close()
  Checkpointer(d, {"run": 1}).close()  # closing released the lock
