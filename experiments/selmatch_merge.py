"""One JSON record of a SelMatch study recorded by several ``experiments.selmatch`` invocations.

Command:
  python -m experiments.selmatch_merge OUT.json IN1.json IN2.json ... [--plot OUT.png]

Each input is the ``.json`` an invocation wrote beside its results file (one ratio each, say, when
the ratios ran in different sessions). They must come from the same experts (equal
``expert_test_acc``) and agree on ``eval_learned_lr``; each row keeps its figures and gains
``source``, the results file it was recorded in (whose command and date say how). A ratio recorded
twice is refused: say which file to keep by leaving the other out. ``--plot`` draws the merged
record's accuracy against the ratio as ``experiments.selmatch`` draws one invocation's (needs the
``plot`` extra).
"""
from __future__ import annotations

import argparse
import json
import os


def merge(paths) -> dict:
  """The merged record of the JSON files ``paths`` (see the module)."""
  if len(paths) < 1:
    raise ValueError("Give at least one input JSON.")
  out = None
  seen = {}
  for path in paths:
    with open(path) as f:
      rec = json.load(f)
    missing = {"expert_test_acc", "eval_learned_lr", "rows"} - set(rec)
    if missing:
      raise ValueError(f"{path} is not a SelMatch study record: it lacks {sorted(missing)}.")
    source = os.path.splitext(os.path.basename(path))[0] + ".md"
    if out is None:
      out = {"expert_test_acc": rec["expert_test_acc"], "eval_learned_lr": rec["eval_learned_lr"],
             "rows": []}
    elif rec["expert_test_acc"] != out["expert_test_acc"]:
      raise ValueError(f"{path} was recorded with other experts ({rec['expert_test_acc']} vs "
                       f"{out['expert_test_acc']}): its sets are not comparable with the others'.")
    elif rec["eval_learned_lr"] != out["eval_learned_lr"]:
      raise ValueError(f"{path} evaluated with eval_learned_lr={rec['eval_learned_lr']}, the others "
                       f"with {out['eval_learned_lr']}: not one protocol.")
    for ratio in sorted({r["ratio"] for r in rec["rows"]}):
      if ratio in seen:
        raise ValueError(f"Ratio {ratio} is recorded in both {seen[ratio]} and {path}.")
      seen[ratio] = path
    out["rows"] += [{**r, "source": r.get("source", source)} for r in rec["rows"]]
  out["rows"].sort(key=lambda r: r["ratio"])  # stable: each file's row order within a ratio
  return out


def curves(rows) -> dict:
  """``{label: (ratios in %, means, stds)}`` of a record's rows, the lines ``experiments.selmatch``
  plots: random real images, the best window chosen on held-out images and on the test set, MTT, and
  SelMatch with combined augmentation through each ratio's first alpha (the paper's, listed first by
  the study's config), each other alpha a line of its own."""
  points, first_alpha = {}, {}
  for r in rows:
    ev = r["evaluator"]
    if r["set"] == "random":
      label = "random real"
    elif r["set"] == "window":
      label = f"best window (chosen on {'held-out' if 'held-out' in ev else 'test'})"
    elif r["set"] == "mtt":
      label = "MTT"
    elif r["set"] == "selmatch":
      if "combined" not in ev:
        continue
      first = first_alpha.setdefault(r["ratio"], r["alpha"])
      label = ("SelMatch, each ratio's first alpha (combined aug)" if r["alpha"] == first
               else f"SelMatch, alpha {r['alpha']:g} (combined aug)")
    else:
      raise ValueError(f"Unknown set {r['set']!r} in a SelMatch study record.")
    points.setdefault(label, []).append((100 * r["ratio"], r["mean"], r["std"]))
  return {label: tuple(list(v) for v in zip(*sorted(pts))) for label, pts in points.items()}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out")
  p.add_argument("inputs", nargs="+")
  p.add_argument("--plot", help="also draw accuracy against ratio to this .png")
  p.add_argument("--title", default="SelMatch study, ConvNet evaluation")
  args = p.parse_args(argv)
  merged = merge(args.inputs)  # every input is read before the output (maybe one of them) is written
  with open(args.out, "w") as f:
    json.dump(merged, f, indent=1)
  if args.plot:
    from experiments.common import errorbar_plot  # pylint: disable=g-import-not-at-top
    errorbar_plot(args.plot, curves(merged["rows"]), "subset ratio (%)", args.title)
  print(f"wrote {args.out}: {len(merged['rows'])} rows, ratios "
        f"{sorted({r['ratio'] for r in merged['rows']})}")


if __name__ == "__main__":
  main()
