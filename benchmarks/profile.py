"""Where a jaxdistill unit's time goes: a per-operation profile of its compiled XLA program.

Command:
  .venv/bin/python -m benchmarks.profile [--units mtt20,dm,dc,epoch100,test,expert] [--width 128]
      [--reps 2] [--top 12] [--out benchmarks/results/profile.md]

Each unit is the one ``benchmarks.vs_pytorch`` times (same shapes, same library calls, one XLA program
each); ``dit``, ``dit2`` (patch 2) and ``unet`` are a diffusion model's training step instead
(``DIFFUSION_UNITS``: batch 96 of 28x28x1 images, AdamW and EMA, as Minimax Diffusion's pretraining). The program runs once untraced, then ``--reps`` times under ``jax.profiler``; every executed XLA
operation (a "thunk": a fusion, a dot, a copy, ...) is read back from the trace and matched with its
instruction in the optimized HLO (``compiled.as_text()``). For each unit the report gives:

- the wall time per run, and the summed busy time of all operations (several can run at once on
  different cores, and one operation can use several cores, so the two differ);
- the time per category: *matmul / conv* (the operation is, or fuses, a ``dot`` or ``convolution``),
  *reduction* (fuses a ``reduce`` and no dot), *data movement* (copies, transposes, broadcasts, pads,
  slices, concatenations, gathers and scatters, alone or fused together), *elementwise* (other fusions);
- the FLOPs actually executed by matmul / conv operations (counted from their shapes, times the number of
  times each ran, so loop bodies count once per iteration, unlike ``compiled.cost_analysis()``) and
  their rate, beside the dense 4096x4096 matmul rate measured in the same run;
- the operations that took longest, with the source location XLA recorded for them (``op_name``).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import os
import platform
import re
import sys
import tempfile
import time

from benchmarks import print_and_write

MOVEMENT = {"copy", "transpose", "broadcast", "pad", "slice", "concatenate", "dynamic-slice",
            "dynamic-update-slice", "gather", "scatter", "reshape", "bitcast", "reverse", "iota",
            "constant", "parameter", "tuple", "get-tuple-element", "copy-start", "copy-done"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+?)(?:\{[^}]*\})?\s+([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _dims(shape: str) -> list:
  m = re.match(r"\w+\[([\d,]*)\]", shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def _prod(xs) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def parse_hlo(text: str) -> tuple:
  """``(instructions, computations)``: name -> dict(shape, op, rest, comp) and computation name ->
  list of instruction names, from optimized HLO text."""
  instrs, comps, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    m = _INSTR.match(line)
    if m and current is not None:
      name, shape, op, rest = m.groups()
      instrs[name] = {"shape": shape, "op": op, "rest": rest, "comp": current}
      comps[current].append(name)
      continue
    c = _COMP.match(line)
    if c and "=" not in line.split("{")[0]:
      current = c.group(1)
  return instrs, comps


def _operands(rest: str) -> list:
  head = rest.split(")", 1)[0]
  return [t.strip().lstrip("%") for t in head.split(",") if t.strip().startswith("%")]


def _op_flops(name: str, instrs: dict) -> int:
  """FLOPs of one ``dot`` or ``convolution`` instruction, from its shapes."""
  ins = instrs[name]
  out = _prod(_dims(ins["shape"]))
  ops = _operands(ins["rest"])
  if len(ops) < 2 or ops[0] not in instrs or ops[1] not in instrs:
    return 0
  lhs, rhs = _dims(instrs[ops[0]]["shape"]), _dims(instrs[ops[1]]["shape"])
  if ins["op"] == "dot":
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins["rest"])
    k = _prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m else 1
    return 2 * out * k
  m = re.search(r"dim_labels=\w+_(\w+)->", ins["rest"])
  if not m:
    return 0
  o = rhs[m.group(1).index("o")]
  groups = re.search(r"feature_group_count=(\d+)", ins["rest"])
  return 2 * out * _prod(rhs) // max(o, 1) // (int(groups.group(1)) if groups else 1)


def _called(name: str, instrs: dict, comps: dict) -> list:
  """Every instruction executed by ``name``: itself, or the body of the fusion it calls."""
  m = re.search(r"calls=%?([\w.\-]+)", instrs[name]["rest"])
  if instrs[name]["op"] == "fusion" and m and m.group(1) in comps:
    return comps[m.group(1)]
  return [name]


def classify(name: str, instrs: dict, comps: dict) -> tuple:
  """``(category, flops)`` of one executed operation."""
  body = _called(name, instrs, comps)
  kinds = {instrs[b]["op"] for b in body}
  flops = sum(_op_flops(b, instrs) for b in body if instrs[b]["op"] in ("dot", "convolution"))
  if kinds & {"dot", "convolution"}:
    return "matmul / conv", flops
  if kinds & {"reduce", "reduce-window", "select-and-scatter"}:
    return "reduction", 0
  if kinds <= MOVEMENT:
    return "data movement", 0
  return "elementwise", 0


def _source(name: str, instrs: dict) -> str:
  m = re.search(r'op_name="([^"]*)"', instrs[name]["rest"])
  if not m:
    return ""
  path = re.sub(r"^jit\([^)]*\)/", "", m.group(1))
  return path if len(path) <= 90 else "..." + path[-87:]


def trace_program(compiled, make_args, reps: int) -> tuple:
  """``(seconds per run, {operation name: (total µs, count)})`` from a ``jax.profiler`` trace."""
  import jax
  jax.block_until_ready(compiled(*make_args()))
  with tempfile.TemporaryDirectory() as d:
    args = [make_args() for _ in range(reps)]
    jax.block_until_ready(args)
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    t = time.perf_counter()
    for a in args:
      jax.block_until_ready(compiled(*a))
    wall = (time.perf_counter() - t) / reps
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  per_op = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    if e.get("ph") == "X":
      per_op[e["name"]][0] += e.get("dur", 0.0)
      per_op[e["name"]][1] += 1
  return wall, per_op


DIFFUSION_UNITS = {  # Minimax Diffusion's pretraining step (batch 96, Fashion-MNIST shapes)
    "dit": ("dit", {"patch": 4, "width": 96, "depth": 4, "heads": 4}),
    "dit2": ("dit", {"patch": 2, "width": 96, "depth": 4, "heads": 4}),
    "unet": ("unet", {"width": 32}),
}


def diffusion_program(unit: str, batch: int = 96) -> tuple:
  """``(compiled, make_args)`` of one diffusion training step (``jaxdistill.diffusion.make_step``,
  AdamW, EMA) of the model ``DIFFUSION_UNITS[unit]`` on 28x28x1 images; ``make_args`` gives a fresh
  state each call (the step donates it)."""
  import jax
  import jax.numpy as jnp
  import optax
  from jaxdistill import diffusion as dfn
  name, kw = DIFFUSION_UNITS[unit]
  model = dfn.get_model(name, 10, **kw)
  params = dfn.init_params(jax.random.key(0), model, (28, 28, 1))
  tx = optax.adamw(1e-3, weight_decay=0.0)
  step = dfn.make_step(model, dfn.make_schedule(1000), tx, batch, 0.998)
  arrays = {"images": jax.random.uniform(jax.random.key(1), (1000, 28, 28, 1), minval=-1, maxval=1),
            "labels": jnp.arange(1000, dtype=jnp.int32) % 10}
  make_args = lambda: (dfn.init_state(jax.random.key(2), params, tx), arrays)
  with jax.numpy_dtype_promotion("standard"):
    return step.lower(*make_args()).compile(), make_args


def profile_unit(unit: str, width: int, reps: int, top: int) -> dict:
  if unit in DIFFUSION_UNITS:
    compiled, make_args = diffusion_program(unit)
  else:
    from benchmarks.vs_pytorch import _jax_unit
    run, _, _ = _jax_unit(unit, width)
    compiled, make_args = run.program
  instrs, comps = parse_hlo(compiled.as_text())
  wall, per_op = trace_program(compiled, make_args, reps)
  cats = collections.defaultdict(float)
  flops, rows = 0, []
  for name, (us, n) in per_op.items():
    if name not in instrs:
      continue  # runtime events (executor, thread pool, Python), not XLA operations
    cat, f = classify(name, instrs, comps)
    cats[cat] += us / reps / 1e6
    flops += f * n / reps
    rows.append((us / reps / 1e6, n // reps, name, cat, _source(name, instrs)))
  rows.sort(reverse=True)
  busy = sum(cats.values())
  mm = cats.get("matmul / conv", 0.0)
  return {"unit": unit, "wall_s": wall, "busy_s": busy, "categories": dict(cats),
          "matmul_gflop": flops / 1e9, "matmul_gflops_per_s": flops / 1e9 / mm if mm else float("nan"),
          "top": rows[:top]}


def report(results: list, matmul_rate: float, argv: list, started: str) -> str:
  cats = ("matmul / conv", "reduction", "elementwise", "data movement")
  lines = ["# Where jaxdistill's time goes: per-operation profiles", "",
           f"- command: `{' '.join(['python', '-m', 'benchmarks.profile'] + argv)}`",
           f"- date: {started}; machine: {platform.machine()}, {os.cpu_count()} cores, load average "
           f"{' '.join(open('/proc/loadavg').read().split()[:3])}",
           f"- dense 4096x4096 float32 matmul, same run: {matmul_rate / 1e9:.0f} GFLOP/s",
           "- busy: summed time of every XLA operation (they may overlap on 2 cores); shares are of busy "
           "time; matmul GFLOP are the executed ones (every loop iteration counted)", "",
           "| unit | wall s | busy s | " + " | ".join(f"{c} %" for c in cats)
           + " | matmul GFLOP | matmul GFLOP/s | % of dense rate |",
           "|---|---|---|" + "---|" * (len(cats) + 3)]
  for r in results:
    share = [f"{100 * r['categories'].get(c, 0.0) / r['busy_s']:.0f}" for c in cats]
    lines.append(f"| {r['unit']} | {r['wall_s']:.2f} | {r['busy_s']:.2f} | " + " | ".join(share)
                 + f" | {r['matmul_gflop']:.0f} | {r['matmul_gflops_per_s']:.0f} | "
                 f"{100 * r['matmul_gflops_per_s'] * 1e9 / matmul_rate:.0f}% |")
  for r in results:
    lines += ["", f"## {r['unit']}: longest operations (per run)", "",
              "| s | runs | operation | category | source (XLA op_name) |", "|---|---|---|---|---|"]
    lines += [f"| {s:.3f} | {n} | `{name}` | {cat} | `{src}` |" for s, n, name, cat, src in r["top"]]
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--units", default="mtt20,dm,dc,epoch100,test,expert")
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--top", type=int, default=12)
  p.add_argument("--out", default="")
  a = p.parse_args()
  if a.reps < 1:
    p.error(f"--reps must be >= 1; got {a.reps}.")
  from benchmarks.distill_step import matmul_flops_per_s
  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  results = []
  for unit in a.units.split(","):
    results.append(profile_unit(unit, a.width, a.reps, a.top))
    print(json.dumps({k: v for k, v in results[-1].items() if k != "top"}), flush=True)
  text = report(results, matmul_flops_per_s(4096, 3), sys.argv[1:], started)
  print_and_write(text, a.out)


if __name__ == "__main__":
  main()
