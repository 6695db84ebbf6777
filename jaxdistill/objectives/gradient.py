"""Gradient matching: DC (Zhao et al., ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

Per class c, the gradient of the classification loss w.r.t. the network's weights on a real batch and on
the synthetic images of class c are compared with the reference distance: for every weight tensor, the
sum over output rows of ``1 - cos(g_real_row, g_syn_row)``; 1-D tensors (biases, norm scales) add 0.
DSA applies one siamese DSA transform (one key per class) to both batches.

The network is part of the objective's state: one step of the loop is one *outer* step of the
reference; after it the network is trained for ``inner_loop`` epochs on the synthetic set (lr_net 0.01,
SGD), except after the last outer step of an iteration, where a fresh network is drawn. Outer/inner
loops by IPC (reference): 1 -> (1, 1), 10 -> (10, 50), 50 -> (50, 10). Images: SGD lr 0.1,
momentum 0.5; 256 real images per class.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxdistill import training
from jaxdistill.augment import check_siamese, cutmix, map_groups
from jaxdistill.checks import check_positive_int
from jaxdistill.objectives.base import Objective, pmean
from jaxdistill.models.nets import as_net, has_state, state_of
from jaxdistill.objectives.common import (check_class_major, check_per_class_batch, class_major,
                                          cross_entropy, identity_augment)

LOOPS_BY_IPC = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def loops_for_ipc(ipc: int) -> tuple:
  """(outer_loop, inner_loop) of the DC/DSA reference for ``ipc``."""
  if ipc not in LOOPS_BY_IPC:
    raise ValueError(f"No reference (outer, inner) loops for ipc={ipc}; known: "
                     f"{sorted(LOOPS_BY_IPC)}. Pass outer_loop/inner_loop explicitly.")
  return LOOPS_BY_IPC[ipc]


def _rows(g: jax.Array) -> Optional[jax.Array]:
  """A weight gradient as ``[out, fan_in]`` rows (Flax kernels keep the output axis last)."""
  if g.ndim <= 1:
    return None
  return jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)


def gradient_distance(g_real, g_syn, eps: float = 1e-6) -> jax.Array:
  """The DC reference distance between two gradient pytrees (0 for identical gradients)."""
  total = jnp.zeros((), jnp.float32)
  for gr, gs in zip(jax.tree.leaves(g_real), jax.tree.leaves(g_syn)):
    r, s = _rows(gr), _rows(gs)
    if r is None:
      continue
    # optax.safe_norm: an all-zero row (a dead ReLU unit) has norm 0 with gradient 0, as PyTorch's
    # norm backward gives; jnp.linalg.norm's gradient there is NaN.
    norm = lambda x: optax.safe_norm(x, 0.0, axis=-1)
    cos = jnp.sum(r * s, -1) / (norm(r) * norm(s) + eps)
    total = total + jnp.sum(1.0 - cos)
  return total


class DCState(NamedTuple):
  variables: dict  # the network being trained on the synthetic set
  outer: jax.Array  # int32: outer steps done in this iteration


def gradient_matching(net, num_classes: int, outer_loop: int, inner_loop: int,
                      augment: Optional[Callable] = None, train_augment: Optional[Callable] = None,
                      lr_net: float = 0.01, batch_train: int = 256,
                      bn_per_class: int = 16, microbatch="auto") -> Objective:
  """The DC objective (DSA when ``augment`` is a siamese DSA and ``train_augment`` a per-sample DSA).

  Args:
    net: any model ``jaxdistill.models.adapt`` accepts, or ``NetFns``.
    num_classes: K; the synthetic rows must be class-major with equal counts.
    outer_loop, inner_loop: the reference schedule (``loops_for_ipc``).
    augment: siamese augmentation for the matching (one key per class, shared by real and synthetic).
    train_augment: augmentation for the inner training of the network on the synthetic set.
    lr_net: SGD learning rate of the inner training; batch_train: its batch size (the last batch of
      an epoch is short when it does not divide the set).
    bn_per_class: BatchNorm networks only: real images per class (the first of the step's batch) whose
      training-mode pass refreshes the running statistics before each outer step; the per-class
      gradients are then computed in eval mode (running statistics), as the reference. The inner
      training runs in training mode and updates the running statistics too. Under data parallelism
      the refreshed statistics are averaged over the devices' shards.
    microbatch: rows per piece of the real images' gradients and of the inner training's gradients
      (``training.resolve_microbatch``: "auto" is 32 on CPU, whole batches on accelerators; 0: whole
      batches). The same values up to float rounding; BatchNorm networks train on whole batches.

  The batch is ``{"images": [K, P, H, W, C]}``, split over devices along P.
  """
  fns = as_net(net)
  check_siamese(augment, "gradient_matching")
  aug = augment or identity_augment
  train_aug = train_augment or identity_augment

  apply_eval = fns.apply_eval or fns.apply
  train_apply = fns.train_apply or (lambda v, x, key=None: (fns.apply(v, x, key=key), v))

  def init(key, syn):
    check_class_major(syn.labels, num_classes)
    return DCState(fns.init(key, syn.images[:1]), jnp.zeros((), jnp.int32))

  def prepare(state, batch, axis_name=None):
    # BatchNorm networks: refresh the running statistics with a training-mode pass over bn_per_class
    # real images per class, then match in eval mode (the reference freezes mu and sigma this way
    # because a few synthetic images give unstable batch statistics).
    if not has_state(state.variables):
      return state
    real = batch["images"]
    if axis_name is not None:  # the first bn_per_class of the whole batch, whatever the device count
      real = jax.lax.all_gather(real, axis_name, axis=1, tiled=True)
    real = real[:, :bn_per_class]
    # (A network with dropout runs this refresh with one fixed dropout key: prepare has no key.)
    _, variables = train_apply(state.variables, real.reshape(-1, *real.shape[2:]),
                               key=jax.random.key(training.DROPOUT_FOLD))
    stats = pmean(state_of(variables), axis_name)
    return state._replace(variables={**state.variables, **stats})

  def loss(syn, batch, key, state, axis_name=None):
    variables = state.variables
    params = variables["params"]
    syn_c = class_major(syn.images, num_classes)
    keys = jax.random.split(key, num_classes)

    def class_ce(p, x, c, total):
      """Cross-entropy of rows ``x`` of class ``c``, summed and divided by the class's ``total``."""
      logits = apply_eval({**variables, "params": p}, x)
      return jnp.sum(training.per_row_loss(logits, jnp.full((x.shape[0],), c, jnp.int32), "ce")) / total

    def per_class(xr, xs, c):
      # Eval-mode rows do not interact, so the real images' gradient may be summed over pieces.
      rows = training.piece_size(xr.shape[0], microbatch)
      _, g_real = training.value_and_grad_in_pieces(
          lambda p, x: pmean(class_ce(p, x, c, xr.shape[0]), axis_name), params, xr, rows)
      g_syn = jax.grad(class_ce)(params, xs, c, xs.shape[0])
      return gradient_distance(jax.lax.stop_gradient(g_real), g_syn)

    # One siamese augmentation per class (one DSA op each), then the classes one after the other, as
    # the reference (lax.map: one class's activations and second-order graph in memory at a time).
    check_per_class_batch(batch["images"], num_classes)
    real_aug = map_groups(aug, keys, batch["images"])
    syn_aug = map_groups(aug, keys, syn_c)
    dists = jax.lax.map(lambda a: per_class(*a), (real_aug, syn_aug, jnp.arange(num_classes)))
    return jnp.sum(dists), {}

  def train_net(variables, syn, key):
    x, y = syn.images, syn.hard_labels()
    n = x.shape[0]
    bs = min(batch_train, n)
    full, rest = divmod(n, bs)

    def sgd(v, idx, ak):
      xb, yb = train_aug(ak, x[idx]), y[idx]
      dk = jax.random.fold_in(ak, training.DROPOUT_FOLD)  # dropout, if any; the augmentation unchanged
      if has_state(v):  # batch statistics: the whole batch at once
        def loss_fn(p):
          logits, v_new = train_apply({**v, "params": p}, xb, key=dk)
          return cross_entropy(logits, yb), v_new
        g, v_new = jax.grad(loss_fn, has_aux=True)(v["params"])
      else:
        def piece_loss(p, xy):
          return jnp.sum(training.per_row_loss(fns.apply({**v, "params": p}, xy[0], key=dk), xy[1],
                                               "ce")) / len(idx)
        _, g = training.value_and_grad_in_pieces(piece_loss, v["params"], (xb, yb),
                                                 training.piece_size(len(idx), microbatch))
        v_new = v
      return {**v_new, "params": jax.tree.map(lambda p, gi: p - lr_net * gi, v["params"], g)}

    def epoch(v, k):
      # A shuffled pass in batches of batch_train, the last one short (a DataLoader without drop_last).
      perm_key, aug_key = jax.random.split(k)
      perm = jax.random.permutation(perm_key, n)
      keys = jax.random.split(aug_key, full + (1 if rest else 0))
      v, _ = jax.lax.scan(lambda v, inp: (sgd(v, *inp), None), v,
                          (perm[:full * bs].reshape(full, bs), keys[:full]))
      if rest:
        v = sgd(v, perm[full * bs:], keys[full])
      return v, None

    variables, _ = jax.lax.scan(epoch, variables, jax.random.split(key, inner_loop))
    return variables

  def update(state, syn, key):
    outer = state.outer + 1
    new_iteration = outer >= outer_loop
    syn = jax.lax.stop_gradient(syn)
    variables = jax.lax.cond(new_iteration, lambda: fns.init(key, syn.images[:1]),
                             lambda: train_net(state.variables, syn, key))
    return DCState(variables, jnp.where(new_iteration, 0, outer).astype(jnp.int32))

  return Objective(init, loss, update, batch_axis=1, name="dc", prepare=prepare, reads=("images",))


# ----------------------------------------------------------------------------------------------------
# IDC's gradient matching (Kim et al., ICML 2022)
# ----------------------------------------------------------------------------------------------------

IDC_METRICS = ("l1", "mse")


def idc_gradient_distance(g_real, g_syn, metric: str = "l1", bias: bool = False,
                          fc: bool = False) -> jax.Array:
  """IDC's distance between two gradient pytrees (``dist`` / ``matchloss`` of its ``condense.py``): the
  sum over weight tensors of ``sum |g_real - g_syn|`` (``"l1"``) or ``sum (g_real - g_syn)^2``
  (``"mse"``). 1-D tensors (biases, norm scales) count only with ``bias``, 2-D ones (the classifier)
  only with ``fc``; by default only the convolution kernels are matched."""
  if metric not in IDC_METRICS:
    raise ValueError(f"Unknown IDC metric {metric!r}; known: {list(IDC_METRICS)}.")
  total = jnp.zeros((), jnp.float32)
  for gr, gs in zip(jax.tree.leaves(g_real), jax.tree.leaves(g_syn)):
    if (gr.ndim <= 1 and not bias) or (gr.ndim == 2 and not fc):
      continue
    d = gr - gs
    total = total + (jnp.sum(jnp.abs(d)) if metric == "l1" else jnp.sum(jnp.square(d)))
  return total


class IDCState(NamedTuple):
  variables: dict  # the network trained on real images between matchings
  opt_state: Any  # its SGD momentum
  inner: jax.Array  # int32: matchings done with this network
  key: jax.Array  # typed key of the next network update (drawn by the previous step's update)


def idc_matching(net, num_classes: int, inner_loop: int = 100, augment: Optional[Callable] = None,
                 train_augment: Optional[Callable] = None, metric: str = "l1",
                 match_bias: bool = False, match_fc: bool = False, lr_net: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 5e-4, mix_p: float = 0.5,
                 mix_beta: float = 1.0, batch_syn_max: int = 128) -> Objective:
  """IDC's condensation objective (its ``condense.py``, gradient matching).

  One step of the loop is one *inner* step of IDC: per class, the gradients of the network's mean
  cross-entropy on a real batch of the class and on the class's (decoded) synthetic images, both under
  one siamese augmentation, are compared with ``idc_gradient_distance``. Between matchings the network
  trains on *real* images (not on the synthetic set, as DC's): the batch's ``train_images`` /
  ``train_labels`` ``[S, B, ...]``, one SGD step per batch (lr ``lr_net``, ``momentum``,
  ``weight_decay`` as PyTorch's SGD), each batch augmented per image by ``train_augment`` and CutMixed
  with probability ``mix_p``. After ``inner_loop`` matchings a fresh network is drawn (IDC's outer
  iteration). IDC trains the network after every matching; here the training happens before the next
  matching of the same network, so the training after an outer iteration's last matching, whose
  network IDC then discards, is skipped: the same computation.

  Reference settings (Fashion-MNIST, ``--reproduce``): ConvNet-3 with instance norm, width 128;
  ``inner_loop`` 100; ``metric`` "l1"; 64 real images per class; S x B = 8 x 64 (IDC's ``n_data`` 500
  in batches of 64); matching augmentation DSA "color_crop_cutout" in mode "idc", siamese; training
  augmentation "color_crop" in mode "idc", per image; image SGD lr 1e-4 x (ipc / 10) x (28 / 32)^2 in
  [0, 1] pixel units, momentum 0.5, images clamped to [0, 1] before every outer iteration.

  Args:
    net: any model ``jaxdistill.models.adapt`` accepts, or ``NetFns`` without running statistics (IDC's ConvNets use instance norm).
    num_classes: K; the synthetic rows must be class-major with equal counts.
    inner_loop: matchings per network.
    augment: siamese augmentation of the matching (one key per class, shared by real and synthetic).
    train_augment: per-image augmentation of the network's training batches.
    metric, match_bias, match_fc: see ``idc_gradient_distance``.
    lr_net, momentum, weight_decay: the network's SGD.
    mix_p, mix_beta: CutMix of the training batches (``augment.cutmix``); ``mix_p=0`` turns it off.
    batch_syn_max: at most this many synthetic images per class enter a matching (a random subset
      per step when the class has more, as IDC's ``Synthesizer.sample``).

  Under data parallelism every device trains the same network: the training gradients are averaged
  over the devices' shards of each batch, and CutMix permutes rows within a device's shard.
  """
  fns = as_net(net)
  check_siamese(augment, "idc_matching")
  aug = augment or identity_augment
  train_aug = train_augment or identity_augment
  check_positive_int("inner_loop", inner_loop)
  check_positive_int("batch_syn_max", batch_syn_max)
  if metric not in IDC_METRICS:
    raise ValueError(f"Unknown IDC metric {metric!r}; known: {list(IDC_METRICS)}.")
  if not 0.0 <= mix_p <= 1.0:
    raise ValueError(f"mix_p must lie in [0, 1]; got {mix_p}.")
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr_net, momentum=momentum))

  def fresh(key, x):
    variables = fns.init(key, x[:1])
    if has_state(variables):
      raise ValueError("idc_matching needs a network without running statistics (IDC's ConvNets use "
                       "instance norm); got one with running statistics.")
    return variables, tx.init(variables["params"])

  def init(key, syn):
    check_class_major(syn.labels, num_classes)
    net_key, next_key = jax.random.split(key)
    variables, opt_state = fresh(net_key, syn.images)
    return IDCState(variables, opt_state, jnp.zeros((), jnp.int32), next_key)

  def train_net(state, batch, axis_name):
    xs, ys = batch["train_images"], batch["train_labels"]
    key = state.key
    if axis_name is not None:  # per-image draws differ between the devices' shards
      key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

    def sgd(carry, inp):
      variables, opt_state = carry
      x, y, k = inp
      k_aug, k_mix = jax.random.split(k)
      x = train_aug(k_aug, x)
      y = jax.nn.one_hot(y, num_classes)
      if mix_p > 0:
        x, y = cutmix(k_mix, x, y, jnp.ones(x.shape[:1]), mix_p, mix_beta)

      def ce(p):
        logits = fns.apply({**variables, "params": p}, x)
        return jnp.mean(training.per_row_loss(logits, y, "ce"))
      g = pmean(jax.grad(ce)(variables["params"]), axis_name)
      updates, opt_state = tx.update(g, opt_state, variables["params"])
      return ({**variables, "params": optax.apply_updates(variables["params"], updates)},
              opt_state), None

    (variables, opt_state), _ = jax.lax.scan(
        sgd, (state.variables, state.opt_state), (xs, ys, jax.random.split(key, xs.shape[0])))
    return state._replace(variables=variables, opt_state=opt_state)

  def prepare(state, batch, axis_name=None):
    return jax.lax.cond(state.inner > 0, lambda s: train_net(s, batch, axis_name), lambda s: s,
                        state)

  def loss(syn, batch, key, state, axis_name=None):
    variables = state.variables
    params = variables["params"]
    syn_c = class_major(syn.images, num_classes)
    aug_keys, sub_keys = jnp.split(jax.random.split(key, 2 * num_classes), 2)
    if syn_c.shape[1] > batch_syn_max:
      syn_c = jax.vmap(lambda k, x: x[jax.random.permutation(k, x.shape[0])[:batch_syn_max]])(
          sub_keys, syn_c)

    def class_ce(p, x, c):
      logits = fns.apply({**variables, "params": p}, x)
      return jnp.mean(training.per_row_loss(logits, jnp.full((x.shape[0],), c, jnp.int32), "ce"))

    def per_class(xr, xs, c):
      g_real = pmean(jax.grad(class_ce)(params, xr, c), axis_name)
      g_syn = jax.grad(class_ce)(params, xs, c)
      return idc_gradient_distance(jax.lax.stop_gradient(g_real), g_syn, metric, match_bias,
                                   match_fc)

    check_per_class_batch(batch["images"], num_classes)
    real_aug = map_groups(aug, aug_keys, batch["images"])
    syn_aug = map_groups(aug, aug_keys, syn_c)
    dists = jax.lax.map(lambda a: per_class(*a), (real_aug, syn_aug, jnp.arange(num_classes)))
    return jnp.sum(dists), {}

  def update(state, syn, key):
    inner = state.inner + 1
    net_key, next_key = jax.random.split(key)

    def renew(s):
      variables, opt_state = fresh(net_key, jax.lax.stop_gradient(syn.images))
      return IDCState(variables, opt_state, jnp.zeros((), jnp.int32), next_key)

    return jax.lax.cond(inner >= inner_loop, renew,
                        lambda s: s._replace(inner=inner, key=next_key), state)

  return Objective(init, loss, update, batch_axis=1, name="idc", prepare=prepare, reads=("images",))
