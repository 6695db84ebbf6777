"""Evaluates the selection baselines on a real dataset and writes a markdown table.

Usage: python -m experiments.baselines --config experiments/configs/baselines_fmnist.py [--config.x=...]
"""
from __future__ import annotations

import time

import jax

import jaxdistill as jd
from experiments.common import hand_notes, provenance, run_script, train_on_all


def run(c) -> None:
  """Evaluates every selection baseline of config ``c`` and writes the table to ``c.out``."""
  key = jax.random.key(c.seed)
  data = jd.data.load(c.dataset)
  model = jd.models.get_model(c.model, data.num_classes, **c.model_kwargs)
  lines = [f"# Selection baselines on {data.name}", "", provenance(c)]

  t0 = time.time()
  feat_key, sel_key, eval_key = jax.random.split(key, 3)
  variables, full_acc = train_on_all(feat_key, data, model, c.feature_epochs)
  trained = jd.evaluate.EvalConfig(epochs=c.feature_epochs, augment="none").trained_epochs()
  print(f"full-data {c.model} {dict(c.model_kwargs)}, {trained} epochs: test acc "
        f"{100 * full_acc:.2f}% ({time.time() - t0:.0f} s)", flush=True)
  lines += [f"Sanity: {c.model} {dict(c.model_kwargs)} trained on all {len(data.y_train)} training "
            f"images for {trained} epochs (feature_epochs {c.feature_epochs} under the protocol's "
            f"E + 1 schedule; SGD lr 0.01 momentum 0.9, batch 256, no aug): "
            f"**{100 * full_acc:.2f}%** test accuracy ({time.time() - t0:.0f} s).", ""]
  embed = lambda p, x: model.apply({"params": p}, x, train=False, return_features=True)[1]
  feats = jd.selection.embed(embed, variables["params"], data.x_train)

  cfg = jd.evaluate.EvalConfig(epochs=c.eval_epochs, augment=c.eval_augment)
  header = "| method | " + " | ".join(f"IPC {i}" for i in c.ipcs) + " |"
  rows = [header, "|" + "---|" * (len(c.ipcs) + 1)]
  for method in c.methods:
    cells = []
    for ipc in c.ipcs:
      t = time.time()
      syn = jd.selection.select(method, jax.random.fold_in(sel_key, ipc), data.x_train,
                                data.y_train, data.num_classes, ipc, features=feats)
      res = jd.evaluate.accuracy(jax.random.fold_in(eval_key, ipc), syn, data, model=model,
                                 num_seeds=c.num_seeds, cfg=cfg)
      cells.append(f"{100 * res.mean:.2f} ± {100 * res.std:.2f}")
      print(f"{method:10s} IPC {ipc:3d}: {res}  ({time.time() - t:.0f} s)", flush=True)
    rows.append(f"| {method} | " + " | ".join(cells) + " |")
  lines += [f"Test accuracy (%), mean ± std over {c.num_seeds} networks trained from scratch on the "
            f"selected images: {c.model} {dict(c.model_kwargs)}, {cfg.trained_epochs()} epochs "
            f"(E = {cfg.num_epochs()}, the reference's E + 1), augmentation {c.eval_augment}, SGD lr "
            f"0.01 (x0.1 and momentum restarted from epoch {cfg.restart_epoch()}) momentum 0.9 wd 5e-4, "
            f"batch 256. Herding, k-center and k-means use the features of the network above; "
            f"k_means rows are cluster-mean images, k_means_nearest rows the real images nearest the "
            f"centroids; average rows are means of random equal splits of each class.",
            "", *rows, "", f"Total run time: {time.time() - t0:.0f} s.", "", *hand_notes(c.out)]
  with open(c.out, "w") as f:
    f.write("\n".join(lines))
  print("\n".join(rows))
  print(f"wrote {c.out}")


if __name__ == "__main__":
  run_script(run)
