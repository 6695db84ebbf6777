"""Helpers shared by the experiment mains: the provenance header every results file carries."""
from __future__ import annotations

import datetime
import platform
import shlex
import sys

import jax
from absl import logging


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


def quiet_logs() -> None:
  """Keeps orbax's per-save INFO lines out of the console (warnings and errors still show)."""
  logging.set_verbosity(logging.WARNING)
