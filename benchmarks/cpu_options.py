"""What XLA:CPU's options and the library's own knobs do to the evaluation's training epoch.

Command:
  .venv/bin/python -m benchmarks.cpu_options [--images 100] [--width 128] [--epochs 21] [--reps 2]
      [--cores 2] [--variants default,mb0,...] [--out benchmarks/results/cpu_options.md]
  (default --variants: all but ``SLOW``, the XLA-convolution ones, which take ~40x longer)

The unit is ``benchmarks.vs_pytorch``'s ``epoch<N>``: ``--epochs`` epochs of the evaluation protocol
(``jd.evaluate.train``: SGD momentum 0.9, weight decay 5e-4, batch 256, DSA) on ``--images`` random
images, one compiled program, reported as seconds per epoch (median of ``--reps`` after a warm-up run).
Every variant runs in its own subprocess pinned to ``--cores`` cores (XLA reads its flags once per
process). A variant is a name from ``VARIANTS``: XLA flags (``XLA_FLAGS``), the evaluation's
``microbatch``, the ConvNet's ``conv_impl``, or several networks trained together (``seeds<S>``: S
networks in one program, ``seed_parallel="vmap"``; ``threads<T>``: T networks at once, each run by its
own Python thread; both reported per network and epoch).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time

from benchmarks import print_and_write

# name -> (XLA flags, settings for the child)
VARIANTS = {
    "default": ("", {}),
    "mb0": ("", {"microbatch": 0}),
    "mb50": ("", {"microbatch": 50}),
    "mb100": ("", {"microbatch": 100}),
    "mb10": ("", {"microbatch": 10}),
    "lax": ("", {"conv_impl": "lax"}),
    "lax_mb0": ("", {"conv_impl": "lax", "microbatch": 0}),
    "shift": ("", {"conv_impl": "shift"}),
    "fast_math": ("--xla_cpu_enable_fast_math=true", {}),
    "onednn": ("--xla_cpu_use_onednn=true", {}),
    "onednn_lax": ("--xla_cpu_use_onednn=true", {"conv_impl": "lax"}),
    "onednn_custom_call": ("--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
                           {"conv_impl": "lax"}),
    "no_xnnpack": ("--xla_cpu_use_xnnpack=false", {}),
    "no_ynn": ("--xla_cpu_experimental_ynn_fusion_type=", {}),
    "concurrency_scheduler": ("--xla_cpu_enable_concurrency_optimized_scheduler=true", {}),
    "no_concurrency_scheduler": ("--xla_cpu_enable_concurrency_optimized_scheduler=false", {}),
    "vector512": ("--xla_cpu_prefer_vector_width=512", {}),
    "eigen_single": ("--xla_cpu_multi_thread_eigen=false", {}),
    "seeds2": ("", {"seeds": 2}),
    "seeds5": ("", {"seeds": 5}),
    "seeds2_mb0": ("", {"seeds": 2, "microbatch": 0}),
    "threads2": ("", {"threads": 2}),
    "threads2_eigen_single": ("--xla_cpu_multi_thread_eigen=false", {"threads": 2}),
}


# XLA's own convolution in a training loop (its slow kernel gradient): ~40x the default's time on CPU,
# so left out of the default --variants.
SLOW = ("lax", "lax_mb0", "onednn_lax", "onednn_custom_call")


def child(images: int, width: int, epochs: int, reps: int, settings: dict) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jaxdistill as jd
  kw = {"conv_impl": settings["conv_impl"]} if "conv_impl" in settings else {}
  model = jd.models.get_model("convnet", 10, width=width, **kw)
  cfg = jd.evaluate.EvalConfig(epochs=epochs - 1, augment="dsa",
                               microbatch=settings.get("microbatch", "auto"))
  x = jnp.asarray(np.random.default_rng(4).normal(size=(images, 28, 28, 1)).astype(np.float32))
  y = jnp.asarray(np.arange(images) % 10, jnp.int32)
  seeds = settings.get("seeds", 1)
  one = lambda k: jd.evaluate.train(k, model, x, y, cfg, dataset_name="fashion_mnist")
  if seeds > 1:
    fn = jax.jit(lambda k: jax.vmap(one)(jax.random.split(k, seeds)))
  else:
    fn = jax.jit(one)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  compiled = fn.lower(key).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(key))
  threads = settings.get("threads", 1)
  keys = jax.random.split(key, threads)

  def run():
    if threads == 1:
      return jax.block_until_ready(compiled(key))
    # ``threads`` networks at once, each dispatched and awaited by its own Python thread.
    workers = [threading.Thread(target=lambda k=k: jax.block_until_ready(compiled(k))) for k in keys]
    for w in workers:
      w.start()
    for w in workers:
      w.join()

  times = []
  for _ in range(reps):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  times.sort()
  return {"s_per_epoch": times[len(times) // 2] / epochs / seeds / threads, "compile_s": compile_s}


def _spawn(name, a) -> dict:
  flags, settings = VARIANTS[name]
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
  cmd = ["taskset", "-c", ",".join(str(i) for i in range(a.cores)), sys.executable, "-m",
         "benchmarks.cpu_options", "--child", json.dumps(settings), "--images", str(a.images),
         "--width", str(a.width), "--epochs", str(a.epochs), "--reps", str(a.reps)]
  p = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode != 0 or not lines:
    return {"variant": name, "error": (p.stderr or p.stdout)[-300:]}
  return {"variant": name, **json.loads(lines[-1])}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--images", type=int, default=100)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--epochs", type=int, default=21)
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--cores", type=int, default=2)
  p.add_argument("--variants", default=",".join(v for v in VARIANTS if v not in SLOW))
  p.add_argument("--out", default="")
  p.add_argument("--child", default="")
  a = p.parse_args()
  if a.child:
    print(json.dumps(child(a.images, a.width, a.epochs, a.reps, json.loads(a.child))), flush=True)
    return
  unknown = [v for v in a.variants.split(",") if v not in VARIANTS]
  if unknown:
    p.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  load0 = " ".join(open("/proc/loadavg").read().split()[:3])
  rows = []
  for name in a.variants.split(","):
    rows.append(_spawn(name, a))
    print(json.dumps(rows[-1]), flush=True)
  base = next((r["s_per_epoch"] for r in rows if r["variant"] == "default" and "error" not in r), None)
  lines = ["# XLA:CPU options and library settings on the evaluation's training epoch", "",
           f"- command: `{' '.join(['python', '-m', 'benchmarks.cpu_options'] + sys.argv[1:])}`",
           f"- date: {started}; {a.cores} cores; load average before / after: {load0} / "
           f"{' '.join(open('/proc/loadavg').read().split()[:3])}",
           f"- {a.images} images, width {a.width}, {a.epochs} epochs per run, median of {a.reps}", "",
           "| variant | XLA flags | settings | s per epoch (per network) | vs default | compile s |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    flags, settings = VARIANTS[r["variant"]]
    if "error" in r:
      lines.append(f"| {r['variant']} | `{flags}` | {settings} | failed: `{r['error'][-120:]}` | | |")
      continue
    rel = f"{r['s_per_epoch'] / base:.2f}" if base else "—"
    lines.append(f"| {r['variant']} | `{flags}` | {settings} | {r['s_per_epoch']:.4f} | {rel} | "
                 f"{r['compile_s']:.1f} |")
  print_and_write("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
  main()
