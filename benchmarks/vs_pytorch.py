"""jaxdistill against the PyTorch reference code, the same units of work side by side in one command.

Command (needs the ``bench`` extra: ``pip install -e .[bench]``):
  .venv/bin/python -m benchmarks.vs_pytorch [--width 128] [--units mtt20,mtt80,dm,dc,eval,expert]
      [--cores 2,1] [--reps 2] [--out benchmarks/results/vs_pytorch.md]

Units (Fashion-MNIST shapes, 28x28x1 padded to 32 by the first conv, 10 classes, ConvNet depth 3 with
instance norm; random pixel values: the cost does not depend on them):
  mtt20 / mtt80  MTT iteration: loss and gradient w.r.t. the images and the step size, IPC 10,
                 syn_steps 20 / 80, batch_syn 100, per-image DSA, SGD through the student on a flat
                 parameter vector (PyTorch: ``create_graph=True``; jaxdistill: ``trajectory_matching``,
                 remat). PyTorch at syn_steps 80 needs ~28 GB and is skipped unless ``--torch-mtt80``.
  dm             DM iteration: a fresh network, 256 real images per class and IPC 10, siamese DSA per
                 class, loss, gradient, SGD update of the images.
  dc             DC outer step (IPC 10, outer 10 / inner 50, no augmentation): per-class gradient
                 matching on 256 real images per class, image update, then the network's inner training
                 (50 epochs of SGD on the synthetic set): the first outer step of an iteration.
  eval           evaluation: a fresh network trained on 100 images for 20 epochs (the reference's
                 ``evaluate_synset``: 21 epochs, lr / 10 with a new optimizer after epoch 11), DSA,
                 batch 256, then the 10,000-image test set predicted (jaxdistill: one program, as
                 ``jd.evaluate.accuracy`` runs it; PyTorch: its test loader's batches of 256).
  expert         expert epoch: one SGD epoch (lr 0.01, batch 256, DSA) over 5,120 images.

Before timing, every unit's loss (MTT, DM, DC matching) or trained network (evaluation, expert: the
training loss after a few deterministic epochs) is computed by both frameworks from the same weights
and inputs with augmentation off, and the run stops unless they agree to ``--rtol`` (1e-4 relative).
Each timed unit runs in its own subprocess, pinned with ``taskset`` to the first ``c`` cores for each
``c`` in ``--cores`` (PyTorch's threads set to ``c``; XLA follows the affinity), so its peak resident
memory is its own (it includes each framework's runtime, and XLA's compiler for jaxdistill, whose
side runs inside ``jaxdistill.host.trim_after_compiles()``: freed compiler memory goes back to the
OS after each compilation; PyTorch compiles nothing). Seconds:
median of ``--reps`` runs after a warm-up run (which compiles); one run on one core and for mtt80. For
jaxdistill the table also gives the peak memory reached before the first run (the runtime and XLA's
compiler) and XLA's own buffer estimate of the program; each framework's dense 4096x4096 float32 matmul
rate on the same cores is printed beside it. Where the time goes inside each jaxdistill unit (and the
FLOPs it actually executes): ``python -m benchmarks.profile``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

from benchmarks import print_and_write

UNITS = ("mtt20", "mtt80", "dm", "dc", "eval", "expert")
K, IPC, REAL, H, C = 10, 10, 256, 28, 1


# ----------------------------------------------------------------------------------------------------
# Inputs shared by both sides (numpy, NHWC)
# ----------------------------------------------------------------------------------------------------

def _inputs(seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  syn = rng.normal(size=(K * IPC, H, H, C)).astype(np.float32)
  labels = np.repeat(np.arange(K), IPC).astype(np.int32)
  real = rng.normal(size=(K, REAL, H, H, C)).astype(np.float32)
  return syn, labels, real


def _nchw(x):
  import numpy as np
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, -3)))


# ----------------------------------------------------------------------------------------------------
# jaxdistill side
# ----------------------------------------------------------------------------------------------------

def _jax_model(width):
  import jaxdistill as jd
  return jd.models.get_model("convnet", K, width=width)


def _with_program(run, compiled, make_args):
  """``run`` with ``run.program = (compiled, make_args)``: the unit's one XLA program and a function
  returning fresh arguments for it (``benchmarks.profile`` traces it)."""
  run.program = (compiled, make_args)
  return run


def _jax_unit(unit: str, width: int):
  """``(run, flops, predicted_bytes)``: ``run()`` does the unit once and blocks on its result."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import jaxdistill as jd
  from jaxdistill.objectives import trajectory

  model = _jax_model(width)
  syn_np, labels_np, real_np = _inputs()
  syn = jd.types.SyntheticSet(jnp.asarray(syn_np), jnp.asarray(labels_np), jnp.log(jnp.float32(0.01)))
  dsa_img = jd.augment.get_augment("dsa", dataset_name="fashion_mnist", siamese=False)
  dsa_sia = jd.augment.get_augment("dsa", dataset_name="fashion_mnist", siamese=True)

  def analyse(lowered):
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    return compiled, float(cost.get("flops", float("nan"))), (
        mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)

  if unit.startswith("mtt"):
    steps = int(unit[3:])
    _, num_params = trajectory.flat_net(model, (H, H, C))
    start = jax.random.normal(jax.random.key(1), (1, num_params)) * 0.05
    batch = {"start": start, "target": start + 0.01}
    obj = jd.objectives.trajectory_matching(model, K, syn_steps=steps, batch_syn=K * IPC,
                                            augment=dsa_img, remat=True)

    def loss(images, log_lr, batch, key):
      return obj.loss(syn._replace(images=images, log_lr=log_lr), batch, key, ())[0]

    args = (syn.images, syn.log_lr, batch, jax.random.key(0))
    compiled, flops, mem = analyse(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args))
    return _with_program(lambda: jax.block_until_ready(compiled(*args)), compiled, lambda: args), flops, mem

  if unit in ("dm", "dc"):
    sampler = jd.distill.class_balanced_sampler(real_np.reshape(-1, H, H, C),
                                                np.repeat(np.arange(K), REAL), K, REAL)
    if unit == "dm":
      obj = jd.objectives.distribution_matching(model, K, augment=dsa_sia)
      tx = jd.distill.optimizer(optax.sgd(1.0, momentum=0.5))
    else:
      obj = jd.objectives.gradient_matching(model, K, 10, 50)
      tx = jd.distill.optimizer(optax.sgd(0.1, momentum=0.5))
    d = jd.distill.Distiller(obj, tx, sampler)
    step, sample = jd.distill.make_step(d), jd.distill.make_sample(d)
    state0 = jd.distill.init_state(jax.random.key(0), syn._replace(log_lr=None), d)
    batch = sample(state0)
    compiled, flops, mem = analyse(step.lower(state0, batch))
    holder = {}

    def run():
      # One DM iteration; for DC the first outer step of an iteration (the network trains after it).
      st = jd.distill.init_state(jax.random.key(0), syn._replace(log_lr=None), d)
      jax.block_until_ready(st)
      t = time.perf_counter()
      st, m = step(st, batch)
      jax.block_until_ready((st, m))
      holder["s"] = time.perf_counter() - t
    run.timed_inside = holder
    fresh = lambda: (jd.distill.init_state(jax.random.key(0), syn._replace(log_lr=None), d), batch)
    return _with_program(run, compiled, fresh), flops, mem

  if unit == "eval":
    cfg = jd.evaluate.EvalConfig(epochs=20, augment="dsa")
    x_test = jnp.asarray(np.random.default_rng(2).normal(size=(10000, H, H, C)).astype(np.float32))

    def train_and_predict(key, images, labels, x_test):
      # As the library's evaluation: one program trains, then predicts the test set in batches.
      v = jd.evaluate.train(key, model, images, labels, cfg, dataset_name="fashion_mnist")
      return jd.evaluate.predict(model, v, x_test, cfg.test_batch_size)

    args = (jax.random.key(0), syn.images, syn.labels, x_test)
    compiled, flops, mem = analyse(jax.jit(train_and_predict).lower(*args))
    return _with_program(lambda: jax.block_until_ready(compiled(*args)), compiled, lambda: args), flops, mem

  if unit == "expert":
    n = 5120
    x = jnp.asarray(np.random.default_rng(3).normal(size=(n, H, H, C)).astype(np.float32))
    y = jnp.asarray(np.arange(n) % K, jnp.int32)
    cfg = jd.experts.ExpertConfig(epochs=1, lr=0.01, batch_size=256, augment="dsa")
    epoch = jd.experts.make_epoch_fn(model, cfg, dataset_name="fashion_mnist")
    v = jd.evaluate.init_variables(jax.random.key(0), model, (H, H, C))
    opt = jd.experts.optimizer(cfg).init(v["params"])
    args = (v, opt, x, y, jax.random.key(1))
    compiled, flops, mem = analyse(epoch.lower(*args))
    return _with_program(lambda: jax.block_until_ready(compiled(*args)), compiled, lambda: args), flops, mem
  raise ValueError(f"unknown unit {unit!r}; choose from {UNITS}")


# ----------------------------------------------------------------------------------------------------
# PyTorch side
# ----------------------------------------------------------------------------------------------------

def _torch_unit(unit: str, width: int):
  """``run()`` doing the unit once (PyTorch eager)."""
  import torch

  from benchmarks import torch_ref as tr
  syn_np, labels_np, real_np = _inputs()
  shapes = tr.convnet_shapes(width, 3, C, K)
  syn = _nchw(syn_np)
  labels = torch.from_numpy(labels_np).long()
  gen = torch.Generator().manual_seed(0)

  if unit.startswith("mtt"):
    steps = int(unit[3:])
    start = torch.randn(sum(math.prod(s) for _, s in shapes), generator=gen) * 0.05
    target = start + 0.01
    images = syn.clone().requires_grad_(True)
    syn_lr = torch.tensor(0.01, requires_grad=True)

    def run():
      loss = tr.mtt_loss(images, labels, syn_lr, start, target, shapes, 3, steps, K * IPC, tr.dsa,
                         gen)
      images.grad = syn_lr.grad = None
      loss.backward()
    return run

  real = torch.stack([_nchw(r) for r in real_np])
  if unit == "dm":
    images = syn.clone().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=1.0, momentum=0.5)

    def run():
      loss = tr.dm_loss(real, images.view(K, IPC, C, H, H), shapes, 3, tr.dsa, gen)
      opt.zero_grad()
      loss.backward()
      opt.step()
    return run

  if unit == "dc":
    images = syn.clone().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=0.1, momentum=0.5)

    def run():
      net = tr.init_flat(shapes, 0).requires_grad_(True)
      loss = tr.dc_match_loss(net, real, images.view(K, IPC, C, H, H), shapes, 3, tr.no_aug, gen)
      opt.zero_grad()
      loss.backward()
      opt.step()
      tr.train_epochs(net, images.detach(), labels, shapes, 3, 50, 0.01, 0.0, 0.0, 256, tr.no_aug,
                      gen)
    return run

  if unit == "eval":
    x_test = _nchw(__import__("numpy").random.default_rng(2).normal(
        size=(10000, H, H, C)).astype("float32"))

    def run():
      net = tr.init_flat(shapes, 0)
      net = tr.train_epochs(net, syn, labels, shapes, 3, 21, 0.01, 0.9, 5e-4, 256, tr.dsa, gen,
                            decay_at=11)
      tr.predict(net, x_test, shapes, 3)
    return run

  if unit == "expert":
    import numpy as np
    n = 5120
    x = _nchw(np.random.default_rng(3).normal(size=(n, H, H, C)).astype(np.float32))
    y = torch.from_numpy(np.arange(n) % K).long()
    net = tr.init_flat(shapes, 0)

    def run():
      tr.train_epochs(net, x, y, shapes, 3, 1, 0.01, 0.0, 0.0, 256, tr.dsa, gen)
    return run
  raise ValueError(f"unknown unit {unit!r}; choose from {UNITS}")


# ----------------------------------------------------------------------------------------------------
# Agreement: the same loss from the same weights and inputs, augmentation off
# ----------------------------------------------------------------------------------------------------

def check_agreement(width: int, rtol: float) -> list:
  """``[(unit, jax value, torch value, relative difference)]``; raises if any exceeds ``rtol``."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch.nn.functional as F
  from jax.flatten_util import ravel_pytree

  import jaxdistill as jd
  from benchmarks import torch_ref as tr
  jax.config.update("jax_default_matmul_precision", "highest")
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  model = _jax_model(width)
  shapes = tr.convnet_shapes(width, 3, C, K)
  syn_np, labels_np, real_np = _inputs()
  real_np = real_np[:, :32]  # 32 real images per class keep the check quick
  syn = jd.types.SyntheticSet(jnp.asarray(syn_np), jnp.asarray(labels_np), jnp.log(jnp.float32(0.01)))
  images_t, labels_t = _nchw(syn_np), torch.from_numpy(labels_np).long()
  real_t = torch.stack([_nchw(r) for r in real_np])
  key = jax.random.key(0)
  v0 = jd.evaluate.init_variables(jax.random.key(5), model, (H, H, C))
  net_t = tr.from_flax(v0["params"], width, 3)
  out = []

  # MTT: the same start/target, every row in every step.
  theta0, unravel = ravel_pytree(v0["params"])
  theta1 = theta0 + 0.01 * jax.random.normal(jax.random.key(6), theta0.shape)
  obj = jd.objectives.trajectory_matching(model, K, syn_steps=3, batch_syn=K * IPC, remat=True)
  j = float(obj.loss(syn, {"start": theta0[None], "target": theta1[None]}, key, ())[0])
  t = float(tr.mtt_loss(images_t, labels_t, torch.tensor(0.01), net_t,
                        tr.from_flax(unravel(theta1), width, 3), shapes, 3, 3, K * IPC,
                        tr.no_aug, torch.Generator().manual_seed(0)))
  out.append(("MTT loss (3 steps)", j, t))

  # DM: the network the objective draws from its key.
  obj = jd.objectives.distribution_matching(model, K)
  j = float(obj.loss(syn, {"images": jnp.asarray(real_np)}, key, ())[0])
  net_key, _ = jax.random.split(key)
  vd = jd.models.flax_net(model).init(net_key, jnp.asarray(real_np[0]))
  net_d = tr.from_flax(vd["params"], width, 3)
  er = tr.convnet_forward(net_d, real_t.flatten(0, 1), shapes, 3, features=True)
  es = tr.convnet_forward(net_d, images_t, shapes, 3, features=True)
  t = float(((er.view(K, -1, er.shape[-1]).mean(1) - es.view(K, IPC, -1).mean(1)) ** 2).sum())
  out.append(("DM loss", j, t))

  # DC: the matching loss at the same network.
  obj = jd.objectives.gradient_matching(model, K, 10, 50)
  state = obj.init(key, syn)._replace(variables=v0)
  j = float(obj.loss(syn, {"images": jnp.asarray(real_np)}, key, state)[0])
  t = float(tr.dc_match_loss(net_t.clone().requires_grad_(True), real_t,
                             images_t.view(K, IPC, C, H, H), shapes, 3, tr.no_aug,
                             torch.Generator().manual_seed(0)))
  out.append(("DC matching loss", j, t))

  # Evaluation protocol (and the expert's SGD step): train 4 epochs (the reference schedule: 5, with
  # lr / 10 and a new optimizer after epoch 3) on 100 images in one batch, then the training loss.
  cfg = jd.evaluate.EvalConfig(epochs=4, augment="none")
  v = jd.evaluate.train(key, model, syn.images, syn.labels, cfg, variables=v0)
  j = float(jd.objectives.common.cross_entropy(model.apply(v, syn.images, train=False), syn.labels))
  net = tr.train_epochs(net_t, images_t, labels_t, shapes, 3, 5, 0.01, 0.9, 5e-4, 256, tr.no_aug,
                        torch.Generator().manual_seed(0), decay_at=3)
  t = float(F.cross_entropy(tr.convnet_forward(net, images_t, shapes, 3), labels_t))
  out.append(("evaluation: loss after training", j, t))

  rows = [(u, j, t, abs(j - t) / max(abs(t), 1e-12)) for u, j, t in out]
  bad = [r for r in rows if not r[3] <= rtol]
  for u, j, t, r in rows:
    print(f"  agree {u:36s} jax {j:.7g}  torch {t:.7g}  rel {r:.1e}", flush=True)
  if bad:
    raise SystemExit(f"jaxdistill and PyTorch disagree beyond rtol={rtol}: {bad}")
  return rows


# ----------------------------------------------------------------------------------------------------
# One timed unit in this process (the parent runs it pinned in a subprocess)
# ----------------------------------------------------------------------------------------------------

def _matmul_rate(fw: str, n: int = 4096, reps: int = 3) -> float:
  if fw == "torch":
    import torch
    a = torch.randn(n, n)
    a @ a
    t = time.perf_counter()
    for _ in range(reps):
      a @ a
  else:  # imported here so that the PyTorch processes never load JAX
    from benchmarks.distill_step import matmul_flops_per_s
    return matmul_flops_per_s(n, reps)
  return 2 * n ** 3 * reps / (time.perf_counter() - t)


def _peak_rss_gb() -> float:
  """This process's peak resident memory (``VmHWM``: reset by ``exec``, unlike ``ru_maxrss``, which
  Linux carries over from the parent that forked)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024 / 1e9
  return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1e6


def child(unit: str, fw: str, width: int, reps: int) -> dict:
  with contextlib.ExitStack() as stack:
    if fw == "jax":  # the freed compiler memory goes back to the OS after each compilation
      from jaxdistill import host
      stack.enter_context(host.trim_after_compiles())
    return _child(unit, fw, width, reps)


def _child(unit: str, fw: str, width: int, reps: int) -> dict:
  cores = len(os.sched_getaffinity(0))
  flops = mem = float("nan")
  t0 = time.perf_counter()
  if fw == "torch":
    import torch
    torch.set_num_threads(cores)
    run = _torch_unit(unit, width)
  else:
    run, flops, mem = _jax_unit(unit, width)
  compiled_peak = _peak_rss_gb()  # jaxdistill: the peak up to here includes XLA's compiler
  run()  # warm-up (jaxdistill: compiled above; this is the first execution)
  setup = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    run()
    s = time.perf_counter() - t
    if hasattr(run, "timed_inside"):
      s = run.timed_inside["s"]
    times.append(s)
  times.sort()
  return {"unit": unit, "fw": fw, "cores": cores, "seconds": times[len(times) // 2],
          "setup_s": setup, "peak_rss_gb": _peak_rss_gb(), "compiled_peak_gb": compiled_peak,
          "flops": flops, "xla_bytes": mem, "matmul": _matmul_rate(fw)}


# ----------------------------------------------------------------------------------------------------
# Parent: agreement, then every unit x framework x core count in pinned subprocesses
# ----------------------------------------------------------------------------------------------------

def _spawn(unit, fw, width, reps, cores) -> dict:
  cmd = ["taskset", "-c", ",".join(str(i) for i in range(cores)), sys.executable, "-m",
         "benchmarks.vs_pytorch", "--child", unit, "--fw", fw, "--width", str(width),
         "--reps", str(reps)]
  p = subprocess.run(cmd, capture_output=True, text=True)
  lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode != 0 or not lines:
    return {"unit": unit, "fw": fw, "cores": cores, "error": (p.stderr or p.stdout)[-400:]}
  return json.loads(lines[-1])


def _load() -> str:
  return " ".join(open("/proc/loadavg").read().split()[:3])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--units", default=",".join(UNITS))
  p.add_argument("--cores", default="2,1")
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--rtol", type=float, default=1e-4)
  p.add_argument("--torch-mtt80", action="store_true")
  p.add_argument("--check-only", action="store_true")
  p.add_argument("--out", default="")
  p.add_argument("--child", default="")
  p.add_argument("--fw", default="")
  a = p.parse_args()
  if a.reps < 1:
    p.error(f"--reps must be >= 1; got {a.reps}.")
  if a.child:
    print(json.dumps(child(a.child, a.fw, a.width, a.reps)), flush=True)
    return

  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  load0 = _load()
  print(f"agreement (width {a.width}, augmentation off, rtol {a.rtol}):", flush=True)
  agree = check_agreement(a.width, a.rtol)
  if a.check_only:
    return
  results = []
  for unit in a.units.split(","):
    for cores in [int(c) for c in a.cores.split(",")]:
      for fw in ("torch", "jax"):
        if fw == "torch" and unit == "mtt80" and not a.torch_mtt80:
          continue
        if unit == "mtt80" and cores == 1:
          continue  # the syn_steps-80 row is about memory; one core adds nothing
        # One timed repetition on one core and at syn_steps 80 (the long ones); --reps otherwise.
        reps = 1 if (cores == 1 or unit == "mtt80") else a.reps
        r = _spawn(unit, fw, a.width, reps, cores)
        results.append(r)
        print(json.dumps(r), flush=True)

  def get(unit, fw, cores):
    for r in results:
      if r["unit"] == unit and r["fw"] == fw and r["cores"] == cores and "error" not in r:
        return r
    return None

  lines = ["# jaxdistill vs the PyTorch reference code, side by side", "",
           f"- command: `{' '.join(['python', '-m', 'benchmarks.vs_pytorch'] + sys.argv[1:])}`",
           f"- date: {started}; machine: {platform.machine()}, {os.cpu_count()} cores, "
           f"load average before / after: {load0} / {_load()}",
           f"- width {a.width}, IPC {IPC}, Fashion-MNIST shapes; seconds: median of {a.reps} after a "
           f"warm-up (one run on one core and for mtt80); memory: the subprocess's peak RSS (runtime and, for JAX, the compiler included)",
           "", "Agreement before timing (augmentation off, same weights and inputs):", "",
           "| quantity | jaxdistill | PyTorch | relative difference |", "|---|---|---|---|"]
  lines += [f"| {u} | {j:.7g} | {t:.7g} | {r:.1e} |" for u, j, t, r in agree]
  lines += ["", "| unit | cores | PyTorch s | jaxdistill s | ratio jax/torch | PyTorch peak GB | "
            "jaxdistill peak GB | jaxdistill peak GB before the first run | XLA buffers GB |",
            "|---|---|---|---|---|---|---|---|---|"]
  for unit in a.units.split(","):
    for cores in [int(c) for c in a.cores.split(",")]:
      t, j = get(unit, "torch", cores), get(unit, "jax", cores)
      if j is None and t is None:
        continue
      fmt = lambda r, k, f: f.format(r[k]) if r is not None else "—"
      ratio = f"{j['seconds'] / t['seconds']:.2f}" if (t and j) else "—"
      lines.append(f"| {unit} | {cores} | {fmt(t, 'seconds', '{:.2f}')} | "
                   f"{fmt(j, 'seconds', '{:.2f}')} | {ratio} | {fmt(t, 'peak_rss_gb', '{:.2f}')} | "
                   f"{fmt(j, 'peak_rss_gb', '{:.2f}')} | {fmt(j, 'compiled_peak_gb', '{:.2f}')} | "
                   f"{(j['xla_bytes'] / 1e9) if j else float('nan'):.2f} |")
  rates = {fw: [r["matmul"] for r in results if r.get("fw") == fw and r.get("cores") == max(
      int(c) for c in a.cores.split(",")) and "matmul" in r] for fw in ("torch", "jax")}
  lines += ["", "Dense 4096x4096 float32 matmul on the most cores, GFLOP/s (each child process): "
            + "; ".join(f"{fw} {', '.join(f'{x / 1e9:.0f}' for x in v)}" for fw, v in rates.items() if v)]
  errors = [r for r in results if "error" in r]
  if errors:
    lines += ["", "Failed units:", ""] + [f"- {r['unit']} {r['fw']} {r['cores']} cores: "
                                           f"`{r['error'][-200:]}`" for r in errors]
  print_and_write("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
  main()
