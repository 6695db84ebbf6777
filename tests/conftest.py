"""Shared test set-up (after equinox's tests/conftest.py): strict dtype promotion and a key fixture.

Multi-device tests fake CPU devices in a subprocess (XLA_FLAGS must be set before jax is imported).

Compiled programs persist between runs in JAX's compilation cache (``.jax_cache/`` at the project root,
or ``$JAX_COMPILATION_CACHE_DIR``); set before jax is imported, so subprocesses share it too. A cached
program is the program XLA would compile again: results are the same bits.
"""
import os

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture
def getkey():
  """Returns a function handing out fresh keys, deterministic within one test."""
  state = {"key": jax.random.key(1234)}

  def _getkey():
    state["key"], sub = jax.random.split(state["key"])
    return sub

  return _getkey


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end, subprocess, multi-process or long tests "
                          "(run with -m slow; the default run leaves them out)")
