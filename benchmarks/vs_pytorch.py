"""jaxdistill against the PyTorch reference code, the same units of work side by side in one command.

Command (needs the ``bench`` extra: ``pip install -e .[bench]``):
  .venv/bin/python -m benchmarks.vs_pytorch [--width 128]
      [--units mtt20,mtt80,dm,dc,epoch100,epoch500,epoch100p,test,expert] [--cores 2,1] [--reps 2]
      [--out benchmarks/results/vs_pytorch.md]
  .venv/bin/python -m benchmarks.vs_pytorch --device --torch-mtt80 \
      --units mtt20,mtt80,dm,dc,epoch100,epoch500,test,expert,eval5,evalv5 \
      --out benchmarks/results/vs_pytorch_<device>.md    (an accelerator: JAX on its default backend,
      PyTorch on CUDA, unpinned, each unit's device peak memory beside its host RSS; a few minutes on
      one H100-class GPU; eval5 / evalv5: whether batching the networks pays there)

The PyTorch side (``benchmarks.torch_ref``) does each unit the way the reference repositories' own
code does it: DatasetCondensation's ConvNet (an ``nn.Sequential``, in-place ReLU), ``DiffAugment``,
``epoch`` (a ``DataLoader`` over a ``TensorDataset``, the accuracy in numpy and ``loss.item()`` per
batch), ``evaluate_synset`` and the loops of ``main.py`` / ``main_DM.py``; mtt-distillation's
``ReparamModule`` student and ``distill.py`` / ``buffer.py`` loops. Units (Fashion-MNIST shapes,
28x28x1 padded to 32 by the first conv, 10 classes, ConvNet depth 3 with instance norm; random pixel
values: the cost does not depend on them), and what still differs from the reference scripts:
  mtt20 / mtt80  MTT iteration: a fresh student, syn_steps 20 / 80 at batch_syn 100 (IPC 10), per-image
                 DSA, the normalized parameter distance, gradient and update of the images and the step
                 size (PyTorch: ``create_graph=True`` through the flat vector; jaxdistill:
                 ``trajectory_matching``, remat). Differs: the expert trajectory is a random vector
                 already in memory (the reference reads its buffers from disk). PyTorch at syn_steps 80
                 needs ~28 GB and is skipped unless ``--torch-mtt80``.
  dm             DM iteration: a fresh network, 256 real images per class and IPC 10, siamese DSA per
                 class, loss, gradient, SGD update of the images. Differs: the siamese seed comes from
                 numpy (the reference's: the clock).
  dc             DC outer step (IPC 10, outer 10 / inner 50, no augmentation): a fresh network, per-class
                 gradient matching on 256 real images per class, the image update, then the network's
                 inner training (50 epochs of SGD on the synthetic set): the first outer step of an
                 iteration.
  epoch100 / epoch500  the evaluation's training epoch on 100 / 500 images (the protocol at IPC 10 /
                 50): SGD momentum 0.9, weight decay 5e-4, batch 256, DSA; 21 epochs (the 20-epoch
                 schedule, lr / 10 after epoch 11) timed together, reported per epoch.
  epoch100p      the same epochs as ``jd.evaluate.accuracy`` trains a protocol's networks: as many
                 networks at once as its ``parallel_networks="auto"`` (2 on 2 or more cores, 1 on one),
                 each from its own thread, reported per network and epoch. The reference trains its
                 networks one after another (``main.py``), so its side is ``epoch100``'s.
  test           the evaluation's test pass: 10,000 images predicted (PyTorch: batches of 256 under
                 ``no_grad``, as mtt-distillation's ``evaluate_synset``; DatasetCondensation's builds the
                 autograd graph there, which is slower).
  expert         expert epoch: one SGD epoch (lr 0.01, batch 256, DSA) over 5,120 images (buffer.py).
  eval<n>        (e.g. eval4) a set of 100 images evaluated by n networks, each trained with the 20-epoch
                 schedule (DSA) and tested on 10,000 images, as a user runs it: ``jd.evaluate.accuracy``
                 with its defaults (networks two at a time on a CPU with 2 or more cores) against the
                 reference's loop (``main.py``: one fresh network after another, ``evaluate_synset``).
  evalv<n>       (e.g. evalv5) eval<n> with ``seed_parallel="vmap"``: the n networks batched in one
                 program (every DSA op computed and selected per batch), the form that may win on an
                 accelerator, where "map" trains one network after another; the reference's side as
                 eval<n>'s.
Derived rows: the evaluation with the 20-epoch schedule (21 x epoch100 + test) and at the papers'
protocol (1001 x epoch100 + test), both for one network; with ``epoch100p``, the papers' protocol for
the 5 networks a protocol evaluates at least, as each side runs them: the reference 5 x (1001 x
epoch100p + test), with the PyTorch epoch100p row (the same work as its epoch100 row, timed next to
jaxdistill's epoch100p), jaxdistill its first network alone (it compiles the program) and the other
four two at a time, (1001 x epoch100 + test) + 4 x (1001 x epoch100p + test), each test pass taken at
one network's own rate.

Before timing, every unit's loss (MTT, DM, DC matching) or trained network (the evaluation's
training, which the epoch and expert units share: the training loss after a few deterministic
epochs) is computed by both frameworks from the same weights
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
import os
import platform
import resource
import subprocess
import sys
import time

from benchmarks import print_and_write

UNITS = ("mtt20", "mtt80", "dm", "dc", "epoch100", "epoch500", "epoch100p", "test", "expert")
PROTOCOL_NETWORKS = 5  # networks of the derived papers'-protocol row with epoch100p
EPOCH_RUNS = 21  # epochs per timed run of the epoch units (the reference's 20-epoch schedule)
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


def _nchw(x, device="cpu"):
  import numpy as np
  import torch
  # A fresh tensor in PyTorch's default layout (a one-channel numpy view keeps NHWC strides, which
  # PyTorch would read as channels-last).
  return torch.from_numpy(np.moveaxis(np.asarray(x), -1, -3).copy()).clone(
      memory_format=torch.contiguous_format).to(device)


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

  if unit.startswith("epoch"):
    # EPOCH_RUNS epochs of the evaluation protocol (DSA, batch 256) on n images, no test pass; the
    # table reports the time per epoch (epoch<n>p: per network, the networks side by side).
    n = int(unit[5:].rstrip("p"))
    cfg = jd.evaluate.EvalConfig(epochs=EPOCH_RUNS - 1, augment="dsa")
    x = jnp.asarray(np.random.default_rng(4).normal(size=(n, H, H, C)).astype(np.float32))
    y = jnp.asarray(np.arange(n) % K, jnp.int32)
    args = (jax.random.key(0), x, y)
    fn = lambda key, images, labels: jd.evaluate.train(key, model, images, labels, cfg,
                                                        dataset_name="fashion_mnist")
    compiled, flops, mem = analyse(jax.jit(fn).lower(*args))
    if unit.endswith("p"):
      import concurrent.futures
      workers = jd.evaluate.resolve_parallel_networks("auto")
      calls = [(jax.random.key(i), x, y) for i in range(workers)]  # one network's arguments each
      pool = concurrent.futures.ThreadPoolExecutor(workers)

      def run_side_by_side():  # one network per thread, as jd.evaluate.accuracy's pool
        list(pool.map(lambda a: jax.block_until_ready(compiled(*a)), calls))
      run_side_by_side.networks = workers
      return _with_program(run_side_by_side, compiled, lambda: args), flops, mem
    return _with_program(lambda: jax.block_until_ready(compiled(*args)), compiled, lambda: args), flops, mem

  if unit in ("test", "eval"):
    # test: a trained network's predictions on the 10,000-image test set; eval: a fresh network trained
    # on 100 images for 20 epochs (the reference's 21, DSA) and then the test set predicted, one program
    # as ``jd.evaluate.accuracy`` runs it.
    cfg = jd.evaluate.EvalConfig(epochs=20, augment="dsa")
    x_test = jnp.asarray(np.random.default_rng(2).normal(size=(10000, H, H, C)).astype(np.float32))
    if unit == "test":
      v = jd.evaluate.init_variables(jax.random.key(0), model, (H, H, C))
      args = (v, x_test)
      fn = lambda v, x: jd.evaluate.predict(model, v, x, cfg.test_batch_size)
    else:
      def fn(key, images, labels, x_test):
        v = jd.evaluate.train(key, model, images, labels, cfg, dataset_name="fashion_mnist")
        return jd.evaluate.predict(model, v, x_test, cfg.test_batch_size)
      args = (jax.random.key(0), syn.images, syn.labels, x_test)
    compiled, flops, mem = analyse(jax.jit(fn).lower(*args))
    return _with_program(lambda: jax.block_until_ready(compiled(*args)), compiled, lambda: args), flops, mem

  if _eval_networks(unit):
    cfg = jd.evaluate.EvalConfig(epochs=20, augment="dsa",
                                 seed_parallel="vmap" if unit.startswith("evalv") else "map")
    x_test = np.random.default_rng(2).normal(size=(10000, H, H, C)).astype(np.float32)
    y_test = np.zeros(10000, np.int32)
    data = jd.types.Dataset("fashion_mnist", x_test[:1], y_test[:1], x_test, y_test, K,
                            tuple(str(k) for k in range(K)), (0.0,), (1.0,))
    run = lambda: jd.evaluate.accuracy(jax.random.key(0), (syn.images, syn.labels), data, model,
                                       num_seeds=_eval_networks(unit), cfg=cfg)
    return run, float("nan"), float("nan")  # several calls of one program: no single program to count

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
  raise ValueError(f"unknown unit {unit!r}; choose from {UNITS}, eval<n> or evalv<n>")


def _eval_networks(unit: str) -> int:
  """n of an ``eval<n>`` or ``evalv<n>`` unit (0 for any other unit)."""
  n = unit[5:] if unit.startswith("evalv") else unit[4:] if unit.startswith("eval") else ""
  return int(n) if n.isdigit() and int(n) > 0 else 0


# ----------------------------------------------------------------------------------------------------
# PyTorch side
# ----------------------------------------------------------------------------------------------------

def _torch_unit(unit: str, width: int, device: str = "cpu"):
  """``run()`` doing the unit once, as the reference code does it (``benchmarks.torch_ref``), on
  ``device`` ("cpu" or "cuda")."""
  import numpy as np
  import torch

  from benchmarks import torch_ref as tr
  torch.manual_seed(0)
  np.random.seed(0)
  syn_np, labels_np, real_np = _inputs()
  syn = _nchw(syn_np, device)
  labels = torch.from_numpy(labels_np).long().to(device)

  if unit.startswith("mtt"):
    steps = int(unit[3:])
    start = 0.05 * torch.randn(tr.flat_vector(tr.ConvNet(C, K, width)).numel()).to(device)
    target = start + 0.01
    images = syn.clone().requires_grad_(True)
    syn_lr = torch.tensor(0.01, device=device).requires_grad_(True)
    opt_img = torch.optim.SGD([images], lr=1000, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)
    return lambda: tr.mtt_iteration(images, labels, syn_lr, opt_img, opt_lr, start, target, C, K,
                                    width, steps, K * IPC)

  images_all = _nchw(real_np.reshape(-1, H, H, C), device)
  indices_class = [list(range(c * REAL, (c + 1) * REAL)) for c in range(K)]
  get_images = tr.class_sampler(images_all, indices_class)
  if unit == "dm":
    images = syn.clone().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=1.0, momentum=0.5)
    return lambda: tr.dm_iteration(get_images, images, opt, C, K, width, IPC, REAL)

  if unit == "dc":
    images = syn.clone().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=0.1, momentum=0.5)

    def run():
      net = tr.ConvNet(C, K, width).to(device)
      net.train()
      opt_net = torch.optim.SGD(net.parameters(), lr=0.01)
      tr.dc_outer_step(net, opt_net, get_images, images, labels, opt, K, IPC, REAL, 50)
    return run

  if unit.startswith("epoch"):  # epoch<n>p too: the reference trains one network after another
    n = int(unit[5:].rstrip("p"))
    x = _nchw(np.random.default_rng(4).normal(size=(n, H, H, C)).astype(np.float32), device)
    y = torch.from_numpy(np.arange(n) % K).long().to(device)
    return lambda: tr.evaluate_synset(tr.ConvNet(C, K, width).to(device), x, y, None, epochs=EPOCH_RUNS - 1,
                                      test=False)

  if unit == "test":
    x_test = _nchw(np.random.default_rng(2).normal(size=(10000, H, H, C)).astype(np.float32), device)
    loader = tr.test_loader(x_test, torch.zeros(10000, dtype=torch.long, device=device))
    net = tr.ConvNet(C, K, width).to(device)

    def run():
      with torch.no_grad():
        tr.epoch("test", loader, net, None, torch.nn.CrossEntropyLoss(), False)
    return run

  if unit == "expert":
    n = 5120
    x = _nchw(np.random.default_rng(3).normal(size=(n, H, H, C)).astype(np.float32), device)
    y = torch.from_numpy(np.arange(n) % K).long().to(device)
    net = tr.ConvNet(C, K, width).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0, weight_decay=0)
    loader = tr.train_loader(x, y)
    return lambda: tr.epoch("train", loader, net, opt, torch.nn.CrossEntropyLoss(), True)

  if _eval_networks(unit):
    x_test = _nchw(np.random.default_rng(2).normal(size=(10000, H, H, C)).astype(np.float32), device)
    loader = tr.test_loader(x_test, torch.zeros(10000, dtype=torch.long, device=device))

    def run():  # main.py: a fresh network per evaluation, one after another
      for _ in range(_eval_networks(unit)):
        tr.evaluate_synset(tr.ConvNet(C, K, width).to(device), syn, labels, loader, epochs=20)
    return run
  raise ValueError(f"unknown unit {unit!r}; choose from {UNITS}, eval<n> or evalv<n>")


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
  syn_np, labels_np, real_np = _inputs()
  real_np = real_np[:, :32]  # 32 real images per class keep the check quick
  syn = jd.types.SyntheticSet(jnp.asarray(syn_np), jnp.asarray(labels_np), jnp.log(jnp.float32(0.01)))
  images_t, labels_t = _nchw(syn_np), torch.from_numpy(labels_np).long()
  real_all = _nchw(real_np.reshape(-1, H, H, C))
  get_images = tr.class_sampler(real_all, [list(range(c * 32, (c + 1) * 32)) for c in range(K)])
  key = jax.random.key(0)
  v0 = jd.evaluate.init_variables(jax.random.key(5), model, (H, H, C))
  net_of = lambda params: tr.load_flax(tr.ConvNet(C, K, width), params)
  out = []

  # MTT: the same start/target, every row in every step.
  theta0, unravel = ravel_pytree(v0["params"])
  theta1 = theta0 + 0.01 * jax.random.normal(jax.random.key(6), theta0.shape)
  obj = jd.objectives.trajectory_matching(model, K, syn_steps=3, batch_syn=K * IPC, remat=True)
  j = float(obj.loss(syn, {"start": theta0[None], "target": theta1[None]}, key, ())[0])
  in_features = net_of(v0["params"]).classifier.in_features
  t = float(tr.mtt_iteration(images_t, labels_t, torch.tensor(0.01), None, None,
                             tr.from_flax(v0["params"], in_features),
                             tr.from_flax(unravel(theta1), in_features), C, K, width, 3, K * IPC,
                             dsa=False).detach())
  out.append(("MTT loss (3 steps)", j, t))

  # DM: the network the objective draws from its key.
  obj = jd.objectives.distribution_matching(model, K)
  j = float(obj.loss(syn, {"images": jnp.asarray(real_np)}, key, ())[0])
  net_key, _ = jax.random.split(key)
  vd = jd.models.flax_net(model).init(net_key, jnp.asarray(real_np[0]))
  t = float(tr.dm_iteration(get_images, images_t, None, C, K, width, IPC, 32, dsa=False,
                            net=net_of(vd["params"])).detach())
  out.append(("DM loss", j, t))

  # DC: the matching loss at the same network.
  obj = jd.objectives.gradient_matching(model, K, 10, 50)
  state = obj.init(key, syn)._replace(variables=v0)
  j = float(obj.loss(syn, {"images": jnp.asarray(real_np)}, key, state)[0])
  t = float(tr.dc_outer_step(net_of(v0["params"]), None, get_images, images_t, labels_t, None, K,
                             IPC, 32, 0, update=False).detach())
  out.append(("DC matching loss", j, t))

  # Evaluation protocol (and the expert's SGD step): train 4 epochs (the reference schedule: 5, with
  # lr / 10 and a new optimizer after epoch 3) on 100 images in one batch, then the training loss.
  cfg = jd.evaluate.EvalConfig(epochs=4, augment="none")
  v = jd.evaluate.train(key, model, syn.images, syn.labels, cfg, variables=v0)
  j = float(jd.objectives.common.cross_entropy(model.apply(v, syn.images, train=False), syn.labels))
  net, _ = tr.evaluate_synset(net_of(v0["params"]), images_t, labels_t, None, epochs=4, aug=False,
                              test=False)
  with torch.no_grad():
    t = float(F.cross_entropy(net(images_t), labels_t))
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

def _matmul_rate(fw: str, n: int = 4096, reps: int = 3, device: str = "cpu") -> float:
  if fw == "torch":
    import torch
    a = torch.randn(n, n, device=device)
    a @ a
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
      a @ a
    _sync(device)
  else:  # imported here so that the PyTorch processes never load JAX
    from benchmarks.distill_step import matmul_flops_per_s
    return matmul_flops_per_s(n, reps)
  return 2 * n ** 3 * reps / (time.perf_counter() - t)


def _sync(device: str) -> None:
  if device == "cuda":
    import torch
    torch.cuda.synchronize()


def _device_peak_gb(fw: str, device: str) -> float:
  """Peak accelerator memory of this process (``nan`` on CPU)."""
  if fw == "torch":
    if device != "cuda":
      return float("nan")
    import torch
    return torch.cuda.max_memory_allocated() / 1e9
  import jax
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  return stats.get("peak_bytes_in_use", float("nan")) / 1e9 if stats else float("nan")


def _peak_rss_gb() -> float:
  """This process's peak resident memory (``VmHWM``: reset by ``exec``, unlike ``ru_maxrss``, which
  Linux carries over from the parent that forked)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024 / 1e9
  return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1e6


def child(unit: str, fw: str, width: int, reps: int, on_device: bool = False) -> dict:
  with contextlib.ExitStack() as stack:
    if fw == "jax":  # the freed compiler memory goes back to the OS after each compilation
      from jaxdistill import host
      stack.enter_context(host.trim_after_compiles())
    return _child(unit, fw, width, reps, on_device)


def _child(unit: str, fw: str, width: int, reps: int, on_device: bool = False) -> dict:
  """One unit timed in this process. ``on_device``: PyTorch on CUDA when it has it (else its CPU),
  JAX on its default backend; the row's ``cores`` is then 0 and ``device`` names the device."""
  cores = 0 if on_device else len(os.sched_getaffinity(0))
  flops = mem = float("nan")
  device, device_name = "cpu", f"{len(os.sched_getaffinity(0))} CPU cores"
  t0 = time.perf_counter()
  if fw == "torch":
    import torch
    if on_device and torch.cuda.is_available():
      device, device_name = "cuda", torch.cuda.get_device_name(0)
    else:
      torch.set_num_threads(len(os.sched_getaffinity(0)))
    unit_run = _torch_unit(unit, width, device)

    def run():
      unit_run()
      _sync(device)
  else:
    run, flops, mem = _jax_unit(unit, width)
    if on_device:
      import jax
      device_name = f"{jax.default_backend()}: {jax.devices()[0].device_kind}"
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
  per = EPOCH_RUNS if unit.startswith("epoch") else 1  # the epoch units: seconds per epoch
  per *= getattr(run, "networks", 1)  # epoch<n>p: per network
  return {"unit": unit, "fw": fw, "cores": cores, "seconds": times[len(times) // 2] / per,
          "setup_s": setup, "peak_rss_gb": _peak_rss_gb(), "compiled_peak_gb": compiled_peak,
          "flops": flops, "xla_bytes": mem, "matmul": _matmul_rate(fw, device=device),
          "device": device_name, "device_peak_gb": _device_peak_gb(fw, device)}


# ----------------------------------------------------------------------------------------------------
# Parent: agreement, then every unit x framework x core count in pinned subprocesses
# ----------------------------------------------------------------------------------------------------

def _spawn(unit, fw, width, reps, cores) -> dict:
  """The unit in a subprocess pinned to the first ``cores`` cores, or (``cores`` 0) on the
  accelerator, unpinned."""
  pin = ["taskset", "-c", ",".join(str(i) for i in range(cores))] if cores else []
  cmd = pin + [sys.executable, "-m", "benchmarks.vs_pytorch", "--child", unit, "--fw", fw,
               "--width", str(width), "--reps", str(reps)] + ([] if cores else ["--device"])
  p = subprocess.run(cmd, capture_output=True, text=True)
  lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode != 0 or not lines:
    return {"unit": unit, "fw": fw, "cores": cores, "error": (p.stderr or p.stdout)[-400:]}
  return json.loads(lines[-1])


def _cpu_model() -> str:
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return platform.processor() or "unknown CPU"


def _versions() -> str:
  """The two frameworks' installed versions (a PyTorch build's suffix, e.g. ``+cpu``, included)."""
  from importlib import metadata
  found = []
  for name in ("torch", "jax", "jaxlib"):
    try:
      found.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
      found.append(f"{name} not installed")
  return ", ".join(found)


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
  p.add_argument("--device", action="store_true",
                 help="run every unit on the accelerator (JAX's default backend, PyTorch on CUDA), "
                      "unpinned; --cores is ignored")
  a = p.parse_args()
  if a.reps < 1:
    p.error(f"--reps must be >= 1; got {a.reps}.")
  if a.child:
    print(json.dumps(child(a.child, a.fw, a.width, a.reps, a.device)), flush=True)
    return

  core_list = [0] if a.device else [int(c) for c in a.cores.split(",")]
  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  load0 = _load()
  print(f"agreement (width {a.width}, augmentation off, rtol {a.rtol}):", flush=True)
  agree = check_agreement(a.width, a.rtol)
  if a.check_only:
    return
  results = []
  for unit in a.units.split(","):
    for cores in core_list:
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
           f"- date: {started}; machine: {platform.machine()}, {_cpu_model()}, {os.cpu_count()} cores, "
           f"load average before / after: {load0} / {_load()}; {_versions()}",
           f"- width {a.width}, IPC {IPC}, Fashion-MNIST shapes; seconds: median of {a.reps} after a "
           f"warm-up (one run on one core and for mtt80); the epoch units: seconds per epoch (of {EPOCH_RUNS} timed together); memory: the subprocess's peak RSS (runtime and, for JAX, the compiler included)",
           "", "Agreement before timing (augmentation off, same weights and inputs):", "",
           "| quantity | jaxdistill | PyTorch | relative difference |", "|---|---|---|---|"]
  lines += [f"| {u} | {j:.7g} | {t:.7g} | {r:.1e} |" for u, j, t, r in agree]
  if a.device:
    names = sorted({f"{r['fw']}: {r['device']}" for r in results if "device" in r})
    lines += ["", "On the accelerator (rows with cores 0; memory: the process's peak RSS, and the "
              "device's peak beside it): " + "; ".join(names),
              "", "| unit | framework | device peak GB |", "|---|---|---|"]
    lines += [f"| {r['unit']} | {r['fw']} | {r['device_peak_gb']:.2f} |" for r in results
              if "device_peak_gb" in r]
  lines += ["", "| unit | cores | PyTorch s | jaxdistill s | ratio jax/torch | PyTorch peak GB | "
            "jaxdistill peak GB | jaxdistill peak GB before the first run | XLA buffers GB |",
            "|---|---|---|---|---|---|---|---|---|"]
  for unit in a.units.split(","):
    for cores in core_list:
      t, j = get(unit, "torch", cores), get(unit, "jax", cores)
      if j is None and t is None:
        continue
      fmt = lambda r, k, f: f.format(r[k]) if r is not None else "—"
      ratio = f"{j['seconds'] / t['seconds']:.2f}" if (t and j) else "—"
      lines.append(f"| {unit} | {cores or 'device'} | {fmt(t, 'seconds', '{:.2f}')} | "
                   f"{fmt(j, 'seconds', '{:.2f}')} | {ratio} | {fmt(t, 'peak_rss_gb', '{:.2f}')} | "
                   f"{fmt(j, 'peak_rss_gb', '{:.2f}')} | {fmt(j, 'compiled_peak_gb', '{:.2f}')} | "
                   f"{(j['xla_bytes'] / 1e9) if j else float('nan'):.2f} |")
  derived = []
  for cores in core_list:
    (te, tt), (je, jt) = [(get("epoch100", fw, cores), get("test", fw, cores))
                          for fw in ("torch", "jax")]
    if all((te, tt, je, jt)):
      for name, epochs in (("evaluation, 20-epoch schedule (21 epochs on 100 images + test pass)", 21),
                           ("evaluation at the papers' protocol (1001 epochs + test pass)", 1001)):
        ts, js = epochs * te["seconds"] + tt["seconds"], epochs * je["seconds"] + jt["seconds"]
        derived.append(f"| {name} | {cores or 'device'} | {ts:.2f} | {js:.2f} | {js / ts:.2f} |")
    tp, jp = get("epoch100p", "torch", cores), get("epoch100p", "jax", cores)
    if all((te, tt, je, jt, tp, jp)):
      n = PROTOCOL_NETWORKS
      ts = n * (1001 * tp["seconds"] + tt["seconds"])
      js = (1001 * je["seconds"] + jt["seconds"]) + (n - 1) * (1001 * jp["seconds"] + jt["seconds"])
      derived.append(f"| evaluation at the papers' protocol, {n} networks as each side runs them "
                     f"(jaxdistill: the first alone, then two at a time) | {cores or 'device'} | "
                     f"{ts:.2f} | {js:.2f} | {js / ts:.2f} |")
  if derived:
    lines += ["", "Derived from the epoch100, epoch100p and test rows (seconds):", "",
              "| unit | cores | PyTorch s | jaxdistill s | ratio jax/torch |", "|---|---|---|---|---|"]
    lines += derived
  rates = {fw: [r["matmul"] for r in results if r.get("fw") == fw and r.get("cores") == max(
      core_list) and "matmul" in r] for fw in ("torch", "jax")}
  lines += ["", "Dense 4096x4096 float32 matmul on the most cores, GFLOP/s (each child process): "
            + "; ".join(f"{fw} {', '.join(f'{x / 1e9:.0f}' for x in v)}" for fw, v in rates.items() if v)]
  errors = [r for r in results if "error" in r]
  if errors:
    lines += ["", "Failed units:", ""] + [f"- {r['unit']} {r['fw']} {r['cores']} cores: "
                                           f"`{r['error'][-200:]}`" for r in errors]
  print_and_write("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
  main()
