"""Distills a dataset with any method by name, then evaluates it against random real images.

Usage: python -m experiments.distill --config experiments/configs/<method>_<dataset>.py[:IPC] \
         [--config.ipc=1 --config.data_dir=/path ...]

Methods: dm, dc, dsa, idc, kip, frepo, dd, mtt, datm, selmatch (one module each in
``experiments/methods/``; ``--config.method`` may also name a module of one's own by its import
path, see ``experiments.methods``). MTT, DATM and SelMatch first load their experts from ``c.experts.dir`` or train them there. Prints the accuracies of
the distilled set and of random real images of the same IPC under every evaluator in ``c.evals``, writes
the image grid, metrics (JSONL + TensorBoard) and checkpoints under ``<workdir>``, and appends a section
to ``<results>``. Run the same command again to resume; raise ``--config.steps`` to extend a finished
run, or change evaluation-only fields (epochs, seeds, models) to re-evaluate it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp

import jaxdistill as jd
from experiments import registry
from experiments.common import cached_results, provenance, run_script

def _baseline_id(c, evaluator: str) -> str:
  """A digest of everything a random-real baseline's evaluation may depend on
  (``registry.baseline_identity``: fails closed, a new config field is part of it)."""
  ident = json.dumps(registry.baseline_identity(c, evaluator), sort_keys=True, default=repr)
  return hashlib.sha256(ident.encode()).hexdigest()[:16]


def evaluate(c, m: registry.Method, syn, syn0, key) -> list:
  """Rows ``(evaluator, column, distilled value, random-real value)`` of every evaluator of ``m``."""
  rows = []
  for name, fn in m.evaluators.items():
    got = fn(key, syn, m.mask)
    # Evaluation is deterministic for a key, so the runs of one dataset share their baseline.
    base = cached_results(os.path.join(c.workdir, "baselines", f"{_baseline_id(c, name)}.json"),
                          lambda fn=fn: fn(key, syn0, None))
    rows += [(name, col, got[col], base.get(col)) for col in got]
  return rows


def _cell(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, jd.types.EvalResult):
    return f"{100 * v.mean:.2f} ± {100 * v.std:.2f}"
  return f"{100 * v:.2f}"


def write_results(path: str, c, name: str, rows: list, note: str) -> None:
  """Appends the run's section (command, config, one row per evaluator column) to ``path``."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  new = not os.path.exists(path)
  with open(path, "a") as f:
    if new:
      f.write("# Distillation results\n\nEach section is one run of `experiments/distill.py`; "
              "accuracies (%) are mean ± std over the networks trained from scratch.\n\n")
    f.write(f"## {c.method.upper()}, {c.dataset}, IPC {c.ipc}\n\n{provenance(c)}\n"
            f"| evaluation | {c.method.upper()} distilled ({c.steps} steps) | random real, same IPC |\n"
            f"|---|---|---|\n")
    for evaluator, col, got, base in rows:
      label = col if evaluator != "protocol" else f"protocol, {col}"
      f.write(f"| {label} | {_cell(got)} | {_cell(base)} |\n")
    f.write(f"\n{note}\n\n")


def run(c) -> dict:
  """Builds, distills (resuming from ``<workdir>/<name>/checkpoints``) and evaluates the config's run;
  returns ``{"name", "rows", "syn", "history"}``."""
  _, run_key, eval_key = registry.keys(c)
  data = registry.load_data(c)
  m = registry.build(c, data)
  d = jd.distill.Distiller(m.objective, m.optimizer, m.sampler,
                           mask=None if m.mask is None else jnp.asarray(m.mask), decode=m.decode,
                           project=m.project, loss_threshold=m.loss_threshold)
  name = run_name(c, data.name)
  workdir = os.path.join(c.workdir, name)
  logger = jd.logs.MetricLogger(os.path.join(workdir, "logs"))
  nrow = lambda syn: syn.images.shape[0] // data.num_classes
  # Pixels for the grids: data.zca's whitening (c.zca) undone, then the normalization.
  save_grid = lambda path, syn: jd.logs.save_grid(path, jd.data.denormalize(syn.images, data),
                                                  nrow=nrow(syn))
  grid = lambda step, syn: save_grid(os.path.join(workdir, f"images_{step:06d}.png"), syn)
  model = ("" if "model" in registry.unused_fields(c)
           else f", model {c.model} {dict(c.model_kwargs)}")
  print(f"{name}: {c.steps} steps{model}, {jax.device_count()} device(s)", flush=True)
  t0 = time.time()
  try:
    state, history = jd.distill.run(run_key, m.init, d, c.steps,
                                    checkpoint_dir=os.path.join(workdir, "checkpoints"),
                                    checkpoint_every=c.checkpoint_every,
                                    config=registry.run_identity(c), logger=logger,
                                    on_images=grid, image_every=c.image_every,
                                    progress=c.get("progress", True))
  finally:
    logger.close()
  distill_s = time.time() - t0
  syn = jd.distill.decoded(state, d)
  save_grid(os.path.join(workdir, "images.png"), syn)
  # The library's npz (jd.io.load_set reads it; the learned step size is kept when there is one).
  jd.io.save_set(os.path.join(workdir, "synthetic.npz"), syn)
  t1 = time.time()
  rows = evaluate(c, m, syn, registry.random_init(c, data), eval_key)
  eval_s = time.time() - t1
  timing = (f"Distillation {distill_s:.0f} s ({len(history)} steps, {_sec_per_step(history)})"
            if history else
            "Distillation resumed from a finished checkpoint (no steps run now)")
  for evaluator, col, got, base in rows:
    print(f"{name} [{evaluator}] {col}: distilled {_cell(got)} vs random real {_cell(base)}")
  print(f"{timing}, evaluation {eval_s:.0f} s. Images: {os.path.join(workdir, 'images.png')}")
  if c.results:
    grid_path = os.path.join(os.path.dirname(c.results), f"{name}.png")
    save_grid(grid_path, syn)
    write_results(c.results, c, name, rows,
                  f"Stored images: {m.init.images.shape[0]}; training images after decoding: "
                  f"{syn.images.shape[0]}; {c.num_seeds} seed(s), {c.eval_epochs} epochs.\n\n"
                  f"{timing}, evaluation {eval_s:.0f} s. Images: `{grid_path}`.")
  return {"name": name, "rows": rows, "syn": syn, "history": history}


def run_name(c, dataset_name=None) -> str:
  """The run's directory under ``c.workdir``: ``<method>_<dataset>_ipc<n>[_seed<s>]``."""
  return (f"{c.method}_{dataset_name or c.dataset}_ipc{c.ipc}" + (f"_seed{c.seed}" if c.seed else ""))


def _sec_per_step(history) -> str:
  """Seconds per step after the first metrics read (which includes compilation). The loop reads metrics
  in batches, so the steps of one read share its time stamp: time between reads over steps between."""
  first = [h for h in history if h["sec"] == history[0]["sec"]][-1]
  span = history[-1]["step"] - first["step"]
  if span <= 0:
    return "s/step not measured: one metrics read"
  return f"{(history[-1]['sec'] - first['sec']) / span:.2f} s/step after compilation"


if __name__ == "__main__":
  run_script(run)
