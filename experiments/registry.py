"""The methods by name, and the pieces they share: ``build(c, data) -> Method`` builds method
``c.method``, one module per method in ``experiments/methods/`` (or any module named by its import path;
see ``experiments.methods``).

A ``Method`` holds what a distillation run needs (objective, optimizer, real-batch sampler, initial
``SyntheticSet``, row mask, parameterization) and the evaluators the config names (``c.evals``). The
components come from the config by name, with the references' hyperparameters in the config files.

MTT, DATM and SelMatch declare a prerequisite step: expert trajectories (``c.experts``), loaded from
``c.experts.dir`` or trained there with ``jaxdistill.experts.train`` when missing (training resumes and
extends, and refuses a directory written with another model, protocol or data).

Evaluators (``c.evals``), each ``fn(key, syn, mask) -> {column: value}``:

- ``"protocol"`` (every method): fresh networks of every architecture in ``c.eval_models`` trained on
  the set (``jaxdistill.evaluate``); SelMatch's combined augmentation when ``c.combined_augment`` and a
  mask is given (DSA on the distilled rows, crop+flip on the frozen ones);
- a method's own evaluators: ``"krr"``, the kernel predictor's test accuracy (KIP); ``"dd_own"``,
  networks trained by DD's own unrolled procedure with the set's step sizes; ``"coverage"`` (MTT,
  DATM, SelMatch), SelMatch's coverage of the real training set in an expert's feature space.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import pkgutil
import types
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import jaxdistill as jd


class Method(NamedTuple):
  """What one run of a method needs, built from a config by ``build``."""
  objective: Any
  optimizer: Any
  sampler: Any
  init: jd.SyntheticSet
  mask: Optional[np.ndarray] = None
  decode: Optional[Callable] = None
  evaluators: dict = {}
  project: Optional[Callable] = None  # jd.distill.Distiller(project=...)
  loss_threshold: Optional[float] = None  # jd.distill.Distiller(loss_threshold=...): DATM's


# ----------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------

def load_data(c) -> jd.types.Dataset:
  """The config's dataset: ``jd.data.load(c.dataset, data_dir=c.data_dir)``, optionally a class-balanced
  subset (``c.max_per_class`` images per class, chosen by ``c.subset_seed``, not the run's seed, so that
  runs of several seeds share one subset and its experts) and ZCA-whitened (``c.zca``, as MTT / DATM)."""
  if c.dataset.startswith("custom") and not c.get("data_dir"):
    raise ValueError(f"{c.dataset!r} is read from files: pass --config.data_dir=<npz file or directory> "
                     f"(see the config's docstring for the arrays it must hold).")
  kw = {}
  if c.get("max_per_class"):
    kw = {"max_per_class": c.max_per_class, "key": jax.random.key(c.get("subset_seed", 0))}
  data = jd.data.load(c.dataset, data_dir=c.get("data_dir") or None, **kw)
  if c.get("zca"):
    data, _ = jd.data.whiten_dataset(data, eps=c.get("zca_eps", 0.1))
  return data


def model_of(c, data):
  """The distillation network (``c.model``, ``c.model_kwargs``)."""
  return jd.models.get_model(c.model, data.num_classes, **c.model_kwargs)


def optimizer(c, labels: bool = False, log_lr: bool = False):
  """optax for images (``c.optimizer``, ``c.optimizer_kwargs``) and, when learned, soft labels
  (``c.label_optimizer_kwargs``) and the step size (``c.lr_optimizer_kwargs``, in ``c.step_size_space``:
  "lr" takes the papers' lr_lr as is, "log" updates the log step size, as DD)."""
  make = lambda kw: jd.distill.make_optimizer(c.optimizer, **kw)
  return jd.distill.optimizer(
      make(c.optimizer_kwargs),
      labels=make(c.get("label_optimizer_kwargs", c.optimizer_kwargs)) if labels else None,
      log_lr=make(c.lr_optimizer_kwargs) if log_lr else None,
      step_size=c.get("step_size_space", "lr"))


def keys(c) -> tuple:
  """``(init, run, eval)`` keys of the run, from ``c.seed``."""
  return tuple(jax.random.split(jax.random.key(c.seed), 3))


def random_init(c, data) -> jd.SyntheticSet:
  """Random real images, ``c.ipc`` per class, drawn with the run's seed: every method's baseline."""
  key = keys(c)[0]
  return jd.selection.random(key, data.x_train, data.y_train, data.num_classes, c.ipc)


INITS = ("real", "noise")


def initial_set(c, data, default: str) -> jd.SyntheticSet:
  """Where a method's synthetic images start, ``c.init`` (``default``: the method's reference code's):
  "real", random real images (the baseline's draw, ``random_init``), or "noise", standard normal
  images in the normalized space (``torch.randn``: DC's ``main.py`` and DD's default), drawn with the
  run's key. Labels: the real draw's, class-major."""
  real = random_init(c, data)
  kind = c.get("init", default)
  if kind not in INITS:
    raise ValueError(f"Unknown init {kind!r}; known: {INITS}.")
  if kind == "real":
    return real
  key = jax.random.fold_in(keys(c)[0], 1)
  return real._replace(images=jax.random.normal(key, real.images.shape, jnp.float32))


def dsa(c, data, siamese: bool):
  """The methods' differentiable augmentation: DSA (siamese for DC/DSA/DM matching, per image inside
  MTT's unroll), or none with ``c.distill_augment = "none"`` (an ablation; also keeps tests small)."""
  if c.get("distill_augment", "dsa") == "none":
    return None
  return jd.augment.get_augment("dsa", dataset_name=data.name, siamese=siamese)


def class_sampler(c, data):
  return jd.distill.class_balanced_sampler(data.x_train, data.y_train, data.num_classes,
                                           c.batch_real)


def flat_sampler(c, data):
  return jd.distill.random_sampler(data.x_train, data.y_train, c.batch_real * data.num_classes,
                                   num_classes=data.num_classes)


# ----------------------------------------------------------------------------------------------------
# Experts (MTT, DATM, SelMatch)
# ----------------------------------------------------------------------------------------------------

def expert_dir(c) -> str:
  """``c.experts.dir``, or ``<workdir>/experts/<dataset>_<model>[_zca][_<n>pc]_lr<lr>_b<batch>``: one
  directory per training set, architecture and expert protocol, shared by every run that uses them."""
  if c.experts.get("dir"):
    return c.experts.dir
  e = c.experts
  tags = [c.dataset, c.model] + (["zca"] if c.get("zca") else []) + \
      ([f"{c.max_per_class}pc"] if c.get("max_per_class") else []) + \
      [f"lr{e.lr:g}", f"b{e.batch_size}"] + ([f"aug{e.augment}"] if e.get("augment", "dsa") != "dsa"
                                              else [])
  return os.path.join(c.workdir, "experts", "_".join(tags))


def experts(c, data, model) -> jd.experts.Trajectories:
  """The experts of ``c.experts`` (``num``, ``epochs``, ``lr``, ``batch_size``, ``seed``): loaded from
  ``expert_dir(c)``, trained there first where missing or shorter."""
  e = c.experts
  cfg = jd.experts.ExpertConfig(epochs=e.epochs, lr=e.lr, batch_size=e.batch_size,
                                augment=e.get("augment", "dsa"))
  return jd.experts.train(jax.random.key(e.get("seed", 0)), data, model, expert_dir(c), e.num, cfg,
                          progress=e.get("progress", True))


DIFFICULTIES = ("first_learned", "forgetting")


def difficulty_scores(directory: str, expert_ids, num_epochs: int,
                      kind: str = "first_learned") -> np.ndarray:
  """Per training image, the mean over experts (higher = harder) of: ``"first_learned"``, the
  first-learned epoch + forgetting / (E + 1), an image never classified correctly counting E events
  (``scores.difficulty``); ``"forgetting"``, Toneva et al.'s forgetting events with
  never-learned images ranked hardest (``scores.forgetting_score``; SelMatch's Tiny-ImageNet setting,
  meant for long expert runs)."""
  if kind not in DIFFICULTIES:
    raise ValueError(f"Unknown difficulty {kind!r}; known: {list(DIFFICULTIES)}.")
  per = []
  for i in expert_ids:
    s = jd.experts.load_expert_scores(directory, i, max_epoch=num_epochs)
    per.append(jd.selection.scores.difficulty(s["first_learned"], s["forgetting"], num_epochs)
               if kind == "first_learned" else jd.selection.scores.forgetting_score(s["correct"]))
  return np.mean(per, axis=0)


def trajectory_parts(c, data, model, traj, mask=None):
  """MTT's objective and segment sampler from ``c.mtt`` (DATM's growing start range when
  ``c.mtt.initial_max_start_epoch`` is set)."""
  m = c.mtt
  obj = jd.objectives.trajectory_matching(model, data.num_classes, m.syn_steps,
                                          batch_syn=m.get("batch_syn") or None,
                                          augment=dsa(c, data, siamese=False), remat=True)
  grow = m.get("initial_max_start_epoch") or None
  sampler = jd.objectives.trajectory_sampler(
      traj, m.expert_epochs, m.max_start_epoch, min_start_epoch=m.get("min_start_epoch", 0),
      initial_max_start_epoch=grow, expansion_steps=m.expansion_steps if grow else None)
  return obj, sampler


def with_step_size(c, syn):
  """``syn`` with MTT's initial learnable step size ``c.mtt.lr_teacher``."""
  return syn._replace(log_lr=jnp.log(jnp.asarray(c.mtt.lr_teacher, jnp.float32)))


def trajectory_evaluators(c, data, model, traj, scores=None) -> dict:
  """The trajectory methods' own evaluators: ``"coverage"`` in expert 0's final feature space."""
  return {"coverage": coverage(c, data, model, traj, scores)}


def trajectory_smoke(c) -> dict:
  """The smallest trajectory-matching run: one 3-epoch expert without augmentation, 2 student steps
  (DATM's growing start range kept)."""
  small = {"experts.num": 1, "experts.epochs": 3, "experts.batch_size": 64, "experts.augment": "none",
           "experts.progress": False, "experts.dir": "", "mtt.syn_steps": 2, "mtt.expert_epochs": 1,
           "mtt.max_start_epoch": 2, "mtt.min_start_epoch": 0, "mtt.batch_syn": 0,
           "coverage_sample": 0}
  if c.mtt.initial_max_start_epoch:
    small.update({"mtt.initial_max_start_epoch": 1, "mtt.expansion_steps": 1})
  return small


def gradient_matching(c, data, use_dsa: bool):
  """DC's objective (DSA's with ``use_dsa``) with ``c.outer_loop`` / ``c.inner_loop`` (each 0: the
  reference's loop for the IPC, ``objectives.loops_for_ipc``)."""
  ref_outer, ref_inner = jd.objectives.loops_for_ipc(c.ipc)
  outer, inner = c.get("outer_loop") or ref_outer, c.get("inner_loop") or ref_inner
  return jd.objectives.gradient_matching(model_of(c, data), data.num_classes, outer, inner,
                                         augment=dsa(c, data, True) if use_dsa else None,
                                         train_augment=dsa(c, data, False) if use_dsa else None)


# ----------------------------------------------------------------------------------------------------
# Methods by name
# ----------------------------------------------------------------------------------------------------

def method_names() -> tuple:
  """The built-in methods: the modules of ``experiments/methods/``."""
  from experiments import methods
  return tuple(sorted(m.name for m in pkgutil.iter_modules(methods.__path__)
                      if not m.name.startswith("_")))


def method_module(name: str) -> types.ModuleType:
  """The module of method ``name``: ``experiments.methods.<name>``, or the module at import path
  ``name`` (e.g. ``my_pkg.my_method``); it must define ``build(c, data)``."""
  if name in method_names():
    return _checked(importlib.import_module(f"experiments.methods.{name}"))
  try:
    found = bool(name) and importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):  # a parent package that does not exist, or an empty part
    found = False
  if not found:
    raise ValueError(f"Unknown method {name!r}; known: {', '.join(method_names())}, or the import "
                     f"path of a module that defines build(c, data) (see experiments.methods).")
  return _checked(importlib.import_module(name))


def _checked(mod: types.ModuleType) -> types.ModuleType:
  if not callable(getattr(mod, "build", None)):
    raise ValueError(f"Method module {mod.__name__!r} defines no build(c, data) function.")
  return mod


# Methods whose start is ``c.init`` (``initial_set``); the others refuse the field rather than ignore it.
READS_INIT = ("dc", "dsa", "dm", "dd")


def build(c, data) -> Method:
  """The method ``c.method`` built from the config."""
  if "init" in c and c.method not in READS_INIT:
    raise ValueError(f"init={c.init!r}: method {c.method!r} does not read it (its start is its own; "
                     f"init applies to {', '.join(READS_INIT)}).")
  return method_module(c.method).build(c, data)


# ----------------------------------------------------------------------------------------------------
# Evaluators
# ----------------------------------------------------------------------------------------------------

def eval_config(c) -> jd.evaluate.EvalConfig:
  """The protocol of ``c``: ``c.eval_epochs``, ``c.eval_augment`` and any ``c.eval_kwargs``
  (e.g. SelMatch's ``lr=0.1, schedule="cosine_epoch", batch_size=128``). A config that names a paper's
  protocol (``c.eval_protocol``, set by ``configs.common.with_protocol``) must still hold it: a
  field changed since is refused, naming it."""
  cfg = jd.evaluate.EvalConfig(epochs=c.eval_epochs, augment=c.eval_augment,
                               **dict(c.get("eval_kwargs", {})))
  if c.get("eval_protocol"):
    p = paper_protocol(c)
    got = {f: getattr(cfg, f) for f in jd.evaluate.PROTOCOL_FIELDS} | {"epochs": cfg.num_epochs()}
    want = {f: getattr(p.cfg, f) for f in jd.evaluate.PROTOCOL_FIELDS} | {"epochs": p.cfg.num_epochs()}
    kw = dict(c.eval_model_kwargs.get(p.model, {}))
    diff = [f"{f}: {got[f]!r} (protocol: {want[f]!r})" for f in want if got[f] != want[f]]
    diff += [f"eval_models: {tuple(c.eval_models)} (protocol: ({p.model!r},))"] \
        if tuple(c.eval_models) != (p.model,) else []
    diff += [f"eval_model_kwargs.{p.model}.{k}: {kw.get(k)!r} (protocol: {v!r})"
             for k, v in p.model_kwargs if kw.get(k) != v]
    if diff:
      raise ValueError(f"eval_protocol={c.eval_protocol!r} ({p.source}) differs from the config's "
                       f"evaluation fields: {'; '.join(diff)}. Set eval_protocol='' to evaluate "
                       f"otherwise, or build the config with configs.common.with_protocol.")
  return cfg


def paper_protocol(c) -> jd.evaluate.Protocol:
  """``jd.evaluate.protocol(c.eval_protocol, c.dataset, ratio=c.eval_protocol_ratio, ipc=c.ipc,
  factor=c.idc_factor)``."""
  return jd.evaluate.protocol(c.eval_protocol, c.dataset, ratio=c.get("eval_protocol_ratio"),
                              ipc=c.get("ipc"), factor=c.get("idc_factor"))


def _protocol(c, data, use_learned_lr: bool, soft_label_loss: Optional[str]):
  cfg = eval_config(c)
  if c.get("eval_protocol"):
    use_learned_lr = paper_protocol(c).use_learned_lr

  def fn(key, syn, mask=None):
    run_cfg, groups = cfg, None
    if syn.labels.ndim == 2 and soft_label_loss is not None:
      run_cfg = run_cfg._replace(loss=soft_label_loss)
    if mask is not None and c.get("combined_augment"):
      run_cfg, groups = run_cfg._replace(augment=jd.partial_updates.combined_augment(c.eval_augment)), \
          jd.partial_updates.augment_groups(mask)
    out = {}
    for name in c.eval_models:
      out[name] = jd.evaluate.accuracy(key, syn, data, model=name,
                                       model_kwargs=dict(c.eval_model_kwargs.get(name, {})),
                                       num_seeds=c.num_seeds, cfg=run_cfg, groups=groups,
                                       use_learned_lr=use_learned_lr,
                                       progress=c.get("progress", True),
                                       cache_dir=os.path.join(c.workdir, "networks"))
    return out
  return fn


def coverage(c, data, model, traj, scores=None):
  """SelMatch's coverage in the feature space of expert 0's final network (radius: mean nearest-
  neighbour distance of ``c.coverage_sample`` real images; 0: all); with ``scores``, also of the
  easy and hard halves."""
  params = traj.params_at(0, traj.num_epochs)
  embed = lambda p, x: model.apply({"params": p}, x, train=False, return_features=True)[1]

  def fn(key, syn, mask=None):
    rep = jd.metrics.coverage_report(embed, params, np.asarray(syn.images), data.x_train,
                                     scores=scores, sample_size=c.get("coverage_sample") or None,
                                     key=key)
    names = {"coverage": "coverage (all)", "easy": "coverage (easy half)", "hard": "coverage (hard half)"}
    return {names[k]: v for k, v in rep.items() if k in names}
  return fn


def evaluators(c, data, own: Optional[dict] = None, soft_label_loss: Optional[str] = None,
               use_learned_lr: bool = True) -> dict:
  """The evaluators named in ``c.evals``: ``"protocol"`` (soft labels trained with
  ``soft_label_loss``, "ce" or "mse", when given, else with the protocol's loss; the set's learned
  step size when ``use_learned_lr``) or one of the method's ``own`` (``{name: fn(key, syn, mask)}``);
  any other name is refused."""
  own = dict(own or {})
  made = {}
  for name in c.evals:
    if name == "protocol":
      made[name] = _protocol(c, data, use_learned_lr, soft_label_loss)
    elif name in own:
      made[name] = own[name]
    else:
      raise ValueError(f"Evaluator {name!r} is unknown or not available for method {c.method!r}; "
                       f"it offers: {', '.join(['protocol', *own])}.")
  return made


# The fields that define a run; steps and evaluation-only fields are left out so that a finished run
# can be extended (more steps) or re-evaluated (other epochs, seeds, models) from its checkpoint.
NOT_IDENTITY = ("steps", "evals", "eval_protocol", "eval_protocol_ratio", "eval_models",
                "eval_model_kwargs", "eval_epochs", "eval_augment", "eval_kwargs", "num_seeds", "results",
                "workdir", "checkpoint_every", "image_every", "combined_augment", "coverage_sample",
                "data_dir", "progress")


def unused_fields(c) -> tuple:
  """The config fields method ``c.method`` never reads (its module's ``UNUSED_FIELDS``, e.g. KIP's and
  FRePo's ``model``: they bring their own kernel or network)."""
  return tuple(getattr(method_module(c.method), "UNUSED_FIELDS", ()))


# Fields added after runs were recorded, at the value that reproduces those runs: left out of the
# identity at that value, so the recorded runs still resume (another value enters it).
LATER_FIELDS = {"init": "real", "kip_learn_labels": True}


def run_identity(c) -> dict:
  """The config without ``NOT_IDENTITY``, the method's ``unused_fields`` (nor the experts' location
  and progress output) and ``LATER_FIELDS`` at their earlier behaviour: a change of a field the
  method never reads does not block a resume."""
  skip = set(NOT_IDENTITY) | set(unused_fields(c))
  d = {k: v for k, v in c.to_dict().items()
       if k not in skip and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
  if "experts" in d:
    d["experts"] = {k: v for k, v in d["experts"].items() if k not in ("dir", "progress")}
  return d


# Fields that only shape the distillation: the random-real baseline's evaluation reads none of them
# (its images come from the seed and the data, its labels are class ids, it has no mask), so runs that
# differ only in these (or in the method's own ``DISTILL_FIELDS``) share one cached baseline. Every
# other field is part of the baseline's identity, a new one included: a field missing here costs a
# re-evaluation, never a stale result.
NOT_BASELINE = ("method", "steps", "optimizer", "optimizer_kwargs", "label_optimizer_kwargs",
                "lr_optimizer_kwargs", "step_size_space", "batch_real", "outer_loop", "inner_loop",
                "distill_augment", "combined_augment", "evals", "checkpoint_every", "image_every",
                "progress", "results", "workdir", "eval_protocol", "eval_protocol_ratio",
                "kip_learn_labels", "init")


def baseline_identity(c, evaluator: str) -> dict:
  """What the random-real baseline of ``evaluator`` may depend on: the config without
  ``NOT_BASELINE`` and the method's ``DISTILL_FIELDS`` (nor the experts' location and progress
  output), plus the method's ``BASELINE_FIELDS`` of ``evaluator``."""
  mod = method_module(c.method)
  skip = set(NOT_BASELINE) | set(getattr(mod, "DISTILL_FIELDS", ()))
  d = {k: v for k, v in c.to_dict().items() if k not in skip}
  if "experts" in d:
    d["experts"] = {k: v for k, v in d["experts"].items() if k not in ("dir", "progress")}
  for dotted in getattr(mod, "BASELINE_FIELDS", {}).get(evaluator, ()):  # back from DISTILL_FIELDS
    d[dotted] = functools.reduce(lambda node, k: node.get(k) if node is not None else None,
                                 dotted.split("."), c)
  return {"evaluator": evaluator, **d}
