"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021).

A JAX version of ``DiffAugment`` / ``ParamDiffAug`` from the DatasetCondensation reference code (also used by
MTT and SelMatch). Every op is a pure function ``op(key, x, params, siamese) -> x`` on ``[N, H, W, C]`` float
images, differentiable with respect to ``x``:

- ``color``: brightness, saturation and contrast in sequence.
- ``crop``: integer translation by up to ``int(H * ratio_crop_pad + 0.5)`` pixels per axis, zero fill.
- ``cutout``: zeroes a ``int(H * ratio_cutout + 0.5)`` square at a random center.
- ``flip``: horizontal mirror with probability ``prob_flip``.
- ``scale``: affine zoom by factors in ``[1 / ratio_scale, ratio_scale]`` per axis.
- ``rotate``: rotation by an angle in ``[-ratio_rotate, ratio_rotate]`` degrees.

``scale`` and ``rotate`` sample bilinearly with zero padding, exactly as PyTorch's
``affine_grid`` + ``grid_sample`` with their defaults (``align_corners=False``).

Siamese mode (``siamese=True``) draws one set of parameters for the whole batch from the key alone, so calling
an op (or ``dsa``) with the same key on the real and on the synthetic batch applies the identical transform,
whatever the batch sizes. With ``siamese=False`` every image draws its own parameters (the reference's
``seed=-1``).

The deterministic building blocks (``affine``, ``scale_by``, ``rotate_by``, ``translate``, ``cutout_at``,
``flip_where``) are exposed for tests and for users who want explicit parameters.
"""
import functools
import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


class DSAParams(NamedTuple):
  """Magnitudes of the DSA ops (the reference ``ParamDiffAug``); hashable, so usable as a static argument."""
  prob_flip: float = 0.5
  ratio_scale: float = 1.2
  ratio_rotate: float = 15.0  # degrees
  ratio_crop_pad: float = 0.125
  ratio_cutout: float = 0.5  # side of the cutout square as a fraction of the image side
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5


DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
MODES = ("single", "multiple", "idc", "image")
# A strategy without the flip: the DSA README's choice for the digit datasets (MNIST, SVHN), where
# DM's and MTT's code keep the flip (their default strategy for every dataset).
NO_FLIP_STRATEGY = "color_crop_cutout_scale_rotate"


def strategy_for(dataset_name: Optional[str]) -> str:
  """The DSA strategy used for a dataset: ``DEFAULT_STRATEGY`` for every dataset, MNIST and SVHN
  included, the default of DM's and MTT's code. DSA's ``main.py`` has no default strategy and its
  README passes ``NO_FLIP_STRATEGY`` for the digit datasets (MNIST, SVHN): pass
  ``strategy=NO_FLIP_STRATEGY`` to ``get_augment`` for DSA's setting there.

  Args:
    dataset_name: e.g. ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``; None: the default.

  Returns:
    ``"color_crop_cutout_flip_scale_rotate"``.
  """
  del dataset_name
  return DEFAULT_STRATEGY


# ----------------------------------------------------------------------------------------------------------
# Helpers.


def _check_images(x: Array, where: str) -> None:
  if x.ndim != 4:
    raise ValueError(f"{where} expects images of shape [N, H, W, C] (rank 4); got shape {tuple(x.shape)}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{where} expects floating images; got dtype {x.dtype}.")


def _per_image(v: Array) -> Array:
  """``[]`` stays a scalar, ``[N]`` becomes ``[N, 1, 1, 1]`` to broadcast against ``[N, H, W, C]``."""
  return v if v.ndim == 0 else v.reshape(-1, 1, 1, 1)


def _uniform(key: Array, x: Array, siamese: bool, minval: float = 0.0, maxval: float = 1.0) -> Array:
  """Uniform draws: a scalar (siamese: depends on the key only) or one per image ``[N]``."""
  shape = () if siamese else (x.shape[0],)
  return jax.random.uniform(key, shape, jnp.float32, minval, maxval)


def _randint(key: Array, x: Array, siamese: bool, minval: int, maxval: int) -> Array:
  """Integers in ``[minval, maxval)``: a scalar (siamese) or one per image ``[N]``; int32."""
  shape = () if siamese else (x.shape[0],)
  return jax.random.randint(key, shape, minval, maxval, dtype=jnp.int32)


# ----------------------------------------------------------------------------------------------------------
# Deterministic building blocks.


def _bilinear(x: Array, px: Array, py: Array) -> Array:
  """Bilinear sampling with zero padding at pixel coordinates (``grid_sample``'s bilinear / zeros).

  Args:
    x: ``[N, H, W, C]`` images.
    px: column coordinates in pixels, ``[Ho, Wo]`` (shared by the batch) or ``[N, Ho, Wo]``.
    py: row coordinates in pixels, same shape as ``px``.

  Returns:
    ``[N, Ho, Wo, C]``: out-of-image corners contribute zero.
  """
  n, h, w, c = x.shape
  x0 = jnp.floor(px)
  y0 = jnp.floor(py)
  fx = px - x0
  fy = py - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  idx, wts = [], []
  for dy, wy in ((0, 1.0 - fy), (1, fy)):
    for dx, wx in ((0, 1.0 - fx), (1, fx)):
      xi, yi = x0 + dx, y0 + dy
      valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      idx.append(jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1))
      wts.append(jnp.where(valid, wx * wy, 0.0))
  out_hw = px.shape[-2:]
  idx = jnp.stack(idx, axis=-3)  # [..., 4, Ho, Wo]
  wts = jnp.stack(wts, axis=-3).astype(x.dtype)
  flat = x.reshape(n, h * w, c)
  if idx.ndim == 3:  # one grid for the whole batch: a single gather with shared indices
    vals = flat[:, idx.reshape(-1)].reshape(n, 4, *out_hw, c)
    wts = wts[None]
  else:
    vals = jax.vmap(lambda f, i: f[i.reshape(-1)])(flat, idx).reshape(n, 4, *out_hw, c)
  return jnp.sum(vals * wts[..., None], axis=1)


@jax.jit
def affine(x: Array, theta: Array) -> Array:
  """Applies an affine sampling grid, like ``grid_sample(x, affine_grid(theta, x.shape))`` in PyTorch.

  ``theta`` maps normalized output coordinates ``(x, y, 1)`` (x along the width, both in ``[-1, 1]``,
  ``align_corners=False``) to normalized input coordinates; sampling is bilinear with zero padding.

  Args:
    x: ``[N, H, W, C]`` float images.
    theta: ``[2, 3]`` (one transform for the batch) or ``[N, 2, 3]`` (one per image).

  Returns:
    ``[N, H, W, C]`` transformed images.
  """
  _check_images(x, "affine")
  _, h, w, _ = x.shape
  theta = jnp.asarray(theta, jnp.float32)
  xs = (2.0 * jnp.arange(w, dtype=jnp.float32) + 1.0) / w - 1.0
  ys = (2.0 * jnp.arange(h, dtype=jnp.float32) + 1.0) / h - 1.0
  gx, gy = jnp.meshgrid(xs, ys)  # [H, W] each
  t = theta[..., None, None]  # [..., 2, 3, 1, 1]
  ix = t[..., 0, 0, :, :] * gx + t[..., 0, 1, :, :] * gy + t[..., 0, 2, :, :]
  iy = t[..., 1, 0, :, :] * gx + t[..., 1, 1, :, :] * gy + t[..., 1, 2, :, :]
  px = ((ix + 1.0) * w - 1.0) / 2.0
  py = ((iy + 1.0) * h - 1.0) / 2.0
  return _bilinear(x, px, py)


def _scale_theta(sx: Array, sy: Array) -> Array:
  z = jnp.zeros_like(sx)
  return jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1)], -2)


def _rotate_theta(angle: Array) -> Array:
  c, s, z = jnp.cos(angle), jnp.sin(angle), jnp.zeros_like(angle)
  return jnp.stack([jnp.stack([c, -s, z], -1), jnp.stack([s, c, z], -1)], -2)


@jax.jit
def scale_by(x: Array, sx, sy) -> Array:
  """Scales the sampling grid: output pixel at normalized ``(u, v)`` reads the input at ``(sx * u, sy * v)``.

  ``sx = sy = 1`` is the identity; ``s > 1`` zooms out (content shrinks), ``s = 0.5`` enlarges 2 times.

  Args:
    x: ``[N, H, W, C]`` float images.
    sx: width factor, a scalar or ``[N]``.
    sy: height factor, a scalar or ``[N]``.

  Returns:
    ``[N, H, W, C]``.
  """
  sx, sy = jnp.broadcast_arrays(jnp.asarray(sx, jnp.float32), jnp.asarray(sy, jnp.float32))
  return affine(x, _scale_theta(sx, sy))


@jax.jit
def rotate_by(x: Array, angle) -> Array:
  """Rotates images by ``angle`` radians about their center (positive: counter-clockwise as displayed).

  Args:
    x: ``[N, H, W, C]`` float images.
    angle: radians, a scalar or ``[N]``.

  Returns:
    ``[N, H, W, C]``; pixels coming from outside the image are zero.
  """
  return affine(x, _rotate_theta(jnp.asarray(angle, jnp.float32)))


@jax.jit
def translate(x: Array, dy, dx) -> Array:
  """Integer translation with zero fill: ``out[n, i, j] = x[n, i + dy, j + dx]`` (zero outside the image).

  Args:
    x: ``[N, H, W, C]`` images.
    dy: row offset, int scalar or ``[N]``.
    dx: column offset, int scalar or ``[N]``.

  Returns:
    ``[N, H, W, C]``.
  """
  _check_images(x, "translate")
  _, h, w, _ = x.shape
  dy = jnp.asarray(dy, jnp.int32)
  dx = jnp.asarray(dx, jnp.int32)
  src_r = jnp.arange(h, dtype=jnp.int32) + dy[..., None]  # [H] or [N, H]
  src_c = jnp.arange(w, dtype=jnp.int32) + dx[..., None]  # [W] or [N, W]
  valid_r = (src_r >= 0) & (src_r < h)
  valid_c = (src_c >= 0) & (src_c < w)
  src_r = jnp.clip(src_r, 0, h - 1)
  src_c = jnp.clip(src_c, 0, w - 1)
  if src_r.ndim == 1:
    out = x[:, src_r]
  else:
    out = jax.vmap(lambda im, r: im[r])(x, src_r)
  if src_c.ndim == 1:
    out = out[:, :, src_c]
  else:
    out = jax.vmap(lambda im, c: im[:, c])(out, src_c)
  mask = valid_r[..., :, None] & valid_c[..., None, :]  # [H, W] or [N, H, W]
  return jnp.where(mask[..., None], out, jnp.zeros((), x.dtype))


@functools.partial(jax.jit, static_argnames="size")
def cutout_at(x: Array, cy, cx, size) -> Array:
  """Zeroes the rows ``[cy - sh // 2, cy - sh // 2 + sh)`` x columns ``[cx - sw // 2, cx - sw // 2 + sw)``.

  The square is clipped to the image (the reference clamps its indices, which zeroes the same pixels).

  Args:
    x: ``[N, H, W, C]`` images.
    cy: center row, int scalar or ``[N]``.
    cx: center column, int scalar or ``[N]``.
    size: side in pixels, an int or ``(sh, sw)`` (static).

  Returns:
    ``[N, H, W, C]``.
  """
  _check_images(x, "cutout_at")
  _, h, w, _ = x.shape
  sh, sw = (size, size) if isinstance(size, int) else size
  lo_r = jnp.asarray(cy, jnp.int32)[..., None, None] - sh // 2  # [1, 1] or [N, 1, 1]
  lo_c = jnp.asarray(cx, jnp.int32)[..., None, None] - sw // 2
  rows = jnp.arange(h, dtype=jnp.int32)[:, None]
  cols = jnp.arange(w, dtype=jnp.int32)[None, :]
  inside = (rows >= lo_r) & (rows < lo_r + sh) & (cols >= lo_c) & (cols < lo_c + sw)  # [H, W] / [N, H, W]
  return x * jnp.logical_not(inside)[..., None].astype(x.dtype)


@jax.jit
def flip_where(x: Array, do_flip) -> Array:
  """Mirrors images horizontally (along the width) where ``do_flip`` is true.

  Args:
    x: ``[N, H, W, C]`` images.
    do_flip: bool scalar or ``[N]``.

  Returns:
    ``[N, H, W, C]``.
  """
  _check_images(x, "flip_where")
  return jnp.where(_per_image(jnp.asarray(do_flip, jnp.bool_)), x[:, :, ::-1, :], x)


# ----------------------------------------------------------------------------------------------------------
# Random ops: op(key, x, params, siamese) -> x. Jitted with params/siamese static, so eager calls are cached
# (inside an outer jit they are simply inlined).

_jit_op = functools.partial(jax.jit, static_argnames=("params", "siamese"))


@_jit_op
def brightness(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Adds ``(u - 0.5) * params.brightness``, ``u ~ U[0, 1)``, to every pixel of an image."""
  _check_images(x, "brightness")
  u = _uniform(key, x, siamese)
  return x + _per_image((u - 0.5) * params.brightness).astype(x.dtype)


@_jit_op
def saturation(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Scales the deviation from the per-pixel channel mean by ``u * params.saturation``, ``u ~ U[0, 1)``.

  A no-op on single-channel images (as in the reference).
  """
  _check_images(x, "saturation")
  mean = jnp.mean(x, axis=-1, keepdims=True)
  f = _per_image(_uniform(key, x, siamese) * params.saturation).astype(x.dtype)
  return (x - mean) * f + mean


@_jit_op
def contrast(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Scales the deviation from the per-image mean by ``u + params.contrast``, ``u ~ U[0, 1)``."""
  _check_images(x, "contrast")
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  f = _per_image(_uniform(key, x, siamese) + params.contrast).astype(x.dtype)
  return (x - mean) * f + mean


@_jit_op
def color(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Brightness, then saturation, then contrast (the reference ``'color'`` op), each with its own key."""
  kb, ks, kc = jax.random.split(key, 3)
  x = brightness(kb, x, params, siamese)
  x = saturation(ks, x, params, siamese)
  return contrast(kc, x, params, siamese)


@_jit_op
def crop(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Random integer translation in ``[-s, s]`` per axis, ``s = int(side * ratio_crop_pad + 0.5)``, zero fill.

  For 32x32 and 28x28 images ``s = 4``.
  """
  _check_images(x, "crop")
  _, h, w, _ = x.shape
  sy, sx = int(h * params.ratio_crop_pad + 0.5), int(w * params.ratio_crop_pad + 0.5)
  ky, kx = jax.random.split(key)
  dy = _randint(ky, x, siamese, -sy, sy + 1)
  dx = _randint(kx, x, siamese, -sx, sx + 1)
  return translate(x, dy, dx)


@_jit_op
def cutout(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Zeroes a square of side ``int(side * ratio_cutout + 0.5)`` (16 for 32x32, 14 for 28x28).

  As in the reference, the center row is drawn from ``[0, H + 1 - size % 2)`` (so it may sit on the border
  and the square is clipped), likewise the column.
  """
  _check_images(x, "cutout")
  _, h, w, _ = x.shape
  size_h, size_w = int(h * params.ratio_cutout + 0.5), int(w * params.ratio_cutout + 0.5)
  ky, kx = jax.random.split(key)
  cy = _randint(ky, x, siamese, 0, h + (1 - size_h % 2))
  cx = _randint(kx, x, siamese, 0, w + (1 - size_w % 2))
  return cutout_at(x, cy, cx, (size_h, size_w))


@_jit_op
def flip(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Horizontal flip with probability ``params.prob_flip``."""
  _check_images(x, "flip")
  return flip_where(x, _uniform(key, x, siamese) < params.prob_flip)


@_jit_op
def scale(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Independent width/height factors ``~ U[1 / ratio_scale, ratio_scale)``, bilinear, zero padding."""
  _check_images(x, "scale")
  r = params.ratio_scale
  kx, ky = jax.random.split(key)
  sx = _uniform(kx, x, siamese, 1.0 / r, r)
  sy = _uniform(ky, x, siamese, 1.0 / r, r)
  return scale_by(x, sx, sy)


@_jit_op
def rotate(key: Array, x: Array, params: DSAParams = DSAParams(), siamese: bool = True) -> Array:
  """Rotation by an angle ``~ U[-ratio_rotate, ratio_rotate)`` degrees, bilinear, zero padding."""
  _check_images(x, "rotate")
  max_rad = params.ratio_rotate / 180.0 * math.pi
  return rotate_by(x, _uniform(key, x, siamese, -max_rad, max_rad))


OPS: Dict[str, Callable[..., Array]] = {
    "color": color,
    "crop": crop,
    "cutout": cutout,
    "flip": flip,
    "scale": scale,
    "rotate": rotate,
}


def parse_strategy(strategy: str) -> Tuple[str, ...]:
  """Splits ``"color_crop_..."`` into op names, checking each; ``""``/``"none"`` give ``()``.

  Raises:
    ValueError: for an unknown op name.
  """
  if strategy in ("", "none", "None"):
    return ()
  names = tuple(strategy.split("_"))
  unknown = [n for n in names if n not in OPS]
  if unknown:
    raise ValueError(f"Unknown DSA op(s) {unknown} in strategy {strategy!r}; known ops: {sorted(OPS)}.")
  return names


def dsa(key: Array, x: Array, strategy: str = DEFAULT_STRATEGY, params: DSAParams = DSAParams(),
        siamese: bool = True, mode: str = "single") -> Array:
  """Differentiable Siamese Augmentation (the reference ``DiffAugment``).

  Jittable with ``strategy``, ``params``, ``siamese`` and ``mode`` static; differentiable with respect to
  ``x``; works under ``jax.vmap`` (e.g. one key per class).

  Args:
    key: typed PRNG key. With ``siamese=True`` the transform depends on the key only, so the same key applied
      to a real and a synthetic batch (of any sizes) gives the identical transform.
    x: ``[N, H, W, C]`` float images.
    strategy: ops joined by ``_`` from ``color, crop, cutout, flip, scale, rotate``; ``"none"`` or ``""``
      returns ``x``.
    params: op magnitudes.
    siamese: one parameter set for the whole batch (True) or one per image (False).
    mode: ``"single"``: one op of the strategy drawn uniformly per call by the key (reference ``'S'``, the
      default everywhere in DC/DSA/DM/MTT); ``"multiple"``: every op in sequence (reference ``'M'``);
      ``"idc"``: IDC's ``DiffAug``: flip and color on every call, then one of the other ops drawn per
      call, then cutout on every call (each only when in the strategy); ``"image"``: ``"single"``
      image by image, one op and its parameters drawn for each image (SelMatch's combined
      augmentation calls ``DiffAugment`` on one image at a time; ``siamese`` is moot).

  Returns:
    ``[N, H, W, C]`` augmented images, same dtype as ``x``.

  Raises:
    ValueError: unknown op or mode, or ``x`` not rank 4.
  """
  _check_images(x, "dsa")
  names = parse_strategy(strategy)
  if mode not in MODES:
    raise ValueError(f"Unknown DSA mode {mode!r}; known: {list(MODES)}.")
  if not names:
    return x
  return _dsa(key, x, names, params, siamese, mode)


@functools.partial(jax.jit, static_argnames=("names", "params", "siamese", "mode"))
def _dsa(key: Array, x: Array, names: Tuple[str, ...], params: DSAParams, siamese: bool, mode: str) -> Array:
  if mode == "idc":
    always = [n for n in ("flip", "color") if n in names]
    for i, n in enumerate(always):
      x = OPS[n](jax.random.fold_in(key, i), x, params, siamese)
    rest = tuple(n for n in names if n not in ("flip", "color", "cutout"))
    if rest:
      x = _dsa(jax.random.fold_in(key, 2), x, rest, params, siamese, "single")
    if "cutout" in names:
      x = OPS["cutout"](jax.random.fold_in(key, 3), x, params, siamese)
    return x
  if mode == "image":  # under vmap the op choice is per row: every op runs, each row selects its own
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda k, xi: _dsa(k, xi[None], names, params, False, "single")[0])(keys, x)
  fns = [OPS[n] for n in names]
  if mode == "multiple":
    for i, f in enumerate(fns):
      x = f(jax.random.fold_in(key, i), x, params, siamese)
    return x
  k_choice, k_op = jax.random.split(key)
  if len(fns) == 1:
    return fns[0](k_op, x, params, siamese)
  choice = jax.random.randint(k_choice, (), 0, len(fns), dtype=jnp.int32)
  branches = [functools.partial(_apply_op, f, params=params, siamese=siamese) for f in fns]
  return jax.lax.switch(choice, branches, k_op, x)


def _apply_op(f: Callable[..., Array], key: Array, x: Array, params: DSAParams, siamese: bool) -> Array:
  return f(key, x, params, siamese)
