"""Any JAX model, adapted once to what the library calls: ``jaxdistill.models.adapt``.

Every entry point that takes a network (the objectives, ``evaluate.train`` / ``accuracy``,
``experts.train``, the kernels' empirical NTK, the feature-based selection baselines, coverage and the
quality report, DD's own training) passes it through :func:`adapt`, which accepts:

- a **Flax linen** module with any call signature: ``__call__(x)`` alone, or with a flag that says
  training or evaluation (``train`` / ``training`` / ``is_training``, or the inverted ``deterministic``
  / ``eval`` / ``inference`` / ``use_running_average``), detected from the signature or named with
  ``train_arg=``. Mutable collections (``batch_stats``) are the network's state; a ``"dropout"`` key is
  passed in training mode. The library's own networks (``get_model``) are linen modules of this kind.
- a **Flax NNX** module class, or a function of ``rngs`` that builds one
  (``lambda rngs: CNN(10, rngs=rngs)``): fresh networks are built from keys. The adapter puts the
  module in ``train()`` / ``eval()`` mode itself on every call, so the mode the module was left in
  does not matter. An NNX *instance* holds one set of weights: give it where trained weights are used
  (``nnx_variables``, then ``variables=``), and the class or builder where fresh networks are trained.
- an **Equinox** module builder ``key -> module``, wrapped with :func:`equinox_model` (state through
  ``eqx.nn.make_with_state`` when the module has ``eqx.nn.StateIndex`` layers, e.g. BatchNorm with
  ``axis_name="batch"``). Equinox modules take one example at a time: the adapter ``vmap``s the call
  over the batch (axis name ``"batch"``), transposing each example to ``[C, H, W]`` (Equinox's
  convolution layout) unless ``channels_first=False``.
- **plain functions**: ``functions(init, apply)`` with ``init(key, x) -> params`` and
  ``apply(params, x) -> logits``, or the tuple ``(init, apply)``.

Variables are a dict: ``{"params": ..., <state collections>}``; only ``params`` is trained.

Features (an embedding ``[B, D]``): DM, FRePo, herding, k-center, k-means in feature space, coverage
and the quality report need one; DC / DSA, IDC, MTT / DATM, KIP, DD and the evaluation need only
logits. The adapter takes them from ``features=``: a method name (linen / NNX / Equinox), a submodule
name whose output is the embedding (linen), or a function ``(params, x) -> [B, D]`` (plain
functions). Left at ``"auto"``, the library's networks give their penultimate layer
(``return_features``), and other linen / NNX modules the input of their last ``Dense`` / ``Linear``
call. Otherwise asking for features raises one error that names what to pass.

A user's model keeps its own initialization: the PyTorch-style initialization is a property of the
library's networks only.
"""
from __future__ import annotations

import dataclasses
import inspect
import threading
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

TRAIN_ARGS = ("train", "training", "is_training")
EVAL_ARGS = ("deterministic", "eval", "inference", "use_running_average", "is_test")
_PATCH_LOCK = threading.Lock()
_NO_DROPOUT_KEY = ("The model needs a dropout key in training mode, and this call has none. The "
                   "evaluation, expert training, DM and DC pass one; trajectory matching, DD, IDC, KIP "
                   "and FRePo run networks without dropout keys: use a model without dropout there.")


class ModelError(ValueError):
  """A model the library cannot use as given (the message says what to pass)."""


def _kind(model) -> str:
  import flax.linen as nn
  if isinstance(model, Net):
    return "net"
  if isinstance(model, nn.Module):
    return "linen"
  if isinstance(model, tuple) and len(model) == 2 and all(callable(f) for f in model):
    return "functions"
  try:
    from flax import nnx
    if isinstance(model, type) and issubclass(model, nnx.Module):
      return "nnx"
    if isinstance(model, nnx.Module):
      return "nnx_instance"
  except ImportError:  # pragma: no cover - flax always ships nnx here
    pass
  try:
    import equinox as eqx
    if isinstance(model, eqx.Module):
      return "equinox_instance"
  except ImportError:
    pass
  return "unknown"


def _call_params(fn) -> dict:
  try:
    return dict(inspect.signature(fn).parameters)
  except (TypeError, ValueError):
    return {}


def _detect_train_arg(module) -> Optional[str]:
  params = _call_params(type(module).__call__)
  for name in TRAIN_ARGS + EVAL_ARGS:
    if name in params:
      return name
  return None


@dataclasses.dataclass(frozen=True)
class Net:
  """A model adapted to the library's calls; hashable, so it can be a static argument of ``jax.jit``.

  Build it with :func:`adapt`. Attributes (set by ``adapt``): ``kind`` ("linen", "nnx", "equinox",
  "functions"), ``module`` (the linen module, NNX builder, Equinox builder or ``(init, apply)``),
  ``train_arg`` (the linen flag, or None), ``features`` (see the module docstring),
  ``channels_first`` (Equinox only).
  """
  kind: str
  module: Any
  train_arg: Optional[str] = None
  features: Any = "auto"
  channels_first: bool = True

  # ------------------------------------------------------------------------------------------------
  def init(self, key: jax.Array, x: jax.Array) -> dict:
    """Fresh variables ``{"params": ..., <state>}`` from ``key``, for inputs like ``x`` ``[B, H, W, C]``.

    Raises:
      ModelError: the model's output is not ``[B, K]`` logits.
    """
    x = x[:1]
    if self.kind == "linen":
      variables = self.module.init({"params": key, "dropout": key}, x, **self._flag(False))
      variables = dict(variables)
    elif self.kind == "nnx":
      from flax import nnx
      model = self._build_nnx(key)
      _, params, state = nnx.split(model, nnx.Param, _nnx_state_filter(), ...)[:3]
      variables = {"params": params.to_pure_dict()}
      state = state.to_pure_dict()
      if state:
        variables["state"] = state
    elif self.kind == "equinox":
      import equinox as eqx
      model, state = eqx.nn.make_with_state(self.module)(key)
      params, _ = _eqx_partition(model)
      variables = {"params": _as_dict(params)}
      if jax.tree.leaves(state):
        variables["state"] = _as_dict(state)
    else:
      variables = {"params": self.module[0](key, x)}
    self._check_output(variables, x)
    return variables

  def apply(self, variables: dict, x: jax.Array, train: bool = False, key: Optional[jax.Array] = None,
            features: bool = False):
    """``(logits [B, K], variables)``, or ``((logits, features [B, D]), variables)`` with ``features``.

    In training mode (``train=True``) state such as BatchNorm statistics is updated from the batch and
    returned in ``variables``; ``key`` seeds dropout. In evaluation mode the variables come back
    unchanged.

    Raises:
      ModelError: features asked of a model that cannot give them, or a dropout model called in
        training mode without a key.
    """
    if self.kind == "linen":
      return self._apply_linen(variables, x, train, key, features)
    if self.kind == "nnx":
      return self._apply_nnx(variables, x, train, key, features)
    if self.kind == "equinox":
      return self._apply_equinox(variables, x, train, key, features)
    init_fn, apply_fn = self.module
    logits = apply_fn(variables["params"], x)
    if not features:
      return logits, variables
    if not callable(self.features):
      raise ModelError("Features were asked of plain functions (init, apply) without a feature "
                       "function: pass functions(init, apply, features=lambda params, x: ...) "
                       "returning [B, D] embeddings.")
    return (logits, self.features(variables["params"], x)), variables

  def has_state(self, variables: dict) -> bool:
    """True when ``variables`` hold state besides ``params`` (e.g. BatchNorm statistics): such networks
    train on whole batches (rows interact through the batch statistics)."""
    return any(k != "params" and jax.tree.leaves(v) for k, v in variables.items())

  def prefer_conv(self, impl: str) -> "Net":
    """This adapter with the library's ``prefer_conv`` applied to a library network (else unchanged)."""
    if self.kind != "linen":
      return self
    from jaxdistill.models.layers import prefer_conv
    return dataclasses.replace(self, module=prefer_conv(self.module, impl))

  def identity(self) -> str:
    """A string naming the network for run and cache identities: the module's ``repr`` for linen
    (its fields), the builder's qualified name otherwise."""
    if self.kind == "linen":
      return repr(self.module)
    fns = self.module if isinstance(self.module, tuple) else (self.module,)
    names = [getattr(f, "__module__", "?") + "." + getattr(f, "__qualname__", repr(f)) for f in fns]
    return f"{self.kind}:{','.join(names)}"

  # ------------------------------------------------------------------------------------------------
  def _flag(self, train: bool) -> dict:
    if self.train_arg is None:
      return {}
    return {self.train_arg: train if self.train_arg in TRAIN_ARGS else not train}

  def _check_output(self, variables, x) -> None:
    out = jax.eval_shape(lambda v, x: self.apply(v, x, train=False)[0], variables, x)
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != x.shape[0]:
      shape = getattr(out, "shape", type(out).__name__)
      raise ModelError(f"The model must map images [B, H, W, C] to logits [B, K]; for input "
                       f"{tuple(x.shape)} it returned {shape}. (A model returning a tuple or dict, "
                       f"or logits of another shape, needs a wrapper that returns the [B, K] logits.)")

  def _apply_linen(self, variables, x, train, key, features):
    import flax.linen as nn
    mutable = ([k for k in variables if k != "params"] or False) if train else False
    rngs = {"dropout": key} if (train and key is not None) else {}
    kw = self._flag(train)
    feats_box = []
    try:
      if features and self.features == "auto" and "return_features" in _call_params(
          type(self.module).__call__):
        out = self.module.apply(variables, x, rngs=rngs, mutable=mutable, return_features=True, **kw)
      elif features and isinstance(self.features, str) and self.features != "auto" and callable(
          getattr(type(self.module), self.features, None)):
        feats = self.module.apply(variables, x, rngs=rngs, method=self.features, **kw)
        out = self.module.apply(variables, x, rngs=rngs, mutable=mutable, **kw)
        out = ((out[0], feats), out[1]) if mutable else (out, feats)
      elif features:
        name = None if self.features == "auto" else self.features
        def grab(next_fun, args, kwargs, context):
          y = next_fun(*args, **kwargs)
          if context.method_name == "__call__":
            if name is None and isinstance(context.module, nn.Dense):
              feats_box.append(args[0])
            elif name is not None and context.module.name == name:
              feats_box.append(y)
          return y
        with nn.intercept_methods(grab):
          out = self.module.apply(variables, x, rngs=rngs, mutable=mutable, **kw)
        if not feats_box:
          raise ModelError(self._no_features_message())
        out = ((out[0], feats_box[-1]), out[1]) if mutable else (out, feats_box[-1])
      else:
        out = self.module.apply(variables, x, rngs=rngs, mutable=mutable, **kw)
    except Exception as e:  # name what is missing instead of flax's error alone
      if type(e).__name__ == "InvalidRngError":
        raise ModelError(f"{_NO_DROPOUT_KEY} ({e})") from e
      raise
    if mutable:
      out, updates = out
      return out, {**variables, **updates}
    return out, variables

  def _no_features_message(self) -> str:
    return (f"Features [B, D] were asked of {self.identity()}, which has no Dense / Linear layer whose "
            f"input could be read as the embedding: pass features='<method or submodule name>' to "
            f"jaxdistill.models.adapt (or a function for plain functions).")

  def _build_nnx(self, key):
    from flax import nnx
    return self.module(rngs=nnx.Rngs(key))

  def _apply_nnx(self, variables, x, train, key, features):
    from flax import nnx
    model = self._build_nnx(jax.random.key(0) if key is None else key)
    if train and key is None and any(isinstance(m, nnx.Dropout) and m.rate > 0
                                     for _, m in nnx.iter_modules(model)):
      raise ModelError(_NO_DROPOUT_KEY)
    nnx.update(model, variables["params"])
    if "state" in variables:
      nnx.update(model, variables["state"])
    model.train() if train else model.eval()
    if features and isinstance(self.features, str) and self.features != "auto":
      method = getattr(model, self.features, None)
      if not callable(method):
        raise ModelError(f"features={self.features!r}: the NNX module {type(model).__name__} has no "
                         f"such method.")
      out = (model(x), method(x))
    elif features:
      out = _with_last_linear(model, x, nnx.Linear)
      if out is None:
        raise ModelError(self._no_features_message())
    else:
      out = model(x)
    if train and "state" in variables:
      state = nnx.split(model, nnx.Param, _nnx_state_filter(), ...)[2].to_pure_dict()
      variables = {**variables, "state": state}
    return out, variables

  def _apply_equinox(self, variables, x, train, key, features):
    import equinox as eqx
    template, state_template = eqx.nn.make_with_state(self.module)(jax.random.key(0))
    params, static = _eqx_partition(template)
    model = eqx.combine(_from_dict(params, variables["params"]), static,
                        is_leaf=lambda a: isinstance(a, eqx.nn.StateIndex))
    model = eqx.nn.inference_mode(model, value=not train)
    takes_key = "key" in _call_params(type(model).__call__)
    xs = jnp.moveaxis(x, -1, 1) if self.channels_first else x
    # Without a key Equinox's own Dropout refuses training mode (its error names it).
    keys = None if key is None else jax.random.split(key, x.shape[0])
    state = None if "state" not in variables else _from_dict(state_template, variables["state"])
    if features and not (isinstance(self.features, str) and callable(getattr(model, self.features,
                                                                               None))):
      raise ModelError("Features [B, D] of an Equinox model come from one of its methods: pass "
                       "equinox_model(build, features='<method name>') (the method takes one "
                       "example, like __call__).")

    def batched(fn):
      # The canonical Equinox batch call: examples mapped, the state shared (in and out axes None).
      # Equinox marks a State object used once as old: each pass gets its own copy.
      def one(xi, st, ki):
        kw = {"key": ki} if takes_key else {}
        return fn(xi, st, **kw) if st is not None else (fn(xi, **kw), None)
      st = None if state is None else jax.tree.map(lambda a: a, state)
      return jax.vmap(one, axis_name="batch", in_axes=(0, None, None if keys is None else 0),
                      out_axes=(0, None))(xs, st, keys)

    logits, new_state = batched(model)
    out = (logits, batched(getattr(model, self.features))[0]) if features else logits
    if train and state is not None:
      variables = {**variables, "state": _as_dict(new_state)}
    return out, variables


def _eqx_partition(model):
  """``(trainable arrays, the rest)`` of an Equinox module; state indices belong to the rest."""
  import equinox as eqx
  return eqx.partition(model, eqx.is_inexact_array, is_leaf=lambda a: isinstance(a, eqx.nn.StateIndex))


def _as_dict(tree) -> dict:
  """A pytree's array leaves as a flat dict (keys in leaf order): what checkpoints store."""
  return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def _from_dict(template, flat: dict):
  """``template``'s structure with the leaves of ``flat`` (``_as_dict``'s inverse)."""
  return jax.tree.unflatten(jax.tree.structure(template), [flat[k] for k in sorted(flat)])


def _nnx_state_filter():
  """NNX variables that are state (trained by forward passes, not gradients); RNG streams excluded
  (dropout is seeded from the call's key)."""
  from flax import nnx
  return nnx.All(nnx.Not(nnx.Param), nnx.Not(nnx.RngState))


def _with_last_linear(model, x, linear_cls):
  """``(logits, input of the last linear_cls call)`` of ``model(x)``, or None without such a call."""
  seen = []
  original = linear_cls.__call__

  def recording(self, inputs, *a, **k):
    seen.append(inputs)
    return original(self, inputs, *a, **k)

  with _PATCH_LOCK:
    linear_cls.__call__ = recording
    try:
      logits = model(x)
    finally:
      linear_cls.__call__ = original
  return (logits, seen[-1]) if seen else None


def adapt(model, train_arg: Union[str, None] = "auto", features: Any = "auto") -> Net:
  """The :class:`Net` of ``model`` (see the module docstring for what is accepted).

  Args:
    model: a Flax linen module, an NNX module class or builder function of ``rngs`` (see
      :func:`nnx_model`), an Equinox builder wrapped by :func:`equinox_model`, ``(init, apply)``
      functions, or a ``Net`` (returned as is).
    train_arg: the linen call's train / eval flag: "auto" (detected from the signature), a name, or
      None (the module takes no flag).
    features: where the embedding comes from: "auto", a method or submodule name, or (plain
      functions) ``(params, x) -> [B, D]``.

  Returns:
    The adapted ``Net``.

  Raises:
    ModelError: a model of no accepted kind (an NNX or Equinox instance included: the message says to
      pass its class or builder), or a named ``train_arg`` the call does not take.
  """
  kind = _kind(model)
  if kind == "net":
    return model
  if kind == "linen":
    if train_arg == "auto":
      train_arg = _detect_train_arg(model)
    elif train_arg is not None and train_arg not in _call_params(type(model).__call__):
      raise ModelError(f"train_arg={train_arg!r}: {type(model).__name__}.__call__ takes no such "
                       f"argument (it takes {list(_call_params(type(model).__call__))[1:]}).")
    if train_arg is not None and train_arg not in TRAIN_ARGS + EVAL_ARGS:
      raise ModelError(f"train_arg={train_arg!r} is not a flag this adapter knows the sense of; known: "
                       f"{TRAIN_ARGS} (True trains) and {EVAL_ARGS} (True evaluates).")
    return Net("linen", model, train_arg, features)
  if kind == "nnx":
    return nnx_model(model, features=features)
  if kind == "functions":
    return functions(*model, features=None if features == "auto" else features)
  if kind == "nnx_instance":
    raise ModelError(f"An NNX module instance ({type(model).__name__}) holds one set of weights, but "
                     f"the library trains fresh networks from keys: pass its class "
                     f"({type(model).__name__}, built as {type(model).__name__}(rngs=...)), or "
                     f"jaxdistill.models.nnx_model(lambda rngs: {type(model).__name__}(..., "
                     f"rngs=rngs)). Its trained weights are nnx_variables(instance), for variables=.")
  if kind == "equinox_instance":
    raise ModelError(f"An Equinox module instance ({type(model).__name__}) holds one set of weights, "
                     f"but the library trains fresh networks from keys: pass "
                     f"jaxdistill.models.equinox_model(lambda key: {type(model).__name__}(..., key=key)).")
  raise ModelError(f"Cannot use {model!r} as a model: pass a Flax linen module, an NNX module class or "
                   f"nnx_model(builder), equinox_model(builder), or functions(init, apply).")


def nnx_model(build: Callable, features: Any = "auto") -> Net:
  """An NNX network built by ``build(rngs=nnx.Rngs(key))`` (its class, ``functools.partial`` of it,
  or a function taking ``rngs``), adapted. ``features``: "auto" (the input of the last
  ``nnx.Linear``) or a method name."""
  return Net("nnx", build, None, features)


def equinox_model(build: Callable, features: Any = None, channels_first: bool = True) -> Net:
  """An Equinox network built by ``build(key)``, adapted (see the module docstring for its per-example
  convention). ``features``: a method name of the module giving one example's embedding."""
  return Net("equinox", build, None, features, channels_first)


def functions(init: Callable, apply: Callable, features: Optional[Callable] = None) -> Net:
  """Plain functions as a network: ``init(key, x [1, H, W, C]) -> params``, ``apply(params, x) ->
  logits [B, K]``, optionally ``features(params, x) -> [B, D]``."""
  return Net("functions", (init, apply), None, features)


def nnx_variables(module) -> dict:
  """The variables (``{"params": ..., "state": ...}``) of a built NNX module, e.g. a trained one, to
  pass as ``variables=`` with its class."""
  from flax import nnx
  _, params, state = nnx.split(module, nnx.Param, _nnx_state_filter(), ...)[:3]
  out = {"params": params.to_pure_dict()}
  state = state.to_pure_dict()
  if state:
    out["state"] = state
  return out


def is_model(obj) -> bool:
  """True for what ``adapt`` takes as a network object (a ``Net``, a linen module, an NNX class or
  instance, an Equinox instance), False for plain functions."""
  return _kind(obj) not in ("unknown", "functions")


def embed(model, variables: dict, images, batch_size: int = 256, features: bool = True):
  """Eval-mode outputs of ``model`` with ``variables`` over ``images`` ``[N, H, W, C]``, in batches:
  features ``[N, D]`` (``features=True``) or logits ``[N, K]``. ``model``: anything ``adapt`` takes.

  Raises:
    ModelError: features asked of a model that cannot give them (the message says what to pass).
  """
  import numpy as np
  net = adapt(model)
  pick = (lambda out: out[1]) if features else (lambda out: out)
  fn = jax.jit(lambda v, x: pick(net.apply(v, x, train=False, features=features)[0]))
  images = np.asarray(images)
  return jnp.concatenate([fn(variables, jnp.asarray(images[i:i + batch_size], jnp.float32))
                          for i in range(0, images.shape[0], batch_size)])
