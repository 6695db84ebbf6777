"""Expert trajectories: training, storage, exact resume, per-example scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import experts, objectives
import toys

K, HW = 3, 8


def TinyConv():
  return toys.TinyConv(num_classes=K, width=3)


def toy_data(n_per=7, seed=0):
  return toys.toy_data(seed, n_per, K, HW)


CFG = experts.ExpertConfig(epochs=3, batch_size=8, lr=0.05, momentum=0.5, weight_decay=5e-4,
                           augment="dsa")  # 21 rows: batches 8, 8, 5 (masked)


def test_forgetting_and_first_learned_on_hand_made_history():
  h = np.array([[1, 0, 0, 1, 1],   # after epoch 1
                [0, 0, 1, 1, 0],   # after epoch 2
                [1, 0, 1, 0, 1],   # after epoch 3
                [1, 0, 1, 1, 0]],  # after epoch 4
               bool)
  np.testing.assert_array_equal(experts.forgetting_counts(h), [1, 0, 0, 1, 2])
  np.testing.assert_array_equal(experts.first_learned_epoch(h), [3, 5, 2, 4, 5])  # 5 = never (E + 1)
  np.testing.assert_array_equal(experts.first_learned_epoch(np.ones((4, 2), bool)), [1, 1])
  with pytest.raises(ValueError, match=r"\[E, N\]"):
    experts.forgetting_counts(np.ones(3, bool))


@pytest.mark.slow
def test_train_saves_every_epoch_and_resumes_bit_identically(tmp_path, key):
  x, y = toy_data()
  straight = experts.train(key, (x, y), TinyConv(), str(tmp_path / "a"), num_experts=2, cfg=CFG,
                           progress=False)
  assert straight.params.shape == (2, 4, straight.num_params)  # E + 1 = 4 epochs saved
  for i in range(2):  # every saved epoch is a copy, not the final weights
    assert all(not np.array_equal(straight.params[i, e], straight.params[i, e + 1]) for e in range(3))
  assert not np.array_equal(straight.params[0], straight.params[1])

  resumed_dir = str(tmp_path / "b")
  experts.train(key, (x, y), TinyConv(), resumed_dir, num_experts=2, cfg=CFG._replace(epochs=2),
                progress=False)
  assert experts.load_trajectories(resumed_dir).num_epochs == 2
  resumed = experts.train(key, (x, y), TinyConv(), resumed_dir, num_experts=2, cfg=CFG,
                          progress=False)
  np.testing.assert_array_equal(resumed.params, straight.params)

  tree = experts.load_trajectory(resumed_dir, 1)
  assert jax.tree.leaves(tree)[0].shape[0] == 4
  np.testing.assert_array_equal(jax.flatten_util.ravel_pytree(
      jax.tree.map(lambda a: a[2], tree))[0], straight.params[1, 2])
  p = straight.params_at(1, 3)
  np.testing.assert_array_equal(jax.flatten_util.ravel_pytree(p)[0], straight.params[1, 3])

  for d in (str(tmp_path / "a"), resumed_dir):
    s = experts.load_expert_scores(d, 0)
    assert s["correct"].shape == (3, x.shape[0]) and s["correct"].dtype == bool
    np.testing.assert_array_equal(s["forgetting"], experts.forgetting_counts(s["correct"]))
    np.testing.assert_array_equal(s["first_learned"], experts.first_learned_epoch(s["correct"]))
  preds = TinyConv().apply({"params": p}, jnp.asarray(x), train=False).argmax(-1)
  np.testing.assert_array_equal(experts.load_expert_scores(resumed_dir, 1)["correct"][-1],
                                np.asarray(preds) == y)

  # A run asking for fewer epochs than the directory holds gets those epochs, trajectories and scores.
  shorter = experts.train(key, (x, y), TinyConv(), resumed_dir, num_experts=2,
                          cfg=CFG._replace(epochs=2), progress=False)
  np.testing.assert_array_equal(shorter.params, straight.params[:, :3])
  full = experts.load_expert_scores(resumed_dir, 0)
  two = experts.load_expert_scores(resumed_dir, 0, max_epoch=2)
  np.testing.assert_array_equal(two["correct"], full["correct"][:2])
  np.testing.assert_array_equal(two["forgetting"], experts.forgetting_counts(full["correct"][:2]))
  np.testing.assert_array_equal(two["first_learned"],
                                experts.first_learned_epoch(full["correct"][:2]))
  with pytest.raises(ValueError, match="recorded 3 epochs; asked for the scores of its first 4"):
    experts.load_expert_scores(resumed_dir, 0, max_epoch=4)


def test_an_expert_is_never_extended_on_other_data_or_an_unnamed_augmentation(tmp_path, key):
  """Extending a directory's experts with other images of the same shape would mix two trajectories:
  refused; so is a lambda augmentation, which two runs could not tell apart."""
  x, y = toy_data()
  d = str(tmp_path / "e")
  experts.train(key, (x, y), TinyConv(), d, cfg=CFG._replace(epochs=1), progress=False)
  with pytest.raises(ValueError, match="train_data"):
    experts.train(key, (x + 1.0, y), TinyConv(), d, cfg=CFG, progress=False)
  assert experts.load_trajectories(d).num_epochs == 1  # nothing written
  with pytest.raises(ValueError, match="no stable name"):
    experts.train(key, (x, y), TinyConv(), str(tmp_path / "l"),
                  cfg=CFG._replace(augment=lambda k, v: v), progress=False)


def test_errors_for_missing_or_short_trajectories(tmp_path, key):
  with pytest.raises(FileNotFoundError, match="No expert directory"):
    experts.load_trajectories(str(tmp_path / "nothing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no expert_"):
    experts.load_trajectories(str(tmp_path / "empty"))
  x, y = toy_data(n_per=3)
  d = str(tmp_path / "e")
  cfg = CFG._replace(epochs=2, augment="none", record_correct=False)
  traj = experts.train(key, (x, y), TinyConv(), d, cfg=cfg, progress=False)
  with pytest.raises(ValueError, match=r"2 epoch\(s\), too few for max_start_epoch=2 and "
                                       r"expert_epochs=2"):
    objectives.trajectory_sampler(traj, expert_epochs=2, max_start_epoch=2)
  objectives.trajectory_sampler(traj, expert_epochs=2, max_start_epoch=1)  # epochs 0 -> 2: fits
  with pytest.raises(ValueError, match="has 2 epoch"):
    experts.load_trajectory(d, 0, max_epoch=3)
  with pytest.raises(FileNotFoundError, match="No expert 5"):
    experts.load_trajectory(d, 5)
  with pytest.raises(FileNotFoundError, match="No correct.npy"):
    experts.load_expert_scores(d, 0)
  with pytest.raises(ValueError, match=r"(?s)another configuration.*lr"):
    experts.train(key, (x, y), TinyConv(), d, cfg=cfg._replace(lr=0.1), progress=False)
  with pytest.raises(ValueError, match="labels must be int"):
    experts.train(key, (x, y.astype(np.float32)), TinyConv(), d, cfg=cfg, progress=False)


def test_load_scores(tmp_path):
  good = np.linspace(0, 1, 5).astype(np.float64)
  np.save(tmp_path / "s.npy", good)
  np.testing.assert_allclose(experts.load_scores(str(tmp_path / "s.npy"), 5), good)
  assert experts.load_scores(str(tmp_path / "s.npy"), 5).dtype == np.float32
  np.savez(tmp_path / "c.npz", scores=good, labels=np.arange(5))
  np.testing.assert_allclose(experts.load_scores(str(tmp_path / "c.npz"), 5), good)
  with pytest.raises(ValueError, match="length 5, but the dataset has 6"):
    experts.load_scores(str(tmp_path / "s.npy"), 6)
  np.save(tmp_path / "nan.npy", np.array([0.0, np.nan, 1.0]))
  with pytest.raises(ValueError, match=r"1 NaN/inf value\(s\) \(first at index 1\)"):
    experts.load_scores(str(tmp_path / "nan.npy"), 3)
  np.save(tmp_path / "2d.npy", np.zeros((2, 3)))
  with pytest.raises(ValueError, match="must be 1-D"):
    experts.load_scores(str(tmp_path / "2d.npy"), 2)
  np.savez(tmp_path / "two.npz", a=good, b=good)
  with pytest.raises(ValueError, match="say which one with key="):
    experts.load_scores(str(tmp_path / "two.npz"), 5)
  with pytest.raises(FileNotFoundError, match="No score file"):
    experts.load_scores(str(tmp_path / "missing.npy"), 5)


def test_el2n_scores():
  x = jnp.asarray(np.eye(3, dtype=np.float32)[:, None, None, :])  # [3, 1, 1, 3]
  apply_fn = lambda w, im: im.reshape(im.shape[0], -1) @ w
  nets = [jnp.eye(3, dtype=jnp.float32) * 50, jnp.zeros((3, 3), jnp.float32)]
  y = np.array([0, 1, 0])
  got = experts.el2n_scores(apply_fn, nets, x, y, batch_size=2)
  uniform_err = np.linalg.norm(np.full(3, 1 / 3) - np.eye(3)[y], axis=1)  # zero net: uniform softmax
  confident_err = np.array([0.0, 0.0, np.sqrt(2.0)])  # row 2 is confidently class 2, labelled 0
  np.testing.assert_allclose(got, (uniform_err + confident_err) / 2, atol=1e-5)
