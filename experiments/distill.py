"""Distills a dataset with any method by name, then evaluates it against random real images.

Usage: python -m experiments.distill --config experiments/configs/dm_fmnist.py [--config.ipc=1 ...]

Prints the test accuracy of the distilled set and of random real images of the same IPC (the
distillation's own initialization) under the same protocol, writes the image grid, metrics
(JSONL + TensorBoard) and checkpoints under ``<workdir>``, and appends a row to ``<results>``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from ml_collections import config_flags

import jaxdistill as jd
from experiments.common import provenance, quiet_logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)

METHODS = ("dm", "dc", "dsa", "kip", "frepo", "dd", "idc")


def _tx(c, learn_labels=False, learn_lr=False):
  """optax for images (``c.optimizer``), and for soft labels / log step sizes when learned."""
  images = jd.distill.make_optimizer(c.optimizer, **c.optimizer_kwargs)
  labels = jd.distill.make_optimizer(c.optimizer, **c.get("label_optimizer_kwargs",
                                                          c.optimizer_kwargs)) if learn_labels else None
  log_lr = jd.distill.make_optimizer(c.optimizer, **c.lr_optimizer_kwargs) if learn_lr else None
  return jd.distill.optimizer(images, labels=labels, log_lr=log_lr,
                              step_size=c.get("step_size_space", "lr"))


def build(c, model, data, key):
  """The method named ``c.method``: ``(objective, tx, sampler, syn0, distiller kwargs, eval kwargs)``
  with the references' hyperparameters (overridable in ``c``). ``syn0`` is the initialization (random
  real images of the same IPC, or IDC's packed real images); the baseline row is always random real."""
  k = data.num_classes
  dsa_siamese = jd.augment.get_augment("dsa", dataset_name=data.name, siamese=True)
  dsa_per_sample = jd.augment.get_augment("dsa", dataset_name=data.name, siamese=False)
  class_sampler = jd.distill.class_balanced_sampler(data.x_train, data.y_train, k, c.batch_real)
  flat_sampler = lambda: jd.distill.random_sampler(data.x_train, data.y_train, c.batch_real * k)
  syn0 = jd.selection.random(key, data.x_train, data.y_train, k, c.ipc)
  extra, ev_kw = {}, {}
  if c.method == "dm":
    obj = jd.objectives.distribution_matching(model, k, augment=dsa_siamese)
    return obj, _tx(c), class_sampler, syn0, extra, ev_kw
  if c.method in ("dc", "dsa", "idc"):
    outer, inner = (c.outer_loop, c.inner_loop) if c.get("outer_loop") else \
        jd.objectives.loops_for_ipc(c.ipc)
    dsa = c.method == "dsa" or (c.method == "idc" and c.get("idc_dsa", False))
    obj = jd.objectives.gradient_matching(model, k, outer, inner,
                                          augment=dsa_siamese if dsa else None,
                                          train_augment=dsa_per_sample if dsa else None)
    if c.method == "idc":
      f = c.idc_factor
      real = jd.selection.random(key, data.x_train, data.y_train, k, c.ipc * f * f)
      syn0 = jd.SyntheticSet(jd.parameterization.idc_init(real.images, f),
                             jnp.repeat(jnp.arange(k, dtype=jnp.int32), c.ipc))
      extra["decode"] = jd.parameterization.idc_decode(f)
    return obj, _tx(c), class_sampler, syn0, extra, ev_kw
  if c.method == "kip":
    kernel = jd.kernels.fc_kernel_fn("ntk", depth=c.kip_depth)
    obj = jd.objectives.kip(kernel, k, reg=c.kip_reg)
    syn0 = syn0._replace(labels=jd.objectives.kip_labels(syn0.labels, k))
    extra["learn_labels"] = True
    ev_kw["kernel"] = kernel
    return obj, _tx(c, learn_labels=True), flat_sampler(), syn0, extra, ev_kw
  if c.method == "frepo":
    obj = jd.objectives.frepo("convnet_frepo", k, pool_size=c.frepo_pool,
                              max_online_updates=c.frepo_max_online,
                              net_options=dict(c.frepo_net_kwargs), use_flip=False)
    syn0 = syn0._replace(labels=jd.objectives.kip_labels(syn0.labels, k))
    extra["learn_labels"] = True
    return obj, _tx(c, learn_labels=True), flat_sampler(), syn0, extra, ev_kw
  if c.method == "dd":
    steps, epochs = c.dd_unroll_steps, c.dd_epochs
    obj = jd.objectives.dataset_distillation(model, k, steps, epochs)
    syn0 = syn0._replace(log_lr=jnp.full((steps * epochs,), np.log(c.dd_lr_init), jnp.float32))
    extra["learn_lr"] = True
    ev_kw["use_learned_lr"] = False  # the protocol's lr; DD's per-step sizes belong to its unroll
    return obj, _tx(c, learn_lr=True), flat_sampler(), syn0, extra, ev_kw
  raise ValueError(f"Unknown method {c.method!r}; known: {', '.join(METHODS)}.")


def _baseline_id(c) -> str:
  """Everything the random-real baseline's accuracy depends on (its images come from the seed)."""
  parts = (c.dataset, c.ipc, c.seed, c.eval_model, sorted(dict(c.eval_model_kwargs).items()),
           c.eval_epochs, c.eval_augment, c.num_seeds)
  return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _cached(directory: str, ident: str, fn):
  """``fn()`` (an ``EvalResult``), stored as JSON under ``directory/ident.json`` and reused: the
  evaluation is deterministic for a key, so every method run of one config shares its baseline."""
  path = os.path.join(directory, f"{ident}.json")
  if os.path.exists(path):
    with open(path) as f:
      d = json.load(f)
    return jd.types.EvalResult(**{k: np.asarray(v) if isinstance(v, list) else v
                                  for k, v in d.items()})
  res = fn()
  os.makedirs(directory, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({k: np.asarray(v).tolist() for k, v in res._asdict().items()}, f)
  os.replace(path + ".tmp", path)
  return res


def _dd_own_accuracy(c, model, data, syn, key) -> "jd.types.EvalResult":
  """Test accuracy of ``c.num_seeds`` fresh networks trained by DD's own procedure
  (``objectives.dd_train``: the unrolled steps with the set's step sizes), as the DD paper evaluates."""
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  @jax.jit
  def one(k):
    v = jd.objectives.dd_train(model, syn, k, c.dd_unroll_steps, c.dd_epochs,
                               num_classes=data.num_classes)
    return jnp.mean(jd.evaluate.predict(model, v, x_test) == y_test)

  accs = np.array([float(one(jax.random.fold_in(key, i))) for i in range(c.num_seeds)])
  return jd.types.EvalResult(float(accs.mean()), float(accs.std()), accs)


def main(_):
  quiet_logs()
  c = _CONFIG.value
  key = jax.random.key(c.seed)
  init_key, run_key, eval_key = jax.random.split(key, 3)
  data = jd.data.load(c.dataset)
  model = jd.models.get_model(c.model, data.num_classes, **c.model_kwargs)
  objective, tx, sampler, syn_init, extra, ev_kw = build(c, model, data, init_key)
  syn0 = jd.selection.random(init_key, data.x_train, data.y_train, data.num_classes, c.ipc)
  kernel = ev_kw.pop("kernel", None)
  d = jd.distill.Distiller(objective, tx, sampler, **extra)
  name = f"{c.method}_{data.name}_ipc{c.ipc}"
  workdir = os.path.join(c.workdir, name)
  logger = jd.logs.MetricLogger(os.path.join(workdir, "logs"))
  grid = lambda step, syn: jd.logs.save_grid(os.path.join(workdir, f"images_{step:06d}.png"),
                                             np.asarray(syn.images), data.mean, data.std, nrow=c.ipc)
  print(f"{name}: {c.steps} steps, model {c.model} {dict(c.model_kwargs)}, "
        f"{jax.device_count()} device(s)", flush=True)
  t0 = time.time()
  state, history = jd.distill.run(run_key, syn_init, d, c.steps,
                                  checkpoint_dir=os.path.join(workdir, "checkpoints"),
                                  checkpoint_every=c.checkpoint_every, config=c.to_dict(),
                                  logger=logger, on_images=grid, image_every=c.image_every)
  logger.close()
  distill_s = time.time() - t0
  syn = jd.distill.decoded(state, d)
  jd.logs.save_grid(os.path.join(workdir, "images.png"), np.asarray(syn.images), data.mean,
                    data.std, nrow=syn.images.shape[0] // data.num_classes)
  np.savez(os.path.join(workdir, "synthetic.npz"), images=np.asarray(syn.images),
           labels=np.asarray(syn.labels))

  cfg = jd.evaluate.EvalConfig(epochs=c.eval_epochs, augment=c.eval_augment)
  ev = lambda s, cfg=cfg: jd.evaluate.accuracy(eval_key, s, data, model=c.eval_model,
                                               model_kwargs=dict(c.eval_model_kwargs),
                                               num_seeds=c.num_seeds, cfg=cfg, **ev_kw)
  t1 = time.time()
  # Learned soft labels (KIP, FRePo) are regression targets: train the finite networks with MSE.
  syn_cfg = cfg._replace(loss="mse") if syn.labels.ndim == 2 and c.method in ("kip", "frepo") else cfg
  acc_syn = ev(syn, syn_cfg)
  acc_real = _cached(os.path.join(c.workdir, "baselines"), _baseline_id(c), lambda: ev(syn0))
  krr = krr0 = None
  if kernel is not None:
    krr, krr0 = (jd.objectives.krr_test_accuracy(kernel, s, data.x_test, data.y_test, reg=c.kip_reg,
                                                 num_classes=data.num_classes) for s in (syn, syn0))
  dd_own = dd_own0 = None
  if c.method == "dd":  # DD's own evaluation: fresh networks trained by its unroll, learned step sizes
    dd_own, dd_own0 = (_dd_own_accuracy(c, model, data, s, eval_key) for s in (
        syn, syn0._replace(log_lr=jnp.full_like(syn.log_lr, np.log(c.dd_lr_init)))))
  eval_s = time.time() - t1
  sec_per_step = np.median([b["sec"] - a["sec"] for a, b in zip(history, history[1:])]) \
      if len(history) > 1 else float("nan")
  timing = (f"Distillation {distill_s:.0f} s ({sec_per_step:.2f} s/step)" if len(history) > 1 else
            "Distillation resumed from a finished checkpoint in the workdir (no steps run now)")
  krr_note = (f"; KRR test accuracy {100 * krr:.2f}% (random real {100 * krr0:.2f}%)"
              if krr is not None else "")
  if dd_own is not None:
    krr_note += f"; DD's own training {dd_own} (random real {dd_own0})"
  print(f"{name}: distilled {acc_syn} vs random real {acc_real}{krr_note} (IPC {c.ipc}; "
        f"{c.eval_model} trained {cfg.num_epochs()} epochs, {c.num_seeds} seeds). "
        f"{timing}, evaluation {eval_s:.0f} s.")
  print(f"images: {os.path.join(workdir, 'images.png')}")
  if c.results:
    grid_path = os.path.join(os.path.dirname(c.results), f"{name}.png")
    jd.logs.save_grid(grid_path, np.asarray(syn.images), data.mean, data.std,
                      nrow=syn.images.shape[0] // data.num_classes)
    os.makedirs(os.path.dirname(c.results) or ".", exist_ok=True)
    new = not os.path.exists(c.results)
    with open(c.results, "a") as f:
      if new:
        f.write(f"# Distillation results\n\nEach section is one run of `experiments/distill.py`; "
                f"accuracies are mean ± std over {c.num_seeds} networks trained from scratch.\n\n")
      f.write(f"## {c.method.upper()}, {data.name}, IPC {c.ipc}\n\n{provenance(c)}\n"
              f"| set | test accuracy (%) |\n|---|---|\n"
              f"| {c.method.upper()} distilled ({c.steps} steps) | {100 * acc_syn.mean:.2f} ± "
              f"{100 * acc_syn.std:.2f} |\n| random real, same IPC | "
              f"{100 * acc_real.mean:.2f} ± {100 * acc_real.std:.2f} |\n"
              + (f"| {c.method.upper()} distilled, KRR predictor on the test set | {100 * krr:.2f} |\n"
                 f"| random real, KRR predictor on the test set | {100 * krr0:.2f} |\n"
                 if krr is not None else "")
              + (f"| {c.method.upper()} distilled, DD's own training (its {c.dd_unroll_steps} x "
                 f"{c.dd_epochs} unrolled steps, learned step sizes) | {100 * dd_own.mean:.2f} ± "
                 f"{100 * dd_own.std:.2f} |\n| random real, DD's own training (initial step size "
                 f"{c.dd_lr_init:g}) | {100 * dd_own0.mean:.2f} ± {100 * dd_own0.std:.2f} |\n"
                 if dd_own is not None else "")
              + f"\nStored images: {syn_init.images.shape[0]}; training images after decoding: "
              f"{syn.images.shape[0]}; finite-network loss {syn_cfg.loss}.\n\n"
              f"{timing}, evaluation {eval_s:.0f} s. Images: `{grid_path}`.\n\n")


if __name__ == "__main__":
  app.run(main)
