"""Building blocks shared by the models: a CPU-friendly ``Conv``, norms, 2x2 pooling, input checks.

Why a custom ``Conv``: on XLA's CPU backend the kernel-gradient of ``lax.conv_general_dilated`` (what
``flax.linen.Conv`` lowers to) is 25-66x slower *inside a while loop* (``lax.scan`` / ``fori_loop``, i.e.
every unrolled-training objective such as MTT or DD) than outside it. Writing the convolution as slices of
the padded input and matmuls avoids that path. ``benchmarks/conv_impl.py`` measures the three
implementations; see ``DEFAULT_CONV_IMPL``.
"""
from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# "auto" (the default) is "patches" on XLA's CPU backend, where it is an order of magnitude faster than
# "lax" for gradients inside lax.scan and about 2x faster for a plain training step
# (benchmarks/conv_impl.py measures all three), and "lax" on GPU/TPU (their vendor convolutions).
# Computations without gradients through a loop may ask for another implementation of an "auto"
# model with ``prefer_conv`` (distribution matching runs "lax": faster and leaner there on CPU too).
DEFAULT_CONV_IMPL = "auto"
CONV_IMPLS = ("auto", "patches", "shift", "lax")


def resolve_conv_impl(impl: str) -> str:
  """The implementation ``impl`` runs: "auto" is "patches" on CPU and "lax" on accelerators."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv impl {impl!r}; choose one of {CONV_IMPLS}.")
  if impl == "auto":
    return "patches" if jax.default_backend() == "cpu" else "lax"
  return impl


def prefer_conv(model, impl: str):
  """``model`` with ``conv_impl=impl`` if it has the field and leaves it at "auto"; otherwise ``model``
  unchanged (an explicit choice, or a model without the field, is kept). An adapted ``Net`` applies it
  to the network it wraps."""
  if type(model).__name__ == "Net" and hasattr(model, "prefer_conv"):
    return model.prefer_conv(impl)
  if getattr(model, "conv_impl", None) == "auto":
    return model.clone(conv_impl=resolve_conv_impl(impl))
  return model
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
POOLINGS = ("avgpooling", "maxpooling", "none")


def check_images(x: jax.Array, model_name: str) -> jax.Array:
  """Validates a batch of NHWC images and returns it as float32.

  Args:
    x: ``[N, H, W, C]`` images (any real dtype).
    model_name: used in the error message.

  Returns:
    ``x`` as float32 ``[N, H, W, C]``.

  Raises:
    ValueError: if ``x`` is not rank 4.
  """
  if jnp.ndim(x) != 4:
    raise ValueError(f"{model_name} expects NHWC images of rank 4 [N, H, W, C]; got an input of shape "
                     f"{jnp.shape(x)} (rank {jnp.ndim(x)}). Add a batch axis with x[None] or a channel "
                     "axis with x[..., None].")
  return jnp.asarray(x, jnp.float32)


def _shifted_slices(x: jax.Array, k: int, stride: int, padding: int):
  """The ``k * k`` strided windows of the zero-padded input, in kernel (row, column) order.

  Args:
    x: ``[N, H, W, C]``.
    k: kernel size.
    stride: stride in both spatial dims.
    padding: symmetric zero padding in both spatial dims.

  Returns:
    A list of ``k * k`` arrays ``[N, Ho, Wo, C]``; entry ``i * k + j`` holds ``xp[:, s*h + i, s*w + j, :]``.
  """
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  n, h, w, c = x.shape
  ho = (h - k) // stride + 1
  wo = (w - k) // stride + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"Conv kernel {k}x{k} does not fit the padded input of size {h}x{w}.")
  return [lax.slice(x, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                    (1, stride, stride, 1))
          for i in range(k) for j in range(k)]


def conv_patches(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
  """Convolution as im2col: the ``k * k`` shifted slices concatenated along channels, then one matmul.

  Args:
    x: ``[N, H, W, Cin]``.
    kernel: ``[k, k, Cin, Cout]``.
    stride: stride in both spatial dims.
    padding: symmetric zero padding.

  Returns:
    ``[N, Ho, Wo, Cout]``, equal to ``lax.conv_general_dilated`` with the same arguments.
  """
  k, _, cin, cout = kernel.shape
  slices = _shifted_slices(x, k, stride, padding)
  patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
  # One 2-D matmul over the flattened rows: its kernel gradient is then a single-contraction dot. XLA:CPU
  # lowers the 4-D form's gradient (a contraction over N, H and W) through a transpose of the output
  # gradient, ~6x slower for a one-channel input layer; the values are the same.
  lead = patches.shape[:-1]
  out = jnp.dot(patches.reshape(-1, k * k * cin), kernel.reshape(k * k * cin, cout))
  return out.reshape(*lead, cout)


def conv_shift(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
  """Convolution as a sum over the ``k * k`` shifted slices of one channel-contraction each.

  Args:
    x: ``[N, H, W, Cin]``.
    kernel: ``[k, k, Cin, Cout]``.
    stride: stride in both spatial dims.
    padding: symmetric zero padding.

  Returns:
    ``[N, Ho, Wo, Cout]``.
  """
  k = kernel.shape[0]
  slices = _shifted_slices(x, k, stride, padding)
  out = jnp.dot(slices[0], kernel[0, 0])
  for idx in range(1, k * k):
    out = out + jnp.dot(slices[idx], kernel[idx // k, idx % k])
  return out


def conv_lax(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
  """``lax.conv_general_dilated`` in NHWC / HWIO (what ``flax.linen.Conv`` runs).

  Args:
    x: ``[N, H, W, Cin]``.
    kernel: ``[k, k, Cin, Cout]``.
    stride: stride in both spatial dims.
    padding: symmetric zero padding.

  Returns:
    ``[N, Ho, Wo, Cout]``.
  """
  return lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


_CONV_FNS = {"patches": conv_patches, "shift": conv_shift, "lax": conv_lax}


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
           impl: str = DEFAULT_CONV_IMPL) -> jax.Array:
  """Square-kernel 2D convolution ``[N, H, W, Cin] x [k, k, Cin, Cout] -> [N, Ho, Wo, Cout]`` by ``impl``
  (see ``resolve_conv_impl``)."""
  return _CONV_FNS[resolve_conv_impl(impl)](x, kernel, stride, padding)


def torch_weight_init() -> Callable:
  """PyTorch's default weight initialization of ``nn.Conv2d`` / ``nn.Linear`` (kaiming-uniform with
  ``a = sqrt(5)``): ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in`` = the kernel's input size
  (``k * k * Cin`` for a conv, ``in_features`` for a dense layer). The reference code bases use it."""
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
  """PyTorch's default bias initialization: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Dense(nn.Module):
  """``flax.linen.Dense`` (same parameter names and shapes: ``kernel`` ``[in, out]``, ``bias``
  ``[out]``) with PyTorch's default initialization, as the reference networks' ``nn.Linear``.

  Attributes:
    features: output size.
    use_bias: add a learned bias.
    kernel_init: weight initializer (default ``torch_weight_init()``); bias_init: None for PyTorch's
      ``U(+-1/sqrt(fan_in))``, or an initializer.
  """
  features: int
  use_bias: bool = True
  kernel_init: Callable = torch_weight_init()
  bias_init: Optional[Callable] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (fan_in, self.features), jnp.float32)
    y = jnp.dot(x, kernel)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init or torch_bias_init(fan_in), (self.features,),
                         jnp.float32)
    return y


class Conv(nn.Module):
  """Drop-in for ``flax.linen.Conv`` with a square kernel and symmetric integer zero padding.

  Parameters have ``nn.Conv``'s names and shapes (``kernel`` ``[k, k, Cin, Cout]``, ``bias``
  ``[Cout]``), so variables can be swapped between the two; the initialization is PyTorch's default
  (``nn.Conv2d``: weights and bias ``U(+-1/sqrt(k * k * Cin))``), as in the reference networks.

  Attributes:
    features: output channels ``Cout``.
    kernel_size: ``k`` (an int; a ``(k, k)`` tuple is accepted).
    strides: stride in both spatial dims.
    padding: symmetric zero padding in both spatial dims (an int, not "SAME"/"VALID").
    use_bias: add a learned bias.
    impl: "auto" (default: "patches" on CPU, "lax" on accelerators), "patches" (im2col + one matmul),
      "shift" (sum of k*k matmuls) or "lax" (lax.conv).
    kernel_init: weight initializer (default ``torch_weight_init()``); bias_init: None for PyTorch's
      ``U(+-1/sqrt(fan_in))``, or an initializer.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  impl: str = DEFAULT_CONV_IMPL
  kernel_init: Callable = torch_weight_init()
  bias_init: Optional[Callable] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[N, H, W, Cin]`` -> ``[N, Ho, Wo, features]``, ``Ho = (H + 2 padding - k) // strides + 1``."""
    k = self.kernel_size
    if isinstance(k, (tuple, list)):
      if len(k) != 2 or k[0] != k[1]:
        raise ValueError(f"Conv supports square kernels only; got kernel_size={k}.")
      k = k[0]
    if not isinstance(self.padding, int):
      raise ValueError(f"Conv padding must be an int (symmetric zero padding); got {self.padding!r}.")
    if x.ndim != 4:
      raise ValueError(f"Conv expects [N, H, W, C] inputs; got shape {x.shape}.")
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
    y = conv2d(x, kernel, self.strides, self.padding, self.impl)
    if self.use_bias:
      fan_in = k * k * x.shape[-1]
      y = y + self.param("bias", self.bias_init or torch_bias_init(fan_in), (self.features,),
                         jnp.float32)
    return y


class GroupNorm(nn.Module):
  """Instance norm (``flax.linen.GroupNorm`` with one group per channel), written for speed.

  Per image and channel: ``(x - mean) / sqrt(var + eps) * scale + bias`` over H and W, with the variance
  of the centred values (PyTorch's two-pass formula). Flax's GroupNorm computes the same through a
  grouped reshape; this direct form makes the unrolled training of trajectory matching markedly faster
  on CPU. The class keeps Flax's name so that parameter paths (``GroupNorm_0``, ...) and therefore
  checkpoints and expert trajectories written with ``flax.linen.GroupNorm`` load unchanged.
  """
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=(1, 2), keepdims=True)
    return centred * (lax.rsqrt(var + self.epsilon) * scale) + bias


def instance_norm(width: Optional[int] = None, name: Optional[str] = None) -> nn.Module:
  """Instance norm as in the references: ``GroupNorm(groups = channels)``, affine, eps 1e-5.

  Args:
    width: the channel count (optional: one group per channel whatever the width).
    name: optional module name.

  Returns:
    A module mapping ``[N, H, W, C]`` to normalized ``[N, H, W, C]`` with ``scale``/``bias`` ``[C]``.
  """
  del width  # one group per channel for any width
  return GroupNorm(epsilon=1e-5, name=name)


def make_norm(norm: str, train: bool, name: Optional[str] = None) -> Callable[[jax.Array], jax.Array]:
  """A normalization layer ``[N, H, W, C] -> [N, H, W, C]`` by name (DC-repo semantics).

  Args:
    norm: "instancenorm" (GroupNorm, groups = channels), "batchnorm" (running stats in ``batch_stats``,
      PyTorch momentum 0.1 i.e. flax momentum 0.9, eps 1e-5), "layernorm" (over C, H, W with
      ``[H, W, C]`` affine, as ``nn.LayerNorm(shape_feat)`` in the reference), "groupnorm" (4 groups)
      or "none".
    train: batch statistics (True) or running averages (False) for batchnorm.
    name: optional module name.

  Returns:
    A callable layer.
  """
  if norm == "instancenorm":
    return instance_norm(name=name)
  if norm == "batchnorm":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
  if norm == "layernorm":
    return nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3), feature_axes=(1, 2, 3), name=name)
  if norm == "groupnorm":
    return nn.GroupNorm(num_groups=4, epsilon=1e-5, name=name)
  if norm == "none":
    return lambda x: x
  raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2 (odd sizes floored, as PyTorch): ``[N, H, W, C] -> [N, H//2, W//2, C]``.

  Written as a reshape + mean, which differentiates to cheap ops (no reduce_window).
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2 (odd sizes floored): ``[N, H, W, C] -> [N, H//2, W//2, C]``.

  Ties share the gradient equally (``jnp.max``'s rule) where PyTorch picks one element.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def pool(pooling: str, x: jax.Array) -> jax.Array:
  """2x2 stride-2 pooling by name: "avgpooling", "maxpooling" or "none"."""
  if pooling == "avgpooling":
    return avg_pool2(x)
  if pooling == "maxpooling":
    return max_pool2(x)
  if pooling == "none":
    return x
  raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")


def flatten(x: jax.Array) -> jax.Array:
  """``[N, ...] -> [N, D]``."""
  return x.reshape(x.shape[0], -1)


def first_pad(x: jax.Array, k: int = 3) -> int:
  """Padding of a model's first ``k x k`` conv: 28x28 grey images are padded to 32x32 as in the references.

  The references pad by ``k // 2 + 2`` when the input has one channel (MNIST, Fashion-MNIST), so a 28x28
  input gives a 32x32 map and the rest of the network sees the CIFAR geometry; otherwise ``k // 2``.
  """
  return k // 2 + 2 if x.shape[-1] == 1 else k // 2
