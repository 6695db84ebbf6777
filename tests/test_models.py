"""Tests of jaxdistill.models: shapes, the uniform interface, Conv implementations, errors."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import experts, models, objectives
from jaxdistill.models import layers
from jaxdistill.types import SyntheticSet

SHAPES = [(2, 28, 28, 1), (2, 32, 32, 3)]
# Small widths keep the forward passes cheap; models without a width option run at full size.
SMALL = {"convnet": {"width": 8}, "convnet_bn": {"width": 8}, "convnet_nonorm": {"width": 8},
         "convnet_ln": {"width": 8}, "convnet_gn": {"width": 8}, "convnet_maxpool": {"width": 8},
         "convnet_nopool": {"width": 4, "depth": 1}, "convnet_frepo": {"width": 4}, "mlp": {"width": 16},
         "vgg11": {"width": 8}, "vgg11bn": {"width": 8}, "resnet18": {"width": 4},
         "resnet18bn": {"width": 4}, "resnet18_in": {"width": 4}, "resnet18bn_ap": {"width": 4},
         "resnet18_ap": {"width": 4}}
# Feature sizes at the default (reference) widths, the same for 28x28x1 and 32x32x3.
DEFAULT_FEATURES = {"convnet": 2048, "convnet_frepo": 8192, "mlp": 128, "alexnet": 3072, "vgg11": 512,
                    "resnet18": 512, "resnet18bn_ap": 8192}


def _apply(model, variables, x, **kw):
  if "batch_stats" in variables:
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], **kw)
    return out
  return model.apply(variables, x, train=True, **kw)


def _shapes(model, shape):
  """(variables, logits, features) as ShapeDtypeStructs, traced without compiling."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  logits, feats = jax.eval_shape(lambda v, x: _apply(model, v, x, return_features=True), variables, x)
  return variables, logits, feats


@pytest.mark.slow
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_output_and_feature_shapes(name):
  for kwargs in ({}, SMALL.get(name, {})):
    model = models.get_model(name, 10, **kwargs)
    for shape in SHAPES:
      variables, logits, feats = _shapes(model, shape)
      assert logits.shape == (2, 10) and logits.dtype == jnp.float32
      assert feats.ndim == 2 and feats.shape[0] == 2 and feats.dtype == jnp.float32
      if name in DEFAULT_FEATURES and not kwargs:
        assert feats.shape[1] == DEFAULT_FEATURES[name], (name, shape, feats.shape)
      test_logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                                   jax.ShapeDtypeStruct(shape, jnp.float32))
      assert test_logits.shape == (2, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnet", "mlp", "resnet18bn_ap"])
def test_forward_is_finite(name, getkey):
  kwargs = {**SMALL.get(name, {}), **({"stage_sizes": (1, 1, 1, 1)} if "resnet" in name else {})}
  model = models.get_model(name, 10, **kwargs)
  x = jax.random.normal(getkey(), (2, 28, 28, 1))

  @jax.jit
  def run(key, x):
    variables = model.init(key, x, train=False)
    return _apply(model, variables, x, return_features=True)

  logits, feats = run(getkey(), x)
  assert bool(jnp.all(jnp.isfinite(logits))) and bool(jnp.all(jnp.isfinite(feats)))


def test_registry_errors_and_case():
  assert isinstance(models.get_model("ConvNet_BN", 10), models.ConvNet)
  assert models.get_model("convnet_bn", 10).norm == "batchnorm"
  assert models.get_model("convnet_bn", 10, norm="none").norm == "none"
  with pytest.raises(ValueError, match="known models:.*convnet.*resnet18bn_ap"):
    models.get_model("lenet", 10)
  with pytest.raises(ValueError, match="no option"):
    models.get_model("alexnet", 10, width=3)


@pytest.mark.parametrize("bad", [(28, 28, 1), (2, 28, 28), (1, 2, 28, 28, 1)])
def test_bad_rank_is_a_clear_error(bad):
  model = models.get_model("convnet", 10, width=4)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))
  with pytest.raises(ValueError, match=r"rank 4 \[N, H, W, C\]"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros(bad), train=False), variables)


@pytest.mark.slow
def test_batchnorm_model_keeps_running_stats(getkey):
  model = models.get_model("convnet_bn", 10, width=4)
  x = jax.random.normal(getkey(), (4, 32, 32, 3)) * 3.0 + 1.0
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(getkey(), x)
  assert set(variables) == {"params", "batch_stats"}
  assert set(jax.eval_shape(lambda: models.get_model("resnet18", 10).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))) == {"params", "batch_stats"}
  logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert logits.shape == (4, 10)
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(old, new))
  # Test mode reads the running averages and needs no mutable collection.
  assert jax.jit(lambda v, x: model.apply(v, x, train=False))({**variables, **updates}, x).shape == (4, 10)
  assert set(jax.eval_shape(lambda: models.get_model("convnet", 10).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))) == {"params"}


CONV_CASES = [(1, 1, 0), (3, 1, 1), (3, 2, 1), (3, 1, 3), (5, 1, 2), (4, 2, 0)]


@pytest.mark.slow
@pytest.mark.parametrize("k,s,p", CONV_CASES)
def test_conv_impls_match_flax_conv(k, s, p, getkey):
  """Same parameters -> same outputs and gradients (w.r.t. kernel, bias and input) as nn.Conv."""
  x = jax.random.normal(getkey(), (2, 9, 10, 3))
  ref = nn.Conv(5, (k, k), strides=s, padding=((p, p), (p, p)))
  variables = ref.init(getkey(), x)

  def out_and_grads(module):
    def loss(v, x):
      return jnp.sum(jnp.sin(module.apply(v, x)))
    return jax.jit(lambda v, x: (module.apply(v, x), jax.grad(loss, argnums=(0, 1))(v, x)))(variables, x)

  want, want_grads = out_and_grads(ref)
  for impl in layers.CONV_IMPLS:
    conv = layers.Conv(5, k, s, p, impl=impl)
    assert jax.tree.map(jnp.shape, jax.eval_shape(conv.init, getkey(), x)) == \
        jax.tree.map(jnp.shape, variables)
    out, grads = out_and_grads(conv)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_auto_conv_is_patches_on_cpu_and_prefer_conv_only_replaces_auto(key):
  """"auto" runs "patches" on the CPU backend (bit for bit); ``prefer_conv`` swaps an "auto" model's
  implementation and keeps an explicit one; the DM loss is the same with either implementation."""
  assert jax.default_backend() == "cpu"
  assert layers.resolve_conv_impl("auto") == "patches"
  x = jax.random.normal(key, (2, 9, 9, 3))
  kern = jax.random.normal(jax.random.fold_in(key, 1), (3, 3, 3, 4))
  np.testing.assert_array_equal(layers.conv2d(x, kern, 2, 1, "auto"),
                                layers.conv2d(x, kern, 2, 1, "patches"))
  with pytest.raises(ValueError, match="Unknown conv impl"):
    layers.conv2d(x, kern, 1, 0, "fft")
  auto = models.ConvNet(10, width=8)
  assert auto.conv_impl == "auto" and layers.prefer_conv(auto, "lax").conv_impl == "lax"
  assert layers.prefer_conv(models.ConvNet(10, width=8, conv_impl="patches"), "lax").conv_impl == "patches"
  mlp = models.MLP(10)
  assert layers.prefer_conv(mlp, "lax") is mlp
  syn = SyntheticSet(jax.random.normal(key, (20, 28, 28, 1)), jnp.repeat(jnp.arange(10), 2))
  batch = {"images": jax.random.normal(jax.random.fold_in(key, 2), (10, 3, 28, 28, 1))}
  losses = {impl: float(objectives.distribution_matching(models.ConvNet(10, width=8, conv_impl=impl), 10)
                        .loss(syn, batch, key, ())[0]) for impl in ("auto", "patches", "lax")}
  np.testing.assert_allclose(losses["auto"], losses["lax"], rtol=1e-6)
  np.testing.assert_allclose(losses["auto"], losses["patches"], rtol=1e-4)
  # Expert directories record the implementation "auto" runs: those written with an explicit
  # "patches" on CPU resume with the default model.
  ident = lambda m: experts._expert_config(experts.ExpertConfig(), m, key, np.zeros((4, 28, 28, 1)), "x")
  assert ident(auto) == ident(models.ConvNet(10, width=8, conv_impl="patches"))
  assert ident(auto) != ident(models.ConvNet(10, width=8, conv_impl="lax"))


@pytest.mark.slow
def test_instance_norm_equals_flax_groupnorm_per_channel(key):
  """The fast instance norm: the parameter tree, outputs and input/parameter gradients of
  ``flax.linen.GroupNorm(group_size=1, epsilon=1e-5)``, and the same parameter paths inside a ConvNet
  (checkpoints written with Flax's module load)."""
  x = 3.0 + 2.0 * jax.random.normal(key, (4, 6, 5, 7))
  ours, theirs = layers.instance_norm(), nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5)
  v = theirs.init(key, x)
  v = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.fold_in(key, p.size), p.shape), v)
  assert jax.tree.structure(ours.init(key, x)) == jax.tree.structure(v)
  f = lambda m: jax.value_and_grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1))(v, x)
  (a, ga), (b, gb) = f(ours), f(theirs)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for u, w in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(u, w, rtol=1e-4, atol=1e-5)
  paths = flax.traverse_util.flatten_dict(jax.eval_shape(
      lambda: models.ConvNet(10, width=4).init(key, jnp.zeros((1, 28, 28, 1)), train=False))["params"])
  assert ("GroupNorm_0", "scale") in paths and ("GroupNorm_2", "bias") in paths


@pytest.mark.slow
def test_conv_params_have_flax_names_and_shapes(key):
  x = jnp.ones((1, 8, 8, 3))
  ours = layers.Conv(4, 3, padding=1).init(key, x)
  theirs = nn.Conv(4, (3, 3), padding=1).init(key, x)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), ours, theirs)
  assert layers.DEFAULT_CONV_IMPL in layers.CONV_IMPLS


@pytest.mark.parametrize("name", ["convnet", "convnet_bn", "mlp"] + [pytest.param(n, marks=pytest.mark.slow)
                                                               for n in ("alexnet", "vgg11", "resnet18")])
def test_init_is_pytorchs_default(name, key):
  """Every conv / dense weight and bias ~ U(+-1/sqrt(fan_in)) (PyTorch's kaiming-uniform with a=sqrt(5)
  and its bias rule), as the reference networks; norm scales 1, shifts 0."""
  model = models.get_model(name, 10, **({"width": 16} if name.startswith("convnet") else {}))
  # Jitted: an eager init dispatches every op of the forward pass one by one (VGG: seconds).
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((2, 28, 28, 1)), train=False))(key)
  flat = flax.traverse_util.flatten_dict(variables["params"])
  checked = 0
  for path, w in flat.items():
    w = np.asarray(w)
    parent = flat.get(path[:-1] + ("kernel",))
    if path[-1] == "kernel" or (path[-1] == "bias" and parent is not None):
      kernel = w if path[-1] == "kernel" else np.asarray(parent)
      fan_in = int(np.prod(kernel.shape[:-1]))
      bound = 1.0 / np.sqrt(fan_in)
      assert np.abs(w).max() <= bound + 1e-7, path
      if w.size >= 500:  # uniform: std = bound / sqrt(3)
        np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.15, err_msg=str(path))
      if path[-1] == "bias":
        assert np.abs(w).max() > 0, f"{path}: PyTorch biases are not zero"
      checked += 1
    elif path[-1] == "scale":
      np.testing.assert_array_equal(w, 1.0)
    elif path[-1] == "bias":
      np.testing.assert_array_equal(w, 0.0)
  assert checked >= 2


@pytest.mark.slow
def test_conv_impls_agree_second_order_through_scan(getkey):
  """The MTT/DD pattern: d/dx of a loss after SGD steps inside lax.scan, for every impl."""
  x = jax.random.normal(getkey(), (3, 8, 8, 2))
  target = jax.random.normal(getkey(), (3, 4, 4, 3))
  kernel0 = jax.random.normal(getkey(), (3, 3, 2, 3)) * 0.3

  def outer(x, impl):
    def inner_loss(kern):
      return jnp.mean((jnp.tanh(layers.conv2d(x, kern, 2, 1, impl)) - target) ** 2)

    def step(kern, _):
      return kern - 0.5 * jax.grad(inner_loss)(kern), None

    kern, _ = jax.lax.scan(step, kernel0, None, length=3)
    return jnp.sum(layers.conv2d(x, kern, 2, 1, impl) ** 2)

  grads = {impl: jax.jit(jax.grad(outer), static_argnums=1)(x, impl) for impl in layers.CONV_IMPLS}
  for impl in ("patches", "shift"):
    np.testing.assert_allclose(grads[impl], grads["lax"], rtol=1e-4, atol=1e-5)


def test_conv_rejects_non_square_and_string_padding(key):
  x = jnp.ones((1, 8, 8, 1))
  with pytest.raises(ValueError, match="square"):
    layers.Conv(2, (3, 1)).init(key, x)
  with pytest.raises(ValueError, match="padding"):
    layers.Conv(2, 3, padding="SAME").init(key, x)
  with pytest.raises(ValueError, match="impl"):
    layers.Conv(2, 3, impl="fft").init(key, x)


def test_instance_norm_and_pooling_match_references(getkey):
  x = jax.random.normal(getkey(), (2, 6, 7, 4)) * 2.0 + 1.0
  norm = layers.instance_norm(4)
  y = norm.apply(norm.init(getkey(), x), x)
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(y, (x - mean) / jnp.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
  x = jax.random.normal(getkey(), (2, 8, 6, 3))
  window = ((1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  np.testing.assert_allclose(layers.avg_pool2(x), jax.lax.reduce_window(x, 0.0, jax.lax.add, *window) / 4.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(layers.max_pool2(x), jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, *window))
  assert layers.avg_pool2(jnp.ones((1, 7, 7, 1))).shape == (1, 3, 3, 1)  # floor, as PyTorch


@pytest.mark.slow
def test_convnet_conv_impls_give_the_same_network(getkey):
  x = jax.random.normal(getkey(), (2, 28, 28, 1))
  nets = {impl: models.ConvNet(10, width=8, conv_impl=impl) for impl in layers.CONV_IMPLS}
  variables = jax.jit(lambda k, x: nets["lax"].init(k, x, train=False))(getkey(), x)
  want = jax.jit(nets["lax"].apply)(variables, x)
  for impl in ("patches", "shift"):
    assert jax.tree.map(jnp.shape, jax.eval_shape(lambda: nets[impl].init(jax.random.key(0), x))) == \
        jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(jax.jit(nets[impl].apply)(variables, x), want, rtol=1e-4, atol=1e-4)


def test_resnet18bn_tiny_strides_its_stem_as_the_references_64px_resnet():
  """``resnet18bn_tiny`` (the references' ResNet18BN_Tiny, SelMatch's Tiny-ImageNet evaluator) reaches
  a 4x4 final map on 64x64 images, as ``resnet18bn`` does on 32x32; ``resnet18bn`` would end at 8x8."""
  import jax
  import jax.numpy as jnp
  from jaxdistill import evaluate, models
  for name, size, final in (("resnet18bn_tiny", 64, 4), ("resnet18bn", 64, 8), ("resnet18bn", 32, 4)):
    m = models.get_model(name, 10, width=8)
    x = jnp.zeros((1, size, size, 3))
    v = m.init(jax.random.key(0), x, train=False)
    _, inter = m.apply(v, x, train=False, capture_intermediates=True)
    assert inter["intermediates"]["BasicBlock_7"]["__call__"][0].shape == (1, final, final, 8 * 8), name
  assert evaluate.protocol("selmatch", "custom_tiny_imagenet", ratio=0.1).model == "resnet18bn_tiny"
  assert evaluate.protocol("selmatch", "cifar10", ratio=0.1).model == "resnet18bn"
