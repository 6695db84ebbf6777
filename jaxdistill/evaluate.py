"""The standard evaluation protocol: train fresh networks on a (synthetic) set, report test accuracy.

Protocol (DC/DSA/DM/MTT reference ``evaluate_synset``): SGD momentum 0.9, weight decay 5e-4 (added to
the gradient, as PyTorch does), lr 0.01 (or the learned step size), batch 256, DSA augmentation (one op
per batch, per-sample parameters) with ``epochs`` E = 1000, or no augmentation with E = 300. As the
reference's ``for ep in range(E + 1)`` loop, E + 1 epochs are trained, and after the epoch with index
E // 2 + 1 the learning rate drops to a tenth with a new optimizer (momentum restarts):
``schedule="step"``. Mean ± std of the test accuracy over seeds. The papers' protocols (DC, DSA, DM,
MTT, IDC, SelMatch) are named presets: ``protocol(name, dataset_name)``.

Seeds are trained by one jitted program: all at once (``seed_parallel="vmap"``) or one network per call
(``"map"``, the default: the same compiled program for each seed, so progress can be reported; on a
CPU with 2 or more cores two such calls run at a time, from two threads: ``parallel_networks``); the
whole training run is a ``lax.scan`` over steps, and the last partial batch of an epoch is
kept (masked; BatchNorm networks run it at its real size, so the padding never enters their batch
statistics), as a PyTorch ``DataLoader`` without ``drop_last`` would.
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import threading
import time
from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import augment as augment_lib
from jaxdistill import models as models_lib
from jaxdistill import partial_updates
from jaxdistill import training
from jaxdistill.checks import check_images_labels, check_label_range
from jaxdistill.models.nets import state_of
from jaxdistill.types import Dataset, EvalResult, SyntheticSet

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


class EvalConfig(NamedTuple):
  """Hyperparameters of the evaluation protocol (defaults: the DC/DSA/DM/MTT reference).

  ``epochs=None`` means the reference's budget: 1000 epochs with DSA (any route "dsa", "dsa_image" or
  IDC's "idc"), 300 otherwise.
  ``augment`` is a name ("dsa", "dsa_image", "idc", "crop_flip", "none") or a function ``(key, x) -> x``;
  a tuple of them routes each row by ``groups`` (SelMatch's combined augmentation,
  ``partial_updates.combined_augment()``).
  ``loss``: "ce" (hard labels, or soft labels read as ``accuracy``'s / ``train``'s ``soft_labels`` says:
  logits by default) or "mse" (regression to the label rows, KIP).
  """
  epochs: Optional[int] = None
  lr: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 5e-4
  batch_size: int = 256
  # "step": the reference (E + 1 epochs; lr / 10 and momentum restarted after epoch index E // 2 + 1);
  # "half": E epochs, lr x0.1 from epoch E // 2 with momentum kept (a deliberate simplification);
  # "cosine" or "constant": E epochs.
  # "multistep": E epochs, lr x0.2 at the starts of epochs 2E // 3 and 5E // 6, momentum kept (IDC's
  # MultiStepLR); "cosine_epoch": E + 1 epochs, epoch e at lr * (0.01 + 0.99 * (1 + cos(pi e / E)) / 2)
  # (torch CosineAnnealingLR(T_max=E, eta_min=lr / 100) stepped per epoch; SelMatch).
  schedule: str = "step"
  augment: Union[str, AugmentFn, tuple] = "dsa"
  loss: str = "ce"
  # "cutmix": after the augmentation, each batch is CutMixed with probability mix_p (box from
  # Beta(mix_beta, mix_beta), targets mixed by area; IDC's evaluation). "none": no mixing.
  mix: str = "none"
  mix_p: float = 0.5
  mix_beta: float = 1.0
  # "map" (seeds one after another inside one program) or "vmap" (seeds batched). "map" is the default:
  # under vmap the per-batch DSA op choice is batched, so every op is computed and selected (clearly
  # slower on CPU); "vmap" may win on
  # accelerators with augment="none" / "crop_flip".
  seed_parallel: str = "map"
  # Test images predicted at once (the predictions do not depend on it): "auto" is 32 on CPU (faster:
  # activations stay in cache) and 256 (the references' test loader batch) on accelerators.
  test_batch_size: Union[int, str] = "auto"
  # Rows per gradient piece ("auto": 32 on CPU, whole batches on accelerators; 0: whole batches). The
  # same gradient up to float rounding; BatchNorm networks always run whole batches.
  microbatch: Union[int, str] = "auto"

  def num_epochs(self) -> int:
    if self.epochs is not None:
      return int(self.epochs)
    augs = self.augment if isinstance(self.augment, tuple) else (self.augment,)
    return 1000 if any(isinstance(a, str) and a in ("dsa", "dsa_image", "idc") for a in augs) else 300

  def trained_epochs(self) -> int:
    """Epochs actually trained: ``E + 1`` with ``"step"`` (the reference's) and ``"cosine_epoch"``,
    else ``E``."""
    return self.num_epochs() + (1 if self.schedule in ("step", "cosine_epoch") else 0)

  def restart_epoch(self) -> Optional[int]:
    """The epoch at whose start the learning rate drops to a tenth and momentum restarts
    (``"step"``: ``E // 2 + 2``, i.e. after the epoch with index ``E // 2 + 1``), or None."""
    if self.schedule != "step":
      return None
    e = self.num_epochs()
    return e // 2 + 2 if e // 2 + 2 <= e else None


class Protocol(NamedTuple):
  """A paper's evaluation protocol: how each fresh network trains (``cfg``), how many are trained
  (``num_models``, the paper's), which network, whether a set's learned step size is used, and the
  code it is read from (``source``)."""
  name: str
  cfg: EvalConfig
  num_models: int
  model: str
  model_kwargs: tuple  # (name, value) pairs, hashable; ``dict(p.model_kwargs)`` for ``accuracy``
  use_learned_lr: bool
  source: str


PROTOCOLS = ("dc", "dsa", "dm", "mtt", "idc", "selmatch")
# The EvalConfig fields that, with the epochs, define a protocol (the others choose how it is computed).
PROTOCOL_FIELDS = ("lr", "momentum", "weight_decay", "batch_size", "schedule", "augment", "loss", "mix",
                   "mix_p", "mix_beta")
# How [N, K] float labels are read under the cross-entropy loss (``train``'s ``soft_labels``).
SOFT_LABELS = ("logits", "probs")


def check_config(cfg: EvalConfig) -> None:
  """Refuses an ``EvalConfig`` whose numbers cannot describe a training run (each error names the
  field): epochs or batch size below 1, a negative learning rate, momentum outside
  [0, 1), negative weight decay, ``mix_p`` outside [0, 1], ``mix_beta`` not positive, an unknown loss."""
  def bad(field, value, want):
    raise ValueError(f"EvalConfig.{field} must be {want}; got {value!r}.")
  if cfg.epochs is not None and (isinstance(cfg.epochs, bool) or int(cfg.epochs) != cfg.epochs
                                 or cfg.epochs < 1):
    bad("epochs", cfg.epochs, "None or an int >= 1")
  if isinstance(cfg.batch_size, bool) or int(cfg.batch_size) != cfg.batch_size or cfg.batch_size < 1:
    bad("batch_size", cfg.batch_size, "an int >= 1")
  if not np.isfinite(cfg.lr) or cfg.lr < 0:
    bad("lr", cfg.lr, "a finite number >= 0 (0 leaves the networks at their initialization)")
  if not 0.0 <= cfg.momentum < 1.0:
    bad("momentum", cfg.momentum, "in [0, 1)")
  if not np.isfinite(cfg.weight_decay) or cfg.weight_decay < 0:
    bad("weight_decay", cfg.weight_decay, "a finite number >= 0")
  if not 0.0 <= cfg.mix_p <= 1.0:
    bad("mix_p", cfg.mix_p, "in [0, 1]")
  if not cfg.mix_beta > 0:
    bad("mix_beta", cfg.mix_beta, "> 0")
  if cfg.loss not in ("ce", "mse"):
    bad("loss", cfg.loss, "'ce' or 'mse'")



def protocol(name: str, dataset_name: Optional[str] = None, ratio: Optional[float] = None,
             ipc: Optional[int] = None, factor: Optional[int] = None) -> Protocol:
  """The evaluation protocol of a paper's code by name (``PROTOCOLS``) for a dataset.

  All train the field's ConvNet (width 128, instance norm; depth 3, or 4 on Tiny-ImageNet's 64x64
  images) with SGD momentum 0.9, weight decay 5e-4, lr 0.01, batch 256 and the reference's step
  schedule (``EvalConfig``'s defaults):

  - ``"dc"`` (DatasetCondensation ``main.py --method DC``, ``utils.get_daparam``): 300 epochs without
    augmentation, 20 networks. On MNIST DC trains 1000 epochs with its crop / scale / rotate
    augmentation, which this library does not implement: refused.
  - ``"dsa"`` (``main.py --method DSA``) and ``"dm"`` (``main_DM.py``): 1000 epochs with DSA, 20 networks.
  - ``"mtt"`` (mtt-distillation ``distill.py``): 1000 epochs with DSA, 5 networks, trained with the set's
    learned step size.
  - ``"idc"`` (IDC ``argument.py`` / ``train.py``, datasets other than ImageNet): 1000 epochs, batch 64,
    IDC's DSA (``augment="idc"``), CutMix with probability 0.5 (``mix="cutmix"``), lr 0.01 with
    ``schedule="multistep"`` (x0.2 at 2/3 and 5/6 of the epochs). IDC's ``test.py`` trains one network
    per run by default (``--repeat``); 5 here. Its per-setting changes are followed where they apply:
    on MNIST with ``factor`` > 1 no CutMix (pass ``factor``); on SVHN at ``ipc`` 1 and ``factor`` 1 it
    also adds cutout to the strategy, which is refused here (pass ``ipc`` and ``factor`` on SVHN).
  - ``"selmatch"`` (SelMatch ``eval.py``, ``utils.evaluate_synset``, ``scripts/eval``): ResNet-18 with
    BatchNorm, lr 0.1, batch 128, ``schedule="cosine_epoch"``, ``round(50 / ratio)`` epochs for the set's
    share ``ratio`` of the training set (1000 at 5%, 500 at 10%, 250 at 20%, 167 at 30%), DSA, 5
    networks, the learned step size never used. SelMatch's sets train with combined augmentation
    (``cfg.augment=partial_updates.combined_augment()`` and ``partial_updates.augment_groups``: DSA
    with one op per image on the distilled rows, crop + flip on the frozen ones), random and window
    sets with DSA (one op per batch).

  ``accuracy(key, syn, data, model=p.model, num_seeds=p.num_models, cfg=p.cfg,
  model_kwargs=dict(p.model_kwargs), use_learned_lr=p.use_learned_lr)`` evaluates under it.

  Raises:
    ValueError: an unknown name, or a protocol this library cannot run on the dataset.
  """
  if name not in PROTOCOLS:
    raise ValueError(f"Unknown evaluation protocol {name!r}; known: {list(PROTOCOLS)}.")
  ds = (dataset_name or "").lower()
  if name == "dc" and ds == "mnist":
    raise ValueError("DC's protocol on MNIST trains 1000 epochs with DC's crop / scale / rotate "
                     "augmentation (utils.get_daparam), which this library does not implement; use "
                     "protocol 'dsa', or an EvalConfig of your own.")
  if name == "idc" and ds == "mnist":
    if factor is None:
      raise ValueError("IDC's evaluation on MNIST depends on the multi-formation factor (test.py: no "
                       "CutMix when factor > 1): pass factor=.")
  if name == "idc" and ds.startswith("svhn"):
    if ipc is None or factor is None:
      raise ValueError("IDC's evaluation on SVHN depends on the IPC and factor (test.py: IPC 1 with "
                       "factor 1 trains without CutMix and with cutout): pass ipc= and factor=.")
    if ipc == 1 and factor == 1:
      raise ValueError("IDC's evaluation on SVHN at IPC 1, factor 1 uses the strategy "
                       "'color_crop_cutout_scale_rotate' without CutMix, which protocol('idc') does "
                       "not express; build an EvalConfig of your own.")
  if name == "selmatch":
    if ratio is None or not 0 < ratio <= 1:
      raise ValueError(f"SelMatch's protocol trains round(50 / ratio) epochs: pass the set's share of "
                       f"the training set, 0 < ratio <= 1; got ratio={ratio!r}.")
    return Protocol(name, EvalConfig(epochs=round(50 / ratio), lr=0.1, batch_size=128,
                                     schedule="cosine_epoch", augment="dsa"), 5,
                    "resnet18bn_tiny" if "tiny_imagenet" in ds else "resnet18bn", (),
                    False, "SelMatch eval.py, utils.evaluate_synset and scripts/eval")
  kwargs = (("width", 128), ("depth", 4 if "tiny_imagenet" in ds else 3))
  if name == "dc":
    return Protocol(name, EvalConfig(epochs=300, augment="none"), 20, "convnet", kwargs, False,
                    "DatasetCondensation main.py (--method DC) and utils.get_daparam")
  if name in ("dsa", "dm"):
    src = "DatasetCondensation main.py (--method DSA)" if name == "dsa" else \
        "DatasetCondensation main_DM.py"
    return Protocol(name, EvalConfig(epochs=1000, augment="dsa"), 20, "convnet", kwargs, False, src)
  if name == "mtt":
    return Protocol(name, EvalConfig(epochs=1000, augment="dsa"), 5, "convnet", kwargs, True,
                    "mtt-distillation distill.py (num_eval 5, epoch_eval_train 1000, learned lr)")
  no_mix = ds == "mnist" and factor > 1  # test.py: mixup 'vanilla'
  return Protocol(name, EvalConfig(epochs=1000, batch_size=64, schedule="multistep", augment="idc",
                                   mix="none" if no_mix else "cutmix", mix_p=0.5), 5, "convnet", kwargs,
                  False,
                  "Efficient-Dataset-Condensation argument.py and train.py (5 networks here)")


def _lr_schedule(cfg: EvalConfig, lr: jax.Array, total_steps: int, steps_per_epoch: int):
  """Step-indexed learning rate; ``lr`` may be a traced array (a learned step size)."""
  if cfg.schedule == "step":
    restart = cfg.restart_epoch()
    if restart is None:
      return lambda step: lr
    boundary = restart * steps_per_epoch
    return lambda step: lr * jnp.where(step < boundary, 1.0, 0.1).astype(lr.dtype)
  if cfg.schedule == "half":
    boundary = (cfg.num_epochs() // 2) * steps_per_epoch
    return lambda step: lr * jnp.where(step < boundary, 1.0, 0.1).astype(lr.dtype)
  if cfg.schedule == "multistep":
    e = cfg.num_epochs()
    first, second = (2 * e // 3) * steps_per_epoch, (5 * e // 6) * steps_per_epoch
    return lambda step: lr * jnp.where(step < first, 1.0,
                                       jnp.where(step < second, 0.2, 0.04)).astype(lr.dtype)
  if cfg.schedule == "cosine_epoch":
    e = cfg.num_epochs()
    return lambda step: lr * (0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(
        jnp.pi * (step // steps_per_epoch).astype(lr.dtype) / e)))
  if cfg.schedule == "cosine":
    return lambda step: lr * 0.5 * (1.0 + jnp.cos(jnp.pi * step.astype(lr.dtype) / total_steps))
  if cfg.schedule == "constant":
    return lambda step: lr
  raise ValueError(f"Unknown schedule {cfg.schedule!r}; known: 'step', 'half', 'multistep', "
                   f"'cosine_epoch', 'cosine', 'constant'.")


def init_variables(key: jax.Array, model, image_shape: Sequence[int]):
  """Initializes a model's variables for ``[1, *image_shape]`` inputs (any model
  ``jaxdistill.models.adapt`` accepts; a user's model keeps its own initialization)."""
  return models_lib.adapt(model).init(key, jnp.zeros((1, *image_shape), jnp.float32))


def train(key: jax.Array, model, images: jax.Array, labels: jax.Array, cfg: EvalConfig = EvalConfig(),
          lr: Optional[jax.Array] = None, groups: Optional[jax.Array] = None,
          dataset_name: Optional[str] = None, variables=None, soft_labels: str = "logits"):
  """Trains one fresh network on ``images`` with the protocol; pure and jittable (cfg static).

  Args:
    key: PRNG key (initialization, shuffling, augmentation).
    model: any model ``jaxdistill.models.adapt`` accepts (logits ``[B, K]``).
    images: ``[N, H, W, C]`` float32.
    labels: ``[N]`` int32 or ``[N, K]`` float32 soft labels.
    cfg: the protocol (static).
    lr: optional traced learning rate overriding ``cfg.lr`` (e.g. ``exp(syn.log_lr)``).
    groups: ``[N]`` int32 row groups routing ``cfg.augment`` when it is a tuple.
    variables: optional initial variables (default: fresh from ``key``).
    soft_labels: how ``[N, K]`` labels are read under ``cfg.loss="ce"`` (``SOFT_LABELS``): "logits"
      (the default: the targets are ``softmax(labels)``, DATM's ``SoftCrossEntropy`` and how the
      trajectory objective trains a set's soft labels) or "probs" (each row is already the target
      distribution). Under "mse" the rows are the regression targets either way.

  Returns:
    The trained variables.
  """
  check_config(cfg)
  if soft_labels not in SOFT_LABELS:
    raise ValueError(f"Unknown soft_labels {soft_labels!r}; known: {SOFT_LABELS}.")
  if labels.ndim == 2 and cfg.loss == "ce" and soft_labels == "logits":
    labels = jax.nn.softmax(labels, axis=-1)
  n = images.shape[0]
  bs = min(cfg.batch_size, n)
  steps_per_epoch = -(-n // bs)
  total = cfg.trained_epochs() * steps_per_epoch
  augs = cfg.augment if isinstance(cfg.augment, tuple) else (cfg.augment,)
  augs = tuple(training.resolve_augment(a, dataset_name) for a in augs)
  if len(augs) > 1 and groups is None:
    raise ValueError("A tuple of augmentations needs `groups` (one group id per row).")
  if groups is not None and not isinstance(cfg.augment, tuple):
    raise ValueError("`groups` route the rows among a tuple of augmentations, but cfg.augment is "
                     f"{cfg.augment!r}, not a tuple: the groups would be ignored.")
  lr = jnp.asarray(cfg.lr if lr is None else lr, jnp.float32)

  schedule = _lr_schedule(cfg, lr, total, steps_per_epoch)
  restart = cfg.restart_epoch()
  restart_step = -1 if restart is None else restart * steps_per_epoch
  # PyTorch's SGD: g + wd * p into the momentum buffer, p -= lr * buffer. The reference's decay builds a
  # new optimizer, so the buffer restarts from zero at restart_step.
  tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.trace(decay=cfg.momentum))
  init_key, data_key = jax.random.split(key)
  if variables is None:
    variables = init_variables(init_key, model, images.shape[1:])
  model = models_lib.adapt(model)
  params = variables["params"]
  stats = state_of(variables) or None
  if cfg.mix not in ("none", "cutmix"):
    raise ValueError(f"Unknown mix {cfg.mix!r}; known: 'none', 'cutmix'.")
  num_classes = jax.eval_shape(lambda: training.forward(model, variables, images[:1], train=False)[0]
                               ).shape[-1] if cfg.mix == "cutmix" and labels.ndim == 1 else None

  def step(carry, inputs):
    params, stats, opt_state, t = carry
    opt_state = jax.tree.map(lambda s: jnp.where(t == restart_step, jnp.zeros_like(s), s), opt_state)
    idx, valid, k = inputs
    y = labels[idx]
    if cfg.mix == "cutmix":
      k, k_mix = jax.random.split(k)
    x = partial_updates.route_augment(augs, k, images[idx], None if groups is None else groups[idx])
    if cfg.mix == "cutmix":
      x, y = augment_lib.cutmix(k_mix, x, y if y.ndim == 2 else jax.nn.one_hot(y, num_classes), valid,
                                cfg.mix_p, cfg.mix_beta)
    _, new_stats, grads = training.loss_and_grads(model, params, stats, x, y, valid, cfg.loss,
                                                     cfg.microbatch,
                                                     key=jax.random.fold_in(k, training.DROPOUT_FOLD))
    updates, opt_state = tx.update(grads, opt_state, params)
    rate = schedule(t)
    params = jax.tree.map(lambda p, u: p - rate * u, params, updates)
    return (params, new_stats, opt_state, t + 1), None

  def epoch(carry, k):
    return training.scan_epoch(step, carry, k, n, cfg.batch_size, exact_last=stats is not None)[0], None

  carry = (params, stats, tx.init(params), jnp.zeros((), jnp.int32))
  (params, stats, _, _), _ = jax.lax.scan(epoch, carry,
                                          jax.random.split(data_key, cfg.trained_epochs()))
  return {"params": params, **(stats or {})}


def resolve_test_batch(test_batch_size) -> int:
  """The batch ``EvalConfig.test_batch_size`` runs ("auto": 32 on CPU, 256 on accelerators)."""
  if test_batch_size == "auto":
    return training.resolve_microbatch("auto") or 256
  if isinstance(test_batch_size, bool) or not isinstance(test_batch_size, (int, np.integer)) \
      or test_batch_size < 1:
    raise ValueError(f"test_batch_size must be 'auto' or an int >= 1; got {test_batch_size!r}.")
  return int(test_batch_size)


def predict(model, variables, x: jax.Array, batch_size="auto") -> jax.Array:
  """Predicted classes ``[M]`` for ``x`` ``[M, H, W, C]`` (eval mode, in batches).

  A model left at ``conv_impl="auto"`` predicts with ``lax.conv`` (the same variables): no gradient flows
  here, and on CPU XLA's convolution is the faster forward (on accelerators "auto" means it anyway)."""
  model = models_lib.prefer_conv(model, "lax")
  m = x.shape[0]
  bs = min(resolve_test_batch(batch_size), m)
  nb = -(-m // bs)
  xp = jnp.concatenate([x, jnp.zeros((nb * bs - m, *x.shape[1:]), x.dtype)]) if nb * bs > m else x
  preds = jax.lax.map(lambda xb: training.forward(model, variables, xb, train=False)[0].argmax(-1),
                      xp.reshape(nb, bs, *x.shape[1:]))
  return preds.reshape(-1)[:m]


@functools.partial(jax.jit, static_argnames=("model", "cfg", "dataset_name", "soft_labels"))
def _train_and_test(keys, model, images, labels, x_test, y_test, lr, groups, cfg, dataset_name,
                    soft_labels="logits"):
  """``(correctness [len(keys), M] bool, finite [len(keys)] bool)`` of one network trained on the set
  per key; ``finite``: every trained parameter is a finite number."""

  def one(k):
    variables = train(k, model, images, labels, cfg, lr=lr, groups=groups, dataset_name=dataset_name,
                      soft_labels=soft_labels)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(variables)]))
    return predict(model, variables, x_test, cfg.test_batch_size) == y_test, finite

  if cfg.seed_parallel == "vmap":
    return jax.vmap(one)(keys)
  if cfg.seed_parallel == "map":
    return jax.lax.map(one, keys)
  raise ValueError(f"Unknown seed_parallel {cfg.seed_parallel!r}; known: 'vmap', 'map'.")


def resolve_parallel_networks(parallel_networks) -> int:
  """Networks trained at once under ``seed_parallel="map"``: ``"auto"`` is 2 on XLA's CPU backend when
  the process may use at least 2 cores (two programs side by side keep the cores busier than one),
  else 1; an int >= 1 is taken as is."""
  if parallel_networks == "auto":
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if jax.default_backend() == "cpu" and cores >= 2 else 1
  if isinstance(parallel_networks, bool) or not isinstance(parallel_networks, (int, np.integer)) \
      or parallel_networks < 1:
    raise ValueError(f"parallel_networks must be 'auto' or an int >= 1; got {parallel_networks!r}.")
  return int(parallel_networks)


class NetworkCache:
  """Each trained network's test correctness ``[M]`` (bool), one ``.npy`` file per network under
  ``directory``, named by a digest of everything the network depends on (``parts``: the set, the
  protocol, the model, the test set) and its key; written atomically as each network finishes."""

  def __init__(self, directory: str, parts: tuple):
    self.directory = directory
    h = hashlib.sha256()
    for part in parts:
      h.update(part if isinstance(part, bytes) else repr(part).encode())
      h.update(b"\0")
    self.digest = h.hexdigest()[:24]

  def path(self, key) -> str:
    k = hashlib.sha256(np.asarray(jax.random.key_data(key)).tobytes()).hexdigest()[:16]
    return os.path.join(self.directory, f"net_{self.digest}_{k}.npy")

  def load(self, key, size: int) -> Optional[np.ndarray]:
    path = self.path(key)
    if not os.path.exists(path):
      return None
    try:
      got = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise ValueError(f"The cached network result {path} is unreadable ({e}): delete it to train "
                       f"that network again.") from e
    if got.dtype != bool or got.shape != (size,):
      raise ValueError(f"The cached network result {path} holds {got.dtype} {got.shape}, not the "
                       f"bool ({size},) of this test set: delete it to train that network again.")
    return got

  def save(self, key, correct: np.ndarray) -> None:
    os.makedirs(self.directory, exist_ok=True)
    path = self.path(key)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp.npy"
    np.save(tmp, np.asarray(correct, bool))
    os.replace(tmp, path)


def _correctness(keys, progress, run, parallel_networks="auto",
                 cache: Optional[NetworkCache] = None) -> np.ndarray:
  """``run(keys)`` (``_train_and_test`` with everything else bound) for every key: all at once under
  ``"vmap"``, else one network per call (the same compiled program each time; after the first, which
  compiles it, ``parallel_networks`` calls at a time from as many threads), reporting each finished
  network to ``progress``. Each network's result is the same whatever runs beside it. With ``cache``,
  networks it holds are read back instead of trained, and each trained one is stored."""
  cfg = run.keywords["cfg"]
  size = run.keywords["y_test"].shape[0]
  workers = resolve_parallel_networks(parallel_networks)
  n, t0 = keys.shape[0], time.time()
  out = [None if cache is None else cache.load(keys[i], size) for i in range(n)]
  todo = [i for i in range(n) if out[i] is None]
  def trained(idx):  # [len(idx), M] correctness; a network trained to NaN / inf is refused
    got, finite = run(keys[np.asarray(idx)])
    for i, ok in zip(idx, np.asarray(finite)):
      if not ok:
        raise ValueError(f"Evaluation network {i} trained to NaN or inf parameters (a learning rate "
                         f"too large for the protocol, or labels it cannot fit): its accuracy would be "
                         f"meaningless, so none is reported.")
    return np.asarray(got)

  if cfg.seed_parallel == "vmap" and todo:
    got = trained(todo)
    for i, row in zip(todo, got):
      out[i] = row
      if cache is not None:
        cache.save(keys[i], row)
    todo = []
  done, lock = [n - len(todo)], threading.Lock()
  if progress and done[0]:
    progress(f"evaluation: {done[0]}/{n} networks read back from {cache.directory}")

  def one(i):
    out[i] = trained([i])[0]
    if cache is not None:
      cache.save(keys[i], out[i])
    with lock:
      done[0] += 1
      if progress:
        progress(f"evaluation: network {done[0]}/{n} trained ({cfg.trained_epochs()} epochs), "
                 f"test accuracy {100 * out[i].mean():.2f}%, {time.time() - t0:.0f} s")

  if todo:
    one(todo[0])
  if workers == 1:
    for i in todo[1:]:
      one(i)
  elif todo[1:]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(one, todo[1:]))
  return np.stack(out)


def _as_images_labels(syn):
  if isinstance(syn, SyntheticSet):
    return syn.images, syn.labels, syn.log_lr
  images, labels = syn
  return images, labels, None


def accuracy(key: jax.Array, syn: Union[SyntheticSet, tuple], data: Dataset,
             model: Union[str, object] = "convnet", num_seeds: int = 5,
             cfg: EvalConfig = EvalConfig(), model_kwargs: Optional[dict] = None,
             use_learned_lr: bool = True, groups: Optional[np.ndarray] = None,
             test_groups: Optional[dict] = None,
             progress: Union[bool, Callable[[str], None]] = False,
             parallel_networks: Union[int, str] = "auto",
             cache_dir: Optional[str] = None, soft_labels: str = "logits") -> EvalResult:
  """Trains ``num_seeds`` fresh networks on ``syn`` and returns their test accuracy (mean ± std).

  Args:
    key: PRNG key; the same key gives the same accuracies.
    syn: a ``SyntheticSet`` or ``(images [N, H, W, C], labels [N] or [N, K])``.
    data: the dataset whose test split is used (``data.x_test``, ``data.y_test``).
    model: a registry name (``jaxdistill.models.MODEL_NAMES``) or any model
      ``jaxdistill.models.adapt`` accepts (a Flax linen module of any call signature, an NNX module
      class, ``models.equinox_model(...)``, ``models.functions(init, apply)``); its logits must be
      ``[B, data.num_classes]``.
    num_seeds: networks trained (their keys split from ``key``).
    cfg: the protocol.
    model_kwargs: passed to ``models.get_model`` with a name (e.g. ``{"width": 64}``).
    use_learned_lr: train with ``exp(syn.log_lr)`` (MTT's learned step size) when the set has one.
    groups: ``[N]`` row groups for a tuple ``cfg.augment`` (combined augmentation).
    test_groups: ``{name: bool [M]}`` subsets of the test set to report accuracy on as well.
    progress: True (print) or a function of one line: reports each trained network (with
      ``cfg.seed_parallel="map"``; under ``"vmap"`` all networks finish together).
    parallel_networks: under ``cfg.seed_parallel="map"``, networks trained at once, each by its own
      thread (``resolve_parallel_networks``: "auto" is 2 on a CPU backend with 2 or more cores, else 1).
      The accuracies do not depend on it.
    cache_dir: where each trained network's test correctness is stored as it finishes (by the set's
      content, the protocol, the model, the test set and the network's key) and read back by a later
      call, so a stopped evaluation resumes where it stopped. Network ``i``'s key is the same for
      any ``num_seeds`` above ``i``, so more networks later reuse the ones already trained. A ``cfg``
      holding a function (an ``augment`` callable) cannot be identified and is refused.
    soft_labels: how ``[N, K]`` labels are read under ``cfg.loss="ce"``: "logits" (the default, the
      library's convention: targets ``softmax(labels)``, as the trajectory objective trains them and
      DATM evaluates them; rows that are all probability distributions are refused, as they would be
      smoothed) or "probs" (rows are the target distributions; rows that are not are refused).

  Returns:
    ``EvalResult(mean, std, accuracies [num_seeds], group_accuracies)``.

  Raises:
    ValueError: a set that does not fit ``data`` (or integer pixel values), test images holding NaN
      or inf (the rows named), soft labels that do not
      match ``soft_labels``, a bad or per-step learned step size, ``num_seeds`` below 1, ``groups``
      that do not route the set's rows, a bad ``cfg``, a network trained to NaN or inf, a
      ``cache_dir`` with a function in ``cfg``, or an unreadable cached network.
  """
  images, labels, log_lr = _as_images_labels(syn)
  if jnp.issubdtype(jnp.asarray(images).dtype, jnp.integer):
    raise ValueError(f"Synthetic images are integers ({jnp.asarray(images).dtype}): pass float images "
                     f"on the dataset's scale (normalized as data.x_train).")
  images = jnp.asarray(images, jnp.float32)
  labels = jnp.asarray(labels)
  _check_set(images, labels, data)
  check_images_labels(data.x_test, data.y_test, "test", hard=True)  # NaN / inf rows named
  _check_soft_labels(labels, cfg.loss, soft_labels)
  check_config(cfg)
  for name, mask in (test_groups or {}).items():
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (len(data.y_test),):
      raise ValueError(f"test_groups[{name!r}] must be a bool mask over the {len(data.y_test)} test "
                       f"images; got {mask.dtype} {mask.shape} (an index array would be read as a "
                       f"mask).")
  if isinstance(num_seeds, bool) or not isinstance(num_seeds, (int, np.integer)) or num_seeds < 1:
    raise ValueError(f"num_seeds must be an int >= 1; got {num_seeds!r}.")
  if isinstance(model, str):
    model = models_lib.get_model(model, data.num_classes, **(model_kwargs or {}))
  elif model_kwargs:
    raise ValueError("model_kwargs are options of a registry name (model='convnet', ...); this model "
                     "is already built: pass its options to it instead.")
  model = models_lib.adapt(model)
  out = jax.eval_shape(lambda k, x: training.forward(model, model.init(k, x), x, train=False)[0],
                       jax.random.key(0), images[:1])
  if out.shape[-1] != data.num_classes:
    raise ValueError(f"The model gives {out.shape[-1]} logits but {data.name!r} has "
                     f"{data.num_classes} classes.")
  lr = None
  if use_learned_lr and log_lr is not None:
    log_lr = jnp.asarray(log_lr, jnp.float32)
    if log_lr.size != 1:
      raise ValueError(f"The set has {log_lr.size} learned step sizes (DD's one per unrolled step); "
                       f"the protocol trains with one: pass use_learned_lr=False (DD's own training is "
                       f"objectives.dd_train) or a set with a single log_lr.")
    lr = jnp.exp(log_lr).reshape(-1)[0]
    if not bool(jnp.isfinite(lr)) or float(lr) <= 0:
      raise ValueError(f"The set's learned step size exp(log_lr) = {float(lr)} is not a finite positive "
                       f"number.")
  if groups is not None:
    groups = np.asarray(groups)
    routes = len(cfg.augment) if isinstance(cfg.augment, tuple) else 1
    if groups.shape != (images.shape[0],) or not np.issubdtype(groups.dtype, np.integer):
      raise ValueError(f"groups must be [N={images.shape[0]}] integers (one augmentation route per "
                       f"row); got {groups.dtype} {groups.shape}.")
    if groups.size and (groups.min() < 0 or groups.max() >= routes):
      raise ValueError(f"groups must lie in [0, {routes}) (cfg.augment has {routes} route(s)); got "
                       f"[{groups.min()}, {groups.max()}].")
    groups = jnp.asarray(groups, jnp.int32)
  if progress is True:
    progress = functools.partial(print, flush=True)
  run = functools.partial(_train_and_test, model=model, images=images, labels=labels,
                          x_test=jnp.asarray(data.x_test), y_test=jnp.asarray(data.y_test), lr=lr,
                          groups=groups, cfg=cfg, dataset_name=data.name, soft_labels=soft_labels)
  cache = None
  if cache_dir is not None:
    if any(callable(v) for v in jax.tree.leaves(tuple(cfg))):
      raise ValueError("cache_dir: this cfg holds a function (e.g. an augment callable), which cannot "
                       "identify a cached network; pass augment by name or leave cache_dir unset.")
    cache = NetworkCache(cache_dir, (
        "jaxdistill.evaluate.accuracy v1", np.asarray(images).tobytes(), images.shape,
        np.asarray(labels).tobytes(), labels.shape, labels.dtype, None if lr is None else float(lr),
        None if groups is None else np.asarray(groups).tobytes(),
        tuple(cfg._replace(epochs=cfg.num_epochs())), model.identity(),
        data.name, np.asarray(data.x_test).tobytes(), np.asarray(data.y_test).tobytes())
        + ((("soft_labels", soft_labels),) if labels.ndim == 2 else ()))
  correct = _correctness(jax.random.split(key, num_seeds), progress or None, run, parallel_networks,
                         cache)
  accs = correct.mean(axis=1)
  group_accs = None
  if test_groups:
    group_accs = {name: correct[:, np.asarray(mask)].mean(axis=1)
                  for name, mask in test_groups.items()}
  return EvalResult(float(accs.mean()), float(accs.std()), accs, group_accs)


def _check_soft_labels(labels, loss: str, soft_labels: str) -> None:
  """Refuses ``[N, K]`` labels that contradict ``soft_labels`` under the cross-entropy loss."""
  if soft_labels not in SOFT_LABELS:
    raise ValueError(f"Unknown soft_labels {soft_labels!r}; known: {SOFT_LABELS}.")
  if labels.ndim != 2 or loss != "ce" or not labels.size:
    return
  rows = np.asarray(labels, np.float64)
  is_dist = (rows >= 0).all(axis=1) & (np.abs(rows.sum(axis=1) - 1.0) <= 1e-4)
  if soft_labels == "logits" and is_dist.all():
    raise ValueError("Every soft-label row is a probability distribution, but soft labels are read as "
                     "logits (targets softmax(labels), the library's convention), which would smooth "
                     "them: pass soft_labels='probs' for target distributions, or hard int labels.")
  if soft_labels == "probs" and not is_dist.all():
    raise ValueError(f"soft_labels='probs' needs every row to be a distribution (>= 0, summing to 1); "
                     f"{int((~is_dist).sum())} of {len(rows)} rows are not (logits, e.g. a DATM set's, "
                     f"are read with soft_labels='logits').")


def _check_set(images, labels, data: Dataset) -> None:
  if images.ndim != 4:
    raise ValueError(f"Synthetic images must be [N, H, W, C]; got shape {images.shape}.")
  if tuple(images.shape[1:]) != tuple(data.image_shape):
    raise ValueError(f"Synthetic images have shape {images.shape[1:]} per image but the dataset "
                     f"{data.name!r} has {data.image_shape}.")
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
  if not bool(jnp.all(jnp.isfinite(images))):
    raise ValueError("Synthetic images contain NaN or inf.")
  if labels.ndim == 1:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"Hard labels must be integers; got {labels.dtype}.")
    check_label_range(labels, data.num_classes)
  elif labels.ndim != 2 or labels.shape[1] != data.num_classes:
    raise ValueError(f"Soft labels must be [N, {data.num_classes}]; got {labels.shape}.")
  elif not bool(jnp.all(jnp.isfinite(labels))):
    raise ValueError("Soft labels contain NaN or inf.")
