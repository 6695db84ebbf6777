"""Shared test set-up (after equinox's tests/conftest.py): strict dtype promotion and a key fixture.

Multi-device tests fake CPU devices in a subprocess (XLA_FLAGS must be set before jax is imported).
"""
import jax
import pytest

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
