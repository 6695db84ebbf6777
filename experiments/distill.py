"""Distills a dataset with any method by name, then evaluates it against random real images.

Usage: python -m experiments.distill --config experiments/configs/dm_fmnist.py [--config.ipc=1 ...]

Prints the test accuracy of the distilled set and of random real images of the same IPC (the
distillation's own initialization) under the same protocol, writes the image grid, metrics
(JSONL + TensorBoard) and checkpoints under ``<workdir>``, and appends a row to ``<results>``.
"""
from __future__ import annotations

import dataclasses
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

METHODS = ("dm", "dc", "dsa")


def build_objective(c, model, data):
  """The objective named ``c.method`` with the reference's hyperparameters (overridable in ``c``)."""
  dsa_siamese = jd.augment.get_augment("dsa", dataset_name=data.name, siamese=True)
  dsa_per_sample = jd.augment.get_augment("dsa", dataset_name=data.name, siamese=False)
  if c.method == "dm":
    return jd.objectives.distribution_matching(model, data.num_classes, augment=dsa_siamese)
  if c.method in ("dc", "dsa"):
    outer, inner = (c.outer_loop, c.inner_loop) if c.get("outer_loop") else \
        jd.objectives.loops_for_ipc(c.ipc)
    dsa = c.method == "dsa"
    return jd.objectives.gradient_matching(model, data.num_classes, outer, inner,
                                           augment=dsa_siamese if dsa else None,
                                           train_augment=dsa_per_sample if dsa else None)
  raise ValueError(f"Unknown method {c.method!r}; known: {', '.join(METHODS)}.")


def main(_):
  quiet_logs()
  c = _CONFIG.value
  key = jax.random.key(c.seed)
  init_key, run_key, eval_key = jax.random.split(key, 3)
  data = jd.data.load(c.dataset)
  model = jd.models.get_model(c.model, data.num_classes, **c.model_kwargs)
  syn0 = jd.selection.random(init_key, data.x_train, data.y_train, data.num_classes, c.ipc)
  objective = build_objective(c, model, data)
  tx = jd.distill.optimizer(jd.distill.make_optimizer(c.optimizer, **c.optimizer_kwargs))
  sampler = jd.distill.class_balanced_sampler(data.x_train, data.y_train, data.num_classes,
                                              c.batch_real)
  d = jd.distill.Distiller(objective, tx, sampler)
  name = f"{c.method}_{data.name}_ipc{c.ipc}"
  workdir = os.path.join(c.workdir, name)
  logger = jd.logs.MetricLogger(os.path.join(workdir, "logs"))
  grid = lambda step, syn: jd.logs.save_grid(os.path.join(workdir, f"images_{step:06d}.png"),
                                             np.asarray(syn.images), data.mean, data.std, nrow=c.ipc)
  print(f"{name}: {c.steps} steps, model {c.model} {dict(c.model_kwargs)}, "
        f"{jax.device_count()} device(s)", flush=True)
  t0 = time.time()
  state, history = jd.distill.run(run_key, syn0, d, c.steps,
                                  checkpoint_dir=os.path.join(workdir, "checkpoints"),
                                  checkpoint_every=c.checkpoint_every, config=c.to_dict(),
                                  logger=logger, on_images=grid, image_every=c.image_every)
  logger.close()
  distill_s = time.time() - t0
  syn = jd.distill.decoded(state, d)
  jd.logs.save_grid(os.path.join(workdir, "images.png"), np.asarray(syn.images), data.mean,
                    data.std, nrow=c.ipc)
  np.savez(os.path.join(workdir, "synthetic.npz"), images=np.asarray(syn.images),
           labels=np.asarray(syn.labels))

  cfg = jd.evaluate.EvalConfig(epochs=c.eval_epochs, augment=c.eval_augment)
  ev = lambda s: jd.evaluate.accuracy(eval_key, s, data, model=c.eval_model,
                                      model_kwargs=dict(c.eval_model_kwargs),
                                      num_seeds=c.num_seeds, cfg=cfg)
  t1 = time.time()
  acc_syn, acc_real = ev(syn), ev(syn0)
  eval_s = time.time() - t1
  sec_per_step = np.median([b["sec"] - a["sec"] for a, b in zip(history, history[1:])]) \
      if len(history) > 1 else float("nan")
  timing = (f"Distillation {distill_s:.0f} s ({sec_per_step:.2f} s/step)" if len(history) > 1 else
            "Distillation resumed from a finished checkpoint in the workdir (no steps run now)")
  print(f"{name}: distilled {acc_syn} vs random real {acc_real} (IPC {c.ipc}; "
        f"{c.eval_model} trained {cfg.num_epochs()} epochs, {c.num_seeds} seeds). "
        f"{timing}, evaluation {eval_s:.0f} s.")
  print(f"images: {os.path.join(workdir, 'images.png')}")
  if c.results:
    grid_path = os.path.join(os.path.dirname(c.results), f"{name}.png")
    jd.logs.save_grid(grid_path, np.asarray(syn.images), data.mean, data.std, nrow=c.ipc)
    new = not os.path.exists(c.results)
    with open(c.results, "a") as f:
      if new:
        f.write(f"# Distillation results\n\nEach section is one run of `experiments/distill.py`; "
                f"accuracies are mean ± std over {c.num_seeds} networks trained from scratch.\n\n")
      f.write(f"## {c.method.upper()}, {data.name}, IPC {c.ipc}\n\n{provenance(c)}\n"
              f"| set | test accuracy (%) |\n|---|---|\n"
              f"| {c.method.upper()} distilled ({c.steps} steps) | {100 * acc_syn.mean:.2f} ± "
              f"{100 * acc_syn.std:.2f} |\n| random real (its initialization) | "
              f"{100 * acc_real.mean:.2f} ± {100 * acc_real.std:.2f} |\n\n"
              f"{timing}, evaluation {eval_s:.0f} s. Images: `{grid_path}`.\n\n")


if __name__ == "__main__":
  app.run(main)
