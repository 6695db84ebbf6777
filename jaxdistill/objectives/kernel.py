"""Kernel objectives: KIP (Nguyen et al., ICLR 2021 / NeurIPS 2021) and FRePo (Zhou et al., NeurIPS 2022).

Both fit kernel ridge regression (KRR) from the synthetic set (support: images + labels) to a real batch
(target) and minimize the squared error of the prediction against the real labels:

    pred = K_ts (K_ss + reg * trace(K_ss) / S * I)^-1 y_s,      loss = 0.5 * mean((pred - y_t)^2)

(the KIP colab's ``0.5 * jnp.mean`` over rows and classes; FRePo's code uses the same ridge but sums
over classes, ``0.5 * sum((pred - y_t)^2, -1)`` averaged over rows, which weighs its label-margin
term K times less; ``frepo`` does so). Labels are centered one-hot
``one_hot - 1/K`` (``kip_labels``) on both sides; the synthetic labels ``syn.labels`` ``[N, K]`` float
are learnable (``Distiller(learn_labels=True)``), hard ``[N]`` int labels are converted (fixed).

- **KIP**: ``K`` is a fixed kernel, e.g. ``kernels.fc_kernel_fn("ntk", depth)`` (the infinite FC NTK) or a
  keyed random finite-network NTK (``kernels.empirical_ntk_kernel``, ``keyed_kernel=True``). Reference
  (the KIP colab): Adam lr 0.04, reg 1e-6, labels fixed by default (``LEARN_LABELS = False``; the
  papers also report learned labels), a class-balanced target batch of 5000.
- **FRePo**: ``K = f(x) f(x')^T`` with ``f`` the last-layer features of one network of a *pool* trained
  online on the synthetic set (the objective's state). Reference code defaults (``script/distill.py``,
  ``lib/datadistillation/frepo.py``): pool of 10 networks (``num_nn_state``), a network is reinitialized
  once it has taken more than ``max_online_updates = 100`` online steps, initial ages staggered
  ``(100 // 10) * i``; online training: Adam lr 3e-4, MSE to the synthetic (learned) labels, one step on
  at most 1000 random synthetic rows per distillation step; features at the model's last layer
  (``return_features``) of FRePo's ConvNet (``"convnet_frepo"``, width 128, depth 3; the code's
  default normalization is none, its README's commands pass ``--normalization=batch``, which this
  objective does not reproduce: its networks keep no running statistics);
  images and labels: LAMB lr 3e-4 with cosine decay to 0.1x; real batch 1024; a label-margin term
  ``-min(top1 - top2, 1/K)`` on the learned labels; ``use_flip`` (the synthetic set plus its horizontal
  flips) for CIFAR, not for (Fashion-)MNIST.

Batches: ``{"images": [B, H, W, C], "labels": [B]}`` (``distill.random_sampler``), split over devices along
B. Under data parallelism every device computes the same ``K_ss`` and its own rows of ``K_ts``; the loss
is the ``pmean`` of the per-device means (equal shards).

A singular regularized ``K_ss`` gives NaN predictions (``kernels.krr_fit``), so a NaN loss (the loop
stops) and ``krr_ok = 0`` in the aux metrics; ``krr_used_fallback = 1`` says Cholesky failed and an LU
solve was used.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import kernels
from jaxdistill.objectives.base import Objective, keep_state, pmean
from jaxdistill.checks import check_label_range
from jaxdistill.objectives.common import labels_checked_init
from jaxdistill.models import get_model
from jaxdistill.models.nets import as_net
from jaxdistill.types import SyntheticSet


def kip_labels(hard_labels: jax.Array, num_classes: int, scale: float = 1.0) -> jax.Array:
  """Centered one-hot labels ``(one_hot(y, K) - 1/K) / scale``: ``[N]`` int -> ``[N, K]`` float32.

  KIP and FRePo initialize the learnable labels (and encode the real ones) this way. FRePo's
  ``init_proto(..., scale_y=True)`` divides the synthetic labels by ``sqrt(K / 10)`` (1 for 10 classes).
  """
  y = jnp.asarray(hard_labels)
  if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"kip_labels needs [N] int class ids; got {y.dtype} {y.shape}.")
  return (jax.nn.one_hot(y, num_classes, dtype=jnp.float32) - 1.0 / num_classes) / scale


def _support_targets(labels: jax.Array, num_classes: int) -> jax.Array:
  """``[N, K]`` float regression targets of the synthetic rows (hard labels -> ``kip_labels``)."""
  if labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer):
    return kip_labels(labels, num_classes)
  if labels.ndim == 2 and jnp.issubdtype(labels.dtype, jnp.floating) and labels.shape[1] == num_classes:
    return labels
  raise ValueError(f"Synthetic labels must be [N] int class ids or [N, {num_classes}] float targets "
                   f"(e.g. kip_labels(y, {num_classes})); got {labels.dtype} {labels.shape}.")


def _batch_targets(batch: dict, num_classes: int) -> tuple:
  """``(images [B, ...], targets [B, K], class ids [B])`` of a real batch."""
  if "images" not in batch or "labels" not in batch:
    raise ValueError(f"The batch must be {{'images': [B, ...], 'labels': [B]}} (distill.random_sampler);"
                     f" got keys {sorted(batch)}.")
  x, y = batch["images"], batch["labels"]
  if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer) or y.shape[0] != x.shape[0]:
    raise ValueError(f"The batch labels must be [B] int class ids with B = {x.shape[0]} images; got "
                     f"{y.dtype} {y.shape}.")
  return x, kip_labels(y, num_classes), y


def mse(pred: jax.Array, targets: jax.Array) -> jax.Array:
  """``0.5 * mean((pred - targets)^2)`` over rows and classes (the KIP colab's loss)."""
  return 0.5 * jnp.mean(jnp.square(pred - targets))


def row_mse(pred: jax.Array, targets: jax.Array) -> jax.Array:
  """``0.5 * sum((pred - targets)^2, -1)`` averaged over rows (FRePo's ``mean_squared_loss``): K
  times ``mse``."""
  return 0.5 * jnp.mean(jnp.sum(jnp.square(pred - targets), axis=-1))


def _krr_loss(k_ss, k_ts, y_s, y_t, y_ids, reg, axis_name, loss_fn=mse):
  sol = kernels.krr_fit(k_ss, y_s, reg)
  pred = k_ts @ sol.alpha
  loss = pmean(loss_fn(pred, y_t), axis_name)
  acc = pmean(jnp.mean((jnp.argmax(pred, -1) == y_ids).astype(jnp.float32)), axis_name)
  aux = {"krr_acc": acc, "krr_ok": sol.ok.astype(jnp.float32),
         "krr_used_fallback": sol.used_fallback.astype(jnp.float32)}
  return loss, aux


def kip(kernel_fn: Callable, num_classes: int, reg: float = 1e-6, keyed_kernel: bool = False) -> Objective:
  """The KIP objective.

  Args:
    kernel_fn: ``(x1 [N, ...], x2 [M, ...]) -> [N, M]``, differentiable in both; e.g.
      ``kernels.fc_kernel_fn("ntk", depth=1)``. With ``keyed_kernel`` it is ``(x1, x2, key)`` and gets
      the step's loss key (e.g. ``kernels.empirical_ntk_kernel(net)``: a new random network each step).
    num_classes: K.
    reg: relative ridge (KIP: 1e-6).
    keyed_kernel: see ``kernel_fn``.

  Synthetic labels: ``[N, K]`` float (learnable; initialize with ``kip_labels``) or ``[N]`` int (fixed).
  The batch: ``{"images": [B, ...], "labels": [B]}`` (``distill.random_sampler``). Aux metrics:
  ``krr_acc`` (accuracy of the KRR prediction on the batch), ``krr_ok``, ``krr_used_fallback``.
  """
  if reg < 0:
    raise ValueError(f"reg must be >= 0; got {reg}.")

  def kern(x1, x2, key):
    return kernel_fn(x1, x2, key) if keyed_kernel else kernel_fn(x1, x2)

  def loss(syn, batch, key, state, axis_name=None):
    y_s = _support_targets(syn.labels, num_classes)
    x_t, y_t, ids = _batch_targets(batch, num_classes)
    k_ss = kern(syn.images, syn.images, key)
    k_ts = kern(x_t, syn.images, key)
    return _krr_loss(k_ss, k_ts, y_s, y_t, ids, reg, axis_name)

  return Objective(labels_checked_init(num_classes), loss, keep_state, batch_axis=0, name="kip",
                   reads=("images", "labels"))


def krr_test_accuracy(kernel_fn: Callable, syn: SyntheticSet, x_test, y_test, reg: float = 1e-6,
                      num_classes: Optional[int] = None, batch_size: int = 1000,
                      key: Optional[jax.Array] = None) -> float:
  """Test accuracy of the KRR predictor fit on the synthetic set (KIP's reported "KRR" number).

  Args:
    kernel_fn: ``(x1, x2) -> [N, M]`` (or ``(x1, x2, key)`` when ``key`` is given).
    syn: the synthetic set (images ``[N, ...]``; labels ``[N, K]`` float or ``[N]`` int).
    x_test: ``[T, ...]`` test images; y_test: ``[T]`` int labels.
    reg: relative ridge.
    num_classes: K (default: from soft labels, else ``max(label) + 1`` of ``syn`` and ``y_test``).
    batch_size: test rows per kernel evaluation.
    key: the kernel's key, for keyed kernels.

  Returns:
    Accuracy in [0, 1].

  Raises:
    numpy.linalg.LinAlgError: the regularized synthetic kernel is singular.
  """
  labels = jnp.asarray(syn.labels)
  y_test = np.asarray(y_test)
  if num_classes is None:
    num_classes = (labels.shape[1] if labels.ndim == 2
                   else int(max(int(jnp.max(labels)), int(y_test.max()))) + 1)
  y_s = _support_targets(labels, num_classes)
  kern = (lambda a, b: kernel_fn(a, b)) if key is None else (lambda a, b: kernel_fn(a, b, key))
  x_s = jnp.asarray(syn.images, jnp.float32)
  k_ss = jax.jit(kern)(x_s, x_s)
  sol = kernels.krr_fit(k_ss, y_s, reg)
  kernels._raise_if_failed(sol.ok, k_ss, reg)
  predict = jax.jit(lambda xt: jnp.argmax(kern(xt, x_s) @ sol.alpha, -1))
  x_test = np.asarray(x_test, np.float32)
  correct = 0
  for i in range(0, len(y_test), batch_size):
    correct += int(np.sum(np.asarray(predict(jnp.asarray(x_test[i:i + batch_size])))
                          == y_test[i:i + batch_size]))
  return correct / len(y_test)


# ----------------------------------------------------------------------------------------------------
# FRePo
# ----------------------------------------------------------------------------------------------------

class FRePoState(NamedTuple):
  """The pool of networks trained online on the synthetic set; arrays only.

  Attributes:
    variables: the networks' variables, every leaf stacked ``[pool_size, ...]``.
    opt_state: their online optimizer states, stacked the same way.
    age: ``[pool_size]`` int32: online updates since each network was (re)initialized.
    current: int32 scalar: the network the next loss uses and the next ``update`` advances.
  """
  variables: Any
  opt_state: Any
  age: jax.Array
  current: jax.Array


def label_margin(labels: jax.Array) -> jax.Array:
  """FRePo's label regularizer ``mean(-min(top1 - top2, 1/K))`` over rows of ``[N, K]`` labels."""
  top2 = jax.lax.top_k(labels, 2)[0]
  return jnp.mean(-jnp.minimum(top2[:, 0] - top2[:, 1], 1.0 / labels.shape[1]))


def _take(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _put(tree, i, new):
  return jax.tree.map(lambda a, b: a.at[i].set(b), tree, new)


def frepo(net: Any = "convnet_frepo", num_classes: int = 10, pool_size: int = 10,
          online_steps: int = 1, max_online_updates: int = 100,
          online_optimizer: Optional[optax.GradientTransformation] = None,
          online_batch_size: int = 1000, reg: float = 1e-6, use_flip: bool = False,
          label_margin_weight: float = 1.0, net_options: Optional[dict] = None) -> Objective:
  """The FRePo objective (neural feature regression with a pool of online-trained networks).

  Args:
    net: a model registry name (default ``"convnet_frepo"``, built with ``num_classes`` and
      ``net_options``), a Flax module with ``return_features`` or ``NetFns``.
    num_classes: K.
    pool_size: networks in the pool (FRePo: 10).
    online_steps: online optimizer steps per ``update`` (FRePo: 1).
    max_online_updates: a network with more online updates than this is reinitialized (FRePo: 100).
    online_optimizer: default ``optax.adam(3e-4)`` (FRePo).
    online_batch_size: synthetic rows per online step (FRePo: 1000, or all rows if fewer).
    reg: relative ridge of the feature KRR (FRePo: 1e-6).
    use_flip: add horizontally flipped synthetic images (and their labels) to the support set
      (FRePo: on for CIFAR, off for (Fashion-)MNIST).
    label_margin_weight: weight of ``label_margin`` on float synthetic labels (FRePo: 1; 0 disables).
    net_options: registry options, e.g. ``{"width": 64}``.

  Networks run in training mode (``NetFns``): BatchNorm, if any, normalizes with batch statistics.
  The loss uses pool member ``state.current``; ``update`` trains (or reinitializes) that member on the
  updated synthetic set with MSE to its labels, then draws the next member uniformly. Aux metrics:
  ``kernel_loss``, ``label_loss``, ``krr_acc``, ``krr_ok``, ``krr_used_fallback``. The kernel loss
  and the online training's MSE are FRePo's ``row_mse`` (summed over classes).
  """
  if isinstance(net, str):
    net = get_model(net, num_classes, **(net_options or {}))
  elif net_options:
    raise ValueError("net_options only applies when net is a registry name.")
  fns = as_net(net)
  tx = online_optimizer if online_optimizer is not None else optax.adam(3e-4)
  if pool_size < 1 or online_steps < 1 or max_online_updates < 0 or online_batch_size < 1:
    raise ValueError(f"Need pool_size >= 1, online_steps >= 1, max_online_updates >= 0 and "
                     f"online_batch_size >= 1; got {pool_size}, {online_steps}, {max_online_updates}, "
                     f"{online_batch_size}.")

  def new_member(key, x):
    variables = fns.init(key, x[:1])
    with jax.numpy_dtype_promotion("standard"):
      opt_state = tx.init(variables["params"])
    return variables, opt_state

  @jax.jit  # eager vmapped Flax init dispatches op by op: slow
  def init_pool(key, x):
    init_key, pick_key = jax.random.split(key)
    keys = jax.random.split(init_key, pool_size)
    variables, opt_state = jax.vmap(lambda k: new_member(k, x))(keys)
    age = (max_online_updates // pool_size) * jnp.arange(pool_size, dtype=jnp.int32)
    current = jax.random.randint(pick_key, (), 0, pool_size, dtype=jnp.int32)
    return FRePoState(variables, opt_state, age, current)

  def init(key, syn):
    check_label_range(syn.labels, num_classes, "synthetic")
    return init_pool(key, syn.images[:1])

  def support(syn):
    x, y = syn.images, _support_targets(syn.labels, num_classes)
    if use_flip:
      x = jnp.concatenate([x, jnp.flip(x, axis=2)], axis=0)
      y = jnp.concatenate([y, y], axis=0)
    return x, y

  def loss(syn, batch, key, state, axis_name=None):
    del key
    x_s, y_s = support(syn)
    x_t, y_t, ids = _batch_targets(batch, num_classes)
    variables = _take(state.variables, state.current)
    f_s = fns.embed(variables, x_s)
    f_t = jax.lax.stop_gradient(fns.embed(variables, x_t))
    kernel_loss, aux = _krr_loss(f_s @ f_s.T, f_t @ f_s.T, y_s, y_t, ids, reg, axis_name,
                                 loss_fn=row_mse)
    lb = jnp.zeros((), jnp.float32)
    if syn.labels.ndim == 2 and label_margin_weight:
      lb = label_margin(syn.labels)
    return kernel_loss + label_margin_weight * lb, {"kernel_loss": kernel_loss, "label_loss": lb, **aux}

  def online_train(variables, opt_state, x, y, key):
    n = x.shape[0]
    bs = min(online_batch_size, n)

    def one(carry, k):
      v, o = carry
      rows = jax.random.choice(k, n, (bs,), replace=False) if bs < n else jnp.arange(n)
      g = jax.grad(lambda p: row_mse(fns.apply({**v, "params": p}, x[rows]), y[rows]))(v["params"])
      with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
        updates, o = tx.update(g, o, v["params"])
      return ({**v, "params": optax.apply_updates(v["params"], updates)}, o), None

    (variables, opt_state), _ = jax.lax.scan(one, (variables, opt_state),
                                             jax.random.split(key, online_steps))
    return variables, opt_state

  def update(state, syn, key):
    syn = jax.lax.stop_gradient(syn)
    x, y = syn.images, _support_targets(syn.labels, num_classes)
    reinit_key, train_key, pick_key = jax.random.split(key, 3)
    i = state.current
    variables, opt_state, age = _take(state.variables, i), _take(state.opt_state, i), state.age[i]

    def reinit():
      v, o = new_member(reinit_key, x)
      return v, o, jnp.zeros((), jnp.int32)

    def train():
      v, o = online_train(variables, opt_state, x, y, train_key)
      return v, o, age + online_steps

    variables, opt_state, age = jax.lax.cond(age > max_online_updates, reinit, train)
    return FRePoState(_put(state.variables, i, variables), _put(state.opt_state, i, opt_state),
                      state.age.at[i].set(age),
                      jax.random.randint(pick_key, (), 0, pool_size, dtype=jnp.int32))

  return Objective(init, loss, update, batch_axis=0, name="frepo", reads=("images", "labels"))
