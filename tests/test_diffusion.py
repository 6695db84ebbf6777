"""Diffusion model, Gaussian process, Minimax memories and criteria, DiffFit fine-tuning, sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import diffusion as dfn
from jaxdistill.diffusion import gaussian, minimax
from jaxdistill.types import SyntheticSet

K, HW = 3, 8
# optax's Adam bias correction mixes int and float: steps run under standard promotion (as elsewhere)
adam_promotion = lambda: jax.numpy_dtype_promotion("standard")


@pytest.fixture(scope="module")
def tiny():
  """A 1-block DiT on 8x8x1 images (4 tokens), its parameters and a toy set in [-1, 1]."""
  model = dfn.DiT(K, patch=4, width=16, depth=2, heads=2, mlp_ratio=2.0, label_dropout=0.1)
  params = dfn.init_params(jax.random.key(0), model, (HW, HW, 1))
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(K), 16).astype(np.int32)
  # class c: a bright c-th horizontal band on a dark background, plus a little noise
  x = -np.ones((y.size, HW, HW, 1), np.float32)
  for i, c in enumerate(y):
    x[i, 3 * c:3 * c + 2] = 1.0
  x += 0.05 * rng.normal(size=x.shape).astype(np.float32)
  return model, params, {"images": jnp.asarray(x), "labels": jnp.asarray(y)}


def test_schedule_and_q_sample_match_closed_form(key):
  s = dfn.make_schedule(100, "linear")
  betas = np.linspace(1e-3, 0.2, 100)
  np.testing.assert_allclose(s.betas, betas, rtol=1e-5)
  abar = np.cumprod(1 - betas)
  np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-5)
  x0 = jax.random.normal(key, (4, 2, 2, 1))
  noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
  t = jnp.array([0, 10, 50, 99], jnp.int32)
  got = gaussian.q_sample(s, x0, t, noise)
  a = abar[np.asarray(t)][:, None, None, None]
  np.testing.assert_allclose(got, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-5, atol=1e-6)
  cos = dfn.make_schedule(50, "cosine")
  assert np.all(np.diff(np.asarray(cos.alphas_cumprod)) < 0) and float(cos.betas.max()) <= 0.999 + 1e-6


def test_ddim_and_ddpm_updates_match_closed_forms(key):
  x_t, eps, noise = (jax.random.normal(jax.random.fold_in(key, i), (3, 4)) for i in range(3))
  a_t, a_prev = 0.3, 0.6
  x0 = (np.asarray(x_t) - np.sqrt(1 - a_t) * np.asarray(eps)) / np.sqrt(a_t)
  ddim = gaussian.ddim_step(x_t, eps, jnp.float32(a_t), jnp.float32(a_prev), noise, eta=0.0)
  np.testing.assert_allclose(ddim, np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * np.asarray(eps),
                             rtol=1e-5, atol=1e-5)
  # eta = 1: DDPM's posterior q(x_prev | x_t, x0) with beta_t = 1 - a_t / a_prev
  beta = 1 - a_t / a_prev
  mean = (np.sqrt(a_prev) * beta / (1 - a_t) * x0
          + np.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * np.asarray(x_t))
  var = (1 - a_prev) / (1 - a_t) * beta
  ddpm = gaussian.ddim_step(x_t, eps, jnp.float32(a_t), jnp.float32(a_prev), noise, eta=1.0)
  np.testing.assert_allclose(ddpm, mean + np.sqrt(var) * np.asarray(noise), rtol=1e-4, atol=1e-5)
  # the last step (a_prev = 1) returns the predicted clean image
  last = gaussian.ddim_step(x_t, eps, jnp.float32(a_t), jnp.float32(1.0), noise, eta=1.0)
  np.testing.assert_allclose(last, x0, rtol=1e-5, atol=1e-5)
  assert list(gaussian.spaced_timesteps(1000, 5)) == [999, 749, 500, 250, 0]


def _fixed_loss(model, params, s, arrays, key):
  return float(gaussian.loss(s, dfn.train.eps_fn(model, params), arrays["images"],
                             arrays["labels"], key)[0])


def test_memories_are_per_class_ring_buffers():
  buf = jnp.zeros((2, 3, 1), jnp.float32)
  pos = count = jnp.zeros((2,), jnp.int32)
  items = lambda *v: jnp.asarray(v, jnp.float32)[:, None]
  buf, pos, count = minimax.push(buf, pos, count, items(1, 2), jnp.array([0, 0], jnp.int32))
  assert buf[0, :, 0].tolist() == [1, 2, 0] and count.tolist() == [2, 0] and pos.tolist() == [2, 0]
  buf, pos, count = minimax.push(buf, pos, count, items(3, 4, 10), jnp.array([0, 0, 1], jnp.int32))
  # class 0 was full: its oldest (1) was replaced by 4; class 1 untouched by class 0's writes
  assert buf[0, :, 0].tolist() == [4, 2, 3] and buf[1, :, 0].tolist() == [10, 0, 0]
  assert count.tolist() == [3, 1] and pos.tolist() == [1, 1]
  # more than M items of a class in one batch: only the last M stay, oldest slot first overwritten
  buf, pos, count = minimax.push(buf, pos, count, items(5, 6, 7, 8), jnp.zeros((4,), jnp.int32))
  assert sorted(buf[0, :, 0].tolist()) == [6, 7, 8] and count.tolist() == [3, 1]
  assert buf[0, (int(pos[0]) - 1) % 3, 0] == 8  # newest just before the write position
  mem = minimax.update(dfn.init_memory(2, 3, 4), jnp.ones((2, 2, 2)), 2 * jnp.ones((2, 2, 2)),
                       jnp.array([1, 1], jnp.int32))
  assert mem.real[1, :2].tolist() == [[1.0] * 4] * 2 and mem.fake[1, :2].tolist() == [[2.0] * 4] * 2
  assert mem.count.tolist() == [0, 2]


def _np_terms(p, y, real, fake, count, lp, ln):
  cos = lambda a, b: (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None]
  classes = sorted(set(y.tolist()))
  pos = neg = 0.0
  for c in classes:
    if count[c] == 0:
      continue
    pc = p[y == c]
    pos += (1 - cos(pc, real[c, :count[c]]).min()) * lp / len(classes)
    neg += cos(pc, fake[c, :count[c]]).max() * ln / len(classes)
  return pos, neg


def test_minimax_terms_match_numpy(key):
  rng = np.random.default_rng(3)
  kk, m, d = 4, 5, 6
  real = rng.normal(size=(kk, m, d)).astype(np.float32)
  fake = rng.normal(size=(kk, m, d)).astype(np.float32)
  count = np.array([5, 2, 0, 3], np.int32)  # class 2 present but empty; class 3 absent
  y = np.array([0, 1, 0, 2, 1, 1, 0], np.int32)
  p = rng.normal(size=(y.size, 2, 3)).astype(np.float32)  # flattened to D = 6
  # stale items beyond the fill count must be ignored: make them the most / least similar
  real[1, 2:] = -p[y == 1].reshape(-1, 6).mean(0)
  fake[1, 2:] = p[y == 1].reshape(-1, 6).mean(0)
  mem = minimax.Memory(jnp.asarray(real), jnp.asarray(fake), jnp.zeros((kk,), jnp.int32),
                       jnp.asarray(count))
  pos, neg = minimax.terms(jnp.asarray(p), jnp.asarray(y), mem, 0.002, 0.008)
  want_pos, want_neg = _np_terms(p.reshape(y.size, -1), y, real, fake, count, 0.002, 0.008)
  assert float(pos) == pytest.approx(want_pos, rel=1e-5)
  assert float(neg) == pytest.approx(want_neg, rel=1e-5)
  g = jax.grad(lambda q: sum(minimax.terms(q, jnp.asarray(y), mem, 0.002, 0.008)))(jnp.asarray(p))
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  assert np.all(np.asarray(g)[y == 2] == 0)  # the empty class contributes nothing
  empty = minimax.terms(jnp.asarray(p), jnp.asarray(y), dfn.init_memory(kk, m, d), 1.0, 1.0)
  assert [float(v) for v in empty] == [0.0, 0.0]


def _pretrained(params):
  """A stand-in for pretrained weights: the zero-initialized layers would block most gradients."""
  rng = np.random.default_rng(9)
  return jax.tree.map(lambda x: jnp.asarray(x + 0.1 * rng.normal(size=x.shape).astype(np.float32)),
                      params)


def _ft_state(model, params, tx, mem=True):
  memory = dfn.init_memory(K, 8, HW * HW) if mem else None
  return dfn.init_state(jax.random.key(5), params, tx, memory)


# the tests of the `finetuned` fixture run in one pytest-xdist worker, which builds it once
FINETUNED = pytest.mark.xdist_group("finetuned")


@pytest.fixture(scope="module")
def finetuned(tiny):
  """Three trainings (3 steps each) of the same stand-in pretrained weights: the plain diffusion loss
  and Minimax with lambdas 0 (all parameters, Adam), and Minimax with lambdas 0.5 (DiffFit subset)."""
  model, params, arrays = tiny
  params = _pretrained(params)
  s = dfn.make_schedule(100)
  # eps=1e-3: Adam's normalization would turn last-bit differences of near-zero gradients (the two
  # graphs fuse differently) into visible parameter differences
  tx_all = dfn.trainable_tx(optax.adam(3e-3, eps=1e-3), params, ("",))
  tx = dfn.difffit_tx(params)
  steps = {"plain": dfn.make_step(model, s, tx_all, 12),
           "zero": dfn.make_step(model, s, tx_all, 12, mm=dfn.MinimaxConfig(0.0, 0.0, 8)),
           "minimax": dfn.make_step(model, s, tx, 12, mm=dfn.MinimaxConfig(0.5, 0.5, 8))}
  txs = {"plain": tx_all, "zero": tx_all, "minimax": tx}
  states = {n: _ft_state(model, params, txs[n], n != "plain") for n in steps}
  metrics = {}
  with adam_promotion():
    for _ in range(3):
      for n, step in steps.items():
        states[n], metrics[n] = step(states[n], arrays)
  return dict(params=params, tx=tx, txs=txs, steps=steps, states=states, metrics=metrics,
              arrays=arrays)


@pytest.mark.slow
@FINETUNED
def test_zero_lambdas_equal_plain_diffusion_step(finetuned):
  a, b = (finetuned["states"][n] for n in ("plain", "zero"))
  # equal up to float reassociation (the graphs differ by the zero-weighted terms)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a.params, b.params)
  m = finetuned["metrics"]
  assert float(m["plain"]["loss"]) == pytest.approx(float(m["zero"]["loss"]), rel=1e-6)
  assert b.memory.count.tolist() == [8, 8, 8]  # 36 items went in: every class's 8 slots are full
  assert float(m["minimax"]["pos"]) > 0 and float(m["minimax"]["neg"]) > 0
  # the tolerance is far below a step's effect: one more plain step moves parameters by more
  with adam_promotion():
    a2, _ = finetuned["steps"]["plain"](jax.tree.map(jnp.copy, a), tiny_arrays(finetuned))
  moved = max(float(jnp.abs(u - v).max()) for u, v in zip(jax.tree.leaves(a.params),
                                                          jax.tree.leaves(a2.params)))
  assert moved > 1e-3


def tiny_arrays(finetuned):
  return finetuned["arrays"]


@pytest.mark.slow
@FINETUNED
def test_training_loss_falls_on_toy_set(tiny, finetuned):
  model, params, arrays = tiny
  s = dfn.make_schedule(100)
  step = finetuned["steps"]["plain"]  # all parameters, Adam
  state = _ft_state(model, params, finetuned["txs"]["plain"], mem=False)
  probe = jax.random.key(7)
  before = _fixed_loss(model, state.params, s, arrays, probe)
  with adam_promotion():
    for _ in range(40):
      state, _ = step(state, arrays)
  after = _fixed_loss(model, state.params, s, arrays, probe)
  assert before == pytest.approx(1.0, abs=0.2)  # zero-initialized output: predicts eps = 0
  assert after < 0.75 * before


@pytest.mark.slow
@FINETUNED
def test_only_difffit_subset_changes(finetuned):
  params, state = finetuned["params"], finetuned["states"]["minimax"]
  changed = {dfn.train.path_name(p): bool(np.any(np.asarray(u) != np.asarray(v)))
             for (p, u), v in zip(jax.tree_util.tree_leaves_with_path(params),
                                  jax.tree.leaves(state.params))}
  trainable = {n for n in changed if any(k in n for k in dfn.train.DIFFFIT)}
  assert {"y_embed/embedding", "block0/gamma1", "block0/attn/query/bias"} <= trainable
  assert not any("gamma" in n for n in changed if n.startswith("block1"))  # gammas: first half only
  assert "block0/mlp_in/kernel" not in trainable and "x_embed/kernel" not in trainable
  assert not any(changed[n] for n in changed if n not in trainable)
  assert all(changed[n] for n in trainable)


@pytest.mark.slow
@FINETUNED
def test_resume_is_exact(tiny, finetuned, tmp_path):
  model, _, arrays = tiny
  params, tx, step = finetuned["params"], finetuned["tx"], finetuned["steps"]["minimax"]
  d = str(tmp_path / "ckpt")
  with adam_promotion():
    full, _ = dfn.run(_ft_state(model, params, tx), step, arrays, 4, progress=False)
    dfn.run(_ft_state(model, params, tx), step, arrays, 2, checkpoint_dir=d, checkpoint_every=2,
            progress=False, config={"a": 1})
    resumed, info = dfn.run(_ft_state(model, params, tx), step, arrays, 4, checkpoint_dir=d,
                            checkpoint_every=2, progress=False, config={"a": 1})
  assert info["resumed_from"] == 2 and info["steps_run"] == 2
  for u, v in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
      u, v = jax.random.key_data(u), jax.random.key_data(v)
    np.testing.assert_array_equal(u, v)


@pytest.mark.slow
def test_sampling_is_deterministic_and_class_major(tiny):
  model, params, _ = tiny
  s = dfn.make_schedule(100)
  kw = dict(sample_steps=4, cfg_scale=2.0, batch_size=4)
  a = dfn.synthesize(jax.random.key(3), model, params, s, 2, (HW, HW, 1), (0.5,), (0.5,), **kw)
  b = dfn.synthesize(jax.random.key(3), model, params, s, 2, (HW, HW, 1), (0.5,), (0.5,), **kw)
  c = dfn.synthesize(jax.random.key(4), model, params, s, 2, (HW, HW, 1), (0.5,), (0.5,), **kw)
  assert isinstance(a, SyntheticSet) and a.images.shape == (K * 2, HW, HW, 1)
  assert a.images.dtype == jnp.float32 and a.labels.dtype == jnp.int32
  assert a.labels.tolist() == [0, 0, 1, 1, 2, 2]
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.allclose(a.images, c.images)
  # clip=1 in model space [-1, 1] -> [0, 1] in data space for mean 0.5, std 0.5
  assert float(a.images.min()) >= -1.0 - 1e-5 and float(a.images.max()) <= 1.0 + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, match", [
    (dict(classes=[0, 5]), "Unknown class id"),
    (dict(classes=[-1]), "Unknown class id"),
    (dict(ipc=0), "ipc"),
    (dict(image_shape=(HW, HW)), "image_shape"),
    (dict(image_shape=(10, 10, 1)), "patch"),
])
def test_bad_sampling_requests_raise(tiny, kwargs, match):
  model, params, _ = tiny
  args = dict(ipc=1, image_shape=(HW, HW, 1), classes=None)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    dfn.synthesize(jax.random.key(0), model, params, dfn.make_schedule(10), args["ipc"],
                   args["image_shape"], (0.5,), (0.5,), classes=args["classes"], sample_steps=2)


def test_bad_configuration_raises():
  with pytest.raises(ValueError, match="schedule"):
    dfn.make_schedule(10, "quadratic")
  with pytest.raises(ValueError, match="memory_size"):
    dfn.init_memory(3, 0, 4)
  with pytest.raises(ValueError, match="null_class"):
    gaussian.sample(dfn.make_schedule(10), lambda x, t, y: x, jax.random.key(0),
                    jnp.zeros((1,), jnp.int32), (4, 4, 1), 2, cfg_scale=3.0)
