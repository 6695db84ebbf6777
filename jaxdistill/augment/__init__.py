"""Augmentations as functions ``(key, x) -> x`` on ``[N, H, W, C]`` float images.

``dsa``: Differentiable Siamese Augmentation (shared-key "siamese" or per-image parameters);
``idc``: IDC's evaluation augmentation (DSA ops, flip and color on every call); ``crop_flip``:
torchvision-style random crop (zero padding 4) + horizontal flip; ``identity``. ``cutmix`` (images and
targets of a batch) is a training option of the evaluation (``EvalConfig(mix="cutmix")``).
"""
import functools
from typing import Callable, Optional

import jax

from jaxdistill.augment.dsa import (DEFAULT_STRATEGY, MODES, NO_FLIP_STRATEGY, OPS, DSAParams, affine,
                                    brightness, color, contrast, crop, cutout, cutout_at, dsa, flip, flip_where,
                                    parse_strategy, rotate, rotate_by, saturation, scale, scale_by,
                                    strategy_for, translate)
from jaxdistill.augment.simple import crop_flip, cutmix, identity

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]

AUGMENTATIONS = ("dsa", "dsa_image", "idc", "crop_flip", "none")


def idc_strategy(dataset_name: Optional[str]) -> str:
  """The DSA strategy of IDC's evaluation (its ``argument.py``): color, crop, flip, scale, rotate, its
  cutout left out for CutMix, and the flip left out on MNIST and SVHN."""
  ds = (dataset_name or "").lower()
  return "color_crop_scale_rotate" if ds in ("mnist", "svhn", "svhn_cropped") else \
      "color_crop_flip_scale_rotate"


def get_augment(name: str, dataset_name: Optional[str] = None, siamese: bool = True,
                strategy: Optional[str] = None, params: DSAParams = DSAParams(),
                mode: str = "single") -> AugmentFn:
  """An augmentation ``(key, x) -> x`` by name.

  Args:
    name: ``"dsa"``, ``"idc"`` (``dsa`` with ``idc_strategy`` in mode ``"idc"``; IDC's evaluation draws
      per image: pass ``siamese=False``, as the evaluation protocol does), ``"dsa_image"`` (``dsa`` in
      mode ``"image"``: one op drawn per image, SelMatch's combined augmentation of distilled rows),
      ``"crop_flip"`` or ``"none"``.
    dataset_name: the dataset (the reference DSA strategy is the same for all, flip included).
    siamese: DSA and IDC: one parameter set per call derived from the key (the default: DC/DSA/DM/IDC
      matching), or per-image parameters (False; MTT, evaluation). ``crop_flip`` is always per image.
    strategy: DSA strategy string; default ``strategy_for(dataset_name)``.
    params: DSA magnitudes.
    mode: DSA ``"single"`` (one op per call), ``"multiple"`` (all ops in sequence) or ``"idc"``.

  Returns:
    A pure function ``(key, x) -> x`` on ``[N, H, W, C]``.

  Raises:
    ValueError: unknown name, or unknown DSA op / mode.
  """
  if name == "idc":
    name, mode = "dsa", "idc"
    strategy = idc_strategy(dataset_name) if strategy is None else strategy
  if name == "dsa_image":
    name, mode, siamese = "dsa", "image", False
  if name == "dsa":
    strategy = strategy_for(dataset_name) if strategy is None else strategy
    parse_strategy(strategy)  # fail early on unknown ops
    if mode not in MODES:
      raise ValueError(f"Unknown DSA mode {mode!r}; known: {list(MODES)}.")
    return functools.partial(dsa, strategy=strategy, params=params, siamese=siamese, mode=mode)
  if name == "crop_flip":
    return crop_flip
  if name in ("none", "identity"):
    return identity
  raise ValueError(f"Unknown augmentation {name!r}; known: {list(AUGMENTATIONS)}.")


def check_siamese(aug: Optional[AugmentFn], what: str) -> None:
  """Refuses an augmentation known to draw per image (``crop_flip``, DSA / IDC with ``siamese=False``)
  where ``what`` (a matching objective) applies one transform per class to the real and synthetic
  batches alike, as the references do: per-image draws would transform the two batches differently,
  and under data parallelism repeat on every device's shard. Other callables pass unchecked."""
  keywords = getattr(aug, "keywords", None) or {}
  if aug is crop_flip or (getattr(aug, "func", None) is dsa and (keywords.get("siamese") is False
                                                               or keywords.get("mode") == "image")):
    raise ValueError(f"{what}: augment must be siamese (one transform per class for the real and the "
                     f"synthetic images), e.g. get_augment('dsa', siamese=True); got a per-image one.")


def map_groups(aug: AugmentFn, keys: jax.Array, x: jax.Array) -> jax.Array:
  """``aug(keys[g], x[g])`` for every group ``g`` of ``x`` ``[G, B, H, W, C]`` (e.g. one class each,
  siamese DSA with one key per class), one group after another (``lax.map``).

  Equal to ``jax.vmap(aug)(keys, x)``, but DSA's one op per call stays one op: under ``vmap`` the op
  choice is batched and every op is computed for every group, then selected.
  """
  return jax.lax.map(lambda kx: aug(kx[0], kx[1]), (keys, x))


__all__ = [
    "AUGMENTATIONS", "AugmentFn", "check_siamese", "DEFAULT_STRATEGY", "DSAParams", "MODES", "NO_FLIP_STRATEGY", "OPS",
    "affine", "brightness", "color", "contrast", "crop", "crop_flip", "cutmix", "cutout", "cutout_at",
    "dsa", "flip", "flip_where", "get_augment", "idc_strategy", "identity", "map_groups", "parse_strategy", "rotate", "rotate_by", "saturation", "scale",
    "scale_by", "strategy_for", "translate",
]
