"""The three-step refactor guard's record and comparison (imported by the tests as ``golden``).

A record (``golden_steps.json``) holds, per method, a fingerprint of three distillation steps and the
spread of that fingerprint when the initial images are jittered by one ulp, plus the key of the
platform that recorded it.

- On the recording platform (same jax / jaxlib, CPU model, ISA extensions, usable cores, XLA flags)
  the fingerprint must be bit-equal.
- Elsewhere each field is compared against its scale (a sum of magnitudes: a sum of values against the
  sum of their absolute values, a step's loss against its magnitude), with a per-method, per-field
  tolerance of ``SAFETY`` times the measured one-ulp spread, never below ``FLOOR``. Another
  instruction set changes results by a few roundings, as a one-ulp jitter of the inputs does; a
  change of the computation (a hyperparameter, a key, an operation) moves them by orders more.
"""
from __future__ import annotations

import os
import platform
import re

import jax
import jaxlib
import numpy as np

# Tolerance = max(SAFETY * measured one-ulp spread, FLOOR), relative to each field's scale.
SAFETY = 100.0
FLOOR = 1e-6

_ISA = re.compile(r"^(sse\S*|ssse3|avx\S*|fma\S*|f16c|amx\S*|bmi\d|popcnt|vnni|asimd\S*|sve\S*)$")


def platform_key() -> dict:
  """What decides bit-level results of a CPU run: versions, CPU model and ISA extensions, the cores
  this process may use (XLA sizes its thread pool by them) and the XLA flags."""
  model, flags = platform.processor(), []
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        name, _, value = line.partition(":")
        if name.strip() == "model name" and not model:
          model = value.strip()
        if name.strip() in ("flags", "Features") and not flags:
          flags = sorted(x for x in value.split() if _ISA.match(x))
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "machine": platform.machine(),
          "cpu": model, "isa": flags, "cores": cores, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _leaf_fields(prefix: str, x: np.ndarray, x0: np.ndarray) -> dict:
  """Sum, weighted sum and sum of magnitudes of a leaf and of its update since the start."""
  out = {}
  for name, v in ((prefix, x), (f"{prefix}_update", x - x0)):
    flat = v.ravel()
    out[f"{name}_sum"] = float(flat.sum())
    out[f"{name}_weighted"] = float((flat * np.linspace(-1, 1, flat.size)).sum())
    out[f"{name}_abs_sum"] = float(np.abs(flat).sum())
  return out


def fingerprint(syn, syn0, history: list) -> dict:
  """Fields that move when any learned pixel, label or step size moves: per floating leaf of the
  synthetic set its sums and the sums of its update from ``syn0``; the loss of every step."""
  out = {"loss": [float(h["loss"]) for h in history]}
  for prefix in ("images", "labels", "log_lr"):
    x, x0 = getattr(syn, prefix), getattr(syn0, prefix)
    if x is None or not np.issubdtype(np.asarray(x).dtype, np.floating):
      continue
    out.update(_leaf_fields(prefix, np.asarray(x, np.float64), np.asarray(x0, np.float64)))
  return out


def scales(fp: dict) -> dict:
  """Each field's scale: a sum's is the sum of magnitudes of its values, a loss's its magnitude."""
  out = {"loss": [abs(v) for v in fp["loss"]]}
  for k in fp:
    if k != "loss":  # <prefix>_sum, <prefix>_weighted, <prefix>_abs_sum
      prefix = k[:-len("_abs_sum")] if k.endswith("_abs_sum") else k.rsplit("_", 1)[0]
      out[k] = fp[f"{prefix}_abs_sum"]
  return out


def relative_deviation(got: dict, want: dict) -> dict:
  """``|got - want| / scale(want)`` per field (the loss per step); 0 where both are exactly equal."""
  sc = scales(want)
  out = {}
  for k in want:
    g, w, s = (np.atleast_1d(np.asarray(v, np.float64)) for v in (got[k], want[k], sc[k]))
    diff = np.abs(g - w)
    with np.errstate(divide="ignore", invalid="ignore"):
      rel = np.where(diff == 0, 0.0, diff / s)
    out[k] = float(rel.max())
  return out


def tolerances(spread: dict) -> dict:
  """The comparison's tolerance per field from the measured one-ulp spread."""
  return {k: max(SAFETY * v, FLOOR) for k, v in spread.items()}


def check(got: dict, record: dict, key: dict) -> list:
  """The problems of ``got`` against one method's ``record``: bit-equality on the recording platform
  (``key`` equal to the record's), the spread-derived tolerances elsewhere; [] when it holds."""
  want = record["values"]
  if set(got) != set(want):
    return [f"fields differ: got {sorted(got)}, recorded {sorted(want)}"]
  if key == record["platform"]:
    return [f"{k}: {got[k]!r} != {want[k]!r} (bit-equal required on the recording platform)"
            for k in want if got[k] != want[k]]
  dev, tol = relative_deviation(got, want), tolerances(record["spread"])
  return [f"{k}: {got[k]!r} vs recorded {want[k]!r}: relative deviation {dev[k]:.3g} > tolerance "
          f"{tol[k]:.3g} (one-ulp spread {record['spread'][k]:.3g})" for k in want if dev[k] > tol[k]]


def ulp_jitters(images: np.ndarray) -> list:
  """The initial images moved by one ulp: all up, and up or down at random (a fixed generator)."""
  x = np.asarray(images, np.float32)
  signs = np.random.default_rng(0).choice(np.array([-np.inf, np.inf], np.float32), size=x.shape)
  return [np.nextafter(x, np.float32(np.inf)), np.nextafter(x, signs)]
