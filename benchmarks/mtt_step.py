"""Memory and time of one MTT loss + gradient step against the number of unrolled student steps, with
and without ``jax.checkpoint`` of each step (remat).

Command: .venv/bin/python -m benchmarks.mtt_step [--width 32] [--syn-steps 10,20,40,80] [--reps 1]
         [--max-run-gib 8] [--out benchmarks/results/mtt_step.md]

Fashion-MNIST-shaped inputs: 100 synthetic images 28x28x1 (IPC 10, 10 classes), batch_syn 100, the
field's ConvNet (depth 3, instance norm, ``conv_impl="patches"``), gradient w.r.t. the images and the
log step size. The images and the expert segment are random (the cost does not depend on the values),
so no dataset is needed. Each configuration runs in its own subprocess so that its peak RSS is its own.

Columns: XLA's predicted footprint of the compiled step (``memory_analysis()``: temp + argument + output
bytes), the subprocess's peak resident memory (includes the JAX runtime and the compiler), compile time,
and seconds per step (median of ``--reps`` runs after compiling); ratios are relative to the smallest
``syn_steps`` of the same remat setting, and remat / no remat at the same ``syn_steps``.
PyTorch side by side: ``benchmarks.vs_pytorch``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks import print_and_write


def one(width: int, syn_steps: int, remat: bool, reps: int, max_run_gib: float) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdistill import models, objectives
  from jaxdistill.objectives import trajectory
  from jaxdistill.types import SyntheticSet

  k, ipc = 10, 10
  model = models.get_model("convnet", k, width=width)
  rng = np.random.default_rng(0)
  syn = SyntheticSet(jnp.asarray(rng.normal(size=(k * ipc, 28, 28, 1)), jnp.float32),
                     jnp.repeat(jnp.arange(k, dtype=jnp.int32), ipc), jnp.log(jnp.float32(0.01)))
  _, num_params = trajectory.flat_net(model, (28, 28, 1))
  start = jnp.asarray(rng.normal(size=(1, num_params)) * 0.05, jnp.float32)
  batch = {"start": start, "target": start + 0.01}
  obj = objectives.trajectory_matching(model, k, syn_steps=syn_steps, batch_syn=k * ipc, remat=remat)

  def loss(images, log_lr, batch, key):
    return obj.loss(syn._replace(images=images, log_lr=log_lr), batch, key, ())[0]

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  args = (syn.images, syn.log_lr, batch, jax.random.key(0))
  t = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  predicted = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  times = []
  if predicted > max_run_gib * 2**30:  # predicted out of budget: report the prediction, do not run
    reps = 0
  for r in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(compiled(syn.images, syn.log_lr, batch, jax.random.key(r)))
    times.append(time.perf_counter() - t)
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  return {"syn_steps": syn_steps, "remat": remat, "params": num_params, "predicted": predicted,
          "peak_rss": peak_rss if times else None, "compile_s": compile_s,
          "sec": float(np.median(times)) if times else None}


def table(rows: list) -> str:
  """Markdown table; ratios against the smallest syn_steps of the same remat setting."""
  smallest = min(r["syn_steps"] for r in rows)
  base = {r["remat"]: r for r in rows if r["syn_steps"] == smallest}
  by = {(r["syn_steps"], r["remat"]): r for r in rows}
  gib = lambda b: "not run" if b is None else f"{b / 2**30:.2f}"
  ratio = lambda a, b, f=".2f": "" if a is None or b is None else f"{a / b:{f}}"
  out = [f"| syn_steps | remat | XLA bytes (GiB) | peak RSS (GiB) | compile (s) | s/step | "
         f"time vs {smallest} | XLA mem vs {smallest} | remat / no remat: time | "
         f"remat / no remat: XLA mem |",
         "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in sorted(rows, key=lambda r: (r["syn_steps"], r["remat"])):
    b = base[r["remat"]]
    other = by.get((r["syn_steps"], False)) if r["remat"] else None
    sec = "not run" if r["sec"] is None else f"{r['sec']:.2f}"
    out.append(
        f"| {r['syn_steps']} | {'yes' if r['remat'] else 'no'} | {gib(r['predicted'])} | "
        f"{gib(r['peak_rss'])} | {r['compile_s']:.1f} | {sec} | {ratio(r['sec'], b['sec'])} | "
        f"{ratio(r['predicted'], b['predicted'])} | "
        f"{ratio(r['sec'], other and other['sec'])} | "
        f"{ratio(r['predicted'], other and other['predicted'], '.3f')} |")
  return "\n".join(out)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--syn-steps", default="10,20,40,80")
  p.add_argument("--reps", type=int, default=1)
  p.add_argument("--max-run-gib", type=float, default=8.0,
                 help="compile but do not run configurations XLA predicts above this (shared machine)")
  p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "syn_steps,remat" (subprocess)
  p.add_argument("--out", default=None, help="also write the markdown here")
  a = p.parse_args()
  if a.one is not None:
    s, r = a.one.split(",")
    print(json.dumps(one(a.width, int(s), r == "1", a.reps, a.max_run_gib)))
    return
  rows = []
  t0 = time.time()
  for s in [int(v) for v in a.syn_steps.split(",")]:
    for remat in (False, True):
      cmd = [sys.executable, "-m", "benchmarks.mtt_step", "--width", str(a.width), "--reps",
             str(a.reps), "--max-run-gib", str(a.max_run_gib), "--one", f"{s},{int(remat)}"]
      r = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
      rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
      print(f"syn_steps {s} remat {remat}: {rows[-1]['sec']} s/step", file=sys.stderr, flush=True)
  import jax
  header = (f"MTT loss + gradient (images, log step size), ConvNet width {a.width} depth 3 "
            f"({rows[0]['params']} parameters), 100 random 28x28x1 images, batch_syn 100, "
            f"conv_impl='patches', {jax.devices()[0].platform.upper()} x{jax.device_count()} "
            f"({os.cpu_count()} cores, shared), median of {a.reps} step(s); total wall time "
            f"{time.time() - t0:.0f} s.")
  md = header + "\n\n" + table(rows) + "\n"
  cmdline = " ".join(["python -m benchmarks.mtt_step"] + sys.argv[1:])
  print_and_write(f"# MTT step: memory and time vs syn_steps\n\nCommand: `{cmdline}`  \n"
                  f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n{md}",
                  a.out)


if __name__ == "__main__":
  main()
