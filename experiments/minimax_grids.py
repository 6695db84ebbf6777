"""The quality report of a recorded Minimax Diffusion run's sets, read back from its image grids.

Command (the recorded DiT run of ``minimax_fmnist.py``):
  .venv/bin/python -m experiments.minimax_grids --config experiments/configs/minimax_fmnist.py

For a run whose generated sets are no longer on disk but whose grids are recorded beside its results
(``<grid_prefix>_<set>_ipc<ipc>.png``, written by ``experiments.minimax``: the first min(IPC, 10)
images of each class, 8-bit). At IPC 10 a grid is the whole set; at IPC 50 it is 10 of the 50 images
of each class. Every set, and the run's random real images (the same key as the run, the same first
cells of each class), is scored by the run's quality report (``experiments.minimax.quality``: the
judge trained once under ``workdir``, class agreement, FID-style distance to the test images,
nearest-real ratio), so the figures compare sets of the same size. The FID-style distance of 100
images is biased upwards by their number; compare it only between sets of the same size.

Writes ``<results>`` with ``_grids`` before ``.md`` (this command's output) and ``<results>`` with
``.json`` for ``.md``: the quality of each set and IPC, and the accuracies of the results table of
the run that made the grids (``<results>``, or the run's own ``<results>`` with ``_run`` before
``.md`` where there is no such file), with the file they were read from.
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

import jaxdistill as jd
from experiments import minimax
from experiments.common import provenance, run_script

GENERATED = ("vanilla", "minimax", "difffit")
# First word of a row's set in the results table -> the JSON's set name.
TABLE_SETS = {"random": "random_real", "dm": "dm", "vanilla": "vanilla", "minimax": "minimax",
              "difffit": "difffit"}
QUALITY_KEYS = ("class_agreement", "fid_like", "nearest_real_ratio")


def recorded_accuracy(path: str) -> list:
  """The rows ``| IPC | set | mean ± std | ...`` of the results table in ``path`` as
  ``{set, ipc, mean, std}`` (percent; the first accuracy column). Refuses a row of an unknown set."""
  rows = []
  with open(path) as f:
    for line in f:
      m = re.match(r"\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|\s*([\d.]+)\s*±\s*([\d.]+)\s*\|", line)
      if not m:
        continue
      first = m.group(2).split()[0].lower()
      if first not in TABLE_SETS:
        raise ValueError(f"{path}: a results row names the set {m.group(2)!r}; known: "
                         f"{sorted(TABLE_SETS)} (first word, any case).")
      rows.append({"set": TABLE_SETS[first], "ipc": int(m.group(1)), "mean": float(m.group(3)),
                   "std": float(m.group(4))})
  if not rows:
    raise ValueError(f"{path} holds no results table rows (| IPC | set | mean ± std | ...).")
  return rows


def first_per_class(syn: jd.SyntheticSet, num_classes: int, n: int) -> jd.SyntheticSet:
  """The first ``n`` images of each class of ``syn``, class by class (a grid's cells)."""
  labels = np.asarray(syn.labels)
  idx = np.concatenate([np.flatnonzero(labels == k)[:n] for k in range(num_classes)])
  return jd.SyntheticSet(jnp.asarray(np.asarray(syn.images)[idx]), jnp.asarray(labels[idx]))


def run(c) -> dict:
  """Scores every grid of the run of config ``c`` and the run's random real images; returns the
  JSON record."""
  key = jax.random.key(c.seed)
  rnd_key = jax.random.split(key, 5)[4]  # experiments.minimax.run's keys
  judge_key = jax.random.fold_in(key, 7)
  data = minimax.load_data(c)
  judge_state = minimax.judge(c, data, judge_key)
  res_dir = os.path.dirname(c.results) or "."
  quality = {}
  for ipc in c.ipcs:
    n = min(ipc, 10)
    sets = {"random_real": first_per_class(
        jd.selection.random(jax.random.fold_in(rnd_key, ipc), data.x_train, data.y_train,
                            data.num_classes, ipc), data.num_classes, n)}
    for name in GENERATED:
      path = os.path.join(res_dir, f"{c.grid_prefix}_{name}_ipc{ipc}.png")
      if not os.path.exists(path):
        print(f"no grid {path}: {name} IPC {ipc} left out")
        continue
      images = jd.logs.read_grid(path, data.image_shape, nrow=n, num=n * data.num_classes,
                                 mean=data.mean, std=data.std)
      sets[name] = jd.SyntheticSet(jnp.asarray(images),
                                   jnp.repeat(jnp.arange(data.num_classes, dtype=jnp.int32), n))
    for name, syn in sets.items():
      q = minimax.quality(c, data, syn, judge_state, judge_key)
      quality.setdefault(name, {})[str(ipc)] = {**{k: q[k] for k in QUALITY_KEYS},
                                               "class_agreement_per_class":
                                                   q["class_agreement_per_class"],
                                               "images_scored": int(len(syn.labels)),
                                               "of_ipc": ipc}
      print(f"{name} IPC {ipc} ({len(syn.labels)} images): class agreement "
            f"{q['class_agreement']:.3f}, FID-style {q['fid_like']:.2f}, nearest-real ratio "
            f"{q['nearest_real_ratio']:.2f}", flush=True)
  acc_path = c.results if os.path.exists(c.results) else c.results.replace(".md", "_run.md")
  record = {"judge_test_accuracy": 100 * judge_state[2],
            "quality_from": "the image grids (8-bit, first min(IPC, 10) images per class)",
            "quality": quality, "accuracy_from": acc_path, "accuracy": recorded_accuracy(acc_path)}
  with open(c.results.replace(".md", ".json"), "w") as f:
    json.dump(record, f, indent=1)
  lines = [f"# Quality report of the recorded {c.dataset} Minimax run's sets, from their grids", "",
           provenance(c),
           f"Judge: {c.judge.model} {dict(c.judge.model_kwargs)}, {c.judge.epochs} epochs (trains "
           f"{c.judge.epochs + 1}) on every training image, test accuracy "
           f"{100 * judge_state[2]:.2f}%. Each set scored on the first min(IPC, 10) images of each "
           f"class (its grid's cells); FID-style distance to the 10,000 test images in the judge's "
           f"features (biased upwards by the set's size: compare within a size).", "",
           "| IPC | set | images scored | class agreement | FID-style | nearest-real ratio |",
           "|---|---|---|---|---|---|"]
  for ipc in c.ipcs:
    for name, per in quality.items():
      if str(ipc) in per:
        q = per[str(ipc)]
        lines.append(f"| {ipc} | {name} | {q['images_scored']} | {q['class_agreement']:.3f} | "
                     f"{q['fid_like']:.2f} | {q['nearest_real_ratio']:.2f} |")
  with open(c.results.replace(".md", "_grids.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines[-2 - sum(len(p) for p in quality.values()):]))
  return record


if __name__ == "__main__":
  run_script(run)
