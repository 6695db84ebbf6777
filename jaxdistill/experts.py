"""Expert trajectories for trajectory matching (MTT / DATM), and the per-example scores they give for free.

``train`` trains ``num_experts`` networks on a real training set with the MTT reference protocol
(``buffer.py``: SGD lr 0.01, momentum 0, weight decay 0, batch 256, DSA with per-image parameters, one
op per batch, no learning-rate decay) and saves the variables after every epoch, epoch 0 (the
initialization) included, through orbax: one directory per expert, ``directory/expert_{i}/``, one
checkpoint step per epoch. Every epoch is a copy (the reference's ``p.detach().cpu()`` on a CPU aliases
the live weights, so all its saved epochs were the final ones and its distillation divided by zero).

A run is resumable: a killed run continues each expert from its last saved epoch, and asking an
existing directory for more epochs extends the trajectories. The result is bit-identical to an
uninterrupted run (epoch ``e`` of expert ``i`` draws its shuffling and augmentation from
``fold_in(fold_in(key, i), e)``, and the epoch program does not depend on the number of epochs).

One epoch is one jitted function: a ``lax.scan`` over the batches of a random permutation; the last
partial batch is kept and masked (zero weight on the padding rows), as a PyTorch ``DataLoader``
without ``drop_last`` would (the reference's loader).

After every epoch (and at initialization) each expert's predictions on the *un-augmented* training set
(eval mode) are recorded; at the end ``correct.npy`` (``[E, N]`` bool, row ``e`` = after epoch
``e + 1``), ``forgetting.npy`` and ``first_learned.npy`` (``[N]`` int32) are written into the expert's
directory (see ``forgetting_counts`` and ``first_learned_epoch``).

``load_trajectories`` stacks the saved parameters (the ``params`` collection only, as the reference
stores ``parameters()``) into a ``Trajectories`` of flat vectors ``[num_experts, E + 1, P]``, which
``jaxdistill.objectives.trajectory_sampler`` indexes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxdistill import evaluate, training
from jaxdistill.checkpoint import Checkpointer, read_verified, saved_steps
from jaxdistill.checks import check_images_labels
from jaxdistill.models.adapter import adapt
from jaxdistill.models.layers import prefer_conv
from jaxdistill.models.nets import has_state, state_of
# The per-example scores live with the selection methods that use them; re-exported here, where the
# experts write them.
from jaxdistill.selection.scores import (el2n_scores, first_learned_epoch,  # noqa: F401
                                        forgetting_counts, load_scores)
from jaxdistill.types import Dataset

EXPERT_DIR = "expert_{}"
SCORE_FILES = ("correct.npy", "forgetting.npy", "first_learned.npy")
_EXPERT_RE = re.compile(r"^expert_(\d+)$")


class ExpertConfig(NamedTuple):
  """Expert training protocol (defaults: the MTT reference ``buffer.py``).

  Attributes:
    epochs: epochs per expert (the reference trains 50; its distillation uses the first
      ``max_start_epoch + expert_epochs``).
    lr: SGD learning rate (``lr_teacher``).
    momentum: SGD momentum (0 in the reference).
    weight_decay: L2 added to the gradient, PyTorch-style (0 in the reference).
    batch_size: training batch (``batch_train``).
    augment: "dsa" (per-image DSA, the reference strategy, flip included), "crop_flip", "none", or
      ``(key, x) -> x``.
    record_correct: record per-example correctness after every epoch (one eval-mode pass over the
      training set per epoch) and write the forgetting / first-learned scores.
    eval_batch_size: batch of those passes.
    microbatch: rows per gradient piece ("auto": 32 on CPU, whole batches on accelerators; 0: whole
      batches); the same gradient up to float rounding, so it is not part of ``describe``.
  """
  epochs: int = 50
  lr: float = 0.01
  momentum: float = 0.0
  weight_decay: float = 0.0
  batch_size: int = 256
  augment: Union[str, Callable] = "dsa"
  record_correct: bool = True
  eval_batch_size: int = 1000
  microbatch: Union[int, str] = "auto"

  def describe(self) -> dict:
    """A JSON-able description without ``epochs`` (a directory may be extended to more epochs) and
    ``microbatch`` (it changes float rounding only)."""
    d = self._asdict()
    del d["epochs"], d["microbatch"]
    aug = d["augment"]
    if not isinstance(aug, str):
      name = getattr(aug, "__qualname__", "")
      if not name or "<lambda>" in name or "<locals>" in name:
        raise ValueError(f"augment={aug!r} has no stable name to record with the experts (two lambdas "
                         f"would look alike and one directory could mix them): pass a name ('dsa', "
                         f"'crop_flip', 'none') or a module-level function.")
      d["augment"] = f"{getattr(aug, '__module__', '')}.{name}"
    return d


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------

def optimizer(cfg: ExpertConfig) -> optax.GradientTransformation:
  """The SGD of ``cfg`` (PyTorch-style weight decay); ``make_epoch_fn``'s ``opt_state`` is its ``init``."""
  parts = []
  if cfg.weight_decay:
    parts.append(optax.add_decayed_weights(cfg.weight_decay))
  parts.append(optax.sgd(cfg.lr, momentum=cfg.momentum or None))
  return optax.chain(*parts)


def make_epoch_fn(model, cfg: ExpertConfig, dataset_name: Optional[str] = None) -> Callable:
  """``epoch(variables, opt_state, images, labels, key) -> (variables, opt_state, mean_loss)``, jitted.

  One pass over ``images`` ``[N, H, W, C]`` / ``labels`` ``[N]`` in a random order (``lax.scan`` over
  ``ceil(N / batch_size)`` batches; the last partial batch is kept, padded and masked, or run at its
  real size for BatchNorm networks), augmenting each
  batch with ``cfg.augment`` (one key per batch), SGD per ``cfg``. The data are arguments, not constants.
  """
  aug = training.resolve_augment(cfg.augment, dataset_name)
  tx = optimizer(cfg)
  net = adapt(model)

  def epoch(variables, opt_state, images, labels, key):
    def step(carry, inp):
      params, stats, opt_state = carry
      idx_b, valid_b, k = inp
      loss, new_stats, grads = training.loss_and_grads(net, params, stats, aug(k, images[idx_b]),
                                                       labels[idx_b], valid_b, "ce", cfg.microbatch,
                                                       key=jax.random.fold_in(k, training.DROPOUT_FOLD))
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), new_stats, opt_state), loss * jnp.sum(valid_b)

    carry = (variables["params"], state_of(variables) or None, opt_state)
    n = images.shape[0]
    (params, stats, opt_state), losses = training.scan_epoch(step, carry, key, n, cfg.batch_size,
                                                             exact_last=has_state(variables))
    out = {"params": params, **(stats or {})}
    return out, opt_state, jnp.sum(losses) / n

  return jax.jit(epoch)


def _as_arrays(data) -> tuple:
  if isinstance(data, Dataset):
    return data.x_train, data.y_train, data.name
  images, labels = data
  return images, labels, None


def _expert_config(cfg: ExpertConfig, model, key: jax.Array, images, dataset_name) -> dict:
  # The convolution implementation is how the network runs, not which network: "auto" is recorded as
  # what it runs here, so directories written with the explicit choice of the same backend still match.
  model = prefer_conv(adapt(model), "auto")
  return {"protocol": cfg.describe(), "model": model.identity(), "dataset": dataset_name,
          "train_shape": list(np.shape(images)),
          "key": np.asarray(jax.random.key_data(key)).tolist()}


def train(key: jax.Array, data: Union[Dataset, tuple], model, directory: str, num_experts: int = 1,
          cfg: ExpertConfig = ExpertConfig(), dataset_name: Optional[str] = None,
          experts: Optional[Sequence[int]] = None, progress: bool = True) -> "Trajectories":
  """Trains (or resumes / extends) expert networks and saves every epoch; returns their trajectories.

  Args:
    key: the run's key; expert ``i`` uses ``fold_in(key, i)``.
    data: a ``Dataset`` (its training split) or ``(images [N, H, W, C], labels [N])``.
    model: any model ``jaxdistill.models.adapt`` accepts (a library network, a Flax linen module of any
      call signature, an NNX class, ``equinox_model(...)``, ``functions(init, apply)``); its
      identity (``Net.identity``) is part of the directory's record.
    directory: where ``expert_{i}/`` directories are written (created if missing).
    num_experts: trains experts ``0..num_experts - 1`` (unless ``experts`` is given).
    cfg: the protocol; ``cfg.epochs`` is the total (epochs already saved are kept).
    dataset_name: the dataset the augmentation is named for (the reference's DSA strategy is the same
      for every dataset, flip included, as MTT's ``buffer.py``); defaults to ``data.name``.
    experts: explicit expert indices to train (e.g. one per job on a cluster).
    progress: print one line per epoch.

  Returns:
    ``load_trajectories(directory, experts)`` (host memory: experts x (E + 1) x P x 4 bytes; for many
    long trajectories call ``load_trajectories(directory, max_epoch=...)`` yourself instead).

  Raises:
    ValueError: bad data, or an expert directory written with another protocol, model, data or key.
  """
  images, labels, name = _as_arrays(data)
  dataset_name = dataset_name or name
  images, labels = check_images_labels(np.asarray(images, np.float32), labels, "training", hard=True)
  if cfg.epochs < 1:
    raise ValueError(f"cfg.epochs must be >= 1; got {cfg.epochs}.")
  experts = list(range(num_experts)) if experts is None else list(experts)
  os.makedirs(directory, exist_ok=True)
  # The training images' and labels' content: an expert extended on other data of the same shape
  # would mix two trajectories (directories written before this was recorded adopt it).
  train_digest = hashlib.sha256(images.tobytes() + np.asarray(labels).tobytes()).hexdigest()[:16]
  x, y = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
  model = adapt(model)
  epoch_fn = make_epoch_fn(model, cfg, dataset_name)
  tx = optimizer(cfg)
  predict = jax.jit(lambda v, xs: evaluate.predict(model, v, xs, cfg.eval_batch_size))

  def correct_of(variables):
    return np.asarray(predict(variables, x) == y) if cfg.record_correct else None

  def item(variables, opt_state, correct, loss):
    """One saved epoch: everything needed to resume, plus the epoch's correctness and mean loss."""
    out = {"variables": variables, "opt_state": opt_state, "loss": loss}
    if cfg.record_correct:
      out["correct"] = correct
    return out

  for i in experts:
    ekey = jax.random.fold_in(key, i)
    init_key, data_key = jax.random.split(ekey)
    path = os.path.join(directory, EXPERT_DIR.format(i))
    ckpt = Checkpointer(path, _expert_config(cfg, model, key, images, dataset_name), save_every=1,
                        keep=None, identity={"train_data": train_digest})
    try:
      variables = evaluate.init_variables(init_key, model, images.shape[1:])
      opt_state = tx.init(variables["params"])
      like = item(variables, opt_state, np.zeros(images.shape[0], bool), np.float32(0))
      last = ckpt.latest_step()
      if last is None:
        ckpt.save(0, item(variables, opt_state, correct_of(variables), np.float32(np.nan)), force=True)
        last = 0
      elif last < cfg.epochs:
        # The newest verified epoch: a corrupt newest one is reported, moved aside and trained again.
        state = ckpt.restore(like)
        variables, opt_state = state["variables"], state["opt_state"]
        last = ckpt.latest_step()
      for e in range(last + 1, cfg.epochs + 1):
        variables, opt_state, loss = epoch_fn(variables, opt_state, x, y,
                                              jax.random.fold_in(data_key, e))
        correct = correct_of(variables)
        ckpt.save(e, item(variables, opt_state, correct, np.float32(loss)), force=True)
        if progress:
          acc = f", train acc (eval mode) {correct.mean():.4f}" if correct is not None else ""
          print(f"expert {i} epoch {e}/{cfg.epochs}: loss {float(loss):.4f}{acc}", flush=True)
      if cfg.record_correct:
        _write_scores(path)
    finally:
      ckpt.close()
  # Epochs 0..cfg.epochs only: a directory trained further by another run must not lend its later
  # epochs to this one.
  return load_trajectories(directory, experts, max_epoch=cfg.epochs)


def _write_scores(path: str) -> None:
  """The expert's correctness after each epoch (read alone from its checkpoints) and the scores from
  it, as ``SCORE_FILES``."""
  steps = [s for s in _saved_epochs(path) if s > 0]
  history = np.stack([np.asarray(c) for c in read_verified(path, steps, ("correct",))])
  for fname, arr in zip(SCORE_FILES, (history, forgetting_counts(history),
                                      first_learned_epoch(history))):
    tmp = os.path.join(path, fname + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, os.path.join(path, fname))


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Trajectories:
  """Expert trajectories as flat parameter vectors.

  Attributes:
    params: ``[num_experts, E + 1, P]`` float32 (host memory), ``params[i, e]`` = expert ``i`` after
      epoch ``e`` (0 = initialization), flattened with ``jax.flatten_util.ravel_pytree``.
    unravel: flat ``[P]`` -> the ``params`` pytree of the model.
    experts: the expert indices (directory names) of the rows.
    directory: where they were loaded from (None when built in memory).
  """
  params: np.ndarray
  unravel: Callable
  experts: tuple = ()
  directory: Optional[str] = None

  @property
  def num_experts(self) -> int:
    return int(self.params.shape[0])

  @property
  def num_epochs(self) -> int:
    """E: training epochs saved (``E + 1`` entries with the initialization)."""
    return int(self.params.shape[1]) - 1

  @property
  def num_params(self) -> int:
    return int(self.params.shape[2])

  def params_at(self, expert: int, epoch: int):
    """The parameter pytree of row ``expert`` after ``epoch``."""
    return self.unravel(jnp.asarray(self.params[expert, epoch]))

  def check_epochs(self, max_start_epoch: int, expert_epochs: int) -> None:
    """Raises unless start epochs ``[0, max_start_epoch)`` plus ``expert_epochs`` fit the trajectories."""
    check_epochs(self.num_epochs, max_start_epoch, expert_epochs, self.directory)

  def __repr__(self) -> str:
    return (f"Trajectories(num_experts={self.num_experts}, epochs={self.num_epochs}, "
            f"params={self.num_params}, directory={self.directory!r})")


def check_epochs(num_epochs: int, max_start_epoch: int, expert_epochs: int,
                 where: Optional[str] = None) -> None:
  """Raises a ValueError unless trajectories with ``num_epochs`` epochs cover every segment.

  Start epochs are drawn from ``[min_start_epoch, max_start_epoch)`` (the reference's
  ``randint(0, max_start_epoch)``) and the target is ``expert_epochs`` later, so epochs up to
  ``max_start_epoch - 1 + expert_epochs`` are needed.
  """
  if max_start_epoch < 1 or expert_epochs < 1:
    raise ValueError(f"max_start_epoch ({max_start_epoch}) and expert_epochs ({expert_epochs}) must be "
                     ">= 1.")
  need = max_start_epoch - 1 + expert_epochs
  if num_epochs < need:
    src = f" in {where}" if where else ""
    raise ValueError(
        f"The expert trajectories{src} have {num_epochs} epoch(s), too few for max_start_epoch="
        f"{max_start_epoch} and expert_epochs={expert_epochs}: start epochs up to "
        f"{max_start_epoch - 1} with targets {expert_epochs} epochs later need {need} epochs. Train the "
        f"experts longer (experts.train with cfg.epochs >= {need}) or lower max_start_epoch.")


def expert_indices(directory: str) -> list:
  """Sorted indices ``i`` of the ``expert_{i}`` directories under ``directory``."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No expert directory at {directory!r}; train experts with "
                            f"jaxdistill.experts.train first.")
  found = sorted(int(m.group(1)) for m in map(_EXPERT_RE.match, os.listdir(directory)) if m)
  if not found:
    raise FileNotFoundError(f"{directory!r} holds no expert_{{i}} directories; train experts with "
                            f"jaxdistill.experts.train first.")
  return found


def _saved_epochs(path: str) -> list:
  steps = saved_steps(path)
  if not steps:
    raise FileNotFoundError(f"No saved epochs in {path}.")
  if steps != list(range(len(steps))):
    missing = sorted(set(range(steps[-1] + 1)) - set(steps))
    raise ValueError(f"{path} lacks epoch(s) {missing}; its trajectory is incomplete.")
  return steps


def load_trajectory(directory: str, i: int, max_epoch: Optional[int] = None):
  """The saved ``params`` of expert ``i`` stacked over epochs: a pytree with leaves ``[E + 1, ...]``.

  Args:
    directory: the directory given to ``train``.
    i: expert index (``directory/expert_{i}``).
    max_epoch: load epochs ``0..max_epoch`` only (default: all saved).

  Raises:
    FileNotFoundError: no such expert or no saved epoch. ValueError: fewer than ``max_epoch`` epochs.
    jaxdistill.checkpoint.CorruptCheckpointError: an epoch's parameters differ from the checksums
    written with them, or cannot be read.
  """
  path = os.path.join(directory, EXPERT_DIR.format(i))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"No expert {i} in {directory!r} (expected {path}).")
  steps = _saved_epochs(path)
  if max_epoch is not None:
    if max_epoch > steps[-1]:
      raise ValueError(f"Expert {i} in {directory!r} has {steps[-1]} epoch(s); asked for "
                       f"{max_epoch}.")
    steps = steps[:max_epoch + 1]
  per_epoch = read_verified(path, steps, ("variables", "params"))
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x, np.float32) for x in xs]), *per_epoch)


def load_trajectories(directory: str, experts: Optional[Sequence[int]] = None,
                      max_epoch: Optional[int] = None) -> Trajectories:
  """Every (or the given) expert's trajectory, flattened and stacked into ``Trajectories``.

  Args:
    directory: the directory given to ``train``.
    experts: which expert indices (default: all ``expert_{i}`` found).
    max_epoch: load epochs ``0..max_epoch`` only; default: the fewest any expert has (so experts of
      different lengths stack). For MTT, ``max_start_epoch - 1 + expert_epochs`` is enough.

  Returns:
    ``Trajectories`` with ``params`` ``[num_experts, max_epoch + 1, P]``.

  Raises:
    FileNotFoundError: missing directory or expert. ValueError: an expert with fewer epochs than
    ``max_epoch``, or experts of different models.
  """
  experts = expert_indices(directory) if experts is None else list(experts)
  if max_epoch is None:
    lengths = []
    for i in experts:
      path = os.path.join(directory, EXPERT_DIR.format(i))
      if not os.path.isdir(path):
        raise FileNotFoundError(f"No expert {i} in {directory!r} (expected {path}).")
      lengths.append(_saved_epochs(path)[-1])
    max_epoch = min(lengths)
  rows, unravel = [], None
  for i in experts:
    traj = load_trajectory(directory, i, max_epoch)
    flat = jax.vmap(lambda t: ravel_pytree(t)[0])(jax.tree.map(jnp.asarray, traj))
    if unravel is None:
      unravel = ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a[0]), traj))[1]
    elif rows and flat.shape[1] != rows[0].shape[1]:
      raise ValueError(f"Expert {i} has {flat.shape[1]} parameters, expert {experts[0]} has "
                       f"{rows[0].shape[1]}: the directory mixes models.")
    rows.append(np.asarray(flat))
  return Trajectories(np.stack(rows), unravel, tuple(experts), os.path.abspath(directory))


def from_params(trajectories: Sequence[Sequence[Any]]) -> Trajectories:
  """``Trajectories`` from in-memory parameter pytrees: ``trajectories[i][e]`` = expert ``i``, epoch ``e``."""
  if not trajectories or not trajectories[0]:
    raise ValueError("from_params needs at least one expert with at least one epoch.")
  unravel = ravel_pytree(trajectories[0][0])[1]
  rows = [np.stack([np.asarray(ravel_pytree(p)[0], np.float32) for p in t]) for t in trajectories]
  if len({r.shape for r in rows}) != 1:
    raise ValueError(f"Experts differ in epochs or parameters: {[r.shape for r in rows]}.")
  return Trajectories(np.stack(rows), unravel, tuple(range(len(rows))), None)


def load_expert_scores(directory: str, i: int, max_epoch: Optional[int] = None) -> dict:
  """``{"correct": [E, N] bool, "forgetting": [N], "first_learned": [N]}`` of expert ``i``.

  ``max_epoch``: the scores of its first ``max_epoch`` epochs only (recomputed from ``correct``), for
  an expert trained further than the run that reads it; default: every epoch saved.

  Raises:
    FileNotFoundError: no score files (an expert trained without ``record_correct``, or unfinished).
    ValueError: fewer than ``max_epoch`` epochs recorded.
  """
  path = os.path.join(directory, EXPERT_DIR.format(i))
  out = {}
  for fname in SCORE_FILES:
    f = os.path.join(path, fname)
    if not os.path.exists(f):
      raise FileNotFoundError(f"No {fname} for expert {i} in {directory!r}: train it with "
                              f"record_correct=True to the end.")
    out[fname[:-4]] = np.load(f)
  if max_epoch is not None and max_epoch != len(out["correct"]):
    if max_epoch > len(out["correct"]) or max_epoch < 1:
      raise ValueError(f"Expert {i} in {directory!r} recorded {len(out['correct'])} epochs; asked for "
                       f"the scores of its first {max_epoch}.")
    h = out["correct"][:max_epoch]
    out = {"correct": h, "forgetting": forgetting_counts(h), "first_learned": first_learned_epoch(h)}
  return out
