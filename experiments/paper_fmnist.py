"""The papers' Fashion-MNIST table at the papers' budgets: every row of ``c.rows`` distilled with the
paper's setting (``experiments/configs/paper_fmnist.py``), evaluated under the paper's protocol along
the way and at the end, against random real images and the published figure.

Usage: python -m experiments.paper_fmnist --config experiments/configs/paper_fmnist_table.py \
         [--config.rows=dc:1,dsa:1 --config.rows=accelerator]

Resumable: each row's distillation resumes from its checkpoints (``<workdir>/<method>_<dataset>_ipc<n>``,
the same directories as ``experiments.distill`` with the row's config), every evaluation is cached
under ``<workdir>/paper_table``, and every network of an unfinished one under ``<workdir>/networks``
(a stopped 20-network evaluation resumes at its next network). The table accumulates: a command
writes its rows into the rows ``<results>.json`` already records (a recorded row of the same method, IPC and steps is replaced, the
others are kept with the command and date that recorded them). Writes ``<results>.md`` (command,
date, machine, one line per row with its budget, protocol, networks, wall time and the segments its
distillation ran in: one per ``distill.run`` call), ``<results>.json`` (one object per row) and ``<results>.png`` (accuracy against steps). A hand-written
``<results>_notes.md`` (how runs were split across sessions, ...) is appended to the markdown, its
title line left out.
"""
from __future__ import annotations

import json
import os

import jaxdistill as jd
from experiments import distill, registry
from experiments.common import (cached_results, command_line, errorbar_plot, hand_notes, ident, now,
                                provenance, require_plot, run_script)
from experiments.configs import paper_fmnist
from experiments.configs.paper_fmnist_table import ACCELERATOR_ROWS
from experiments.methods import idc as idc_method


def parse_row(row: str) -> tuple:
  """``"dc:10@200"`` -> ``("dc", 10, 200)``; without ``@`` the paper's steps."""
  try:
    head, _, steps = row.partition("@")
    method, ipc = head.split(":")
    ipc = int(ipc)
    return method, ipc, int(steps) if steps else paper_fmnist.paper_steps(method, ipc)
  except (ValueError, KeyError) as e:
    raise ValueError(f"Bad row {row!r}: write <method>:<ipc> or <method>:<ipc>@<steps>, method in "
                     f"{sorted(paper_fmnist.PAPER)}.") from e


def rows_of(c) -> tuple:
  """``c.rows`` (comma-separated rows, or "accelerator") parsed."""
  rows = ACCELERATOR_ROWS if c.rows == "accelerator" else c.rows
  return tuple(parse_row(r.strip()) for r in rows.split(",") if r.strip())


def tiny(c):
  """A test-sized version of row config ``c``: at most 2 steps on a subset, width-8 networks, a 1-epoch
  evaluation with one network, and no paper protocol (its fields are replaced)."""
  c.steps = min(c.steps, 2)
  c.max_per_class = 10
  c.model_kwargs.width = 8
  c.batch_real = 4
  c.eval_protocol = ""
  c.eval_model_kwargs.convnet.width = 8
  c.eval_epochs = 1
  c.eval_augment = "none"
  c.num_seeds = 1
  c.checkpoint_every = 1
  if "idc" in c:
    c.idc.update(idc_method.TEST_SIZE)
  return c


def row_config(c, method: str, ipc: int, steps: int):
  rc = paper_fmnist.get_config(f"{method},{ipc}")
  rc.steps = steps
  rc.workdir = c.workdir
  rc.progress = c.progress
  return tiny(rc) if c.tiny else rc


def curve_steps(total: int, points: int, every: int) -> list:
  """``points`` evenly spaced steps before ``total`` (multiples of ``every``, at least ``every``; the
  run saves a checkpoint at each, as at every end of ``distill.run``)."""
  out = {max(every, round(total * i / (points + 1) / every) * every) for i in range(1, points + 1)}
  return sorted(s for s in out if s < total)


def evaluate_at(c, rc, steps: int, networks: int):
  """The row's protocol accuracy at ``steps`` (distilling up to there first), of the distilled set and
  of random real images, with ``networks`` networks; cached. None when the row's run has already
  passed ``steps`` without this table evaluating it there (its set at ``steps`` is gone)."""
  ec = rc.copy_and_resolve_references()
  ec.steps, ec.num_seeds = steps, networks
  path = os.path.join(c.workdir, "paper_table", f"{ec.method}_ipc{ec.ipc}_{steps}_"
                      f"{ident(registry.run_identity(ec), ec.to_dict())}.json")
  ckpts = os.path.join(c.workdir, distill.run_name(ec), "checkpoints")
  done = jd.checkpoint.saved_steps(ckpts) if os.path.isdir(ckpts) else []
  if not os.path.exists(path) and done and max(done) > steps:
    return None

  def compute():
    out = distill.run(ec)
    got = [r for r in out["rows"] if r[0] == "protocol"][0]
    return {"distilled": got[2], "random_real": got[3]}
  return cached_results(path, compute)


def row_result(c, method: str, ipc: int, steps: int) -> dict:
  rc = row_config(c, method, ipc, steps)
  steps = rc.steps
  outer = paper_fmnist.steps_per_iteration(method, ipc)
  curve = []
  every = 10 if steps >= 10 * (c.curve_points + 1) else 1  # whole logging blocks where possible
  for s in curve_steps(steps, c.curve_points, every):
    r = evaluate_at(c, rc, s, min(c.curve_networks, rc.num_seeds))
    if r is None:
      print(f"{method} IPC {ipc}: no curve point at step {s} (the run passed it before this table "
            f"ran)", flush=True)
      continue
    curve.append({"steps": s, "iterations": s / outer, "mean": 100 * r["distilled"].mean,
                  "std": 100 * r["distilled"].std, "networks": min(c.curve_networks, rc.num_seeds)})
  final = evaluate_at(c, rc, steps, rc.num_seeds)
  if final is None:
    raise ValueError(f"The {method} IPC {ipc} run in {c.workdir} is past step {steps}, this row's last: "
                     f"ask for its steps or more (<method>:<ipc>@<steps>), or use another workdir.")
  curve.append({"steps": steps, "iterations": steps / outer, "mean": 100 * final["distilled"].mean,
                "std": 100 * final["distilled"].std, "networks": rc.num_seeds})
  logs = os.path.join(c.workdir, distill.run_name(rc), "logs")
  # Only the row's own steps: a run extended later (another row, more steps) logged more.
  logged = [r for r in jd.logs.read_metrics(logs) if r["step"] <= steps] if os.path.exists(logs) else []
  split = jd.logs.sessions(logged)
  pub = paper_fmnist.PUBLISHED.get((method, ipc))
  return {
      "method": method, "ipc": ipc,
      "budget": "paper" if steps == paper_fmnist.paper_steps(method, ipc) and not c.tiny else "reduced",
      "iterations": steps / outer, "steps": steps,
      "eval_protocol": rc.eval_protocol or "tiny (test size)", "networks": rc.num_seeds,
      "width": rc.model_kwargs.width, "batch_real": rc.batch_real,
      "ours_mean": 100 * final["distilled"].mean, "ours_std": 100 * final["distilled"].std,
      "random_real_mean": 100 * final["random_real"].mean,
      "random_real_std": 100 * final["random_real"].std,
      "published_mean": pub[0] if pub else None, "published_std": pub[1] if pub else None,
      "source": pub[2] if pub else "no published Fashion-MNIST figure",
      "distill_seconds": sum(s[2] for s in split),
      "sessions": [{"first_step": a, "last_step": b, "seconds": t} for a, b, t in split],
      "curve": curve,
  }


def verdict(r: dict) -> str:
  """Whether a paper-budget row is within max(1 point, the two stds added) of the published mean."""
  if r["published_mean"] is None:
    return "no published figure"
  gap = r["ours_mean"] - r["published_mean"]
  tol = max(1.0, r["ours_std"] + (r["published_std"] or 0.0))
  if r["budget"] != "paper":
    return f"{gap:+.2f} (reduced budget)"
  return f"{gap:+.2f} ({'within' if abs(gap) <= tol else 'outside'} {tol:.2f})"


def write(c, results: list) -> str:
  """``<results>.json`` and ``<results>.md``; returns the markdown."""
  os.makedirs(os.path.dirname(c.results) or ".", exist_ok=True)
  with open(c.results + ".json", "w") as f:
    json.dump(results, f, indent=1)
  lines = ["# The papers' Fashion-MNIST table at the papers' budgets", "", provenance(c),
           "Accuracy (%), mean ± std over the networks trained from scratch under the row's protocol "
           "(`jaxdistill.evaluate.protocol`); random real: images of the same IPC drawn with the run's "
           "seed, same protocol and networks. Steps are outer steps for DC / DSA (one iteration of "
           "the papers is `outer loop` steps: 1 at IPC 1, 10 at IPC 10); IDC's steps are its inner steps "
           "(an iteration is 100).", "",
           "| method | IPC | budget | iterations | protocol (networks) | ours | random real | published "
           "(source) | gap | distillation time (segments) |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    pub = "—" if r["published_mean"] is None else f"{r['published_mean']:.1f}" + (
        "" if r["published_std"] is None else f" ± {r['published_std']:.1f}") + f" ({r['source']})"
    lines.append(
        f"| {r['method'].upper()} | {r['ipc']} | {r['budget']} | {r['iterations']:g} | "
        f"{r['eval_protocol']} ({r['networks']}) | {r['ours_mean']:.2f} ± {r['ours_std']:.2f} | "
        f"{r['random_real_mean']:.2f} ± {r['random_real_std']:.2f} | {pub} | {verdict(r)} | "
        f"{r['distill_seconds'] / 3600:.2f} h ({len(r['sessions'])}) |")
  lines += ["", "Accuracy against iterations (networks per point in brackets):", ""]
  for r in results:
    pts = ", ".join(f"{p['iterations']:g}: {p['mean']:.2f} ± {p['std']:.2f} ({p['networks']})"
                    for p in r["curve"])
    lines.append(f"- {r['method'].upper()} IPC {r['ipc']}: {pts}")
  lines += ["", "Segments (first step, last step, seconds) of each row's distillation: one per "
            "distill.run call, so each curve point and each resume starts one (how the work was split "
            "across machine sessions is in the notes):", ""]
  lines += [f"- {r['method'].upper()} IPC {r['ipc']}: " +
            "; ".join(f"{s['first_step']}-{s['last_step']}, {s['seconds']:.0f} s" for s in r["sessions"])
            for r in results]
  lines += ["", "The command and date that recorded each row (rows this command did not run are kept "
            "as recorded):", ""]
  lines += [f"- {r['method'].upper()} IPC {r['ipc']} ({r['steps']} steps): {r['date']}, "
            f"`{r['recorded_by']}`" for r in results]
  lines += hand_notes(c.results + ".md")
  text = "\n".join(lines) + "\n"
  with open(c.results + ".md", "w") as f:
    f.write(text)
  return text


def plot(path: str, results: list) -> None:
  """Accuracy against iterations (log scale), one line per row, the published mean dotted and the
  paper's budget dashed (where the row's is reduced, the distance still to go)."""
  label = lambda r: f"{r['method'].upper()} IPC {r['ipc']}"
  lines = {label(r): ([p["iterations"] for p in r["curve"]], [p["mean"] for p in r["curve"]],
                      [p["std"] for p in r["curve"]]) for r in results}
  budget = {label(r): paper_fmnist.paper_steps(r["method"], r["ipc"])
            / paper_fmnist.steps_per_iteration(r["method"], r["ipc"]) for r in results}
  errorbar_plot(path, lines, "iterations (papers' unit)",
                "Fashion-MNIST (dotted: published; dashed: the paper's budget)",
                hlines={label(r): r["published_mean"] for r in results}, xscale="log", vlines=budget)


def recorded_rows(path: str) -> list:
  """The rows ``<results>.json`` at ``path`` records (none when it does not exist); a clear error for a
  file that is not this table's."""
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      rows = json.load(f)
    for r in rows:
      row_key(r), r["recorded_by"], r["date"]
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise ValueError(f"{path} exists but is not a results file of this table ({e!r}): move it, or "
                     f"pass another --config.results") from e
  return rows


def row_key(r: dict) -> tuple:
  return r["method"], r["ipc"], r["steps"]


def merged(recorded: list, results: list) -> list:
  """The table to write: ``recorded`` rows in their order, each replaced by this command's row of the
  same method, IPC and steps; this command's other rows after them. A recorded row this command does
  not run is kept as recorded (with the command and date that recorded it), and so is one this command
  finds with the same numbers (read back from its caches: it was recorded then, not now)."""
  ours = {row_key(r): r for r in results}
  out = []
  for r in recorded:
    new = ours.pop(row_key(r), None)
    out.append(r if new is None or same_numbers(r, new) else new)
  return out + list(ours.values())


def same_numbers(a: dict, b: dict) -> bool:
  """Whether rows ``a`` and ``b`` agree in everything but who recorded them and when (compared as
  the JSON file stores them)."""
  strip = lambda r: json.loads(json.dumps({k: v for k, v in r.items()
                                           if k not in ("recorded_by", "date")}))
  return strip(a) == strip(b)


def run(c) -> dict:
  """Every row of ``c`` (resuming), then the results files; returns ``{"rows", "text"}`` (this
  command's rows). The files keep the rows they already record that ``c`` does not run."""
  rows = rows_of(c)
  recorded = recorded_rows(c.results + ".json")
  if c.plot:
    require_plot("experiments.paper_fmnist")
  results, text = [], ""
  for method, ipc, steps in rows:
    results.append(dict(row_result(c, method, ipc, steps), recorded_by=command_line(),
                        date=now()))
    text = write(c, merged(recorded, results))  # after every row: a stopped table keeps its rows
    print(f"{method} IPC {ipc}: {results[-1]['ours_mean']:.2f} ± {results[-1]['ours_std']:.2f} "
          f"(published {results[-1]['published_mean']})", flush=True)
  if c.plot and results:
    plot(c.results + ".png", merged(recorded, results))
  return {"rows": results, "text": text}


if __name__ == "__main__":
  run_script(run)
