"""Helpers shared by the experiment mains: how a script runs, the provenance header every results file
carries, and a JSON cache that lets a stopped experiment resume stage by stage."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shlex
import sys

import jax
from absl import app, logging

from jaxdistill import host


def provenance(config) -> str:
  """Markdown block: the exact command, date, machine, versions and the full config."""
  cmd = " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], "-m",
                                         _module_name()] + sys.argv[1:])
  return "\n".join([
      f"- command: `{cmd}`",
      f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
      f"- machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
      f"jax {jax.__version__}",
      "- config:", "", "```", str(config).strip(), "```", ""])


def _module_name() -> str:
  main = sys.modules["__main__"]
  spec = getattr(main, "__spec__", None)
  return spec.name if spec is not None else sys.argv[0]


def run_script(main) -> None:
  """``absl.app.run(main)`` for the experiment scripts: orbax's per-save INFO lines kept out of the
  console (warnings and errors still show), and the compiler's freed host memory handed back to the
  operating system after every compilation (``jaxdistill.host.trim_after_compiles``)."""
  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)
    with host.trim_after_compiles():
      return main(argv)

  app.run(wrapped)


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
