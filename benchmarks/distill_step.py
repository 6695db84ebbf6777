"""Seconds per distillation iteration of DM and DC at IPC 10, and the fraction of this machine's dense
matmul FLOP/s the step reaches (FLOPs from XLA's cost analysis of the compiled step).

Command: .venv/bin/python -m benchmarks.distill_step [--width 64] [--batch-real 256] [--steps 3]

Each DC "iteration" here is one outer step of the loop (matching + image update + the inner training of
the network on the synthetic set, amortized as in the reference schedule: inner_loop epochs after each
outer step but the last of an iteration). PyTorch side by side: ``benchmarks.vs_pytorch``.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import jaxdistill as jd


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(a).block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t)


def bench(name, d, syn, steps):
  state = jd.distill.init_state(jax.random.key(0), syn, d)
  step, sample = jd.distill.make_step(d), jd.distill.make_sample(d)
  batch = sample(state)
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  state, m = step(state, batch)  # warm-up
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    batch = sample(state)
    jax.block_until_ready(batch)
    t = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  return float(np.median(times)), flops


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--ipc", type=int, default=10)
  p.add_argument("--batch-real", type=int, default=256)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--conv-impl", default=None, help="ConvNet conv_impl: patches (default), shift, lax")
  p.add_argument("--methods", default="DM,DC", help="comma-separated subset of DM,DC")
  a = p.parse_args()
  data = jd.data.load("fashion_mnist")
  model = jd.models.get_model("convnet", 10, width=a.width,
                              **({"conv_impl": a.conv_impl} if a.conv_impl else {}))
  syn = jd.selection.random(jax.random.key(0), data.x_train, data.y_train, 10, a.ipc)
  sampler = jd.distill.class_balanced_sampler(data.x_train, data.y_train, 10, a.batch_real)
  tx = jd.distill.optimizer(optax.sgd(1.0, momentum=0.5))
  dsa = jd.augment.get_augment("dsa", dataset_name="fashion_mnist", siamese=True)
  outer, inner = jd.objectives.loops_for_ipc(a.ipc)
  peak = matmul_flops_per_s()
  print(f"dense matmul: {peak / 1e9:.1f} GFLOP/s; ConvNet width {a.width}, IPC {a.ipc}, "
        f"{a.batch_real} real images per class, {jax.device_count()} device(s), conv_impl {model.conv_impl}")
  print(f"{'method':6s} {'s/step':>8s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} {'of matmul':>9s}")
  for name, obj in [
      ("DM", jd.objectives.distribution_matching(model, 10, augment=dsa)),
      ("DC", jd.objectives.gradient_matching(model, 10, outer, inner)),
  ]:
    if name not in a.methods.split(","):
      continue
    sec, flops = bench(name, jd.distill.Distiller(obj, tx, sampler), syn, a.steps)
    print(f"{name:6s} {sec:8.2f} {flops / 1e9:11.1f} {flops / sec / 1e9:8.1f} {flops / sec / peak:9.1%}")


if __name__ == "__main__":
  main()
