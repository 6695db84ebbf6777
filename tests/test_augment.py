"""Tests for jaxdistill.augment: DSA ops, the composed ``dsa``, ``crop_flip`` and ``get_augment``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import augment as A

OP_NAMES = sorted(A.OPS)
N, H, W, C = 6, 12, 12, 3
PARAMS = A.DSAParams()


def _images(key, n=N, h=H, w=W, c=C):
  return jax.random.uniform(key, (n, h, w, c), jnp.float32, 0.1, 1.0)


def _op(name):
  return lambda k, x, siamese=True: A.OPS[name](k, x, PARAMS, siamese)


def _dsa(strategy=A.DEFAULT_STRATEGY):
  return lambda k, x, siamese=True: A.dsa(k, x, strategy=strategy, siamese=siamese)


ALL = [(n, _op(n)) for n in OP_NAMES] + [("dsa", _dsa())]
ALL_IDS = [n for n, _ in ALL]


@pytest.mark.slow
@pytest.mark.parametrize("name,fn", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("siamese", [True, False])
def test_shape_dtype_and_gradient(name, fn, siamese, getkey):
  x = _images(getkey())
  weights = jax.random.normal(getkey(), x.shape)
  key = getkey()

  def loss(im):
    out = fn(key, im, siamese)
    return jnp.sum(out * weights), out

  g, out = jax.jit(jax.grad(loss, has_aux=True))(x)  # one compilation for the output and its gradient
  assert out.shape == x.shape and out.dtype == x.dtype
  assert g.shape == x.shape and g.dtype == x.dtype
  assert bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.max(jnp.abs(g))) > 0.0


@pytest.mark.parametrize("name,fn", ALL, ids=ALL_IDS)
def test_siamese_same_transform_for_other_batch(name, fn, getkey):
  """One key on a batch and on another batch (here its first 3 images): identical transforms."""
  x = _images(getkey())
  for _ in range(4 if name == "dsa" else 2):
    key = getkey()
    np.testing.assert_allclose(fn(key, x)[:3], fn(key, x[:3]), atol=1e-6)


@pytest.mark.parametrize("name,fn", ALL, ids=ALL_IDS)
def test_siamese_identical_images_get_identical_outputs(name, fn, getkey):
  x = jnp.tile(_images(getkey(), n=1), (N, 1, 1, 1))
  out = np.asarray(fn(getkey(), x))
  np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-6)


@pytest.mark.parametrize("name,fn", ALL, ids=ALL_IDS)
def test_different_keys_give_different_results(name, fn, getkey):
  x = _images(getkey())
  outs = [np.asarray(fn(getkey(), x)) for _ in range(6)]
  assert any(not np.allclose(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name,fn", ALL, ids=ALL_IDS)
def test_per_sample_mode_differs_within_batch(name, fn, getkey):
  x = jnp.tile(_images(getkey(), n=1), (N, 1, 1, 1))
  out = np.asarray(fn(getkey(), x, False))
  assert any(not np.allclose(out[0], out[i]) for i in range(1, N))


def test_flip_is_exact_mirror(getkey):
  x = _images(getkey(), n=8)
  np.testing.assert_array_equal(A.flip_where(x, True), np.asarray(x)[:, :, ::-1, :])
  np.testing.assert_array_equal(A.flip_where(x, False), x)
  out = np.asarray(A.flip(getkey(), x, PARAMS, siamese=False))
  mirrored = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, np.asarray(x))]
  same = [np.array_equal(o, xi) for o, xi in zip(out, np.asarray(x))]
  assert all(m or s for m, s in zip(mirrored, same))
  assert any(mirrored) and any(same)


def test_rotate_geometry(getkey):
  # A constant image stays constant in the center under a small random rotation (corners get zero fill).
  ones = jnp.ones((4, 16, 16, 1), jnp.float32)
  for siamese in (True, False):
    out = np.asarray(A.rotate(getkey(), ones, PARAMS, siamese))
    np.testing.assert_allclose(out[:, 4:12, 4:12], 1.0, atol=1e-5)
  # 90 degrees maps pixel centers onto pixel centers: counter-clockwise, like np.rot90 (the reference's
  # "90: anticlockwise").
  img = jnp.arange(36, dtype=jnp.float32).reshape(1, 6, 6, 1)
  np.testing.assert_allclose(A.rotate_by(img, np.pi / 2), np.rot90(np.asarray(img), 1, axes=(1, 2)),
                             atol=1e-4)
  np.testing.assert_allclose(A.rotate_by(img, 0.0), img, atol=1e-6)


def test_scale_geometry(getkey):
  x = _images(getkey())
  np.testing.assert_allclose(A.scale_by(x, 1.0, 1.0), x, atol=1e-6)
  # Factor 2 along the width on a 4-wide image (align_corners=False): output column j samples input
  # column 2j - 1.5, i.e. zero, mean of columns 0 and 1, mean of 2 and 3, zero.
  img = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  row = np.array([0.0, 0.5, 2.5, 0.0])
  expected = (row[None, :] + np.array([0.0, 4.0, 8.0, 12.0])[:, None]) * (row != 0)
  np.testing.assert_allclose(np.asarray(A.scale_by(img, 2.0, 1.0))[0, :, :, 0], expected, atol=1e-5)
  # Per-image factors: the image with factor 1 is unchanged.
  out = A.scale_by(x[:2], jnp.array([1.0, 1.2]), jnp.array([1.0, 0.9]))
  np.testing.assert_allclose(out[0], x[0], atol=1e-6)
  assert not np.allclose(out[1], x[1])


def _np_translate(img, dy, dx):
  h, w = img.shape[:2]
  out = np.zeros_like(img)
  for i in range(h):
    for j in range(w):
      if 0 <= i + dy < h and 0 <= j + dx < w:
        out[i, j] = img[i + dy, j + dx]
  return out


def test_crop_is_integer_shift_with_zero_fill(getkey):
  x = np.asarray(_images(getkey(), n=6))
  s = int(H * PARAMS.ratio_crop_pad + 0.5)
  shifts = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
  out = np.asarray(A.crop(getkey(), jnp.asarray(x), PARAMS, siamese=False))
  found = []
  for o, xi in zip(out, x):
    match = [sh for sh in shifts if np.array_equal(o, _np_translate(xi, *sh))]
    assert match, "output is not an integer shift within the crop range"
    found.append(match[0])
  assert len(set(found)) > 1
  np.testing.assert_array_equal(A.translate(jnp.asarray(x), 2, -3)[0], _np_translate(x[0], 2, -3))
  np.testing.assert_array_equal(A.translate(jnp.asarray(x[:2]), jnp.array([0, 1]), jnp.array([0, -1]))[1],
                                _np_translate(x[1], 1, -1))


def test_cutout_zeroes_a_clipped_square(getkey):
  x = _images(getkey(), n=8, h=10, w=10, c=1)
  size = int(10 * PARAMS.ratio_cutout + 0.5)  # 5
  out = np.asarray(A.cutout(getkey(), x, PARAMS, siamese=False))
  for o, xi in zip(out, np.asarray(x)):
    zero = o[..., 0] == 0
    rows, cols = np.nonzero(zero.any(1))[0], np.nonzero(zero.any(0))[0]
    assert 1 <= len(rows) <= size and 1 <= len(cols) <= size
    assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle ...
    assert zero.sum() == len(rows) * len(cols)
    assert (len(rows) == size or rows.min() == 0 or rows.max() == 9)  # ... clipped only at the border
    np.testing.assert_array_equal(o[~zero], xi[~zero])
  np.testing.assert_array_equal(np.asarray(A.cutout_at(jnp.ones((1, 6, 6, 1)), 0, 5, 4))[0, :, :, 0],
                                np.pad(np.zeros((2, 3)), ((0, 4), (3, 0)), constant_values=1.0))


def test_color_ops():
  x = jnp.full((2, 4, 4, 3), 0.5, jnp.float32).at[:, :, :, 0].set(0.9)
  key = jax.random.key(7)
  b = np.asarray(A.brightness(key, x, PARAMS, True))
  delta = b - np.asarray(x)
  assert np.allclose(delta, delta.flat[0], atol=1e-6) and abs(delta.flat[0]) <= 0.5
  # Saturation keeps the per-pixel channel mean; contrast keeps the per-image mean.
  np.testing.assert_allclose(np.asarray(A.saturation(key, x, PARAMS, False)).mean(-1), np.asarray(x).mean(-1),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(A.contrast(key, x, PARAMS, False)).mean((1, 2, 3)),
                             np.asarray(x).mean((1, 2, 3)), atol=1e-6)


@pytest.mark.slow
def test_dsa_jit_and_vmap(getkey):
  x = _images(getkey())
  key = getkey()
  jitted = jax.jit(A.dsa, static_argnames=("strategy", "params", "siamese", "mode"))
  np.testing.assert_allclose(jitted(key, x), A.dsa(key, x), atol=1e-5)
  # vmap over classes: one key per class, shared by that class's "real" and "synthetic" batches.
  keys = jax.random.split(getkey(), 2)
  real = _images(getkey(), n=2 * N).reshape(2, N, H, W, C)
  syn = real[:, :3]
  aug = jax.vmap(A.dsa)
  out_real, out_syn = aug(keys, real), aug(keys, syn)
  assert out_real.shape == real.shape
  np.testing.assert_allclose(out_real[:, :3], out_syn, atol=1e-5)
  np.testing.assert_allclose(out_syn[1], A.dsa(keys[1], syn[1]), atol=1e-5)


def test_dsa_modes(getkey):
  x = _images(getkey())
  key = getkey()
  # "multiple" applies every op in sequence; a one-op strategy is that op; "none" is the identity.
  multi = A.dsa(key, x, mode="multiple", siamese=False)
  assert multi.shape == x.shape and not np.allclose(multi, x)
  flipped = np.asarray(A.dsa(key, x, strategy="flip"))
  assert np.array_equal(flipped, x) or np.array_equal(flipped, np.asarray(x)[:, :, ::-1])
  np.testing.assert_array_equal(A.dsa(key, x, strategy="none"), x)


def test_dsa_single_mode_picks_several_ops(getkey):
  """Over keys, single mode picks different ops: with only flip/crop, both kinds of output appear."""
  x = _images(getkey())
  kinds = set()
  for _ in range(8):
    out = np.asarray(A.dsa(getkey(), x, strategy="flip_cutout"))
    kinds.add("cutout" if (out == 0).any() else "flip")
  assert kinds == {"flip", "cutout"}


def test_strategy_for_keeps_the_flip_for_every_dataset_as_the_reference():
  assert A.strategy_for("mnist") == "color_crop_cutout_flip_scale_rotate"
  assert A.strategy_for("SVHN") == A.DEFAULT_STRATEGY
  assert A.strategy_for("fashion_mnist") == A.DEFAULT_STRATEGY
  assert A.strategy_for("cifar10") == A.DEFAULT_STRATEGY
  assert A.strategy_for(None) == A.DEFAULT_STRATEGY


def test_crop_flip_is_a_crop_of_the_padded_image(getkey):
  x = np.asarray(_images(getkey(), n=6, h=8, w=8))
  out = np.asarray(jax.jit(A.crop_flip)(getkey(), jnp.asarray(x)))
  assert out.shape == x.shape and out.dtype == x.dtype
  windows = set()
  for o, xi in zip(out, x):
    padded = np.pad(xi, ((4, 4), (4, 4), (0, 0)))
    match = [(i, j, f) for i in range(9) for j in range(9) for f in (False, True)
             if np.array_equal(o, padded[i:i + 8, j:j + 8][:, ::-1] if f else padded[i:i + 8, j:j + 8])]
    assert match
    windows.add(match[0])
  assert len(windows) > 1
  np.testing.assert_array_equal(A.crop_flip(getkey(), jnp.asarray(x), pad=0, flip=False), x)
  np.testing.assert_array_equal(A.identity(getkey(), jnp.asarray(x)), x)


def test_get_augment(getkey):
  x = _images(getkey())
  key = getkey()
  np.testing.assert_allclose(A.get_augment("dsa")(key, x), A.dsa(key, x), atol=1e-6)
  per = A.get_augment("dsa", dataset_name="mnist", siamese=False)
  np.testing.assert_allclose(per(key, x), A.dsa(key, x, strategy=A.DEFAULT_STRATEGY, siamese=False),
                             atol=1e-6)
  no_flip = A.get_augment("dsa", strategy=A.NO_FLIP_STRATEGY, siamese=False)
  np.testing.assert_allclose(no_flip(key, x), A.dsa(key, x, strategy=A.NO_FLIP_STRATEGY,
                                                    siamese=False), atol=1e-6)
  assert A.get_augment("crop_flip")(key, x).shape == x.shape
  assert A.get_augment("none")(key, x) is x
  with pytest.raises(ValueError, match="crop_flip"):
    A.get_augment("autoaugment")


def test_bad_inputs_raise(key):
  x3 = jnp.zeros((4, 8, 3), jnp.float32)
  x = jnp.zeros((2, 8, 8, 3), jnp.float32)
  with pytest.raises(ValueError, match="rank 4"):
    A.dsa(key, x3)
  with pytest.raises(ValueError, match="rank 4"):
    A.crop_flip(key, x3)
  for name in OP_NAMES:
    with pytest.raises(ValueError, match="rank 4"):
      A.OPS[name](key, x3, PARAMS, True)
  with pytest.raises(ValueError, match="known ops"):
    A.dsa(key, x, strategy="color_blur")
  with pytest.raises(ValueError, match="known ops"):
    A.get_augment("dsa", strategy="crop_zoom")
  with pytest.raises(ValueError, match="mode"):
    A.dsa(key, x, mode="M")


@pytest.mark.slow
def test_map_groups_applies_one_chosen_op_per_group(getkey):
  """Siamese DSA with one key per class: each class gets exactly the op its key picks (as applying
  the augmentation class by class by hand), without computing every op as vmap would."""
  x = jnp.stack([_images(getkey(), n=3) for _ in range(4)])  # [G=4, 3, H, W, C]
  keys = jax.random.split(getkey(), 4)
  aug = A.get_augment("dsa", siamese=True)
  got = jax.jit(lambda k, x: A.map_groups(aug, k, x))(keys, x)
  for g in range(4):
    np.testing.assert_allclose(got[g], aug(keys[g], x[g]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got, jax.vmap(aug)(keys, x), rtol=1e-5, atol=1e-5)
  hlo = jax.jit(lambda k, x: A.map_groups(aug, k, x)).lower(keys, x).as_text()
  assert "case" in hlo or "conditional" in hlo  # a real switch survives (vmap turns it into selects)


def test_cutmix_pastes_one_box_from_valid_rows_and_mixes_targets_by_area():
  key = jax.random.key(0)
  x = jnp.arange(6, dtype=jnp.float32)[:, None, None, None] * jnp.ones((6, 8, 8, 1))
  y = jax.nn.one_hot(jnp.arange(6) % 3, 3)
  w = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)  # rows 4, 5: padding
  for k in jax.random.split(key, 8):
    mx, my = A.cutmix(k, x, y, w, p=1.0)
    changed = np.asarray(mx != x)[..., 0]  # [B, H, W]
    box = changed.any(0)
    for i in range(4):  # a valid row: outside the box its own pixels, inside a valid row's value
      inside = np.asarray(mx[i, ..., 0])[box]
      assert np.all(np.asarray(mx[i, ..., 0])[~box] == i)
      assert inside.size == 0 or (np.unique(inside).size == 1 and inside[0] in (0, 1, 2, 3))
      src = int(inside[0]) if inside.size else i
      r = 1 - box.mean()
      np.testing.assert_allclose(np.asarray(my[i]), r * np.asarray(y[i]) + (1 - r) * np.asarray(y[src]),
                                 atol=1e-6)
    assert np.isin(np.asarray(mx[4:, ..., 0])[:, box], [4, 5]).all()  # padding from padding only
  mx, my = A.cutmix(key, x, y, w, p=0.0)
  np.testing.assert_array_equal(np.asarray(mx), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(my), np.asarray(y))


def test_idc_augment_flips_and_colors_every_call_and_draws_one_other_op():
  """IDC's DiffAug: with only flip and color in the strategy, every call applies both (a fixed-key
  call equals flip then color with the same sub-keys)."""
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  key = jax.random.key(2)
  got = A.dsa(key, x, strategy="flip_color", siamese=False, mode="idc")
  want = A.color(jax.random.fold_in(key, 1), A.flip(jax.random.fold_in(key, 0), x,
                                                                  siamese=False), siamese=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  aug = A.get_augment("idc", "fashion_mnist", siamese=False)
  assert aug.keywords["strategy"] == "color_crop_flip_scale_rotate" and aug.keywords["mode"] == "idc"
  assert A.get_augment("idc", "mnist").keywords["strategy"] == "color_crop_scale_rotate"
  assert A.get_augment("idc")(key, x).shape == x.shape


def test_matching_objectives_refuse_a_per_image_augmentation():
  from jaxdistill import models, objectives
  net = models.get_model("mlp", 3, width=4)
  siamese = A.get_augment("dsa", siamese=True)
  dc = lambda net, k, **kw: objectives.gradient_matching(net, k, outer_loop=1, inner_loop=1, **kw)
  for make in (objectives.distribution_matching, dc, objectives.idc_matching):
    make(net, 3, augment=siamese)  # the references' kind
    make(net, 3)  # none
    for per_image in (A.get_augment("dsa", siamese=False), A.get_augment("crop_flip"),
                      A.get_augment("dsa_image"),
                      A.get_augment("idc", siamese=False)):
      with pytest.raises(ValueError, match="augment must be siamese"):
        make(net, 3, augment=per_image)


def test_dsa_image_mode_draws_an_op_for_each_image():
  """SelMatch's combined augmentation calls DiffAugment image by image: within one call the images
  get different ops, where mode "single" applies one op to the whole batch."""
  x = np.random.default_rng(0).uniform(size=(64, 8, 8, 1)).astype(np.float32)
  flat = lambda a: np.sort(np.asarray(a).reshape(64, -1), 1)

  def counts(aug, key):  # images a flip drew (it keeps each image's pixel multiset; color does not)
    out = aug(key, jnp.asarray(x))
    return int(np.all(np.abs(flat(out) - flat(x)) < 1e-6, 1).sum())

  per_image = A.get_augment("dsa_image", strategy="color_flip")
  per_batch = A.get_augment("dsa", strategy="color_flip", siamese=False)
  for i in range(4):
    assert 16 <= counts(per_image, jax.random.key(i)) <= 48  # about half of each
    assert counts(per_batch, jax.random.key(i)) in (0, 64)  # one op for the batch
