"""The methods by name: ``BUILDERS[c.method](c, data) -> Method``, one small builder per method.

A ``Method`` holds what a distillation run needs (objective, optimizer, real-batch sampler, initial
``SyntheticSet``, row mask, parameterization) and the evaluators the config names (``c.evals``). The
components come from the config by name, with the references' hyperparameters in the config files.

MTT, DATM and SelMatch declare a prerequisite step: expert trajectories (``c.experts``), loaded from
``c.experts.dir`` or trained there with ``jaxdistill.experts.train`` when missing (training resumes and
extends, and refuses a directory written with another model, protocol or data).

Evaluators (``c.evals``), each ``fn(key, syn, mask) -> {column: value}``:

- ``"protocol"``: fresh networks of every architecture in ``c.eval_models`` trained on the set
  (``jaxdistill.evaluate``); SelMatch's combined augmentation when ``c.combined_augment`` and a mask is
  given (DSA on the distilled rows, crop+flip on the frozen ones);
- ``"krr"``: the kernel predictor's test accuracy (KIP);
- ``"dd_own"``: networks trained by DD's own unrolled procedure with the set's step sizes;
- ``"coverage"``: SelMatch's coverage of the real training set in an expert's feature space.
"""
from __future__ import annotations

import os
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
  return jd.distill.random_sampler(data.x_train, data.y_train, c.batch_real * data.num_classes)


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


def difficulty_scores(directory: str, expert_ids, num_epochs: int) -> np.ndarray:
  """Per training image: mean over experts of first-learned epoch + forgetting / (E + 1) (higher =
  harder)."""
  per = []
  for i in expert_ids:
    s = jd.experts.load_expert_scores(directory, i)
    per.append(jd.selection.scores.difficulty(s["first_learned"], s["forgetting"], num_epochs))
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


def _with_step_size(c, syn):
  return syn._replace(log_lr=jnp.log(jnp.asarray(c.mtt.lr_teacher, jnp.float32)))


# ----------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------

def build_dm(c, data):
  model = model_of(c, data)
  obj = jd.objectives.distribution_matching(model, data.num_classes, augment=dsa(c, data, True))
  return Method(obj, optimizer(c), class_sampler(c, data), random_init(c, data),
                evaluators=evaluators(c, data))


def _gradient_matching(c, data, use_dsa: bool):
  outer, inner = (c.outer_loop, c.inner_loop) if c.get("outer_loop") else \
      jd.objectives.loops_for_ipc(c.ipc)
  return jd.objectives.gradient_matching(model_of(c, data), data.num_classes, outer, inner,
                                         augment=dsa(c, data, True) if use_dsa else None,
                                         train_augment=dsa(c, data, False) if use_dsa else None)


def build_dc(c, data):
  return Method(_gradient_matching(c, data, False), optimizer(c), class_sampler(c, data),
                random_init(c, data), evaluators=evaluators(c, data))


def build_dsa(c, data):
  return Method(_gradient_matching(c, data, True), optimizer(c), class_sampler(c, data),
                random_init(c, data), evaluators=evaluators(c, data))


def build_idc(c, data):
  """IDC: ``c.idc_factor``**2 real images packed per stored image, decoded by upsampling."""
  f, k = c.idc_factor, data.num_classes
  real = jd.selection.random(keys(c)[0], data.x_train, data.y_train, k, c.ipc * f * f)
  init = jd.SyntheticSet(jd.parameterization.idc_init(real.images, f),
                         jnp.repeat(jnp.arange(k, dtype=jnp.int32), c.ipc))
  return Method(_gradient_matching(c, data, c.get("idc_dsa", False)), optimizer(c),
                class_sampler(c, data), init, decode=jd.parameterization.idc_decode(f),
                evaluators=evaluators(c, data))


def build_kip(c, data):
  kernel = jd.kernels.fc_kernel_fn("ntk", depth=c.kip_depth)
  init = random_init(c, data)
  init = init._replace(labels=jd.objectives.kip_labels(init.labels, data.num_classes))
  return Method(jd.objectives.kip(kernel, data.num_classes, reg=c.kip_reg),
                optimizer(c, labels=True), flat_sampler(c, data), init,
                evaluators=evaluators(c, data, kernel=kernel))


def build_frepo(c, data):
  obj = jd.objectives.frepo("convnet_frepo", data.num_classes, pool_size=c.frepo_pool,
                            max_online_updates=c.frepo_max_online,
                            net_options=dict(c.frepo_net_kwargs), use_flip=False,
                            reg=c.get("frepo_reg", 1e-6))
  init = random_init(c, data)
  init = init._replace(labels=jd.objectives.kip_labels(init.labels, data.num_classes))
  return Method(obj, optimizer(c, labels=True), flat_sampler(c, data), init,
                evaluators=evaluators(c, data))


def build_dd(c, data):
  """DD: its protocol evaluation uses the protocol's step size, its own (``dd_own``) the learned ones."""
  steps, epochs = c.dd_unroll_steps, c.dd_epochs
  model = model_of(c, data)
  obj = jd.objectives.dataset_distillation(model, data.num_classes, steps, epochs)
  init = random_init(c, data)
  init = init._replace(log_lr=jnp.full((steps * epochs,), np.log(c.dd_lr_init), jnp.float32))
  return Method(obj, optimizer(c, log_lr=True), flat_sampler(c, data), init,
                evaluators=evaluators(c, data, use_learned_lr=False, model=model))


def build_mtt(c, data):
  model = model_of(c, data)
  traj = experts(c, data, model)
  obj, sampler = trajectory_parts(c, data, model, traj)
  return Method(obj, optimizer(c, log_lr=True), sampler, _with_step_size(c, random_init(c, data)),
                evaluators=evaluators(c, data, model=model, traj=traj))


def correct_init(c, data, model, params) -> jd.SyntheticSet:
  """DATM's initialization: random real images among those ``model`` with ``params`` classifies
  correctly (all images when some class has fewer than ``c.ipc`` of them)."""
  pred = np.asarray(jd.evaluate.predict(model, {"params": params}, jnp.asarray(data.x_train)))
  right = pred == data.y_train
  if np.bincount(data.y_train[right], minlength=data.num_classes).min() < c.ipc:
    right = np.ones_like(right)
  return jd.selection.random(keys(c)[0], data.x_train[right], data.y_train[right],
                             data.num_classes, c.ipc)


def build_datm(c, data):
  """DATM: MTT with a growing start-epoch range, initialized with correctly classified real images and
  learnable soft labels from the experts at epoch ``c.datm.label_epoch``."""
  model = model_of(c, data)
  traj = experts(c, data, model)
  obj, sampler = trajectory_parts(c, data, model, traj)
  apply = lambda p, x: model.apply({"params": p}, x, train=False)
  nets = [traj.params_at(i, c.datm.label_epoch) for i in range(traj.num_experts)]
  init = correct_init(c, data, model, nets[0])
  labels = jd.objectives.soft_labels_from_experts(apply, nets, init.images, init.labels)
  init = _with_step_size(c, init._replace(labels=labels))
  return Method(obj, optimizer(c, labels=True, log_lr=True), sampler, init,
                evaluators=evaluators(c, data, model=model, traj=traj))


def build_selmatch(c, data):
  """SelMatch: the difficulty window (``c.selmatch.beta``, in the reference code's unit unless
  ``c.selmatch.unit`` says otherwise) as initialization, the easier ``alpha`` of each class distilled by
  MTT, the rest frozen."""
  model = model_of(c, data)
  traj = experts(c, data, model)
  scores = difficulty_scores(expert_dir(c), traj.experts, traj.num_epochs)
  s = c.selmatch
  init = jd.selection.window_init(scores, data.x_train, data.y_train, data.num_classes, c.ipc,
                                  s.beta, unit=s.get("unit", "code"))
  mask = jd.partial_updates.selmatch_mask(np.asarray(init.labels), data.num_classes, s.alpha)
  obj, sampler = trajectory_parts(c, data, model, traj)
  return Method(obj, optimizer(c, log_lr=True), sampler, _with_step_size(c, init), mask=mask,
                evaluators=evaluators(c, data, model=model, traj=traj, scores=scores))


BUILDERS = {"dm": build_dm, "dc": build_dc, "dsa": build_dsa, "idc": build_idc, "kip": build_kip,
            "frepo": build_frepo, "dd": build_dd, "mtt": build_mtt, "datm": build_datm,
            "selmatch": build_selmatch}


def build(c, data) -> Method:
  """The method ``c.method`` built from the config."""
  if c.method not in BUILDERS:
    raise ValueError(f"Unknown method {c.method!r}; known: {', '.join(BUILDERS)}.")
  return BUILDERS[c.method](c, data)


# ----------------------------------------------------------------------------------------------------
# Evaluators
# ----------------------------------------------------------------------------------------------------

def eval_config(c) -> jd.evaluate.EvalConfig:
  """The protocol of ``c``: ``c.eval_epochs``, ``c.eval_augment`` and any ``c.eval_kwargs``
  (e.g. SelMatch's ``lr=0.1, schedule="cosine", batch_size=128``)."""
  return jd.evaluate.EvalConfig(epochs=c.eval_epochs, augment=c.eval_augment,
                                **dict(c.get("eval_kwargs", {})))


def _protocol(c, data, use_learned_lr: bool):
  cfg = eval_config(c)
  # Learned soft labels of the kernel methods are regression targets: MSE, as KIP / FRePo train.
  mse = c.method in ("kip", "frepo")

  def fn(key, syn, mask=None):
    run_cfg, groups = cfg, None
    if syn.labels.ndim == 2 and mse:
      run_cfg = run_cfg._replace(loss="mse")
    if mask is not None and c.get("combined_augment"):
      run_cfg, groups = run_cfg._replace(augment=(c.eval_augment, "crop_flip")), \
          jd.partial_updates.augment_groups(mask)
    out = {}
    for name in c.eval_models:
      out[name] = jd.evaluate.accuracy(key, syn, data, model=name,
                                       model_kwargs=dict(c.eval_model_kwargs.get(name, {})),
                                       num_seeds=c.num_seeds, cfg=run_cfg, groups=groups,
                                       use_learned_lr=use_learned_lr)
    return out
  return fn


def _krr(c, data, kernel):
  def fn(key, syn, mask=None):
    return {"KRR": jd.objectives.krr_test_accuracy(kernel, syn, data.x_test, data.y_test,
                                                   reg=c.kip_reg, num_classes=data.num_classes)}
  return fn


def _dd_own(c, data, model):
  """Test accuracy of networks trained by DD's own unroll with the set's step sizes (random real images:
  the initial step size)."""
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  def fn(key, syn, mask=None):
    if syn.log_lr is None:
      syn = syn._replace(log_lr=jnp.full((c.dd_unroll_steps * c.dd_epochs,), np.log(c.dd_lr_init),
                                         jnp.float32))

    @jax.jit
    def one(k):
      v = jd.objectives.dd_train(model, syn, k, c.dd_unroll_steps, c.dd_epochs,
                                 num_classes=data.num_classes)
      return jnp.mean(jd.evaluate.predict(model, v, x_test) == y_test)

    accs = np.array([float(one(jax.random.fold_in(key, i))) for i in range(c.num_seeds)])
    return {"DD's own training": jd.types.EvalResult(float(accs.mean()), float(accs.std()), accs)}
  return fn


def _coverage(c, data, model, traj, scores):
  """SelMatch's coverage in the feature space of expert 0's final network (radius: mean nearest-
  neighbour distance of ``c.coverage_sample`` real images; 0: all)."""
  params = traj.params_at(0, traj.num_epochs)
  embed = lambda p, x: model.apply({"params": p}, x, train=False, return_features=True)[1]

  def fn(key, syn, mask=None):
    rep = jd.metrics.coverage_report(embed, params, np.asarray(syn.images), data.x_train,
                                     scores=scores, sample_size=c.get("coverage_sample") or None,
                                     key=key)
    names = {"coverage": "coverage (all)", "easy": "coverage (easy half)", "hard": "coverage (hard half)"}
    return {names[k]: v for k, v in rep.items() if k in names}
  return fn


def evaluators(c, data, kernel=None, model=None, traj=None, scores=None,
               use_learned_lr: bool = True) -> dict:
  """The evaluators named in ``c.evals``, refusing any the method cannot provide."""
  made = {}
  for name in c.evals:
    if name == "protocol":
      made[name] = _protocol(c, data, use_learned_lr)
    elif name == "krr" and kernel is not None:
      made[name] = _krr(c, data, kernel)
    elif name == "dd_own" and c.method == "dd":
      made[name] = _dd_own(c, data, model)
    elif name == "coverage" and traj is not None:
      made[name] = _coverage(c, data, model, traj, scores)
    else:
      raise ValueError(f"Evaluator {name!r} is unknown or not available for method {c.method!r} "
                       f"(protocol: all; krr: kip; dd_own: dd; coverage: mtt, datm, selmatch).")
  return made


# The fields that define a run; steps and evaluation-only fields are left out so that a finished run
# can be extended (more steps) or re-evaluated (other epochs, seeds, models) from its checkpoint.
NOT_IDENTITY = ("steps", "evals", "eval_models", "eval_model_kwargs", "eval_epochs", "eval_augment",
                "eval_kwargs", "num_seeds", "results", "workdir", "checkpoint_every", "image_every",
                "combined_augment", "coverage_sample", "data_dir", "progress")


def run_identity(c) -> dict:
  """The config without ``NOT_IDENTITY`` (nor the experts' location and progress output)."""
  d = {k: v for k, v in c.to_dict().items() if k not in NOT_IDENTITY}
  if "experts" in d:
    d["experts"] = {k: v for k, v in d["experts"].items() if k not in ("dir", "progress")}
  return d


# Fields that only shape the distillation: the random-real baseline's evaluation reads none of them
# (its images come from the seed and the data, its labels are class ids, it has no mask), so runs that
# differ only in these share one cached baseline. Every other field is part of the baseline's identity,
# a new one included: a field missing here costs a re-evaluation, never a stale result.
NOT_BASELINE = ("method", "steps", "optimizer", "optimizer_kwargs", "label_optimizer_kwargs",
                "lr_optimizer_kwargs", "step_size_space", "batch_real", "outer_loop", "inner_loop",
                "idc_factor", "idc_dsa", "frepo_pool", "frepo_max_online", "frepo_net_kwargs",
                "frepo_reg", "datm", "mtt", "selmatch", "distill_augment", "combined_augment", "evals",
                "checkpoint_every", "image_every", "progress", "results", "workdir", "data_dir")


def baseline_identity(c, evaluator: str) -> dict:
  """What the random-real baseline of ``evaluator`` may depend on: the config without
  ``NOT_BASELINE`` (nor the experts' location and progress output)."""
  d = {k: v for k, v in c.to_dict().items() if k not in NOT_BASELINE}
  if "experts" in d:
    d["experts"] = {k: v for k, v in d["experts"].items() if k not in ("dir", "progress")}
  return {"evaluator": evaluator, **d}

