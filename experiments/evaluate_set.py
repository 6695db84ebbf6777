"""Evaluates a saved distilled set under a paper's protocol: any file ``jaxdistill.io.load_set`` reads
(this library's npz, mtt-distillation's images_<tag>.pt or run directory, DatasetCondensation's
res_*.pt), trained on by fresh networks as the protocol says (``jaxdistill.evaluate.protocol``).

    python -m experiments.evaluate_set PATH --protocol dsa [--dataset fashion_mnist] \
        [--num-models N] [--epochs E] [--seed S] [--data-dir D] [--tag best] [--index 0] [--zca]

``--num-models`` and ``--epochs`` default to the protocol's (e.g. DSA: 20 networks, 1000 epochs, hours on
a CPU); smaller values give a quick, noisier estimate, and the printed line says what ran.
``--zca``: the set is ZCA-whitened (mtt-distillation's ``--zca``): the dataset is whitened the same way
(``jaxdistill.data.whiten_dataset``) before the networks are tested.
"""
from __future__ import annotations

import argparse
import sys

import jax

import jaxdistill as jd


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m experiments.evaluate_set", description=__doc__.split("\n")[0])
  p.add_argument("path", help="the saved set (.npz, mtt-distillation images_<tag>.pt or its directory, "
                              "DatasetCondensation res_*.pt)")
  p.add_argument("--protocol", required=True, choices=jd.evaluate.PROTOCOLS)
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None, help="local dataset files (jaxdistill.data.load's data_dir)")
  p.add_argument("--num-models", type=int, default=None, help="networks trained (default: the protocol's)")
  p.add_argument("--epochs", type=int, default=None, help="epochs E (default: the protocol's)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tag", default=None, help="mtt directory: which images_<tag>.pt")
  p.add_argument("--index", type=int, default=0, help="DatasetCondensation file: which experiment")
  p.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None,
                 help="the set is ZCA-whitened (--no-zca: it is not); unset: load_set's check")
  return p.parse_args(argv)


def run(args: argparse.Namespace):
  """Loads the data and the set, evaluates; returns ``(protocol, cfg, num_models, EvalResult)``."""
  data = jd.data.load(args.dataset, data_dir=args.data_dir)
  if args.zca:
    data, _ = jd.data.whiten_dataset(data)
  syn = jd.io.load_set(args.path, tag=args.tag, index=args.index, zca=args.zca,
                       num_classes=data.num_classes)
  p = jd.evaluate.protocol(args.protocol, data.name, ratio=syn.num_images / len(data.y_train))
  cfg = p.cfg if args.epochs is None else p.cfg._replace(epochs=args.epochs)
  n = args.num_models or p.num_models
  result = jd.evaluate.accuracy(jax.random.key(args.seed), syn, data, model=p.model, num_seeds=n,
                                cfg=cfg, model_kwargs=dict(p.model_kwargs),
                                use_learned_lr=p.use_learned_lr, progress=True)
  return p, cfg, n, result


def main(argv=None) -> None:
  args = parse(argv)
  with jd.host.trim_after_compiles():  # as the other experiment mains: freed compiler memory goes back
    p, cfg, n, r = run(args)
  print(f"{args.path}: protocol {p.name} ({p.source}), {p.model} {dict(p.model_kwargs)}, {n} network(s), "
        f"E = {cfg.num_epochs()}: test accuracy {100 * r.mean:.2f} ± {100 * r.std:.2f} %")


if __name__ == "__main__":
  main(sys.argv[1:])
