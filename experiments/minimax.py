"""Minimax Diffusion on a real dataset: pretrain a small DiT or UNet, fine-tune it, sample, evaluate.

Usage: python -m experiments.minimax --config experiments/configs/minimax_fmnist.py

Every stage resumes: pretraining and fine-tuning from orbax checkpoints (a finished run is restored,
not retrained), sampled sets and evaluations from files under ``<workdir>``. Writes the results file
``<results>`` with the accuracy (standard protocol and a second architecture) and coverage of every set,
and image grids beside it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import flax.serialization
import numpy as np
import optax

import jaxdistill as jd
from experiments.common import (ident as _ident, json_cache as _json_cache, provenance, run_script,
                                train_on_all)
from jaxdistill import diffusion as dfn


def _finetune_config(c) -> dict:
  """What identifies a fine-tuning beside its pretraining: ``c.finetune``, and the autoencoder when
  the Minimax terms are computed in its latents (a retrained one changes the fine-tuning)."""
  ft = c.finetune.to_dict()
  if ft.get("space", "model") != "model":
    ft["autoencoder"] = c.autoencoder.to_dict()
  return ft


def _pretrain_config(c) -> dict:
  """What identifies a pretraining: checked by its checkpoints and recorded by every fine-tuning of it.
  The model kind and the held-out count enter only when they differ from the first runs' (a DiT, no
  held-out images), so those runs' checkpoints still resume."""
  out = {"dataset": c.dataset, "seed": c.seed, "model": c.model.to_dict(), "schedule": c.schedule,
         "num_timesteps": c.num_timesteps, "pretrain": c.pretrain.to_dict()}
  pre = out["pretrain"]
  if not pre.get("quality_every"):
    pre.pop("quality_every", None)
  if c.model_kind != "dit":
    out["model_kind"] = c.model_kind
  if c.holdout:
    out["holdout"] = c.holdout
  if c.get("max_per_class"):
    out["max_per_class"] = c.max_per_class
  return out


def split_holdout(c, data, key) -> tuple:
  """``(diffusion training indices, held-out indices)`` into the training set: ``c.holdout`` images
  drawn at random are kept out of the diffusion model's training, as the reference of every choice
  made by the quality report (sampler settings, checkpoints), so that no choice looks at test images."""
  n = len(data.y_train)
  if not 0 <= c.holdout < n:
    raise ValueError(f"holdout must lie in [0, {n}) (training images kept out); got {c.holdout}.")
  perm = np.asarray(jax.random.permutation(key, n))
  return np.sort(perm[c.holdout:]), np.sort(perm[:c.holdout])


def pretrain(c, model, schedule, arrays, image_shape, key, on_checkpoint=None):
  """Trains the diffusion model from scratch; returns ``(ema params, info)``. With
  ``c.pretrain.quality_every`` > 0 the training runs in segments of that many steps and
  ``on_checkpoint(step, ema params)`` is called at the end of each (the quality report of a sample),
  with None for the params of segments a resumed run had already passed."""
  p = c.pretrain
  params = dfn.init_params(jax.random.fold_in(key, 0), model, image_shape)
  lr = optax.warmup_cosine_decay_schedule(0.0, p.lr, p.warmup, p.steps, p.end_lr)
  # gammas stay at 1 while pretraining (DiffFit adds them to a pretrained model)
  tx = dfn.trainable_tx(optax.chain(optax.clip_by_global_norm(p.clip),
                                    optax.adamw(lr, weight_decay=0.0)), params, ("",), ("gamma",))
  state = dfn.init_state(jax.random.fold_in(key, 1), params, tx)
  step = dfn.make_step(model, schedule, tx, p.batch_size, p.ema_decay)
  d = os.path.join(c.workdir, "pretrain")
  logger = jd.logs.MetricLogger(os.path.join(d, "logs"))
  every = p.get("quality_every", 0) or p.steps
  ends = sorted({min(s, p.steps) for s in range(every, p.steps + every, every)})
  for end in ends:
    state, _ = dfn.run(state, step, arrays, end, checkpoint_dir=os.path.join(d, "checkpoints"),
                       checkpoint_every=p.checkpoint_every, config=_pretrain_config(c),
                       logger=logger, desc="pretrain", adopt_legacy=c.adopt_legacy_checkpoints)
    if on_checkpoint is not None:  # None: the run is past ``end`` (resumed); its report is cached
      on_checkpoint(end, state.ema if int(state.step) == end else None)
  logger.close()
  return state.ema, _record_time(d, p.steps)


def _record_time(d: str, steps: int) -> dict:
  """The training time of the run under ``d``, every (resumed) session of it, from its logged rows
  in the order written (``jaxdistill.logs.sessions``: a session stopped mid-way counts up to its last
  logged step, the steps a later session ran again included; the sessions' step ranges then overlap):
  ``{"seconds", "sessions", "split": [(first step, last step, seconds)], "total_steps"}``."""
  logs = os.path.join(d, "logs")
  split = jd.logs.sessions(jd.logs.read_metrics(logs, every_row=True)) if os.path.exists(
      os.path.join(logs, "metrics.jsonl")) else []
  return {"seconds": float(sum(t for _, _, t in split)), "sessions": len(split),
          "split": [list(s) for s in split], "total_steps": steps}


SPACES = ("model", "autoencoder")


def autoencoder(c, arrays, key) -> tuple:
  """The autoencoder whose latents are the Minimax terms' space (``finetune.space="autoencoder"``):
  trained once on the diffusion model's training images (in its space), stored under
  ``<workdir>/autoencoder``; ``(model, params)``."""
  a = c.autoencoder
  ae = dfn.AutoEncoder(a.width, a.latent_channels, arrays["images"].shape[-1])
  tag = _ident(a.to_dict(), _pretrain_config(c))
  d = os.path.join(c.workdir, "autoencoder")
  path = os.path.join(d, f"{tag}.msgpack")
  like = ae.init(key, jnp.zeros((1, *arrays["images"].shape[1:]), jnp.float32))["params"]
  if os.path.exists(path):
    with open(path, "rb") as fh:
      return ae, flax.serialization.from_bytes(like, fh.read())
  t0 = time.time()
  params, loss = dfn.train_autoencoder(key, arrays["images"], ae, a.steps, a.batch_size, a.lr)
  os.makedirs(d, exist_ok=True)
  with open(path + ".tmp", "wb") as fh:
    fh.write(flax.serialization.to_bytes(params))
  os.replace(path + ".tmp", path)
  _json_cache(os.path.join(d, f"{tag}.json"), lambda: {"final_loss": loss, "seconds": time.time() - t0})
  print(f"autoencoder {a.to_dict()}: final reconstruction MSE {loss:.4f}", flush=True)
  return ae, params


def finetune(c, name, model, schedule, arrays, image_shape, params0, key, lambdas):
  """DiffFit fine-tuning with the Minimax terms at ``lambdas = (pos, neg)``, in the space
  ``c.finetune.space`` ("model": the diffusion model's own; "autoencoder": the latents of
  ``autoencoder``); returns EMA params."""
  f = c.finetune
  tx = dfn.difffit_tx(params0, f.lr)
  space = f.get("space", "model")
  embed, dim = None, int(np.prod(image_shape))
  if space == "autoencoder":
    ae, ae_params = autoencoder(c, arrays, jax.random.fold_in(key, 3))
    embed = dfn.encoder_fn(ae, ae_params)
    dim = int(np.prod(jax.eval_shape(embed, jnp.zeros((1, *image_shape), jnp.float32)).shape))
  mm = dfn.MinimaxConfig(lambdas[0], lambdas[1], f.memory_size, embed)
  mem = dfn.init_memory(model.num_classes, f.memory_size, dim)
  state = dfn.init_state(jax.random.fold_in(key, 2), params0, tx, mem)
  step = dfn.make_step(model, schedule, tx, f.batch_size, f.ema_decay, mm=mm)
  d = os.path.join(c.workdir, name + c.finetune_suffix)
  logger = jd.logs.MetricLogger(os.path.join(d, "logs"))
  # the pretraining by its configuration, not its path: a moved workdir still resumes; the space
  # enters only when it is not the model's own (the first runs' identity stays)
  ft = _finetune_config(c)
  if ft.get("space", "model") == "model":
    ft.pop("space", None)
  cfg = {"pretrained": _pretrain_config(c), "finetune": ft, "lambdas": list(lambdas)}
  state, _ = dfn.run(state, step, arrays, f.steps, checkpoint_dir=os.path.join(d, "checkpoints"),
                     checkpoint_every=f.checkpoint_every, config=cfg, logger=logger, desc=name,
                     adopt_legacy=c.adopt_legacy_checkpoints)
  logger.close()
  return state.ema, _record_time(d, f.steps)


def generate(c, name, model, params, schedule, data, ipc, key, sampler=None):
  """The sampled set, cached as ``<workdir>/<name>_ipc<ipc>.npz``; ``sampler`` (default ``c.sample``)
  holds ``steps``, ``eta``, ``cfg_scale``, ``clip``, ``batch_size``."""
  path = os.path.join(c.workdir, f"{name}_ipc{ipc}.npz")
  if os.path.exists(path):
    z = np.load(path)
    return jd.SyntheticSet(jnp.asarray(z["images"]), jnp.asarray(z["labels"])), float(z["seconds"])
  s = sampler or c.sample
  t0 = time.time()
  syn = dfn.synthesize(key, model, params, schedule, ipc, data.image_shape, data.mean, data.std,
                       sample_steps=s.steps, eta=s.eta, cfg_scale=s.cfg_scale, clip=s.clip,
                       batch_size=s.batch_size)
  sec = time.time() - t0
  np.savez(path, images=np.asarray(syn.images), labels=np.asarray(syn.labels), seconds=sec)
  return syn, sec


def _coverage_net(c, data, key):
  """A ConvNet (the evaluation architecture) trained ``coverage_epochs`` on all training images:
  its penultimate features are the space coverage is measured in."""
  model = jd.models.get_model(c.eval_model, data.num_classes, **c.eval_model_kwargs)
  variables, _ = train_on_all(key, data, model, c.coverage_epochs)
  embed = lambda p, x: model.apply(p, x, train=False, return_features=True)[1]
  return embed, variables


def judge(c, data, key) -> tuple:
  """The quality report's classifier: ``c.judge.model`` trained ``c.judge.epochs`` on every training
  image (no augmentation), once, stored under ``<workdir>/judge`` (flax serialization) with its test
  accuracy; ``(model, variables, test accuracy)``. Refused below ``c.judge.min_accuracy``: a weak
  classifier cannot tell a garment from a blur."""
  j = c.judge
  model = jd.models.get_model(j.model, data.num_classes, **j.model_kwargs)
  d = os.path.join(c.workdir, "judge")
  tag = _ident(j.model, sorted(j.model_kwargs.items()), j.epochs, c.seed, len(data.y_train))
  path, meta = os.path.join(d, f"{tag}.msgpack"), os.path.join(d, f"{tag}.json")
  like = jd.evaluate.init_variables(key, model, data.image_shape)
  if os.path.exists(path) and os.path.exists(meta):
    with open(path, "rb") as f:
      variables = flax.serialization.from_bytes(like, f.read())
    with open(meta) as f:
      acc = json.load(f)["test_accuracy"]
  else:
    t0 = time.time()
    variables, acc = train_on_all(key, data, model, j.epochs)
    os.makedirs(d, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
      f.write(flax.serialization.to_bytes(variables))
    os.replace(path + ".tmp", path)
    _json_cache(meta, lambda: {"test_accuracy": acc, "seconds": time.time() - t0})
    print(f"judge {j.model} {dict(j.model_kwargs)}, {j.epochs} epochs: test accuracy "
          f"{100 * acc:.2f}%", flush=True)
  if acc < j.min_accuracy:
    raise ValueError(f"The quality report's classifier reaches {100 * acc:.2f}% test accuracy, below "
                     f"judge.min_accuracy={j.min_accuracy}: raise judge.epochs or its width.")
  return model, variables, acc


def quality(c, data, syn, judge_state, key, reference=None) -> dict:
  """``jd.metrics.quality_report`` of ``syn`` by the judge, cached by the set's bytes. The FID-style
  distance is measured against ``reference`` images (default: the test set; the held-out training
  images for every choice the run makes)."""
  model, variables, _ = judge_state
  ref = data.x_test if reference is None else reference
  digest = hashlib.sha256(np.asarray(syn.images).tobytes()).hexdigest()[:12]
  ref_tag = () if reference is None else (hashlib.sha256(np.asarray(ref).tobytes()).hexdigest()[:12],)
  ident = _ident(digest, np.asarray(syn.labels).tobytes(), c.judge.to_dict(), *ref_tag)
  logits = lambda v, x: model.apply(v, x, train=False)
  feats = lambda v, x: model.apply(v, x, train=False, return_features=True)[1]
  return _json_cache(os.path.join(c.workdir, "eval", f"quality_{ident}.json"),
                     lambda: jd.metrics.quality_report(logits, feats, variables, np.asarray(syn.images),
                                                       np.asarray(syn.labels), ref,
                                                       data.x_train, sample_size=2000, key=key))


def pick_sampler(qualities: list, slack: float) -> int:
  """The index of the lowest FID-style distance among the quality reports whose class agreement is
  within ``slack`` of the highest (the first such on ties). Agreements are shares of a few hundred
  images, so a difference of exactly ``slack`` counts as within it whatever the float rounding."""
  top = max(q["class_agreement"] for q in qualities)
  ok = [i for i, q in enumerate(qualities) if q["class_agreement"] >= top - slack - 1e-6]
  return min(ok, key=lambda i: qualities[i]["fid_like"])


def choose_sampler(c, model, params, schedule, data, judge_state, key, holdout) -> tuple:
  """The sampler settings of ``c.sweep`` (each a partial override of ``c.sample``) chosen by
  ``pick_sampler`` from the quality of their samples of ``c.sweep_ipc`` images per class from
  ``params`` against the held-out training images; ``(settings, [{settings, quality}, ...])``.
  ``c.sample`` alone when the sweep is empty. Never looks at test images."""
  if not c.sweep:
    return c.sample, []
  rows = []
  for over in c.sweep:
    s = c.sample.copy_and_resolve_references()
    s.update(dict(over))
    name = "sweep_" + _ident(s.to_dict(), _pretrain_config(c))
    syn, _ = generate(c, name, model, params, schedule, data, c.sweep_ipc, key, sampler=s)
    rows.append({"sampler": s.to_dict(), "quality": quality(c, data, syn, judge_state, key, holdout)})
    q = rows[-1]["quality"]
    print(f"sampler {dict(over)}: class agreement {q['class_agreement']:.3f}, FID-style "
          f"{q['fid_like']:.2f} (held-out)", flush=True)
  best = rows[pick_sampler([r["quality"] for r in rows], c.sweep_agreement_slack)]
  s = c.sample.copy_and_resolve_references()
  s.update(best["sampler"])
  return s, rows


def _evaluate(c, data, syn, keys, cov_state):
  """Accuracy under both protocols and coverage of the test set, each cached by the set's bytes."""
  eval_key, cov_key = keys
  cfg = jd.evaluate.EvalConfig(epochs=c.eval_epochs, augment=c.eval_augment)
  protocols = {c.eval_model: (c.eval_model, dict(c.eval_model_kwargs)), c.other_model: (c.other_model, {})}
  digest = hashlib.sha256(np.asarray(syn.images).tobytes()).hexdigest()[:12]
  row = {}
  for pname, (mname, kw) in protocols.items():
    def ev(mname=mname, kw=kw):
      t0 = time.time()
      r = jd.evaluate.accuracy(eval_key, syn, data, model=mname, model_kwargs=kw,
                               num_seeds=c.num_seeds, cfg=cfg)
      return {"mean": r.mean, "std": r.std, "accuracies": np.asarray(r.accuracies).tolist(),
              "seconds": time.time() - t0}
    ident = _ident(digest, mname, sorted(kw.items()), cfg, c.num_seeds, c.seed)
    row[pname] = _json_cache(os.path.join(c.workdir, "eval", f"{ident}.json"), ev)

  def cov():
    if not cov_state:
      cov_state.extend(_coverage_net(c, data, cov_key))
    embed, variables = cov_state
    return jd.metrics.coverage_report(embed, variables, np.asarray(syn.images), data.x_test,
                                      train_images=data.x_train, sample_size=2000, key=cov_key)
  cov_ident = _ident(digest, c.coverage_epochs, c.eval_model, sorted(c.eval_model_kwargs.items()), c.seed)
  row["coverage"] = _json_cache(os.path.join(c.workdir, "eval", f"cov_{cov_ident}.json"), cov)
  return row


def check_config(c) -> None:
  """Refuses settings that cannot mean what they say, before anything runs."""
  if c.model_kind not in dfn.MODELS:
    raise ValueError(f"Unknown model_kind {c.model_kind!r}; choose one of {sorted(dfn.MODELS)}.")
  if not isinstance(c.holdout, int) or c.holdout < 0:
    raise ValueError(f"holdout must be an integer >= 0 (training images kept out); got {c.holdout!r}.")
  if (c.sweep or c.pretrain.get("quality_every")) and not c.holdout:
    raise ValueError("The sampler sweep and pretrain.quality_every judge samples against held-out "
                     "training images (never the test set): set holdout > 0.")
  for over in c.sweep:
    unknown = set(over) - set(c.sample)
    if unknown:
      raise ValueError(f"sweep entry {dict(over)} sets unknown sampler fields {sorted(unknown)}; "
                       f"known: {sorted(c.sample)}.")
  if not re.fullmatch(r"[A-Za-z0-9_.-]*", c.finetune_suffix):
    raise ValueError(f"finetune_suffix is appended to a directory name: letters, digits, '_', '.', "
                     f"'-' only; got {c.finetune_suffix!r}.")
  if c.finetune.get("space", "model") not in SPACES:
    raise ValueError(f"Unknown finetune.space {c.finetune.space!r}; choose one of {SPACES}.")
  if c.sweep and (not isinstance(c.sweep_ipc, int) or c.sweep_ipc < 1):
    raise ValueError(f"sweep_ipc must be an integer >= 1; got {c.sweep_ipc!r}.")
  if c.sweep and not 0.0 <= c.sweep_agreement_slack <= 1.0:
    raise ValueError(f"sweep_agreement_slack is a class-agreement difference in [0, 1]; got "
                     f"{c.sweep_agreement_slack!r}.")


def load_data(c):
  """The run's dataset: every image, or ``c.max_per_class`` of each class (a fixed subset)."""
  kw = ({"max_per_class": c.max_per_class, "key": jax.random.key(0)} if c.get("max_per_class") else {})
  return jd.data.load(c.dataset, **kw)


def run(c) -> dict:
  """Every stage of config ``c`` (resuming); returns ``{(set, ipc): row}`` (accuracies, coverage,
  quality report)."""
  check_config(c)
  key = jax.random.key(c.seed)
  train_key, sample_key, eval_key, cov_key, rnd_key = jax.random.split(key, 5)
  judge_key = jax.random.fold_in(key, 7)
  data = load_data(c)
  os.makedirs(c.workdir, exist_ok=True)
  model = dfn.get_model(c.model_kind, data.num_classes, **c.model)
  schedule = dfn.make_schedule(c.num_timesteps, c.schedule)
  train_idx, held_idx = split_holdout(c, data, jax.random.fold_in(key, 11))
  holdout = data.x_train[held_idx] if c.holdout else None
  arrays = {"images": np.asarray(dfn.to_model_space(jnp.asarray(data.x_train[train_idx]), data.mean,
                                                    data.std)),
            "labels": np.asarray(data.y_train[train_idx], np.int32)}
  image_shape = data.image_shape
  res_dir = os.path.dirname(c.results) or "."
  os.makedirs(res_dir, exist_ok=True)
  info = {"sample_seconds": {}, "finetune": {}}
  table = {}
  cov_state = []
  judge_state = judge(c, data, judge_key)
  info["judge_accuracy"] = judge_state[2]
  if c.holdout and (c.sweep or c.pretrain.get("quality_every")):
    # the floor of the held-out reports: real training images, as many as each generated sample
    # (the FID-style distance of a few hundred images is biased upward by their number)
    real = jd.selection.random(jax.random.fold_in(rnd_key, 1000), data.x_train[train_idx],
                               data.y_train[train_idx], data.num_classes, c.sweep_ipc)
    info["real_floor"] = quality(c, data, real, judge_state, judge_key, holdout)

  def evaluate(name, ipc, syn):
    table[(name, ipc)] = _evaluate(c, data, syn, (eval_key, cov_key), cov_state)
    r = table[(name, ipc)]
    r["quality"] = quality(c, data, syn, judge_state, judge_key)
    print(f"{name} IPC {ipc}: {c.eval_model} {100 * r[c.eval_model]['mean']:.2f}, {c.other_model} "
          f"{100 * r[c.other_model]['mean']:.2f}, coverage {100 * r['coverage']['coverage']:.1f}, "
          f"class agreement {r['quality']['class_agreement']:.3f}, FID-style "
          f"{r['quality']['fid_like']:.2f}", flush=True)
    write_results(c, table, info)

  def sample_and_evaluate(name, params):
    for ipc in c.ipcs:
      # the file is named by everything the images depend on (the sampler, the pretraining, the
      # fine-tuning): a rerun with other settings samples anew instead of reading another set
      fname = f"{name}_" + _ident(info["sampler"].to_dict(), _pretrain_config(c),
                                  None if name == "vanilla" else _finetune_config(c))
      syn, sec = generate(c, fname, model, params, schedule, data, ipc,
                          jax.random.fold_in(sample_key, ipc), sampler=info["sampler"])
      info["sample_seconds"][(name, ipc)] = sec
      idx = np.concatenate([np.arange(k * ipc, k * ipc + min(ipc, 10)) for k in range(data.num_classes)])
      jd.logs.save_grid(os.path.join(res_dir, f"{c.grid_prefix}_{name}_ipc{ipc}.png"),
                        np.asarray(syn.images)[idx], data.mean, data.std, nrow=min(ipc, 10))
      yield ipc, syn

  info["checkpoint_quality"] = []

  def checkpoint_quality(step, params):
    name = f"pretrain_step{step}_" + _ident(_pretrain_config(c), c.sample.to_dict())
    if params is None and not os.path.exists(os.path.join(c.workdir, f"{name}_ipc{c.sweep_ipc}.npz")):
      return  # passed before this report existed
    syn, _ = generate(c, name, model, params, schedule, data, c.sweep_ipc, sample_key)
    q = quality(c, data, syn, judge_state, judge_key, holdout)
    info["checkpoint_quality"].append({"step": step, **{k: q[k] for k in (
        "class_agreement", "fid_like", "nearest_real_ratio")}})
    print(f"pretraining step {step}: class agreement {q['class_agreement']:.3f}, FID-style "
          f"{q['fid_like']:.2f} (held-out)", flush=True)

  params0, info["pretrain"] = pretrain(c, model, schedule, arrays, image_shape, train_key,
                                       checkpoint_quality if c.pretrain.get("quality_every") else None)
  print(f"pretrained: {info['pretrain']}", flush=True)
  info["sampler"], info["sweep"] = choose_sampler(c, model, params0, schedule, data, judge_state,
                                                  jax.random.fold_in(sample_key, 1000), holdout)
  params_mm, info["finetune"]["minimax"] = finetune(
      c, "minimax", model, schedule, arrays, image_shape, params0, train_key,
      (c.finetune.lambda_pos, c.finetune.lambda_neg))
  print(f"fine-tuned minimax: {info['finetune']['minimax']}", flush=True)
  generated = {n: dict(sample_and_evaluate(n, p)) for n, p in (("vanilla", params0),
                                                               ("minimax", params_mm))}
  for ipc in c.ipcs:  # required rows first: random real, DM, vanilla, minimax
    evaluate("random real", ipc, jd.selection.random(jax.random.fold_in(rnd_key, ipc), data.x_train,
                                                     data.y_train, data.num_classes, ipc))
    dm_path = os.path.join(c.dm_dir.format(ipc=ipc), "synthetic.npz")
    if os.path.exists(dm_path):
      evaluate("DM", ipc, jd.io.load_set(dm_path))
    else:
      print(f"no DM set at {dm_path}: run experiments.distill with dm_fmnist.py --config.ipc={ipc}")
    for name in ("vanilla", "minimax"):
      evaluate(name, ipc, generated[name][ipc])
  if c.control:  # DiffFit alone (lambdas 0): does Minimax do more than fine-tuning?
    params_ft, info["finetune"]["difffit"] = finetune(c, "difffit", model, schedule, arrays,
                                                      image_shape, params0, train_key, (0.0, 0.0))
    for ipc, syn in sample_and_evaluate("difffit", params_ft):
      evaluate("difffit", ipc, syn)
  return table


def _split(rec: dict) -> str:
  """How a resumed training was split, as the results state it ("" for one session)."""
  if rec["sessions"] < 2:
    return ""
  parts = "; ".join(f"{a}-{b}, {t:.0f} s" for a, b, t in rec["split"])
  return f" (steps logged per session: {parts})"


def write_results(c, table, info):
  """The run's table (``<results>`` with ``_run`` before ``.md``), rewritten after every set."""
  pre = info["pretrain"]
  lines = [f"# Minimax Diffusion, {c.dataset} (run output)\n", provenance(c),
           f"Pretraining: {pre['total_steps']} steps, {pre['seconds']:.0f} s of training in "
           f"{pre['sessions']} session(s){_split(pre)}."]
  for name, ft in info["finetune"].items():
    lines.append(f"Fine-tuning `{name}`: {ft['total_steps']} steps, {ft['seconds']:.0f} s in "
                 f"{ft['sessions']} session(s){_split(ft)}.")
  lines += [f"Quality report: classifier {c.judge.model} {dict(c.judge.model_kwargs)} trained "
            f"{c.judge.epochs + 1} epochs (judge.epochs {c.judge.epochs}, the protocol's E + 1) on "
            f"every training image, test accuracy "
            f"{100 * info['judge_accuracy']:.2f}%; class agreement = share of a set's images it assigns "
            f"to the requested class; FID-style = Fréchet distance of its penultimate features, set vs "
            f"test images; nearest-real ratio = mean pixel distance to the nearest training image over "
            f"the same among training images.", ""]
  lines.append(f"Model: {c.model_kind} {c.model.to_dict()}; {c.holdout} training images held out of "
               f"its training. Sampler: {info['sampler'].to_dict()}. Minimax terms in the "
               f"{c.finetune.get('space', 'model')} space.")
  floor = info.get("real_floor")
  if info.get("sweep"):
    lines += ["", f"Sampler sweep ({c.sweep_ipc} images per class from the pretrained model, quality "
              "against the held-out training images; chosen: the lowest FID-style distance among "
              f"the samplers within {c.sweep_agreement_slack} of the best class agreement):", "",
              "| sampler | class agreement | FID-style |", "|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['quality']['class_agreement']:.3f} | "
              f"{r['quality']['fid_like']:.2f} |" for r in info["sweep"]]
    if floor:
      lines.append(f"| real training images, as many (the floor) | {floor['class_agreement']:.3f} | "
                   f"{floor['fid_like']:.2f} |")
  if info.get("checkpoint_quality"):
    lines += ["", f"Pretraining checkpoints ({c.sweep_ipc} images per class, held-out reference):", "",
              "| step | class agreement | FID-style | nearest-real ratio |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['class_agreement']:.3f} | {r['fid_like']:.2f} | "
              f"{r['nearest_real_ratio']:.2f} |" for r in info["checkpoint_quality"]]
    if floor:
      lines.append(f"| real training images, as many (the floor) | {floor['class_agreement']:.3f} | "
                   f"{floor['fid_like']:.2f} | {floor['nearest_real_ratio']:.2f} |")
  lines += ["", f"| IPC | set | {c.eval_model} (%) | {c.other_model} (%) | coverage of the test set (%) "
            f"| class agreement | FID-style | nearest-real ratio |", "|---|---|---|---|---|---|---|---|"]
  for (name, ipc), row in sorted(table.items(), key=lambda kv: kv[0][1]):
    a, b, q = row[c.eval_model], row[c.other_model], row["quality"]
    lines.append(f"| {ipc} | {name} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} | "
                 f"{100 * b['mean']:.2f} ± {100 * b['std']:.2f} | "
                 f"{100 * row['coverage']['coverage']:.1f} | {q['class_agreement']:.3f} | "
                 f"{q['fid_like']:.2f} | {q['nearest_real_ratio']:.2f} |")
  lines.append("")
  lines += [f"- sampling `{n}` IPC {i}: {s:.0f} s" for (n, i), s in info["sample_seconds"].items()]
  lines += [f"- evaluation `{n}` IPC {i}: " + ", ".join(
      f"{p} {row[p].get('seconds', float('nan')):.0f} s" for p in (c.eval_model, c.other_model))
      for (n, i), row in table.items()]
  path = c.results.replace(".md", "_run.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  key_of = lambda n: n.replace(" ", "_").replace("DM", "dm")
  record = {"judge_test_accuracy": info["judge_accuracy"], "model_kind": c.model_kind,
            "minimax_space": c.finetune.get("space", "model"),
            "sampler": info["sampler"].to_dict(),
            "sweep": [{"sampler": r["sampler"], "class_agreement": r["quality"]["class_agreement"],
                       "fid_like": r["quality"]["fid_like"]} for r in info.get("sweep", [])],
            "checkpoint_quality": info.get("checkpoint_quality", []),
            "training_time": {"pretrain": info["pretrain"], **info["finetune"]},
            "held_out_real_floor": ({k: info["real_floor"][k] for k in ("class_agreement", "fid_like")}
                                    if info.get("real_floor") else None),
            "quality": {key_of(n): {} for n, _ in table},
            "accuracy": [{"set": key_of(n), "ipc": i, "mean": 100 * row[c.eval_model]["mean"],
                          "std": 100 * row[c.eval_model]["std"]} for (n, i), row in table.items()]}
  for (n, i), row in table.items():
    record["quality"][key_of(n)][str(i)] = {k: row["quality"][k] for k in (
        "class_agreement", "fid_like", "nearest_real_ratio")}
  with open(c.results.replace(".md", ".json"), "w") as f:
    json.dump(record, f, indent=1)


if __name__ == "__main__":
  run_script(run)
