"""Checkpoints through orbax's ``CheckpointManager``: atomic saves, keep the last K, exact resume.

A checkpoint directory also holds ``run_config.json``, the configuration of the run that wrote it, and
optionally ``run_identity.json`` (what makes the run this run); a run with another configuration or
identity refuses to resume from (or overwrite) it and says what differs. Every saved step carries a
checksum of each array (saved in the same atomic orbax step, item ``checksums``), verified on restore: a corrupt or
unverifiable latest step is reported by step and array, and the newest verified step is restored
instead, with a warning. Typed PRNG keys are stored as their raw ``key_data`` and wrapped again.

Steps written by earlier versions of the library (one orbax item ``default``, no checksums) cannot be
verified and are refused by ``restore``; ``Checkpointer.adopt_legacy(like)`` rewrites them once in the
current layout after checking that they restore into the structure, shapes and dtypes of ``like``.

The module has one part per job: the run files that guard a directory (``guard_run_files``); reading
and verifying steps, for the ``Checkpointer`` and for readers that know a directory but not a run's
full state (``saved_steps``, ``read_verified``: a part of each step's state, restored alone); the
``Checkpointer`` (verified save, restore with fallback to the newest verified step); and the adoption
of legacy steps (``adopt_legacy``). Only this module knows orbax's layout.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import warnings
from typing import Any, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CONFIG_FILE = "run_config.json"
IDENTITY_FILE = "run_identity.json"
_log = logging.getLogger(__name__)


def _to_storable(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _from_storable(stored, like):
  return jax.tree.map(lambda s, l: jax.random.wrap_key_data(s) if _is_key(l) else s, stored, like)


def _abstract(like):
  """``ShapeDtypeStruct``s of ``like``'s storable leaves, each with ``like``'s sharding or, for a leaf
  without one (numpy arrays, Python scalars, ``ShapeDtypeStruct``s), this process's first device.

  Every leaf gets a sharding of this machine, so a checkpoint written on other devices (a CPU run
  resumed on a GPU, or a run of another device count) restores here: left without one, orbax takes the
  writer's sharding from the checkpoint and refuses it as a topology mismatch.
  """
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    sharding = getattr(x, "sharding", None)
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding or default)

  return jax.tree.map(leaf, _to_storable(like))


def _orbax_name(path) -> str:
  """The dotted name orbax gives the leaf at ``path`` (``params.Dense_0.kernel``, ``opt_state.0.mu``)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return ".".join(parts)


def _jsonable(config: Any) -> Any:
  return json.loads(json.dumps(config, default=str, sort_keys=True))


def _diff(a: dict, b: dict, prefix: str = "", rtol: float = 0.0) -> list:
  """The differing entries of two JSON dicts. ``rtol > 0``: lists of floats (measurements, such as
  ``distill.run_identity``'s optimizer probe) are equal when every pair differs by at most ``rtol``
  times the largest magnitude in the two lists, so that float rounding of another device (a run
  resumed on a GPU after a CPU) is no difference; everything else compares exactly."""
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _diff(va, vb, f"{prefix}{k}.", rtol)
    elif not _same(va, vb, rtol):
      out.append(f"{prefix}{k}: checkpoint has {va!r}, this run has {vb!r}")
  return out


def _same(a, b, rtol: float) -> bool:
  floats = (rtol > 0 and isinstance(a, list) and isinstance(b, list) and len(a) == len(b) > 0
            and all(type(x) is float for x in a + b))  # pylint: disable=unidiomatic-typecheck
  if not floats:
    return a == b
  scale = max(abs(x) for x in a + b)
  return all(abs(x - y) <= rtol * scale for x, y in zip(a, b))


class CorruptCheckpointError(ValueError):
  """A checkpoint step whose arrays do not match their checksums, or that cannot be read."""


class CheckpointMismatchError(ValueError):
  """A restore asked for another structure, shapes or dtypes than the checkpoint step holds (a usage
  error, not corruption: nothing is moved aside or replaced)."""


LEGACY_ITEM = "default"  # the single orbax item of steps written before checksums
STATE_ITEM, CHECKSUMS_ITEM = "state", "checksums"  # the orbax items of every step


def checksums(tree) -> dict:
  """``{leaf path: blake2b of its bytes, dtype and shape}`` of a pytree of arrays (keys as key data)."""
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(_to_storable(tree)):
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.blake2b(a.tobytes(), digest_size=16)
    h.update(f"{a.dtype}{a.shape}".encode())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


def _mismatched(expected: dict, got: dict) -> list:
  """The array names whose checksums differ between ``expected`` and ``got`` (or are in only one)."""
  return sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# Run files: the configuration and identity that guard a directory
# ----------------------------------------------------------------------------------------------------

# Relative tolerance of the float measurements in a run identity (float32 rounding differs by device).
IDENTITY_RTOL = 1e-5


def guard_run_files(directory: str, config: Optional[dict] = None,
                    identity: Optional[dict] = None) -> None:
  """Checks ``directory``'s ``run_config.json`` (and ``run_identity.json`` when ``identity`` is given)
  against this run's, writing them when missing; refuses a directory written by another run, or a
  non-empty directory that has no run files. Multi-process runs: process 0 checks and writes, then
  the others check."""
  lead = jax.process_index() == 0
  for turn in ((True, False) if jax.process_count() > 1 else (True,)):
    if turn == lead:
      _check_run_file(directory, CONFIG_FILE, config or {}, "configuration", first=True)
      if identity is not None:
        _check_run_file(directory, IDENTITY_FILE, identity,
                        "run identity (key, objective, shapes, optimizer, data)", rtol=IDENTITY_RTOL)
    if jax.process_count() > 1 and turn:
      multihost_utils.sync_global_devices(f"jaxdistill checkpoint files {directory}")


def _check_run_file(directory: str, name: str, value, what: str, first: bool = False,
                    rtol: float = 0.0) -> None:
  path = os.path.join(directory, name)
  value = _jsonable(value)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{path} is unreadable ({e}); not resuming into {directory}.") from e
    diff = _diff(old, value, rtol=rtol) if isinstance(old, dict) and isinstance(value, dict) else (
        [] if old == value else [f"checkpoint has {old!r}, this run has {value!r}"])
    if diff:
      raise ValueError(f"The checkpoint directory {directory} was written by another {what}; refusing "
                       f"to resume or overwrite it. Differences:\n  " + "\n  ".join(diff)
                       + "\nUse another directory or delete this one.")
    return
  if first and any(e.name != WRITER_LOCK for e in os.scandir(directory)):
    raise ValueError(f"{directory} is not empty and has no {CONFIG_FILE}; refusing to write "
                     f"checkpoints into it.")
  if not first and any(e.name.isdigit() for e in os.scandir(directory)):
    # A directory written before identities were stored: adopt this run's identity.
    _log.warning("%s has checkpoints but no %s; recording this run's.", directory, name)
  _write_json(path, value)


# ----------------------------------------------------------------------------------------------------
# Reading and verifying steps
# ----------------------------------------------------------------------------------------------------

def _unreadable(step: int, step_dir: str, e: Exception, what: str = "") -> CorruptCheckpointError:
  return CorruptCheckpointError(f"{what or 'Checkpoint'} step {step} in {step_dir} could not be read: "
                                f"{type(e).__name__}: {str(e)[:300]}")


def verify(step: int, step_dir: str, tree, expected, prefix: str = "") -> None:
  """Raises ``CorruptCheckpointError`` unless ``tree`` (the part ``prefix`` of step ``step``'s state,
  a ``keystr`` path; "" for all of it) matches the checksums ``expected`` saved with the step."""
  inside = lambda k: not prefix or k == prefix or k.startswith(prefix + "[")
  expected = {k: v for k, v in expected.items() if inside(k)} if isinstance(expected, dict) else {}
  if not expected:
    raise CorruptCheckpointError(f"Checkpoint step {step} in {step_dir} has no checksums for "
                                 f"{prefix or 'its state'}; it cannot be verified.")
  bad = _mismatched(expected, {prefix + k: v for k, v in checksums(tree).items()})
  if bad:
    raise CorruptCheckpointError(f"Checkpoint step {step} in {step_dir} is corrupt: array(s) "
                                 f"{', '.join(bad)} do not match the checksums written with it.")


def saved_steps(directory: str) -> list:
  """The finished steps of a ``Checkpointer`` directory, sorted (none for a missing directory)."""
  if not os.path.isdir(directory):
    return []
  mngr = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False))
  try:
    return sorted(int(s) for s in mngr.all_steps())
  finally:
    mngr.close()


def read_verified(directory: str, steps: Sequence[int], subtree: Sequence[str] = ()) -> list:
  """The part ``subtree`` (a path of dict keys) of each of a ``Checkpointer`` directory's ``steps``,
  restored alone (the rest of the state is not read), without a template (the stored structure, on
  this process's first device whatever devices wrote it), and checked against the checksums written
  with it; for readers that know the directory but not the run's full state
  (``jaxdistill.experts``: an expert's parameters or correctness per epoch).

  Raises:
    CorruptCheckpointError: a step cannot be read, has no ``subtree`` or no checksums for it, or its
      arrays differ from them.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  prefix = "".join(f"[{k!r}]" for k in subtree)
  out = []
  for step in (int(s) for s in steps):
    step_dir = os.path.join(os.path.abspath(directory), str(step))
    item = epath.Path(step_dir) / STATE_ITEM
    try:
      handler = ocp.PyTreeCheckpointHandler()
      part = handler.metadata(item).tree
      for k in subtree:
        part = part[k]
      target = _abstract(jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), part))
      for k in reversed(subtree):
        target = {k: target}
      args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape,
                                                         dtype=t.dtype), target)
      tree = handler.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=args,
                                                               partial_restore=True))
      sums = ocp.JsonCheckpointHandler().restore(epath.Path(step_dir) / CHECKSUMS_ITEM,
                                                 args=ocp.args.JsonRestore())
    except Exception as e:  # orbax raises several types for corrupt / incompatible files
      raise _unreadable(step, step_dir, e) from e
    for k in subtree:
      tree = tree[k]
    verify(step, step_dir, tree, sums, prefix)
    out.append(tree)
  return out


# ----------------------------------------------------------------------------------------------------
# The Checkpointer: verified save, restore with fallback
# ----------------------------------------------------------------------------------------------------

WRITER_LOCK = "writer.lock"


def _writer_lock(directory: str):
  """An exclusive lock on ``<directory>/writer.lock`` held while a Checkpointer is open (POSIX record
  lock: released by ``close`` or when the process ends, however it ends), so that a second process
  cannot write or prune the same run's checkpoints. Only the primary host of a multi-host run takes it
  (orbax writes from there)."""
  if jax.process_index() != 0:
    return None
  f = open(os.path.join(directory, WRITER_LOCK), "a+")
  try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise RuntimeError(f"{directory} is being written by {holder}: two processes must not write one "
                       f"run's checkpoints (stop that one first, or use another directory).") from None
  f.seek(0)
  f.truncate()
  f.write(f"process {os.getpid()}\n")
  f.flush()
  return f


class Checkpointer:
  """Saves and restores a pytree of arrays (e.g. ``DistillState``) under ``directory``.

  Args:
    directory: where the steps are written (created if missing).
    config: JSON-able description of the run; checked against the directory's ``run_config.json``.
    save_every: ``save`` writes when ``step % save_every == 0`` (and always when ``force=True``); >= 1.
    keep: how many recent checkpoints to keep; >= 1 (the newest is never deleted); None: all.
    identity: JSON-able identity of the run (``distill.run_identity``), checked like ``config``.
  """

  def __init__(self, directory: str, config: Optional[dict] = None, save_every: int = 100,
               keep: int = 3, identity: Optional[dict] = None):
    for name, v in (("save_every", save_every), ("keep", keep)):
      if name == "keep" and v is None:  # keep everything
        continue
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {v!r}"
                         + (" (keep=0 would delete every checkpoint)." if name == "keep" else "."))
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._lock = _writer_lock(self.directory)
    guard_run_files(self.directory, config, identity)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list:
    return list(self._mngr.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def save(self, step: int, tree, force: bool = False) -> bool:
    """Saves ``tree`` at ``step`` if due (or ``force``), with its checksums; returns whether it saved."""
    if not force and not self._mngr.should_save(int(step)):
      return False
    args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(_to_storable(tree)),
                                 CHECKSUMS_ITEM: ocp.args.JsonSave(checksums(tree))})
    saved = self._mngr.save(int(step), args=args, force=force)
    self._mngr.wait_until_finished()
    return bool(saved)

  def restore(self, like, step: Optional[int] = None, fallback: bool = True):
    """Restores and verifies the checkpoint at ``step`` (default: the newest) into the structure of
    ``like``.

    With ``step=None`` and ``fallback=True``, a newest step that is corrupt, unreadable or unverifiable
    is reported (a warning naming the step and the array or file) and the next older step is tried,
    down to the oldest; ``CorruptCheckpointError`` when none verifies. An explicit ``step`` is
    restored or refused, never replaced.
    """
    steps = sorted(self.all_steps(), reverse=True) if step is None else [int(step)]
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    errors = []
    for s in steps:
      try:
        tree = self.restore_verified(like, s)
        if errors:
          self._quarantine([t for t in steps if t > s])
        return tree
      except CorruptCheckpointError as e:
        errors.append(str(e))
        if step is not None or not fallback:
          raise
        msg = f"{e} Trying the previous checkpoint."
        _log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    raise CorruptCheckpointError("No checkpoint in " + self.directory + " verifies:\n  "
                                 + "\n  ".join(errors))

  def restore_verified(self, like, step: int):
    """The state at ``step`` restored into ``like``'s structure and verified (no fallback)."""
    if is_legacy(self.step_dir(step)):
      raise CorruptCheckpointError(
          f"Checkpoint step {step} in {self.step_dir(step)} was written by an earlier version of "
          f"the library, without checksums, so it cannot be verified. If you trust it, call "
          f"Checkpointer.adopt_legacy(like) once to rewrite it with checksums.")
    diff = _layout_diff(os.path.join(self.step_dir(step), STATE_ITEM), _abstract(like))
    if diff:
      raise CheckpointMismatchError(
          f"The structure asked for does not match checkpoint step {step} in {self.step_dir(step)} "
          f"(restore with the shapes and dtypes it was saved with):\n  " + "\n  ".join(diff))
    try:
      stored = self._mngr.restore(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardRestore(_abstract(like)),
          CHECKSUMS_ITEM: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax raises several types for corrupt / incompatible files
      raise _unreadable(step, self.step_dir(step), e) from e
    tree = _from_storable(stored[STATE_ITEM], like)
    verify(step, self.step_dir(step), tree, stored[CHECKSUMS_ITEM])
    return tree

  def _quarantine(self, steps) -> None:
    """Moves unverifiable steps aside (``<step>.corrupt``, kept for inspection) so the resumed run can
    write those steps again."""
    for s in steps:
      src = self.step_dir(s)
      dst = f"{src}.corrupt"
      n = 1
      while os.path.exists(dst):
        dst, n = f"{src}.corrupt{n}", n + 1
      os.replace(src, dst)
      _log.warning("Moved the unverifiable checkpoint %s to %s.", src, dst)
    self.reload()

  def reload(self) -> None:
    """Re-reads the directory's steps (after steps were moved aside)."""
    self._mngr.reload()

  def adopt_legacy(self, like) -> list:
    """``adopt_legacy(self, like)``: rewrites the steps written before checksums; returns them."""
    return adopt_legacy(self, like)

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
    if self._lock is not None:
      self._lock.close()  # releases the writer lock
      self._lock = None


# ----------------------------------------------------------------------------------------------------
# Legacy steps (written before checksums)
# ----------------------------------------------------------------------------------------------------

def is_legacy(step_dir: str) -> bool:
  """Whether a step directory was written before checksums (one orbax item ``default``)."""
  return (os.path.isdir(os.path.join(step_dir, LEGACY_ITEM))
          and not os.path.isdir(os.path.join(step_dir, CHECKSUMS_ITEM)))


def adopt_legacy(ckpt: Checkpointer, like) -> list:
  """Rewrites every step of ``ckpt`` written before checksums in the current layout, so that
  ``restore`` accepts it; returns the steps adopted.

  Each legacy step is read into the structure, shapes and dtypes of ``like`` (a mismatch raises
  ``CorruptCheckpointError`` and changes nothing), written again with checksums of what was read, and
  restored and verified once more. The original step directory is kept beside it as
  ``<step>.legacy``. Only call this on checkpoints you trust: there were no checksums to verify them
  against.
  """
  adopted = []
  abstract = _abstract(like)
  for s in sorted(ckpt.all_steps()):
    src = ckpt.step_dir(s)
    if not is_legacy(src):
      continue
    _check_legacy_layout(s, src, abstract)
    reader = ocp.CheckpointManager(ckpt.directory)
    try:
      stored = reader.restore(s, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises several types for corrupt / incompatible files
      raise CorruptCheckpointError(f"Legacy checkpoint step {s} in {src} does not restore into the "
                                   f"given structure: {type(e).__name__}: {str(e)[:300]}") from e
    finally:
      reader.close()
    tree = _from_storable(stored, like)
    os.replace(src, src + ".legacy")
    ckpt.reload()
    ckpt.save(s, tree, force=True)
    ckpt.restore_verified(like, s)
    _log.warning("Adopted the legacy checkpoint %s (original kept as %s.legacy).", src, src)
    adopted.append(s)
  return adopted


def _layout_diff(item_dir: str, abstract, strict: bool = False) -> list:
  """The arrays whose names, shapes or dtypes differ between the orbax item ``item_dir`` and
  ``abstract`` (one line each; orbax would otherwise pad or cut arrays to the requested shape). Metadata
  that cannot be read gives no lines (the restore then reports the step as unreadable), or with
  ``strict`` raises ``CorruptCheckpointError``."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  try:
    meta = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir)).tree
  except Exception as e:  # orbax raises several types for corrupt / incompatible files
    if not strict:
      return []
    raise CorruptCheckpointError(f"Checkpoint item {item_dir} has unreadable metadata: "
                                 f"{type(e).__name__}: {e}") from e
  stored = {m.name: (tuple(m.shape), np.dtype(m.dtype)) for m in jax.tree.leaves(meta)}
  wanted = {_orbax_name(p): (tuple(a.shape), np.dtype(a.dtype))
            for p, a in jax.tree_util.tree_leaves_with_path(abstract)}
  return [f"{k}: stored {stored.get(k, '<missing>')}, expected {wanted.get(k, '<missing>')}"
          for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]


def _check_legacy_layout(step: int, step_dir: str, abstract) -> None:
  """Raises ``CorruptCheckpointError`` unless the legacy step's arrays have exactly the names,
  shapes and dtypes of ``abstract``'s."""
  diff = _layout_diff(os.path.join(step_dir, LEGACY_ITEM), abstract, strict=True)
  if diff:
    raise CorruptCheckpointError(f"Legacy checkpoint step {step} in {step_dir} does not match the "
                                 f"given structure:\n  " + "\n  ".join(diff))
