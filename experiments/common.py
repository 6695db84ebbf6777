"""Helpers shared by the experiment mains: how a script runs, the provenance header every results file
carries, a JSON cache that lets a stopped experiment resume stage by stage, and the JSON form of
evaluation results."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shlex
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, logging
from ml_collections import config_flags

import jaxdistill as jd
from jaxdistill import host


def command_line() -> str:
  """The command that runs this process, as ``python -m <module> <arguments>``."""
  return " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], "-m",
                                          _module_name()] + sys.argv[1:])


def now() -> str:
  """The local date and time to the minute, as results files record it."""
  return datetime.datetime.now().strftime('%Y-%m-%d %H:%M')


def provenance(config) -> str:
  """Markdown block: the exact command, date, machine, versions and the full config."""
  return "\n".join([
      f"- command: `{command_line()}`",
      f"- date: {now()}",
      f"- machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
      f"jax {jax.__version__}",
      "- config:", "", "```", str(config).strip(), "```", ""])


def _module_name() -> str:
  main = sys.modules["__main__"]
  spec = getattr(main, "__spec__", None)
  return spec.name if spec is not None else sys.argv[0]


def run_script(run) -> None:
  """Runs ``run(config)`` as a command-line script: ``--config`` names an ml_collections config file
  (``--config.x=...`` overrides a field), orbax's per-save INFO lines are kept out of the console
  (warnings and errors still show), and the compiler's freed host memory is handed back to the
  operating system after every compilation (``jaxdistill.host.trim_after_compiles``).

  The ``--config`` flag is defined here, when the script starts, never when a module is imported:
  the experiment modules import one another and a test process imports several of them."""
  config = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)

  def wrapped(argv):
    del argv
    if config.value is None:
      raise app.UsageError("--config is required: the path of a config file under experiments/configs/")
    logging.set_verbosity(logging.WARNING)
    with host.trim_after_compiles():
      run(config.value)  # its result is for callers in Python: app.run would exit with it as the status

  app.run(wrapped)


def train_on_all(key, data, model, epochs: int) -> tuple:
  """``model`` trained on every training image of ``data`` with the protocol's SGD and step schedule,
  no augmentation: ``epochs + 1`` epochs, as every evaluation network (the reference's ``range(E + 1)``;
  lr / 10 from epoch ``epochs // 2 + 2`` when that is within them). ``(variables, test accuracy)``
  (feature networks, the quality report's judge)."""
  cfg = jd.evaluate.EvalConfig(epochs=epochs, augment="none")
  fn = jax.jit(lambda k, x, y: jd.evaluate.train(k, model, x, y, cfg))
  variables = fn(key, jnp.asarray(data.x_train), jnp.asarray(data.y_train))
  preds = jd.evaluate.predict(model, variables, jnp.asarray(data.x_test))
  return variables, float(jnp.mean(preds == jnp.asarray(data.y_test)))


def hand_notes(results_md: str) -> list:
  """The lines of ``<results_md without .md>_notes.md``, the reading kept by hand beside a results file
  its command rewrites (how runs were split, what the numbers say), without its title line; none when
  it does not exist. Appended to the results file each time the command writes it."""
  notes = os.path.splitext(results_md)[0] + "_notes.md"
  if not os.path.exists(notes):
    return []
  with open(notes) as f:
    return [""] + f.read().rstrip("\n").splitlines()[1:]


def require_plot(script: str) -> None:
  """Fails now, not hours in, when ``script``'s plot cannot be drawn (matplotlib missing)."""
  try:
    import matplotlib  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
    del matplotlib
  except ImportError as e:
    raise SystemExit(f'{script} draws a plot: pip install -e ".[plot]" (or pass '
                     f'--config.plot=False)') from e


def errorbar_plot(path: str, lines: dict, xlabel: str, title: str, hlines: Optional[dict] = None,
                  xscale: Optional[str] = None, vlines: Optional[dict] = None) -> None:
  """Accuracy (%) lines with error bars, ``lines = {label: (xs, means, stds)}``, each with its dotted
  horizontal reference ``hlines[label]`` and dashed vertical mark ``vlines[label]`` when given, saved
  to ``path`` (needs the plot extra); ``xscale``: a matplotlib scale name ("log")."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (xs, means, stds) in lines.items():
    line = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    if hlines and hlines.get(label) is not None:
      ax.axhline(hlines[label], ls=":", color=line[0].get_color())
    if vlines and vlines.get(label) is not None:
      ax.axvline(vlines[label], ls="--", lw=1, color=line[0].get_color())
  if xscale:
    ax.set_xscale(xscale)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def json_cache(path: str, fn):
  """``fn()`` (a JSON-able value) stored at ``path`` (atomically) and reused on reruns."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  out = fn()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(out, f)
  os.replace(path + ".tmp", path)
  return out


def encode_result(v):
  """A result cell as JSON: an ``EvalResult`` (per-seed and per-group accuracies kept) or a float."""
  if isinstance(v, jd.types.EvalResult):
    return {"mean": float(v.mean), "std": float(v.std), "accuracies": np.asarray(v.accuracies).tolist(),
            "groups": {k: np.asarray(a).tolist() for k, a in (v.group_accuracies or {}).items()}}
  return float(v)


def decode_result(v):
  """The inverse of ``encode_result``."""
  if isinstance(v, dict):
    groups = {k: np.asarray(a) for k, a in v.get("groups", {}).items()} or None
    return jd.types.EvalResult(v["mean"], v["std"], np.asarray(v["accuracies"]), groups)
  return v


def cached_results(path: str, fn) -> dict:
  """``fn()`` (``{column: EvalResult or float}``) stored as JSON at ``path`` and reused: evaluation is
  deterministic for a key, so a rerun (or another run with the same identity) reads it back."""
  stored = json_cache(path, lambda: {k: encode_result(v) for k, v in fn().items()})
  return {k: decode_result(v) for k, v in stored.items()}


# Configuration fields that change float rounding only (how a gradient is split), left out of cache names.
ROUNDING_ONLY_FIELDS = ("microbatch",)


class _Repr(str):
  def __repr__(self) -> str:
    return str(self)


def _named(p):
  """A NamedTuple config's ``repr`` without ``ROUNDING_ONLY_FIELDS`` (others unchanged)."""
  fields = getattr(p, "_fields", ())
  if not any(f in fields for f in ROUNDING_ONLY_FIELDS):
    return p
  body = ", ".join(f"{f}={getattr(p, f)!r}" for f in fields if f not in ROUNDING_ONLY_FIELDS)
  return _Repr(f"{type(p).__name__}({body})")


def ident(*parts) -> str:
  """A short stable digest of ``parts`` (their ``repr``, configs without ``ROUNDING_ONLY_FIELDS``),
  to name cached results."""
  return hashlib.sha256(repr(tuple(_named(p) for p in parts)).encode()).hexdigest()[:12]
