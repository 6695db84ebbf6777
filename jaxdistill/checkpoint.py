"""Checkpoints through orbax's ``CheckpointManager``: atomic saves, keep the last K, exact resume.

A checkpoint directory also holds ``run_config.json``, the configuration of the run that wrote it; a run
with another configuration refuses to resume from (or overwrite) it and says what differs.
Typed PRNG keys are stored as their raw ``key_data`` and wrapped again on restore.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "run_config.json"


def _to_storable(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _from_storable(stored, like):
  return jax.tree.map(lambda s, l: jax.random.wrap_key_data(s) if _is_key(l) else s, stored, like)


def _jsonable(config: Any) -> Any:
  return json.loads(json.dumps(config, default=str, sort_keys=True))


def _diff(a: dict, b: dict, prefix: str = "") -> list:
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}: checkpoint has {va!r}, this run has {vb!r}")
  return out


class Checkpointer:
  """Saves and restores a pytree of arrays (e.g. ``DistillState``) under ``directory``.

  Args:
    directory: where the steps are written (created if missing).
    config: JSON-able description of the run; checked against the directory's ``run_config.json``.
    save_every: save when ``step % save_every == 0`` (and always when ``force=True``).
    keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str, config: Optional[dict] = None, save_every: int = 100,
               keep: int = 3):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._check_config(config)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                             enable_async_checkpointing=False))

  def _check_config(self, config) -> None:
    path = os.path.join(self.directory, CONFIG_FILE)
    config = _jsonable(config or {})
    if os.path.exists(path):
      try:
        with open(path) as f:
          old = json.load(f)
      except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); not resuming into {self.directory}.") from e
      diff = _diff(old, config)
      if diff:
        raise ValueError(f"The checkpoint directory {self.directory} was written by another "
                         f"configuration; refusing to resume or overwrite it. Differences:\n  "
                         + "\n  ".join(diff) + "\nUse another directory or delete this one.")
    elif any(os.scandir(self.directory)):
      raise ValueError(f"{self.directory} is not empty and has no {CONFIG_FILE}; refusing to write "
                       f"checkpoints into it.")
    else:
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
      os.replace(tmp, path)

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list:
    return list(self._mngr.all_steps())

  def save(self, step: int, tree, force: bool = False) -> bool:
    """Saves ``tree`` at ``step`` if due (or ``force``); returns whether it saved."""
    if not force and not self._mngr.should_save(int(step)):
      return False
    saved = self._mngr.save(int(step), args=ocp.args.StandardSave(_to_storable(tree)), force=force)
    self._mngr.wait_until_finished()
    return bool(saved)

  def restore(self, like, step: Optional[int] = None):
    """Restores the checkpoint at ``step`` (default: latest) into the structure of ``like``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                            if not hasattr(x, "sharding") else
                            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            _to_storable(like))
    try:
      stored = self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises several types for corrupt / incompatible files
      raise ValueError(f"Checkpoint step {step} in {self.directory} could not be restored: {e}") from e
    return _from_storable(stored, like)

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
