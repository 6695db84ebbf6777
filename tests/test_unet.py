"""The diffusion UNet: interface of the DiT, zero noise prediction at initialization, conditioning,
DiffFit's subset, shape checks, and a training step that learns."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import diffusion as dfn
from jaxdistill.diffusion import minimax

K, HW = 3, 8


def _unet(**kw):
  args = dict(width=8, mults=(1, 2), blocks=1, attn_levels=(1,), heads=2, groups=4)
  args.update(kw)
  return dfn.get_model("unet", K, **args)


def _perturbed(params, scale=0.1):
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda x: jnp.asarray(x + scale * rng.normal(size=x.shape).astype(np.float32)),
                      params)


@pytest.mark.slow
def test_unet_starts_at_zero_and_is_conditioned_on_time_and_class(key):
  model = _unet()
  params = dfn.init_params(key, model, (HW, HW, 1))
  x = jax.random.normal(key, (4, HW, HW, 1))
  t, y = jnp.array([0, 10, 50, 99]), jnp.array([0, 1, 2, K])
  apply = jax.jit(lambda p, tt, yy: model.apply({"params": p}, x, tt, yy))
  eps = apply(params, t, y)
  assert eps.shape == x.shape and float(jnp.abs(eps).max()) == 0.0  # zero output convolution
  p = _perturbed(params)
  f = lambda tt, yy: apply(p, tt, yy)
  base = f(t, y)
  assert float(jnp.abs(base).max()) > 0
  assert not np.allclose(base, f(t + 1, y), atol=1e-6)  # the timestep matters
  other = f(t, jnp.array([1, 2, 0, 0]))
  assert not np.allclose(base, other, atol=1e-6)  # the class matters
  # per-example: changing one example's label leaves the others' predictions alone
  one = f(t, y.at[0].set(2))
  np.testing.assert_allclose(one[1:], base[1:], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_unet_label_dropout_uses_the_null_class(key):
  model = _unet(label_dropout=1.0)
  p = _perturbed(dfn.init_params(key, model, (HW, HW, 1)))
  x, t = jax.random.normal(key, (2, HW, HW, 1)), jnp.array([5, 5])
  train = jax.jit(dfn.train.eps_fn(model, p, True, jax.random.key(3)))(x, t, jnp.array([0, 1]))
  null = jax.jit(dfn.train.eps_fn(model, p))(x, t, jnp.array([K, K]))
  np.testing.assert_allclose(train, null, rtol=1e-5, atol=1e-6)


def test_unet_and_dit_refuse_shapes_they_cannot_take():
  with pytest.raises(ValueError, match="divisible by 2"):
    _unet().check_image_shape((9, 8, 1))
  with pytest.raises(ValueError, match="divisible by 4"):
    _unet(mults=(1, 2, 2)).check_image_shape((6, 6, 1))
  _unet(mults=(1, 2, 2)).check_image_shape((28, 28, 1))
  with pytest.raises(ValueError, match="groups"):
    dfn.init_params(jax.random.key(0), _unet(width=6), (HW, HW, 1))
  with pytest.raises(ValueError, match="patch size 4"):
    dfn.DiT(K, patch=4, width=16).check_image_shape((10, 10, 1))
  with pytest.raises(ValueError, match="Unknown diffusion model"):
    dfn.get_model("vae", K)


def test_difffit_trains_the_unets_biases_norms_and_class_embedding(key):
  # The labels depend on the parameters' paths only: their shapes suffice (no initialization).
  params = jax.eval_shape(lambda k: dfn.init_params(k, _unet(), (HW, HW, 1)), key)
  labels = dict((dfn.train.path_name(p), l) for p, l in
                jax.tree_util.tree_leaves_with_path(dfn.train.trainable_labels(params)))
  trained = {n for n, l in labels.items() if l == "train"}
  assert {"y_embed/embedding", "down0_0/norm1/scale", "down0_0/conv1/bias", "mid_attn/norm/bias"} <= trained
  assert "down0_0/conv1/kernel" not in trained and "conv_in/kernel" not in trained
  assert all(("bias" in n or "norm" in n or "y_embed" in n) for n in trained)


@pytest.mark.slow
def test_unet_training_lowers_the_loss_and_samples(key):
  model = _unet()
  params = dfn.init_params(key, model, (HW, HW, 1))
  y = np.repeat(np.arange(K), 16).astype(np.int32)
  x = -np.ones((y.size, HW, HW, 1), np.float32)
  for i, c in enumerate(y):
    x[i, 3 * c:3 * c + 2] = 1.0
  arrays = {"images": jnp.asarray(x), "labels": jnp.asarray(y)}
  s = dfn.make_schedule(100)
  tx = optax.adam(3e-3)
  step = dfn.make_step(model, s, tx, 12)
  state = dfn.init_state(jax.random.key(5), params, tx)
  loss = lambda p: float(dfn.gaussian.loss(s, dfn.train.eps_fn(model, p), arrays["images"],
                                           arrays["labels"], jax.random.key(7))[0])
  before = loss(state.params)
  with jax.numpy_dtype_promotion("standard"):
    for _ in range(40):
      state, _ = step(state, arrays)
  assert before == pytest.approx(1.0, abs=0.2) and loss(state.params) < 0.75 * before
  syn = dfn.synthesize(jax.random.key(0), model, state.ema, s, 2, (HW, HW, 1), (0.5,), (0.5,),
                       sample_steps=4, eta=0.0, cfg_scale=2.0, batch_size=6)
  assert syn.images.shape == (2 * K, HW, HW, 1) and np.all(np.isfinite(syn.images))


@pytest.mark.slow
def test_autoencoder_learns_to_reconstruct_and_its_latents_feed_the_minimax_terms(key):
  rng = np.random.default_rng(0)
  x = np.zeros((64, HW, HW, 1), np.float32)
  for i in range(64):  # a bright square at one of 4 places
    r, c = 4 * (i % 2), 4 * ((i // 2) % 2)
    x[i, r:r + 4, c:c + 4] = 1.0
  x += 0.02 * rng.normal(size=x.shape).astype(np.float32)
  ae = dfn.AutoEncoder(width=8, latent_channels=2)
  err = lambda p: float(jnp.mean(jnp.square(ae.apply({"params": p}, jnp.asarray(x)) - x)))
  p0 = ae.init(key, jnp.asarray(x[:1]))["params"]
  params, last = dfn.train_autoencoder(key, x, ae, steps=150, batch_size=16, learning_rate=3e-3)
  assert np.isfinite(last) and err(params) < 0.3 * err(p0)
  enc = dfn.encoder_fn(ae, params)
  z = enc(jnp.asarray(x[:3]))
  assert z.shape == (3, HW // 4, HW // 4, 2)
  # the terms on latents: memories of latent size, gradient reaching the images through the encoder
  mem = minimax.update(dfn.init_memory(1, 4, int(np.prod(z.shape[1:]))), z, z, jnp.zeros((3,), jnp.int32))
  g = jax.grad(lambda q: sum(minimax.terms(enc(q), jnp.zeros((3,), jnp.int32), mem, 1.0, 1.0)))(
      jnp.asarray(x[3:6]))
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  with pytest.raises(ValueError, match="divisible by 4"):
    enc(jnp.zeros((1, 6, 6, 1)))
  with pytest.raises(ValueError, match="channels"):
    ae.apply({"params": params}, jnp.zeros((1, HW, HW, 3)))
