"""Speed of the three ``Conv`` implementations on XLA's CPU backend, measured in one run.

Command: ``.venv/bin/python benchmarks/conv_impl.py``

(a) one training step (forward + backward, cross-entropy) of a ConvNet width 64 on 256 28x28x1 images;
(b) the MTT/DD pattern: 10 SGD steps of a ConvNet unrolled inside ``lax.scan`` and differentiated with
    respect to the synthetic images (second order);
(c) (extra) the evaluation / expert-training pattern: 4 first-order SGD steps inside ``lax.scan``.

Result (2026-11-24, 2 CPU cores shared with other jobs, JAX 0.10.2):

  (a) ConvNet w64 d3 instancenorm, grad of CE on 256 x 28x28x1; best of 5
  (b) ConvNet w32 d3, 10 SGD steps on 50 x 28x28x1 in lax.scan, grad w.r.t. the images; one run
  (c) ConvNet w64 d3, 4 SGD steps on batches of 64 x 28x28x1 in lax.scan; one run
  patches  (a)  0.482 s (compile  1.4 s) | (b)  1.486 s (compile  5.1 s) | (c)  0.429 s (compile  1.5 s)
  shift    (a)  0.573 s (compile  1.5 s) | (b)  1.800 s (compile  6.3 s) | (c)  0.435 s (compile  1.5 s)
  lax      (a)  0.928 s (compile  0.6 s) | (b) 18.681 s (compile  3.7 s) | (c)  9.627 s (compile  0.7 s)
  patches  time / lax time: (a) 0.52   (b) 0.080   (c) 0.045
  shift    time / lax time: (a) 0.62   (b) 0.096   (c) 0.045
  lax      time / lax time: (a) 1.00   (b) 1.000   (c) 1.000
  (total wall time 1 min 18 s)

Two earlier runs with more load on the machine gave (a) patches 0.89-0.98 s, shift 0.63 s, lax 1.47-1.50 s
(so "shift" can win a plain step on a busy machine) and (b) patches 1.2-1.4 s, shift 2.7-3.5 s, lax
23-25 s. Under ``lax.scan`` (b, c) both slice-based convs are 10-20x faster than ``lax.conv``, and
"patches" is never slower than "shift" there, so "patches" is ``layers.DEFAULT_CONV_IMPL``. Their compile
times are longer (k*k slices per conv), which matters little next to the run times.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax

from jaxdistill.models.convnet import ConvNet
from jaxdistill.models.layers import CONV_IMPLS


def _time(fn, *args, repeats: int = 3) -> tuple[float, float]:
  """(compile seconds, best-of-``repeats`` run seconds) of a jitted ``fn``."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    best = min(best, time.perf_counter() - t0)
  return compile_s, best


def train_step_fn(model):
  """Jitted ``(params, x, y) -> grads`` of the mean cross-entropy."""

  def loss(params, x, y):
    logits = model.apply({"params": params}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return jax.jit(jax.grad(loss))


def unrolled_fn(model, num_steps: int, lr: float = 0.01):
  """Jitted ``(params, x_syn, y_syn, x_real, y_real) -> d loss / d x_syn`` through ``num_steps`` SGD
  steps inside ``lax.scan`` (the inner loop of MTT / DD)."""

  def ce(params, x, y):
    logits = model.apply({"params": params}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def outer(x_syn, params, y_syn, x_real, y_real):
    def step(p, _):
      g = jax.grad(ce)(p, x_syn, y_syn)
      return jax.tree.map(lambda a, b: a - lr * b, p, g), None

    final, _ = jax.lax.scan(step, params, None, length=num_steps)
    return ce(final, x_real, y_real)

  grad_fn = jax.grad(outer)
  return jax.jit(lambda params, xs, ys, xr, yr: grad_fn(xs, params, ys, xr, yr))


def scanned_train_fn(model, lr: float = 0.01):
  """Jitted ``(params, xs [S, B, H, W, C], ys [S, B]) -> params`` after ``S`` SGD steps in ``lax.scan``."""

  def ce(params, x, y):
    logits = model.apply({"params": params}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def run(params, xs, ys):
    def step(p, batch):
      g = jax.grad(ce)(p, *batch)
      return jax.tree.map(lambda a, b: a - lr * b, p, g), None

    return jax.lax.scan(step, params, (xs, ys))[0]

  return jax.jit(run)


def main():
  key = jax.random.key(0)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  x_train = jax.random.normal(k1, (256, 28, 28, 1), jnp.float32)
  y_train = jax.random.randint(k2, (256,), 0, 10)
  x_syn = jax.random.normal(k3, (50, 28, 28, 1), jnp.float32)
  y_syn = jnp.repeat(jnp.arange(10), 5)
  x_real = jax.random.normal(k4, (64, 28, 28, 1), jnp.float32)
  y_real = jnp.arange(64) % 10
  xs = x_train.reshape(4, 64, 28, 28, 1)
  ys = y_train.reshape(4, 64)

  print("(a) ConvNet w64 d3 instancenorm, grad of CE on 256 x 28x28x1; best of 5")
  print("(b) ConvNet w32 d3, 10 SGD steps on 50 x 28x28x1 in lax.scan, grad w.r.t. the images; one run")
  print("(c) ConvNet w64 d3, 4 SGD steps on batches of 64 x 28x28x1 in lax.scan; one run")
  rows = []
  for impl in CONV_IMPLS:
    model = ConvNet(num_classes=10, width=64, conv_impl=impl)
    params = model.init(key, x_train[:1], train=False)["params"]
    a_first, a = _time(train_step_fn(model), params, x_train, y_train, repeats=5)
    small = ConvNet(num_classes=10, width=32, conv_impl=impl)
    sparams = small.init(key, x_syn[:1], train=False)["params"]
    b_first, b = _time(unrolled_fn(small, 10), sparams, x_syn, y_syn, x_real, y_real, repeats=1)
    c_first, c = _time(scanned_train_fn(model), params, xs, ys, repeats=1)
    rows.append((impl, a, b, c))
    print(f"{impl:8s} (a) {a:6.3f} s (compile {a_first:4.1f} s) | (b) {b:6.3f} s (compile {b_first:4.1f} s)"
          f" | (c) {c:6.3f} s (compile {c_first:4.1f} s)", flush=True)
  ref = {r[0]: r for r in rows}["lax"]
  for impl, a, b, c in rows:
    print(f"{impl:8s} time / lax time: (a) {a / ref[1]:.2f}   (b) {b / ref[2]:.3f}   (c) {c / ref[3]:.3f}")


if __name__ == "__main__":
  main()
